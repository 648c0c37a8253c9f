//! Digest rounds: the part of a trail's worker that writes its signed digest files.
//!
//! While a trail logs with log file validation on it has one chain per (account, region): the
//! home region's from the start, another region's from its first log file. Every digest period
//! a round gives each chain a digest for the window `[start, end)` listing the log files whose
//! delivery committed in that window; the round's end is `start + k × period` (k > 1 only when
//! the server was down for whole periods), so regular windows are exactly one period long. When
//! logging stops (once everything logged is delivered) or validation is turned off, a last round
//! (window cut short at that moment) ends the chains; the next start begins new chains whose
//! first digests point nowhere.
//!
//! Exactly once: a round is stored before its first digest is written and names everything the
//! digests' bytes depend on (end time, files, keys, bucket, prefix). PKCS#1 v1.5 signatures are
//! deterministic, so a replay after a crash rebuilds identical digests, writes them create-only,
//! and one catalog transaction then advances every chain and drops the listed files.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use opentrail_catalog::{
    Catalog, DeliveryState, DigestChains, DigestRound, PreviousDigest, StoredDigestFile, Trail,
};

use crate::digest::{
    DigestDocument, DigestLogFile, DigestName, HASH_ALGORITHM, SIGNATURE_ALGORITHM, SigningKey,
};
use crate::keys::Keyring;
use crate::worker::DeliveryError;

/// A digest ready to write.
pub(crate) struct DigestOut {
    pub chain: String,
    pub key: String,
    /// The gzip body.
    pub body: bytes::Bytes,
    pub sha256: String,
    pub signature: String,
}

/// What the blocking half of a digest step decided.
pub(crate) enum RoundWork {
    /// Nothing to write now; look again by this time (if any).
    Wait(Option<i64>),
    Write {
        round: DigestRound,
        bucket: String,
        digests: Vec<DigestOut>,
    },
}

fn whole_seconds(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

fn period_ms(p: Duration) -> i64 {
    i64::try_from(p.as_millis()).unwrap_or(i64::MAX).max(1000)
}

fn fmt(ms: i64) -> String {
    opentrail_model::time::format_event_time(ms)
}

/// `account/region` of a chain.
pub(crate) fn chain_id(account: &str, region: &str) -> String {
    format!("{account}/{region}")
}

/// Decides (or resumes) the trail's digest round and builds its digests. Blocking.
#[allow(clippy::too_many_arguments)]
pub(crate) fn prepare_round(
    catalog: &Catalog,
    keyring: &Keyring,
    org_id: Option<&str>,
    arn: &str,
    period: Duration,
    now: i64,
    end_now: bool,
    step_began_ms: i64,
) -> Result<RoundWork, DeliveryError> {
    let Some(trail) = catalog.get(arn)? else {
        return Ok(RoundWork::Wait(None));
    };
    let state = catalog.delivery_state(arn)?;
    let wanted = trail.is_logging && trail.log_file_validation_enabled;
    let Some(chains) = state.as_ref().and_then(|s| s.digest.clone()) else {
        if !wanted || end_now {
            // Files recorded just before validation was turned off, with no chain to list
            // them: nothing will ever list them.
            if catalog.digest_files_before(arn, i64::MAX)?.0 > 0 {
                catalog.update_delivery_with(
                    arn,
                    || DeliveryState::new(0),
                    |_| {},
                    &[],
                    &[],
                    Some(i64::MAX),
                )?;
            }
            return Ok(RoundWork::Wait(None));
        }
        let start = whole_seconds(now);
        let home = chain_id(&trail.account, &trail.home_region);
        let begun = DigestChains {
            window_start_ms: start,
            chains: BTreeMap::from([(home, None)]),
            round: None,
            ending_since_ms: None,
        };
        let cursor = state.as_ref().map_or(0, |s| s.cursor);
        catalog.update_delivery(
            arn,
            || DeliveryState::new(cursor),
            |s| {
                if s.digest.is_none() {
                    s.digest = Some(begun);
                }
            },
            &[],
        )?;
        tracing::info!(trail = %arn, "digest chain started");
        return Ok(RoundWork::Wait(Some(start + period_ms(period))));
    };
    let round = match chains.round.clone() {
        Some(r) => r,
        None => {
            let Some(round) = new_round(
                catalog,
                keyring,
                org_id,
                &trail,
                state.as_ref(),
                &chains,
                period,
                now,
                end_now,
                step_began_ms,
            )?
            else {
                let due = chains.window_start_ms.saturating_add(period_ms(period));
                return Ok(RoundWork::Wait(wanted.then_some(due)));
            };
            round
        }
    };
    let files = catalog.digest_files(arn, round.upto_id)?;
    let mut signers: HashMap<&str, Arc<SigningKey>> = HashMap::new();
    for (region, fp) in &round.keys {
        signers.insert(region.as_str(), keyring_signer(keyring, fp)?);
    }
    let digests = build(&trail, &chains, &round, &files, &signers)?;
    Ok(RoundWork::Write {
        bucket: round.bucket.clone(),
        round,
        digests,
    })
}

fn keyring_signer(keyring: &Keyring, fp: &str) -> Result<Arc<SigningKey>, DeliveryError> {
    keyring
        .signer(fp)
        .map_err(|e| DeliveryError::Keys(e.to_string()))
}

/// A new round if one is due, stored before it is returned.
#[allow(clippy::too_many_arguments)]
fn new_round(
    catalog: &Catalog,
    keyring: &Keyring,
    org_id: Option<&str>,
    trail: &Trail,
    state: Option<&DeliveryState>,
    chains: &DigestChains,
    period: Duration,
    now: i64,
    end_now: bool,
    step_began_ms: i64,
) -> Result<Option<DigestRound>, DeliveryError> {
    let p = period_ms(period);
    let start = chains.window_start_ms;
    let wanted = trail.is_logging && trail.log_file_validation_enabled;
    if wanted != chains.ending_since_ms.is_none() {
        // Validation just went off (remember when) or came back on (forget it).
        let since = (!wanted).then_some(now);
        catalog.update_delivery(
            &trail.arn,
            || DeliveryState::new(0),
            |s| {
                if let Some(d) = s.digest.as_mut() {
                    d.ending_since_ms = since;
                }
            },
            &[],
        )?;
    }
    let last_ready = if end_now {
        true
    } else if wanted {
        false
    } else if trail.is_logging {
        // Validation was turned off: the UpdateTrail call that did it is recorded just after
        // the change, so the chains end after a delivery step that began a second later.
        chains
            .ending_since_ms
            .is_some_and(|since| step_began_ms >= since + 1000)
    } else {
        // Logging stopped: end the chains once everything logged is delivered (and the stop
        // itself is sealed into the trail's spans).
        let sealed = trail.logging_spans.last().is_none_or(|s| s.to.is_some());
        let cursor = state.map_or(0, |s| s.cursor);
        let idle = state.is_none_or(|s| s.plan.is_none());
        sealed && idle && trail.next_logged(cursor).is_none()
    };
    // A regular window that has ended is written first, so only the last window is ever
    // shorter than a period (and none is longer, downtime aside).
    let last = now < start.saturating_add(p) && last_ready;
    let end = if last {
        // Rounded up: the window covers every delivery so far, including this second's.
        whole_seconds(now + 999).max(start + 1000)
    } else {
        if now < start.saturating_add(p) {
            return Ok(None);
        }
        start + p * ((now - start) / p).max(1)
    };
    // A last round lists every waiting file: nothing may be left behind when the chains end.
    let before = if last { i64::MAX } else { end };
    let (upto_id, file_chains) = catalog.digest_files_before(&trail.arn, before)?;
    let mut all: Vec<String> = chains.chains.keys().cloned().collect();
    for c in file_chains {
        if !all.contains(&c) {
            all.push(c);
        }
    }
    all.sort();
    let mut keys = BTreeMap::new();
    for c in &all {
        let region = c.split_once('/').map_or(c.as_str(), |(_, r)| r);
        if !keys.contains_key(region) {
            let fp = keyring
                .current(region, now)
                .map_err(|e| DeliveryError::Keys(e.to_string()))?;
            keyring
                .cover(&fp, end)
                .map_err(|e| DeliveryError::Keys(e.to_string()))?;
            keys.insert(region.to_owned(), fp);
        }
    }
    let round = DigestRound {
        end_ms: end,
        upto_id,
        keys,
        bucket: trail.s3_bucket_name.clone(),
        key_prefix: trail.s3_key_prefix.clone(),
        org_id: org_id.map(str::to_owned),
        chains: all,
        last,
        data_keys: BTreeMap::new(),
    };
    let stored = round.clone();
    catalog.update_delivery(
        &trail.arn,
        || DeliveryState::new(0),
        move |s| {
            if let Some(d) = s.digest.as_mut() {
                for c in &stored.chains {
                    d.chains.entry(c.clone()).or_insert(None);
                }
                d.round = Some(stored);
            }
        },
        &[],
    )?;
    Ok(Some(round))
}

/// The round's digests, one per chain, signed.
fn build(
    trail: &Trail,
    chains: &DigestChains,
    round: &DigestRound,
    files: &[StoredDigestFile],
    signers: &HashMap<&str, Arc<SigningKey>>,
) -> Result<Vec<DigestOut>, DeliveryError> {
    let mut out = Vec::with_capacity(round.chains.len());
    for chain in &round.chains {
        let (account, region) = chain.split_once('/').unwrap_or((chain, ""));
        let key = DigestName {
            key_prefix: round.key_prefix.as_deref(),
            org_id: round.org_id.as_deref(),
            account,
            source_region: region,
            trail_name: &trail.name,
            home_region: &trail.home_region,
        }
        .key(round.end_ms);
        let mine: Vec<&StoredDigestFile> = files
            .iter()
            .filter(|f| f.file.account == account && f.file.region == region)
            .collect();
        let oldest = mine.iter().filter_map(|f| f.file.oldest_event_ms).min();
        let newest = mine.iter().filter_map(|f| f.file.newest_event_ms).max();
        let prev = chains.chains.get(chain).cloned().flatten();
        let fp = round
            .keys
            .get(region)
            .ok_or_else(|| DeliveryError::Keys(format!("the round has no key for {region}")))?;
        let signer = signers
            .get(region)
            .ok_or_else(|| DeliveryError::Keys(format!("no signer for {region}")))?;
        let doc = DigestDocument {
            aws_account_id: account.to_owned(),
            digest_start_time: fmt(chains.window_start_ms),
            digest_end_time: fmt(round.end_ms),
            digest_s3_bucket: round.bucket.clone(),
            digest_s3_object: key.clone(),
            digest_public_key_fingerprint: fp.clone(),
            digest_signature_algorithm: SIGNATURE_ALGORITHM.to_owned(),
            newest_event_time: newest.map(fmt),
            oldest_event_time: oldest.map(fmt),
            previous_digest_s3_bucket: prev.as_ref().map(|p| p.bucket.clone()),
            previous_digest_s3_object: prev.as_ref().map(|p| p.key.clone()),
            previous_digest_hash_value: prev.as_ref().map(|p| p.sha256.clone()),
            previous_digest_hash_algorithm: prev.as_ref().map(|_| HASH_ALGORITHM.to_owned()),
            previous_digest_signature: prev.as_ref().map(|p| p.signature.clone()),
            log_files: mine
                .iter()
                .map(|f| DigestLogFile {
                    s3_bucket: f.file.bucket.clone(),
                    s3_object: f.file.key.clone(),
                    hash_value: f.file.sha256.clone(),
                    hash_algorithm: HASH_ALGORITHM.to_owned(),
                    newest_event_time: f.file.newest_event_ms.map(fmt),
                    oldest_event_time: f.file.oldest_event_ms.map(fmt),
                })
                .collect(),
        };
        let signed = doc
            .sign(signer)
            .map_err(|e| DeliveryError::Keys(e.to_string()))?;
        out.push(DigestOut {
            chain: chain.clone(),
            key,
            body: crate::files::gzip(&signed.json)?.into(),
            sha256: signed.sha256_hex,
            signature: signed.signature_hex,
        });
    }
    Ok(out)
}

/// Commits a written round: every chain now ends at its new digest, the listed files leave,
/// and a last round ends the chains.
pub(crate) fn commit_round(
    catalog: &Catalog,
    arn: &str,
    round: &DigestRound,
    digests: &[DigestOut],
    now: i64,
) -> Result<(), DeliveryError> {
    let links: Vec<(String, PreviousDigest)> = digests
        .iter()
        .map(|d| {
            (
                d.chain.clone(),
                PreviousDigest {
                    bucket: round.bucket.clone(),
                    key: d.key.clone(),
                    sha256: d.sha256.clone(),
                    signature: d.signature.clone(),
                },
            )
        })
        .collect();
    let n = digests.len() as u64;
    catalog.update_delivery_with(
        arn,
        || DeliveryState::new(0),
        |s| {
            if let Some(d) = s.digest.as_mut() {
                for (chain, link) in links {
                    d.chains.insert(chain, Some(link));
                }
                d.window_start_ms = round.end_ms;
                d.round = None;
            }
            if round.last {
                s.digest = None;
            }
            s.latest_digest_delivery_time_ms = Some(now);
            s.latest_digest_delivery_error = None;
            s.digests_delivered += n;
        },
        &[],
        &[],
        Some(round.upto_id),
    )?;
    Ok(())
}

/// Records a failed digest write in the trail's status.
pub(crate) fn record_failure(
    catalog: &Catalog,
    arn: &str,
    code: String,
) -> Result<(), DeliveryError> {
    catalog.update_delivery(
        arn,
        || DeliveryState::new(0),
        |s| s.latest_digest_delivery_error = Some(code),
        &[],
    )?;
    Ok(())
}

//! `opentrail validate-logs`: CloudTrail's log file integrity validation with the AWS CLI's
//! flags, output lines and exit status, plus what the AWS CLI's validator cannot do:
//! - `--local-dir`: validate a copy of the bucket on disk;
//! - log files hashed in parallel across cores, with a progress bar;
//! - detections the AWS CLI misses: digests missing behind a missing digest, a chain that ends
//!   early, and log files in the bucket that no digest lists.
//!
//! The walk over the digests follows the AWS CLI's: list the trail's digests for the range, take
//! the newest, follow `previousDigestS3Object` backwards, jump to the next older listed digest
//! when a chain starts or a digest is missing or invalid; then check every log file a valid
//! digest lists.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opentrail_delivery::digest::{
    LogFileFault, gunzip_member, hash_gzip_member, is_usable_public_key, sha256_hex,
    string_to_sign, unhex, verify_hex,
};
use opentrail_delivery::layout::key_time_ms;
use opentrail_delivery::{Buckets, S3Target, Target};
use serde_json::{Value, json};

const TARGET_PREFIX: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101";
const HOUR_MS: i64 = 3_600_000;

/// Flags of `opentrail validate-logs`.
#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// ARN of the trail to validate.
    #[arg(long)]
    trail_arn: String,
    /// Validate files delivered at or after this time (e.g. 2026-11-21T10:00:00Z).
    #[arg(long)]
    start_time: String,
    /// ... up to this time [default: now].
    #[arg(long)]
    end_time: Option<String>,
    /// Bucket holding the digests [default: the trail's, from DescribeTrails].
    #[arg(long)]
    s3_bucket: Option<String>,
    /// Key prefix of the digests [default: the trail's].
    #[arg(long)]
    s3_prefix: Option<String>,
    /// Account whose files to validate (required for organization trails).
    #[arg(long)]
    account_id: Option<String>,
    /// Print valid files too.
    #[arg(long)]
    verbose: bool,
    /// OpenTrail's API (DescribeTrails, GetTrailStatus, ListPublicKeys).
    #[arg(
        long,
        env = "OPENTRAIL_ENDPOINT_URL",
        default_value = "http://127.0.0.1:7433"
    )]
    endpoint_url: String,
    /// The region whose digests to validate [default: $AWS_REGION, $AWS_DEFAULT_REGION, us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// S3-compatible endpoint of the bucket [default: $AWS_ENDPOINT_URL_S3, then
    /// $AWS_ENDPOINT_URL]; credentials from $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY.
    #[arg(long)]
    s3_endpoint_url: Option<String>,
    /// Validate a copy of the bucket in this directory (object K is DIR/K; digest signatures
    /// in DIR/.opentrail-metadata/K.json) instead of reading S3.
    #[arg(long, conflicts_with = "s3_endpoint_url")]
    local_dir: Option<PathBuf>,
    /// The organization id (`o-...`) of an organization trail.
    #[arg(long)]
    organization_id: Option<String>,
    /// Log files checked at once [default: the number of cores].
    #[arg(long)]
    jobs: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Parses the time forms the AWS CLI takes most often: RFC 3339 (`2026-11-21T10:00:00Z`), the
/// compact `20261121T10:00:00Z` / `20261121T100000Z`, and a bare date.
fn parse_time(name: &str, s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    for f in [
        "%Y%m%dT%H:%M:%S%#z",
        "%Y%m%dT%H%M%S%#z",
        "%Y-%m-%dT%H:%M:%S%#z",
        "%Y-%m-%d %H:%M:%S%#z",
    ] {
        let text = s.replace('Z', "+00:00");
        if let Ok(z) = jiff::Zoned::strptime(f, &text) {
            return Ok(z.timestamp().as_millisecond());
        }
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y%m%dT%H%M%S"] {
        if let Ok(dt) = jiff::civil::DateTime::strptime(f, s)
            && let Ok(z) = dt.to_zoned(jiff::tz::TimeZone::UTC)
        {
            return Ok(z.timestamp().as_millisecond());
        }
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return Ok(d
            .to_zoned(jiff::tz::TimeZone::UTC)?
            .timestamp()
            .as_millisecond());
    }
    anyhow::bail!("--{name} {s:?} is not a time like 2026-11-21T10:00:00Z")
}

fn display(ms: i64) -> String {
    opentrail_model::time::format_event_time(ms)
}

/// CloudTrail's API, for the calls the validator needs.
struct Api {
    client: crate::client::ApiClient,
}

impl Api {
    fn call(&self, op: &str, body: &Value) -> anyhow::Result<Value> {
        self.client
            .call("cloudtrail", &format!("{TARGET_PREFIX}.{op}"), body)
    }
}

/// The parts of a trail ARN the validator needs.
struct TrailRef {
    arn: String,
    home_region: String,
    account: String,
    name: String,
}

fn parse_arn(arn: &str) -> anyhow::Result<TrailRef> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[2] == "cloudtrail"
        && !parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5].starts_with("trail/")
        && parts[5].len() > "trail/".len();
    if !ok {
        anyhow::bail!("Invalid trail ARN provided: {arn}");
    }
    Ok(TrailRef {
        arn: arn.to_owned(),
        home_region: parts[3].to_owned(),
        account: parts[4].to_owned(),
        name: parts[5].rsplit('/').next().unwrap_or_default().to_owned(),
    })
}

/// Prints like the AWS CLI: valid lines on stdout with --verbose, invalid lines on stderr
/// framed by blank lines.
struct Printer {
    verbose: bool,
    double_space: bool,
    bar: ProgressBar,
}

impl Printer {
    fn status(&mut self, message: &str, is_error: bool) {
        self.bar.suspend(|| {
            if is_error {
                let _ = std::io::stdout().flush();
                let mut e = std::io::stderr().lock();
                if self.double_space {
                    let _ = write!(e, "{message}\n\n");
                } else {
                    let _ = write!(e, "\n{message}\n\n");
                }
                self.double_space = true;
            } else if self.verbose {
                self.double_space = false;
                println!("{message}");
            }
        });
    }
}

#[derive(Default)]
struct Counts {
    valid_digests: u64,
    invalid_digests: u64,
    valid_logs: u64,
    invalid_logs: u64,
    found_start: Option<i64>,
    found_end: Option<i64>,
}

/// A digest the walk accepted.
struct ValidDigest {
    start_ms: i64,
    end_ms: i64,
    log_files: Vec<Value>,
}

/// The 16-character stamp before `.json.gz` (what the AWS CLI compares).
fn key_stamp(key: &str) -> Option<&str> {
    let n = key.len();
    if n < 24 || !key.ends_with(".json.gz") {
        return None;
    }
    key.get(n - 24..n - 8)
}

fn stamp_ms(stamp: &str) -> Option<i64> {
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_millisecond())
}

fn stamp_of(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_default()
}

enum DigestVerdict {
    Valid(Box<(Value, String)>),
    Missing,
    Invalid(String),
}

/// Where the objects are read from, and how encrypted ones are opened.
struct Store {
    buckets: Buckets,
    decryptor: Arc<crate::decrypt::Decryptor>,
    /// The first object that could not be decrypted, and why.
    undecryptable: std::sync::Mutex<Option<String>>,
}

impl Store {
    /// An object's plain bytes and metadata: decrypted through the key service when it was
    /// stored encrypted. An object that cannot be decrypted reads as unreadable (and the
    /// reason is kept for the end of the run).
    async fn get_plain(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<
        (bytes::Bytes, std::collections::BTreeMap<String, String>),
        opentrail_delivery::BucketError,
    > {
        let (body, meta) = self.buckets.get_with_metadata(bucket, key).await?;
        if !meta.contains_key(opentrail_delivery::kms::envelope::META_KEY) {
            return Ok((body, meta));
        }
        let d = Arc::clone(&self.decryptor);
        let (k, m) = (key.to_owned(), meta.clone());
        let opened = tokio::task::spawn_blocking(move || d.plain(&k, &body, &m))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|r| r);
        match opened {
            Ok(plain) => Ok((plain.into(), meta)),
            Err(e) => {
                if let Ok(mut first) = self.undecryptable.lock()
                    && first.is_none()
                {
                    *first = Some(format!("s3://{bucket}/{key}: {e:#}"));
                }
                Err(opentrail_delivery::BucketError {
                    code: "Undecryptable".to_owned(),
                    message: format!("{e:#}"),
                })
            }
        }
    }

    async fn fetch_digest(
        &self,
        keys: &HashMap<String, Vec<u8>>,
        home_region: &str,
        bucket: &str,
        key: &str,
        vouched: Option<&str>,
    ) -> anyhow::Result<DigestVerdict> {
        let line = |m: &str| format!("Digest file\ts3://{bucket}/{key}\tINVALID: {m}");
        let (body, meta) = match self.get_plain(bucket, key).await {
            Ok(x) => x,
            Err(e) if e.code == "NoSuchKey" => return Ok(DigestVerdict::Missing),
            Err(e) => return Err(anyhow::anyhow!("{e}")),
        };
        let plain = gunzip_member(&body).unwrap_or_default();
        let parsed = serde_json::from_slice::<Value>(&plain).ok();
        let Some(doc) = parsed.filter(Value::is_object) else {
            return Ok(DigestVerdict::Invalid(line("invalid format")));
        };
        // A copy without metadata (a plain download) still validates through the chain: the
        // newer digest that points here, already verified, names this digest's signature.
        let sig = match (meta.get("signature"), meta.get("signature-algorithm")) {
            (Some(sig), Some(_)) => sig.clone(),
            _ => match vouched {
                Some(v) if meta.is_empty() => v.to_owned(),
                _ => {
                    return Ok(DigestVerdict::Invalid(line(
                        "signature verification failed",
                    )));
                }
            },
        };
        let sig = &sig;
        for k in [
            "digestPublicKeyFingerprint",
            "digestS3Bucket",
            "digestS3Object",
            "previousDigestSignature",
            "digestEndTime",
            "digestStartTime",
        ] {
            if doc.get(k).is_none() {
                return Ok(DigestVerdict::Invalid(line("invalid format")));
            }
        }
        if doc["digestS3Bucket"].as_str() != Some(bucket)
            || doc["digestS3Object"].as_str() != Some(key)
        {
            return Ok(DigestVerdict::Invalid(line(
                "has been moved from its original location",
            )));
        }
        let fp = doc["digestPublicKeyFingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let Some(der) = keys.get(&fp) else {
            return Ok(DigestVerdict::Invalid(line(&format!(
                "public key not found in region {home_region} for fingerprint {fp}"
            ))));
        };
        if !is_usable_public_key(der) {
            return Ok(DigestVerdict::Invalid(line(&format!(
                "Unable to load PKCS #1 key with fingerprint {fp}"
            ))));
        }
        let (Some(end), Some(_)) = (
            doc["digestEndTime"].as_str(),
            doc["digestStartTime"].as_str(),
        ) else {
            return Ok(DigestVerdict::Invalid(line("invalid format")));
        };
        let to_sign = string_to_sign(
            end,
            bucket,
            key,
            &sha256_hex(&plain),
            doc["previousDigestSignature"].as_str(),
        );
        if unhex(sig).is_none() || !verify_hex(der, to_sign.as_bytes(), sig) {
            return Ok(DigestVerdict::Invalid(line(
                "signature verification failed",
            )));
        }
        Ok(DigestVerdict::Valid(Box::new((doc, sig.clone()))))
    }
}

fn s3_endpoint(args: &ValidateArgs) -> Option<String> {
    args.s3_endpoint_url
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
        .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
        .filter(|s| !s.is_empty())
}

/// Runs the validation; returns the exit status (0 all valid, 1 something invalid).
pub fn run(settings: &opentrail_server::Settings, args: &ValidateArgs) -> anyhow::Result<i32> {
    let trail = parse_arn(&args.trail_arn)?;
    let start = parse_time("start-time", &args.start_time)?;
    let start = start - start.rem_euclid(1000);
    let now = jiff::Timestamp::now().as_millisecond();
    let end = match &args.end_time {
        Some(e) => parse_time("end-time", e)?,
        None => now,
    };
    let end = end - end.rem_euclid(1000);
    if start > end {
        anyhow::bail!("Invalid time range specified: start-time must occur before end-time");
    }
    let region = args
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "us-east-1".to_owned());
    let api = Api {
        client: crate::client::ApiClient::new(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(60)))
                .build()
                .into(),
            &args.endpoint_url,
            &region,
        )?,
    };
    let account = args.account_id.clone().unwrap_or(trail.account.clone());
    // The trail as OpenTrail describes it: bucket and prefix unless given, and what the extra
    // checks need (validation on, logging, when it stopped).
    let described = api
        .call("DescribeTrails", &json!({"trailNameList": [trail.arn]}))
        .ok()
        .and_then(|v| {
            v["trailList"]
                .as_array()?
                .iter()
                .find(|t| t["TrailARN"] == trail.arn.as_str())
                .cloned()
        });
    let (bucket, prefix) = match &args.s3_bucket {
        Some(b) => (b.clone(), args.s3_prefix.clone()),
        None => {
            let Some(t) = &described else {
                anyhow::bail!("A trail could not be found for {}", trail.arn);
            };
            (
                t["S3BucketName"].as_str().unwrap_or_default().to_owned(),
                args.s3_prefix
                    .clone()
                    .or_else(|| t["S3KeyPrefix"].as_str().map(str::to_owned)),
            )
        }
    };
    let org_id = match (&described, &args.organization_id) {
        (_, Some(o)) => Some(o.clone()),
        (Some(t), None) if t["IsOrganizationTrail"] == true => {
            if args.account_id.is_none() {
                anyhow::bail!("You must specify --account-id for an organization trail");
            }
            settings.organization_id.clone()
        }
        _ => None,
    };
    let status = api.call("GetTrailStatus", &json!({"Name": trail.arn})).ok();
    let keys_answer = api.call(
        "ListPublicKeys",
        &json!({"StartTime": start / 1000, "EndTime": (end + 2 * HOUR_MS) / 1000}),
    )?;
    let mut keys: HashMap<String, Vec<u8>> = HashMap::new();
    for k in keys_answer["PublicKeyList"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let (Some(fp), Some(v)) = (k["Fingerprint"].as_str(), k["Value"].as_str()) {
            let der = base64::engine::general_purpose::STANDARD
                .decode(v)
                .unwrap_or_default();
            keys.insert(fp.to_owned(), der);
        }
    }
    let buckets = if let Some(dir) = &args.local_dir {
        Buckets::new(
            Target::LocalDir(dir.clone()),
            HashMap::from([(bucket.clone(), Target::LocalDir(dir.clone()))]),
        )
    } else if let Some(endpoint) = s3_endpoint(args) {
        Buckets::new(
            Target::S3(S3Target {
                endpoint: Some(endpoint),
                region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
                access_key_id: std::env::var("AWS_ACCESS_KEY_ID").ok(),
                secret_access_key: std::env::var("AWS_SECRET_ACCESS_KEY").ok(),
                virtual_hosted_style: false,
                server_side_encryption: None,
                sse_kms_key_id: None,
            }),
            HashMap::new(),
        )
    } else {
        let (default, overrides) = settings.bucket_targets();
        Buckets::new(default, overrides)
    };
    let store = Arc::new(Store {
        buckets,
        decryptor: Arc::new(crate::decrypt::Decryptor::new(Some(
            args.endpoint_url.clone(),
        ))),
        undecryptable: std::sync::Mutex::new(None),
    });
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, usize::from))
        .max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(jobs.max(2))
        .enable_all()
        .build()?;

    println!(
        "Validating log files for trail {} between {} and {}\n",
        trail.arn,
        display(start),
        display(end)
    );
    let bar = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg} {pos} files")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message("digests");
    let mut out = Printer {
        verbose: args.verbose,
        double_space: true,
        bar: bar.clone(),
    };
    let mut counts = Counts::default();

    // 1. The digest keys of the range, oldest first.
    let mut digest_prefix = String::new();
    if let Some(p) = prefix.as_deref().filter(|p| !p.is_empty()) {
        digest_prefix.push_str(p);
        digest_prefix.push('/');
    }
    digest_prefix.push_str("AWSLogs/");
    if let Some(o) = &org_id {
        digest_prefix.push_str(o);
        digest_prefix.push('/');
    }
    let logs_prefix = format!("{digest_prefix}{account}/CloudTrail/{region}/");
    digest_prefix.push_str(&format!("{account}/CloudTrail-Digest/{region}/"));
    let name_part = format!(
        "{account}_CloudTrail-Digest_{region}_{}_{}_",
        trail.name, trail.home_region
    );
    let listed = rt
        .block_on(store.buckets.list(&bucket, &digest_prefix))
        .map_err(|e| anyhow::anyhow!("listing s3://{bucket}/{digest_prefix}: {e}"))?;
    let low = stamp_of(start);
    let high = stamp_of(end + HOUR_MS);
    let mut digests: Vec<String> = listed
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap_or_default();
            name.starts_with(&name_part)
                && !k.ends_with("_backfill.json.gz")
                && key_stamp(k).is_some_and(|s| s >= low.as_str() && s <= high.as_str())
        })
        .collect();
    digests.sort_by(|a, b| key_stamp(a).cmp(&key_stamp(b)).then(a.cmp(b)));
    if keys.is_empty() {
        anyhow::bail!(
            "No public keys found between {} and {}",
            display(start),
            display(end + 2 * HOUR_MS)
        );
    }

    // 2. Walk the chain backwards, as the AWS CLI does.
    let newest_listed = digests.last().and_then(|k| key_stamp(k)).and_then(stamp_ms);
    let mut valid: Vec<ValidDigest> = Vec::new();
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    // (end of a missing digest, end of the next older digest found) pairs, checked once the
    // digest period is known.
    let mut after_missing: Vec<(i64, Option<i64>)> = Vec::new();
    let mut cur_bucket = bucket.clone();
    // The signature a verified newer digest names for the next one (`previousDigestSignature`).
    let mut vouched: Option<String> = None;
    let mut next = digests.pop();
    let mut last_start = next.as_deref().and_then(key_stamp).and_then(stamp_ms);
    while let (Some(key), Some(ls)) = (next.clone(), last_start) {
        if start > ls {
            break;
        }
        let verdict = rt.block_on(store.fetch_digest(
            &keys,
            &trail.home_region,
            &cur_bucket,
            &key,
            vouched.as_deref(),
        ))?;
        vouched = None;
        let older = |digests: &mut Vec<String>, key: &str| -> Option<String> {
            let before = key_stamp(key).unwrap_or_default().to_owned();
            while let Some(k) = digests.pop() {
                if key_stamp(&k).is_some_and(|s| s < before.as_str()) {
                    return Some(k);
                }
            }
            None
        };
        match verdict {
            DigestVerdict::Valid(b) => {
                let (doc, _sig) = *b;
                let ds = doc["digestStartTime"]
                    .as_str()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_millisecond())
                    .unwrap_or(i64::MIN);
                let de = doc["digestEndTime"]
                    .as_str()
                    .and_then(|s| s.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_millisecond())
                    .unwrap_or(i64::MIN);
                last_start = Some(ds);
                counts.valid_digests += 1;
                let fs = ds.max(start);
                counts.found_start = Some(counts.found_start.map_or(fs, |x| x.min(fs)));
                let fe = de.min(end);
                counts.found_end = Some(counts.found_end.map_or(fe, |x| x.max(fe)));
                out.status(
                    &format!("Digest file\ts3://{cur_bucket}/{key}\tvalid"),
                    false,
                );
                let files: Vec<Value> = doc["logFiles"].as_array().cloned().unwrap_or_default();
                for f in &files {
                    if let (Some(b), Some(k)) = (f["s3Bucket"].as_str(), f["s3Object"].as_str()) {
                        referenced.insert(format!("{b}/{k}"));
                    }
                }
                valid.push(ValidDigest {
                    start_ms: ds,
                    end_ms: de,
                    log_files: files,
                });
                match (
                    doc["previousDigestS3Bucket"].as_str(),
                    doc["previousDigestS3Object"].as_str(),
                ) {
                    (Some(pb), Some(pk)) => {
                        if pb != cur_bucket {
                            cur_bucket = pb.to_owned();
                        }
                        next = Some(pk.to_owned());
                        if args.local_dir.is_some() {
                            vouched = doc["previousDigestSignature"].as_str().map(str::to_owned);
                        }
                    }
                    _ => {
                        next = older(&mut digests, &key);
                        if let Some(n) = &next {
                            let next_end = key_stamp(n).and_then(stamp_ms).unwrap_or(ds);
                            out.status(
                                &format!(
                                    "No log files were delivered by CloudTrail between {} and {}",
                                    display(next_end),
                                    display(ds)
                                ),
                                true,
                            );
                        }
                    }
                }
            }
            DigestVerdict::Missing => {
                counts.invalid_digests += 1;
                out.status(
                    &format!("Digest file\ts3://{cur_bucket}/{key}\tINVALID: not found"),
                    true,
                );
                next = older(&mut digests, &key);
                let missing_end = key_stamp(&key).and_then(stamp_ms);
                if let Some(me) = missing_end {
                    after_missing
                        .push((me, next.as_deref().and_then(key_stamp).and_then(stamp_ms)));
                }
            }
            DigestVerdict::Invalid(line) => {
                counts.invalid_digests += 1;
                out.status(&line, true);
                next = older(&mut digests, &key);
            }
        }
        if next.is_none() {
            break;
        }
    }

    // 3. The digest period: the most common window length of the valid digests (regular
    // windows are exactly one period; only a chain's last window is shorter).
    let mut lengths: HashMap<i64, usize> = HashMap::new();
    for v in &valid {
        *lengths.entry(v.end_ms - v.start_ms).or_default() += 1;
    }
    let period = lengths
        .iter()
        .max_by_key(|(len, n)| (**n, **len))
        .map(|(len, _)| *len);
    let chain_line = |m: &str| format!("Digest chain\ts3://{bucket}/{digest_prefix}\tINVALID: {m}");
    if let Some(p) = period {
        for (missing_end, older_end) in &after_missing {
            if let Some(oe) = older_end
                && *oe < missing_end - p - 1000
            {
                counts.invalid_digests += 1;
                out.status(
                    &chain_line(&format!(
                        "digest files between {} and {} are missing",
                        display(*oe),
                        display(missing_end - p)
                    )),
                    true,
                );
            }
        }
        // A chain that stops short: the trail still logs with validation (or logged until it
        // stopped) but the newest digest is more than two periods older than that.
        let validating = described
            .as_ref()
            .is_some_and(|t| t["LogFileValidationEnabled"] == true);
        if validating && let Some(newest) = newest_listed {
            let mut reach = end.min(now);
            if let Some(s) = &status
                && s["IsLogging"] == false
            {
                let stopped = s["StopLoggingTime"].as_f64().map(|x| (x * 1000.0) as i64);
                reach = stopped.map_or(i64::MIN, |st| reach.min(st));
            }
            if reach > newest + 2 * p + 1000 {
                counts.invalid_digests += 1;
                out.status(
                    &chain_line(&format!(
                        "the chain ends at {} but should reach {}",
                        display(newest),
                        display(reach)
                    )),
                    true,
                );
            }
        }
    }

    // 4. The log files of the valid digests, in the AWS CLI's order, checked in parallel.
    let mut work: Vec<(String, String, String)> = Vec::new();
    for v in &valid {
        for f in &v.log_files {
            work.push((
                f["s3Bucket"].as_str().unwrap_or_default().to_owned(),
                f["s3Object"].as_str().unwrap_or_default().to_owned(),
                f["hashValue"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    bar.set_message("log files");
    let verdicts = rt.block_on(check_logs(Arc::clone(&store), &work, jobs, bar.clone()));
    for ((b, k, _), verdict) in work.iter().zip(verdicts) {
        match verdict {
            Ok(()) => {
                counts.valid_logs += 1;
                out.status(&format!("Log file\ts3://{b}/{k}\tvalid"), false);
            }
            Err(m) => {
                counts.invalid_logs += 1;
                out.status(&format!("Log file\ts3://{b}/{k}\tINVALID: {m}"), true);
            }
        }
    }

    // 5. Log files no digest lists, inside the time the valid digests cover without a break
    // (a minute's margin: a key names the minute its delivery began).
    let mut covered: Vec<(i64, i64)> = Vec::new();
    let mut windows: Vec<(i64, i64)> = valid.iter().map(|v| (v.start_ms, v.end_ms)).collect();
    windows.sort_unstable();
    for (s, e) in windows {
        match covered.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => covered.push((s, e)),
        }
    }
    if !covered.is_empty() {
        let present = rt
            .block_on(store.buckets.list(&bucket, &logs_prefix))
            .map_err(|e| anyhow::anyhow!("listing s3://{bucket}/{logs_prefix}: {e}"))?;
        let unlisted: Vec<(String, i64)> = present
            .into_iter()
            .map(|m| m.location.to_string())
            .filter_map(|k| {
                let t = key_time_ms(&k)?;
                (!referenced.contains(&format!("{bucket}/{k}")) && t + 60_000 > start && t <= end)
                    .then_some((k, t))
            })
            .collect();
        let (mut stray, maybe): (Vec<_>, Vec<_>) = unlisted.into_iter().partition(|(_, t)| {
            *t >= start && covered.iter().any(|(s, e)| *t >= *s && t + 65_000 <= *e)
        });
        // A recent file may simply not be in a digest yet; but one whose content a digest
        // lists under another key is a copy or a move.
        let listed: BTreeSet<&str> = valid
            .iter()
            .flat_map(|v| v.log_files.iter())
            .filter_map(|f| f["hashValue"].as_str())
            .collect();
        let work: Vec<(String, String, String)> = maybe
            .iter()
            .map(|(k, _)| (bucket.clone(), k.clone(), String::new()))
            .collect();
        let hashes = rt.block_on(hash_all(Arc::clone(&store), &work, jobs));
        for ((k, t), h) in maybe.into_iter().zip(hashes) {
            if h.is_some_and(|h| listed.contains(h.as_str())) {
                stray.push((k, t));
            }
        }
        let mut stray: Vec<String> = stray.into_iter().map(|(k, _)| k).collect();
        stray.sort();
        for k in stray {
            counts.invalid_logs += 1;
            out.status(
                &format!("Log file\ts3://{bucket}/{k}\tINVALID: not referenced by any digest"),
                true,
            );
        }
    }
    bar.finish_and_clear();

    // 6. The summary, as the AWS CLI writes it.
    if !out.double_space {
        println!();
    }
    println!(
        "Results requested for {} to {}",
        display(start),
        display(end)
    );
    let mut summary = String::new();
    if counts.valid_digests + counts.invalid_digests == 0 {
        println!("No digests found");
        return Ok(0);
    }
    match (counts.found_start, counts.found_end) {
        (Some(s), Some(e)) => println!("Results found for {} to {}:", display(s), display(e)),
        _ => println!("No valid digests found in range"),
    }
    ratio(
        &mut summary,
        counts.valid_digests,
        counts.invalid_digests,
        "digest",
    );
    ratio(&mut summary, counts.valid_logs, counts.invalid_logs, "log");
    println!("{summary}");
    if let Ok(Some(why)) = store.undecryptable.lock().map(|g| g.clone()) {
        eprintln!(
            "opentrail: some files are encrypted and could not be decrypted (reading them needs kms:Decrypt on the trail's key); the first: {why}"
        );
    }
    Ok(if counts.invalid_digests > 0 || counts.invalid_logs > 0 {
        1
    } else {
        0
    })
}

fn ratio(out: &mut String, valid: u64, invalid: u64, name: &str) {
    let total = valid + invalid;
    if total > 0 {
        out.push_str(&format!("\n{valid}/{total} {name} files valid"));
        if invalid > 0 {
            out.push_str(&format!(", {invalid}/{total} {name} files INVALID"));
        }
    }
}

/// The content hash of each `(bucket, key, _)` (`None` if it cannot be read or unpacked).
async fn hash_all(
    store: Arc<Store>,
    work: &[(String, String, String)],
    jobs: usize,
) -> Vec<Option<String>> {
    use futures::StreamExt;
    futures::stream::iter(work.iter().cloned())
        .map(|(b, k, _)| {
            let store = Arc::clone(&store);
            async move {
                let (body, _) = store.get_plain(&b, &k).await.ok()?;
                tokio::task::spawn_blocking(move || hash_gzip_member(&body).ok())
                    .await
                    .ok()
                    .flatten()
            }
        })
        .buffered(jobs)
        .collect()
        .await
}

/// Checks each `(bucket, key, expected hash)`: fetch, gunzip and hash on `jobs` tasks at once.
/// Results come back in the input's order.
async fn check_logs(
    store: Arc<Store>,
    work: &[(String, String, String)],
    jobs: usize,
    bar: ProgressBar,
) -> Vec<Result<(), &'static str>> {
    use futures::StreamExt;
    bar.set_length(work.len() as u64);
    futures::stream::iter(work.iter().cloned())
        .map(|(b, k, want)| {
            let store = Arc::clone(&store);
            let bar = bar.clone();
            async move {
                let verdict = match store.get_plain(&b, &k).await {
                    Err(e) if e.code == "NoSuchKey" => Err("not found"),
                    Err(_) => Err("invalid format"),
                    Ok((body, _)) => {
                        let hashed = tokio::task::spawn_blocking(move || hash_gzip_member(&body))
                            .await
                            .unwrap_or(Err(LogFileFault::Format));
                        match hashed {
                            Ok(h) if h == want => Ok(()),
                            Ok(_) => Err("hash value doesn't match"),
                            Err(LogFileFault::TrailingData) => {
                                Err("unexpected data after end of compressed stream")
                            }
                            Err(LogFileFault::Format) => Err("invalid format"),
                        }
                    }
                };
                bar.inc(1);
                verdict
            }
        })
        .buffered(jobs)
        .collect()
        .await
}

//! The delivery workers: one task per trail, following the event log from the trail's persisted
//! cursor, and one notifier draining the outbox.
//!
//! One step of a trail's worker:
//! 1. read the log's durable end, then the trail (in that order, so a StopLogging that commits
//!    after the end was read cannot have recorded anything below it);
//! 2. take the stored plan, or make one: `[cursor, min(end, cursor + MAX_PLAN_EVENTS))` stamped
//!    with the current time;
//! 3. read those records, keep the trail's, build the files (keys are a pure function of the
//!    plan), and, if there are any, store the plan before writing the first object;
//! 4. write each file create-only (a key already there was written by an earlier attempt);
//! 5. in one catalog transaction: move the cursor past the plan, clear it, record the delivery
//!    in the status and queue the notification.
//!
//! A crash anywhere replays the stored plan, which rewrites the same keys: nothing is lost and
//! nothing is delivered twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentrail_catalog::{
    Catalog, CatalogError, DeliveryState, DigestFile, Notification, Plan, Trail,
};
use opentrail_log::{EventLog, LogError};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::buckets::{BucketError, Buckets, Written};
use crate::chains::{RoundWork, commit_round, prepare_round, record_failure};
use crate::files::{FileBuilder, LogFile, Naming};
use crate::filter::{Organization, TrailFilter};
use crate::keys::Keyring;
use crate::kms::KeyService;
use crate::notify::{Sender, Topics, announce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Most log records one plan covers.
pub const MAX_PLAN_EVENTS: u64 = 50_000;
/// Records read from the log per call.
const READ_CHUNK: usize = 4096;
/// Queued notifications sent per round.
const OUTBOX_BATCH: usize = 64;

/// Errors of a delivery step.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Bucket(#[from] BucketError),
    #[error("record {seq} is not a readable CloudTrail record: {message}")]
    BadRecord { seq: u64, message: String },
    #[error("trail {arn} has unreadable settings: {message}")]
    BadTrail { arn: String, message: String },
    #[error("compressing a log file: {0}")]
    Compress(#[from] std::io::Error),
    #[error("a delivery task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("encoding a notification: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("signing keys: {0}")]
    Keys(String),
    #[error("KMS.{exception}: {0}", exception = .0.exception())]
    Kms(#[from] crate::kms::KmsError),
}

/// What the workers are told.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// How often a trail's new events are gathered into files (CloudTrail: about 5 minutes).
    pub interval: Duration,
    /// Longest wait between retries of a failing delivery or notification.
    pub max_backoff: Duration,
    pub org: Option<Organization>,
    pub topics: Topics,
    /// Length of a digest window (CloudTrail: one hour).
    pub digest_interval: Duration,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub files: AtomicU64,
    pub events: AtomicU64,
    pub json_bytes: AtomicU64,
    pub gzip_bytes: AtomicU64,
    /// Files stored encrypted with their trail's key.
    pub encrypted_files: AtomicU64,
    pub failures: AtomicU64,
    pub notifications: AtomicU64,
    pub notification_failures: AtomicU64,
    pub digests: AtomicU64,
    pub digest_failures: AtomicU64,
}

/// Delivery for every trail.
pub struct Deliverer {
    log: EventLog,
    catalog: Arc<Catalog>,
    buckets: Arc<Buckets>,
    keyring: Arc<Keyring>,
    config: DeliveryConfig,
    sender: Sender,
    outbox_wake: Notify,
    /// One lock per trail: its worker and [`Deliverer::finish`] never run steps at once.
    trail_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The key service, for trails with a `KmsKeyId`.
    kms: Option<Arc<KeyService>>,
    pub stats: DeliveryStats,
}

enum Step {
    /// The trail is gone.
    Gone,
    /// Nothing (more) to deliver now.
    Idle,
    /// A plan was delivered; `more` when it was cut at the plan size limit, so a backlog waits.
    Delivered { more: bool },
}

/// What the blocking part of a step found.
enum Prepared {
    Gone,
    Idle,
    /// The plan had nothing for this trail; the cursor moved and more may be waiting.
    Skipped,
    Files {
        trail: Box<Trail>,
        plan: Plan,
        files: Vec<LogFile>,
        /// The files go into the trail's digests (validation is on, or its chains have not
        /// ended yet).
        digested: bool,
        /// Object key → wrapped data key, for a trail that encrypts its files.
        data_keys: std::collections::BTreeMap<String, String>,
    },
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Deliverer {
    pub fn new(
        log: EventLog,
        catalog: Arc<Catalog>,
        buckets: Arc<Buckets>,
        keyring: Arc<Keyring>,
        config: DeliveryConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            log,
            catalog,
            buckets,
            keyring,
            config,
            sender: Sender::new()?,
            outbox_wake: Notify::new(),
            trail_locks: std::sync::Mutex::new(HashMap::new()),
            kms: None,
            stats: DeliveryStats::default(),
        })
    }

    /// Gives the deliverer the key service that encrypts the files of trails with a key.
    #[must_use]
    pub fn with_kms(mut self, kms: Arc<KeyService>) -> Self {
        self.kms = Some(kms);
        self
    }

    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    fn trail_lock(&self, arn: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.trail_locks.lock() {
            Ok(mut m) => Arc::clone(m.entry(arn.to_owned()).or_default()),
            // A poisoned map only means another thread panicked holding it; a fresh lock
            // still serializes this caller's own steps.
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Before a trail is deleted: delivers what it has logged so far (a bounded number of
    /// plans) and ends its digest chains with a last digest. Returns an error if the bucket
    /// refused; the caller decides whether to go on.
    pub async fn finish(&self, arn: &str) -> Result<(), DeliveryError> {
        let lock = self.trail_lock(arn);
        let _held = lock.lock().await;
        for _ in 0..64 {
            match self.step(arn).await? {
                Step::Delivered { .. } => continue,
                Step::Idle | Step::Gone => break,
            }
        }
        // A stored round first, then the last one.
        for _ in 0..4 {
            if self
                .digest_step_with(arn, true, now_ms())
                .await?
                .is_none_or(|due| due > now_ms())
            {
                break;
            }
        }
        if let Ok(mut m) = self.trail_locks.lock() {
            m.remove(arn);
        }
        Ok(())
    }

    /// Makes every trail's logging spans agree with its logging state after a restart: a
    /// logging trail without an open span (a catalog from before delivery) gets one from the
    /// log's end; a stopped trail whose StopLogging never got sealed (a crash between the stop
    /// and its record) is closed at the log's end. Returns how many trails changed.
    pub fn reconcile(&self) -> Result<usize, CatalogError> {
        let end = self.log.durable_end().next_seq;
        let mut changed = 0;
        for t in self.catalog.all_trails()? {
            let open = t.logging_spans.last().is_some_and(|s| s.to.is_none());
            if t.is_logging != open {
                self.catalog
                    .modify(&t.arn, usize::MAX, |t| -> Result<(), ()> {
                        if t.is_logging {
                            t.open_span(end);
                        } else {
                            t.close_span(end);
                        }
                        Ok(())
                    })?
                    .ok();
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The lowest log sequence number some trail still has to deliver (`u64::MAX` if none):
    /// segments below it may not be deleted.
    pub fn retention_floor(&self) -> Result<u64, CatalogError> {
        let states: HashMap<String, DeliveryState> =
            self.catalog.delivery_states()?.into_iter().collect();
        let mut floor = u64::MAX;
        for t in self.catalog.all_trails()? {
            let cursor = states.get(&t.arn).map(|s| s.cursor).unwrap_or(0);
            if let Some(next) = t.next_logged(cursor) {
                floor = floor.min(next);
            }
        }
        Ok(floor)
    }

    /// Starts the supervisor (one worker per trail) and the notifier.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(Arc::clone(self).supervise(stop.clone())),
            tokio::spawn(Arc::clone(self).notifier(stop)),
        ]
    }

    async fn supervise(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
        let scan = self.config.interval.min(Duration::from_secs(1));
        loop {
            let catalog = Arc::clone(&self.catalog);
            match tokio::task::spawn_blocking(move || catalog.all_trails()).await {
                Ok(Ok(trails)) => {
                    running.retain(|_, h| !h.is_finished());
                    for t in trails {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            running.entry(t.arn.clone())
                        {
                            slot.insert(tokio::spawn(
                                Arc::clone(&self).trail_worker(t.arn, stop.clone()),
                            ));
                        }
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "delivery: listing trails failed"),
                Err(e) => tracing::error!(error = %e, "delivery: listing trails panicked"),
            }
            tokio::select! {
                () = tokio::time::sleep(scan) => {}
                _ = stop.changed() => break,
            }
        }
        for (_, h) in running {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "delivery worker ended abnormally");
            }
        }
    }

    async fn trail_worker(self: Arc<Self>, arn: String, mut stop: watch::Receiver<bool>) {
        let first = self.config.interval.min(Duration::from_secs(1));
        let mut backoff = first;
        loop {
            if *stop.borrow() {
                return;
            }
            // The cadence counts from the start of a step: an event acknowledged just after a
            // step read the log's end is in a file one interval (plus a step's work) later.
            let began = tokio::time::Instant::now();
            let began_ms = now_ms();
            let lock = self.trail_lock(&arn);
            let held = lock.lock().await;
            let stepped = self.step(&arn).await;
            if matches!(stepped, Ok(Step::Gone)) {
                return;
            }
            // Digests are written by the same task, after the delivery step: every file whose
            // delivery committed before a round's end is in the catalog when the round is made.
            let digested = self.digest_step(&arn, began_ms).await;
            drop(held);
            let digest_due = match digested {
                Ok(due) => due,
                Err(e) => {
                    self.stats.digest_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(trail = %arn, error = %e, "digest delivery failed; will retry");
                    Some(now_ms() + i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX))
                }
            };
            let mut wait = match stepped {
                Ok(Step::Gone) => return,
                Ok(Step::Delivered { more: true }) => {
                    backoff = first;
                    continue;
                }
                Ok(Step::Delivered { more: false } | Step::Idle) => {
                    backoff = first;
                    self.config.interval.saturating_sub(began.elapsed())
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(trail = %arn, error = %e, retry_in = ?backoff, "delivery failed; will retry");
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                    wait
                }
            };
            if let Some(due) = digest_due {
                let until = u64::try_from(due.saturating_sub(now_ms())).unwrap_or(0);
                wait = wait.min(Duration::from_millis(until));
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Records a failed delivery attempt in the trail's status.
    async fn record_delivery_failure(&self, arn: &str, error: String) -> Result<(), DeliveryError> {
        let catalog = Arc::clone(&self.catalog);
        let arn = arn.to_owned();
        let attempt_ms = now_ms();
        tokio::task::spawn_blocking(move || {
            catalog.update_delivery(
                &arn,
                || DeliveryState::new(0),
                |s| {
                    s.latest_delivery_attempt_ms = Some(attempt_ms);
                    s.latest_delivery_error = Some(error);
                },
                &[],
            )
        })
        .await??;
        Ok(())
    }

    /// Encrypts a file under the data key wrapped in `wrapped` (base64): the body to store and
    /// its metadata.
    fn seal_object(
        &self,
        trail_arn: &str,
        bucket: &str,
        key: &str,
        wrapped: &str,
        body: &[u8],
    ) -> Result<(Vec<u8>, std::collections::BTreeMap<String, String>), crate::kms::KmsError> {
        use crate::kms::{KmsError, envelope};
        let kms = self
            .kms
            .as_ref()
            .ok_or_else(|| KmsError::Internal("this deliverer has no key service".into()))?;
        let blob = B64.decode(wrapped).map_err(|_| {
            KmsError::Internal(format!("the stored data key of {key} is not base64"))
        })?;
        let context = envelope::context(trail_arn, bucket, key);
        let (data_key, key_arn) = kms.decrypt(&blob, &context)?;
        envelope::seal(&data_key, &blob, &key_arn, key, &context, body)
    }

    /// One step for one trail (see the module docs).
    async fn step(&self, arn: &str) -> Result<Step, DeliveryError> {
        let prepared = {
            let log = self.log.clone();
            let catalog = Arc::clone(&self.catalog);
            let org = self.config.org.clone();
            let arn = arn.to_owned();
            let kms = self.kms.clone();
            tokio::task::spawn_blocking(move || {
                prepare(&log, &catalog, org.as_ref(), kms.as_deref(), &arn)
            })
            .await?
        };
        let prepared = match prepared {
            Err(DeliveryError::Kms(e)) => {
                // The trail's key cannot make data keys (disabled, pending deletion, gone):
                // nothing is written and the cursor stays; the status says why.
                self.record_delivery_failure(arn, format!("KMS.{}: {e}", e.exception()))
                    .await?;
                return Err(e.into());
            }
            other => other?,
        };
        let (trail, plan, files, digested, data_keys) = match prepared {
            Prepared::Gone => return Ok(Step::Gone),
            Prepared::Idle => return Ok(Step::Idle),
            Prepared::Skipped => return Ok(Step::Delivered { more: true }),
            Prepared::Files {
                trail,
                plan,
                files,
                digested,
                data_keys,
            } => (trail, plan, files, digested, data_keys),
        };
        let attempt_ms = now_ms();
        for f in &files {
            let put = match data_keys.get(&f.key) {
                Some(wrapped) => {
                    let sealed = self.seal_object(
                        &trail.arn,
                        &trail.s3_bucket_name,
                        &f.key,
                        wrapped,
                        &f.body,
                    );
                    let (body, meta) = match sealed {
                        Ok(x) => x,
                        Err(e) => {
                            self.record_delivery_failure(
                                arn,
                                format!("KMS.{}: {e}", e.exception()),
                            )
                            .await?;
                            return Err(e.into());
                        }
                    };
                    self.stats.encrypted_files.fetch_add(1, Ordering::Relaxed);
                    self.buckets
                        .put_create_with_metadata(&trail.s3_bucket_name, &f.key, body.into(), &meta)
                        .await
                }
                None => {
                    self.buckets
                        .put_create(&trail.s3_bucket_name, &f.key, f.body.clone())
                        .await
                }
            };
            match put {
                Ok(Written::Created) => {
                    self.stats.files.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .json_bytes
                        .fetch_add(f.json_bytes as u64, Ordering::Relaxed);
                    self.stats
                        .gzip_bytes
                        .fetch_add(f.body.len() as u64, Ordering::Relaxed);
                }
                Ok(Written::AlreadyThere) => {
                    tracing::info!(trail = %arn, key = %f.key, "log file was already delivered by an earlier attempt");
                }
                Err(e) => {
                    let catalog = Arc::clone(&self.catalog);
                    let arn2 = arn.to_owned();
                    let code = e.code.clone();
                    tokio::task::spawn_blocking(move || {
                        catalog.update_delivery(
                            &arn2,
                            || DeliveryState::new(plan.from),
                            |s| {
                                s.latest_delivery_attempt_ms = Some(attempt_ms);
                                s.latest_delivery_error = Some(code);
                            },
                            &[],
                        )
                    })
                    .await??;
                    return Err(e.into());
                }
            }
        }
        let events: usize = files.iter().map(|f| f.records).sum();
        self.stats
            .events
            .fetch_add(events as u64, Ordering::Relaxed);
        let notes = self.notifications(&trail, &files, attempt_ms)?;
        let queued = !notes.is_empty();
        let catalog = Arc::clone(&self.catalog);
        let arn2 = arn.to_owned();
        let nfiles = files.len() as u64;
        let done_ms = now_ms();
        let for_digests: Vec<DigestFile> = if digested {
            files
                .iter()
                .map(|f| DigestFile {
                    account: f.route.account.clone(),
                    region: f.route.region.clone(),
                    bucket: trail.s3_bucket_name.clone(),
                    key: f.key.clone(),
                    sha256: f.sha256.clone(),
                    oldest_event_ms: f.oldest_event_ms,
                    newest_event_ms: f.newest_event_ms,
                    delivered_ms: done_ms,
                })
                .collect()
        } else {
            Vec::new()
        };
        tokio::task::spawn_blocking(move || {
            catalog.update_delivery_with(
                &arn2,
                || DeliveryState::new(plan.from),
                |s| {
                    s.cursor = plan.to;
                    s.plan = None;
                    s.plan_data_keys.clear();
                    s.latest_delivery_attempt_ms = Some(attempt_ms);
                    s.latest_delivery_attempt_succeeded_ms = Some(done_ms);
                    s.latest_delivery_time_ms = Some(done_ms);
                    s.latest_delivery_error = None;
                    s.files_delivered += nfiles;
                    s.events_delivered += events as u64;
                },
                &notes,
                &for_digests,
                None,
            )
        })
        .await??;
        if queued {
            self.outbox_wake.notify_one();
        }
        tracing::debug!(trail = %arn, files = nfiles, events, from = plan.from, to = plan.to, "delivered");
        Ok(Step::Delivered {
            more: plan.to - plan.from >= MAX_PLAN_EVENTS,
        })
    }

    /// Writes the trail's digest round if one is due (see [`crate::chains`]). Returns when to
    /// look again.
    async fn digest_step(&self, arn: &str, began_ms: i64) -> Result<Option<i64>, DeliveryError> {
        self.digest_step_with(arn, false, began_ms).await
    }

    /// [`Deliverer::digest_step`]; `end_now` ends the chains with this round (trail deletion).
    async fn digest_step_with(
        &self,
        arn: &str,
        end_now: bool,
        began_ms: i64,
    ) -> Result<Option<i64>, DeliveryError> {
        let work = {
            let catalog = Arc::clone(&self.catalog);
            let keyring = Arc::clone(&self.keyring);
            let org_id = self.config.org.as_ref().map(|o| o.id.clone());
            let period = self.config.digest_interval;
            let arn = arn.to_owned();
            tokio::task::spawn_blocking(move || {
                let org = catalog
                    .get(&arn)?
                    .filter(|t| t.is_organization_trail)
                    .and(org_id);
                prepare_round(
                    &catalog,
                    &keyring,
                    org.as_deref(),
                    &arn,
                    period,
                    now_ms(),
                    end_now,
                    began_ms,
                )
            })
            .await??
        };
        let (round, bucket, digests) = match work {
            RoundWork::Wait(due) => return Ok(due),
            RoundWork::Write {
                round,
                bucket,
                digests,
            } => (round, bucket, digests),
        };
        // A trail with a key encrypts its digests too, each with a data key stored in the round
        // before it is written.
        let sealing = {
            let catalog = Arc::clone(&self.catalog);
            let kms = self.kms.clone();
            let arn = arn.to_owned();
            let keys: Vec<String> = digests.iter().map(|d| d.key.clone()).collect();
            let stored = round.data_keys.clone();
            let bucket = bucket.clone();
            tokio::task::spawn_blocking(move || {
                digest_data_keys(&catalog, kms.as_deref(), &arn, &bucket, &keys, stored)
            })
            .await?
        };
        let (trail_arn, data_keys) = match sealing {
            Ok(x) => x,
            Err(DeliveryError::Kms(e)) => {
                let catalog = Arc::clone(&self.catalog);
                let arn2 = arn.to_owned();
                let code = format!("KMS.{}: {e}", e.exception());
                tokio::task::spawn_blocking(move || record_failure(&catalog, &arn2, code))
                    .await??;
                return Err(e.into());
            }
            Err(e) => return Err(e),
        };
        for d in &digests {
            let meta = std::collections::BTreeMap::from([
                ("signature".to_owned(), d.signature.clone()),
                (
                    "signature-algorithm".to_owned(),
                    crate::digest::SIGNATURE_ALGORITHM.to_owned(),
                ),
            ]);
            let (body, meta) = match data_keys.get(&d.key) {
                Some(wrapped) => {
                    let sealed = self.seal_object(&trail_arn, &bucket, &d.key, wrapped, &d.body);
                    match sealed {
                        Ok((body, mut envelope)) => {
                            envelope.extend(meta);
                            (bytes::Bytes::from(body), envelope)
                        }
                        Err(e) => {
                            let catalog = Arc::clone(&self.catalog);
                            let arn2 = arn.to_owned();
                            let code = format!("KMS.{}: {e}", e.exception());
                            tokio::task::spawn_blocking(move || {
                                record_failure(&catalog, &arn2, code)
                            })
                            .await??;
                            return Err(e.into());
                        }
                    }
                }
                None => (d.body.clone(), meta),
            };
            match self
                .buckets
                .put_create_with_metadata(&bucket, &d.key, body, &meta)
                .await
            {
                Ok(Written::Created) => {
                    self.stats.digests.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Written::AlreadyThere) => {
                    tracing::info!(trail = %arn, key = %d.key, "digest was already written by an earlier attempt");
                }
                Err(e) => {
                    let catalog = Arc::clone(&self.catalog);
                    let arn2 = arn.to_owned();
                    let code = e.code.clone();
                    tokio::task::spawn_blocking(move || record_failure(&catalog, &arn2, code))
                        .await??;
                    return Err(e.into());
                }
            }
        }
        let catalog = Arc::clone(&self.catalog);
        let arn2 = arn.to_owned();
        let n = digests.len();
        let end = round.end_ms;
        tokio::task::spawn_blocking(move || {
            commit_round(&catalog, &arn2, &round, &digests, now_ms())
        })
        .await??;
        tracing::debug!(trail = %arn, digests = n, end, "digests written");
        Ok(Some(now_ms()))
    }

    fn notifications(
        &self,
        trail: &Trail,
        files: &[LogFile],
        now: i64,
    ) -> Result<Vec<Notification>, DeliveryError> {
        let Some(topic_arn) = &trail.sns_topic_arn else {
            return Ok(Vec::new());
        };
        let Some(topic) = self.config.topics.get(topic_arn) else {
            tracing::warn!(trail = %trail.arn, topic = %topic_arn, "trail names a topic that is not configured; no notification");
            return Ok(Vec::new());
        };
        let keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
        Ok(announce(
            topic,
            topic_arn,
            &trail.s3_bucket_name,
            &keys,
            now,
        )?)
    }

    async fn notifier(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let idle = Duration::from_millis(500);
        loop {
            if *stop.borrow() {
                return;
            }
            let catalog = Arc::clone(&self.catalog);
            let now = now_ms();
            let due =
                tokio::task::spawn_blocking(move || catalog.outbox_due(now, OUTBOX_BATCH)).await;
            let rows = match due {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "notifier: reading the outbox failed");
                    Vec::new()
                }
                Err(e) => {
                    tracing::error!(error = %e, "notifier: outbox task panicked");
                    Vec::new()
                }
            };
            let busy = !rows.is_empty();
            for row in rows {
                let result = match self.config.topics.get(&row.topic_arn) {
                    Some(topic) => self.sender.post(topic, &row.endpoint, &row.message).await,
                    None => Err(format!("topic {} is not configured", row.topic_arn)),
                };
                let now = now_ms();
                let outcome = match result {
                    Ok(()) => {
                        self.stats.notifications.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        self.stats
                            .notification_failures
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(endpoint = %row.endpoint, error = %e, "notification failed; will retry");
                        let shift = row.attempts.min(20);
                        let wait =
                            Duration::from_millis(500u64 << shift).min(self.config.max_backoff);
                        Err((e, now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)))
                    }
                };
                let catalog = Arc::clone(&self.catalog);
                let settled = tokio::task::spawn_blocking(move || {
                    catalog.outbox_settle(row.id, &row.trail_arn, now, outcome)
                })
                .await;
                match settled {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "notifier: settling a notification failed");
                    }
                    Err(e) => tracing::error!(error = %e, "notifier: settling task panicked"),
                }
            }
            if busy {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(idle) => {}
                () = self.outbox_wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The blocking part of a step: decide the plan, read and filter the records, build the files,
/// and store the plan if it has files.
/// Makes a data key, wrapped by the trail's key `key_arn`, for each of `object_keys` that has
/// none in `keys` yet. Returns whether it made any.
fn add_data_keys(
    kms: Option<&KeyService>,
    trail_arn: &str,
    key_arn: &str,
    bucket: &str,
    object_keys: &[String],
    keys: &mut std::collections::BTreeMap<String, String>,
) -> Result<bool, DeliveryError> {
    let kms =
        kms.ok_or_else(|| crate::kms::KmsError::Internal("no key service to encrypt with".into()))?;
    // Keys answer in their own region: the fourth field of their ARN.
    let region = key_arn.split(':').nth(3).unwrap_or_default();
    let mut made = false;
    for k in object_keys {
        if !keys.contains_key(k) {
            let context = crate::kms::envelope::context(trail_arn, bucket, k);
            let dk = kms.data_key(region, key_arn, &context)?;
            keys.insert(k.clone(), B64.encode(&dk.blob));
            made = true;
        }
    }
    Ok(made)
}

/// The data keys of a round's digests (digest key → wrapped data key) for a trail with a key,
/// making and storing in the round any that are missing; the trail's ARN with them. Blocking.
fn digest_data_keys(
    catalog: &Catalog,
    kms: Option<&KeyService>,
    arn: &str,
    bucket: &str,
    digest_keys: &[String],
    mut keys: std::collections::BTreeMap<String, String>,
) -> Result<(String, std::collections::BTreeMap<String, String>), DeliveryError> {
    let Some(trail) = catalog.get(arn)? else {
        return Ok((arn.to_owned(), keys));
    };
    let Some(key_arn) = &trail.kms_key_arn else {
        return Ok((trail.arn, keys));
    };
    if add_data_keys(kms, &trail.arn, key_arn, bucket, digest_keys, &mut keys)? {
        let stored = keys.clone();
        catalog.update_delivery(
            arn,
            || DeliveryState::new(0),
            |s| {
                if let Some(r) = s.digest.as_mut().and_then(|d| d.round.as_mut()) {
                    r.data_keys = stored;
                }
            },
            &[],
        )?;
    }
    Ok((trail.arn, keys))
}

fn prepare(
    log: &EventLog,
    catalog: &Catalog,
    org: Option<&Organization>,
    kms: Option<&KeyService>,
    arn: &str,
) -> Result<Prepared, DeliveryError> {
    // The end first, then the trail: see the module docs.
    let end = log.durable_end().next_seq;
    let Some(trail) = catalog.get(arn)? else {
        return Ok(Prepared::Gone);
    };
    let state = catalog.delivery_state(arn)?;
    let (cursor, stored_plan) = match &state {
        Some(s) => (s.cursor, s.plan),
        None => (trail.next_logged(0).unwrap_or(end).min(end), None),
    };
    let plan = match stored_plan {
        Some(p) => p,
        None => {
            let pending_stop =
                !trail.is_logging && trail.logging_spans.last().is_some_and(|s| s.to.is_none());
            if pending_stop {
                // StopLogging is between its catalog change and its own record: wait for the
                // span to be sealed.
                return Ok(Prepared::Idle);
            }
            let from = match trail.next_logged(cursor) {
                Some(n) => n.min(end),
                None => end.max(cursor),
            };
            if from >= end {
                if from != cursor || state.is_none() {
                    catalog.update_delivery(
                        arn,
                        || DeliveryState::new(from),
                        |s| s.cursor = from,
                        &[],
                    )?;
                }
                return Ok(Prepared::Idle);
            }
            Plan {
                from,
                to: end.min(from.saturating_add(MAX_PLAN_EVENTS)),
                time_ms: now_ms(),
            }
        }
    };
    let filter = TrailFilter::new(&trail, org).map_err(|e| DeliveryError::BadTrail {
        arn: arn.to_owned(),
        message: e.to_string(),
    })?;
    let mut builder = FileBuilder::new();
    let mut reader = log.reader(plan.from);
    'read: while reader.next_seq() < plan.to {
        let batch = reader.read(READ_CHUNK)?;
        if batch.is_empty() {
            break;
        }
        for r in batch {
            if r.seq >= plan.to {
                break 'read;
            }
            let route = filter
                .route(r.seq, &r.json)
                .map_err(|e| DeliveryError::BadRecord {
                    seq: r.seq,
                    message: e.to_string(),
                })?;
            if let Some(route) = route {
                builder.push(route, &r.json, r.time_ms)?;
            }
        }
    }
    let files = builder.finish(&Naming {
        trail_arn: &trail.arn,
        key_prefix: trail.s3_key_prefix.as_deref(),
        org_id: filter.org_id(),
        from: plan.from,
        to: plan.to,
        time_ms: plan.time_ms,
    })?;
    if files.is_empty() {
        catalog.update_delivery(
            arn,
            || DeliveryState::new(plan.from),
            |s| {
                s.cursor = plan.to;
                s.plan = None;
                s.plan_data_keys.clear();
            },
            &[],
        )?;
        return Ok(if plan.to < end {
            Prepared::Skipped
        } else {
            Prepared::Idle
        });
    }
    // A trail with a key gets one fresh data key per file, stored with the plan before the
    // first write: a replay encrypts to the same bytes.
    let mut data_keys = match (&state, stored_plan) {
        (Some(s), Some(_)) => s.plan_data_keys.clone(),
        _ => std::collections::BTreeMap::new(),
    };
    let new_keys = match &trail.kms_key_arn {
        Some(key_arn) => {
            let keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
            add_data_keys(
                kms,
                &trail.arn,
                key_arn,
                &trail.s3_bucket_name,
                &keys,
                &mut data_keys,
            )?
        }
        None => false,
    };
    if stored_plan.is_none() || new_keys {
        let keys = data_keys.clone();
        catalog.update_delivery(
            arn,
            || DeliveryState::new(plan.from),
            |s| {
                s.cursor = plan.from;
                s.plan = Some(plan);
                s.plan_data_keys = keys;
            },
            &[],
        )?;
    }
    let digested =
        trail.log_file_validation_enabled || state.as_ref().is_some_and(|s| s.digest.is_some());
    Ok(Prepared::Files {
        trail: Box::new(trail),
        plan,
        files,
        digested,
        data_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buckets::Target;
    use opentrail_log::{LogConfig, NewRecord};
    use std::io::Read;

    const ACCT: &str = "111122223333";

    struct Fixture {
        dir: tempfile::TempDir,
        log: EventLog,
        catalog: Arc<Catalog>,
        keyring: Arc<Keyring>,
        arn: String,
    }

    impl Fixture {
        fn deliverer(&self) -> Deliverer {
            self.deliverer_every(Duration::from_millis(100))
        }

        fn deliverer_every(&self, interval: Duration) -> Deliverer {
            let buckets = Buckets::new(
                Target::LocalRoot(self.dir.path().join("buckets")),
                HashMap::new(),
            );
            Deliverer::new(
                self.log.clone(),
                Arc::clone(&self.catalog),
                Arc::new(buckets),
                Arc::clone(&self.keyring),
                DeliveryConfig {
                    interval,
                    max_backoff: Duration::from_millis(100),
                    org: None,
                    topics: Topics::default(),
                    digest_interval: Duration::from_secs(10),
                },
            )
            .expect("deliverer")
        }

        /// (key, eventIDs) of every file in the bucket.
        fn delivered(&self) -> Vec<(String, Vec<String>)> {
            fn walk(
                root: &std::path::Path,
                dir: &std::path::Path,
                out: &mut Vec<(String, Vec<String>)>,
            ) {
                for e in std::fs::read_dir(dir).expect("dir") {
                    let p = e.expect("entry").path();
                    if p.is_dir() {
                        walk(root, &p, out);
                        continue;
                    }
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(std::fs::File::open(&p).expect("open"))
                        .read_to_string(&mut text)
                        .expect("gunzip");
                    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
                    let ids = v["Records"]
                        .as_array()
                        .expect("records")
                        .iter()
                        .map(|r| r["eventID"].as_str().expect("id").to_owned())
                        .collect();
                    let key = p
                        .strip_prefix(root)
                        .expect("under root")
                        .to_string_lossy()
                        .into_owned();
                    out.push((key, ids));
                }
            }
            let root = self.dir.path().join("buckets/b");
            let mut out = Vec::new();
            walk(&root, &root, &mut out);
            out.sort();
            out
        }
    }

    async fn fixture(events: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("buckets/b")).expect("bucket");
        let (log, _) = EventLog::open(LogConfig::new(dir.path().join("log"))).expect("log");
        let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).expect("catalog"));
        let mut t = Trail::new(
            format!("arn:aws:cloudtrail:us-east-1:{ACCT}:trail/t"),
            "t".into(),
            ACCT.into(),
            "us-east-1".into(),
            "b".into(),
            0,
        );
        t.is_multi_region_trail = true;
        t.is_logging = true;
        t.open_span(0);
        catalog.create(&t, 5).expect("create");
        let records = (0..events)
            .map(|i| NewRecord {
                time_ms: 0,
                json: serde_json::to_vec(&serde_json::json!({
                    "eventID": format!("e{i}"), "eventSource": "ec2.amazonaws.com",
                    "eventName": "RunInstances", "readOnly": false,
                    "awsRegion": if i % 2 == 0 { "us-east-1" } else { "eu-west-1" },
                    "recipientAccountId": ACCT, "eventCategory": "Management",
                }))
                .expect("json"),
            })
            .collect();
        log.append(records).await.expect("append");
        let keyring = Arc::new(Keyring::new(
            Arc::clone(&catalog),
            crate::keys::MasterKey::generate().expect("master"),
            Duration::from_secs(3600),
        ));
        Fixture {
            dir,
            log,
            catalog,
            keyring,
            arn: t.arn,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_plan_cut_short_by_a_crash_replays_to_the_same_keys() {
        let f = fixture(10).await;
        // The first attempt: the plan is stored and one of its two files written, then the
        // process dies (nothing more of this attempt runs).
        let first = {
            let prepared = prepare(&f.log, &f.catalog, None, None, &f.arn).expect("prepare");
            let Prepared::Files { plan, .. } = prepared else {
                panic!("expected files");
            };
            let stored = f
                .catalog
                .delivery_state(&f.arn)
                .expect("state")
                .expect("some");
            assert_eq!(
                stored.plan,
                Some(plan),
                "the plan is stored before any write"
            );
            // Pretend the plan was made long ago (2020-09-13), so that a plan made afresh
            // would name its files differently.
            f.catalog
                .update_delivery(
                    &f.arn,
                    || unreachable!(),
                    |s| {
                        if let Some(p) = s.plan.as_mut() {
                            p.time_ms = 1_600_000_000_000;
                        }
                    },
                    &[],
                )
                .expect("update");
            let Prepared::Files { files, .. } =
                prepare(&f.log, &f.catalog, None, None, &f.arn).expect("prepare")
            else {
                panic!("expected files");
            };
            assert_eq!(files.len(), 2, "one file per region");
            let d = f.deliverer();
            d.buckets
                .put_create("b", &files[0].key, files[0].body.clone())
                .await
                .expect("first file");
            files.iter().map(|x| x.key.clone()).collect::<Vec<_>>()
        };
        // After a restart, the stored plan is carried out again.
        let d = f.deliverer();
        assert!(matches!(
            d.step(&f.arn).await,
            Ok(Step::Delivered { more: false })
        ));
        let delivered = f.delivered();
        let keys: Vec<String> = delivered.iter().map(|(k, _)| k.clone()).collect();
        let mut expected = first.clone();
        expected.sort();
        assert_eq!(keys, expected, "the replay wrote the same keys, no others");
        assert!(keys.iter().all(|k| k.contains("/2020/09/13/")), "{keys:?}");
        let mut ids: Vec<String> = delivered.into_iter().flat_map(|(_, ids)| ids).collect();
        ids.sort();
        let mut want: Vec<String> = (0..10).map(|i| format!("e{i}")).collect();
        want.sort();
        assert_eq!(ids, want, "every event exactly once");
        let state = f
            .catalog
            .delivery_state(&f.arn)
            .expect("state")
            .expect("some");
        assert_eq!((state.cursor, state.plan), (10, None));
        assert_eq!(state.files_delivered, 2);
        // Nothing left to do.
        assert!(matches!(d.step(&f.arn).await, Ok(Step::Idle)));
    }

    /// A steady trickle of events is gathered once per interval, not a file per event.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_steady_stream_is_batched_per_interval() {
        let f = fixture(0).await;
        let d = Arc::new(f.deliverer_every(Duration::from_secs(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = d.spawn(stop_rx);
        let began = std::time::Instant::now();
        for i in 0..400 {
            let json = serde_json::to_vec(&serde_json::json!({
                "eventID": format!("s{i}"), "eventSource": "ec2.amazonaws.com",
                "readOnly": false, "awsRegion": "us-east-1", "recipientAccountId": ACCT,
            }))
            .expect("json");
            f.log
                .append(vec![NewRecord { time_ms: 0, json }])
                .await
                .expect("append");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let streamed = began.elapsed();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let files = loop {
            let files = f.delivered();
            if files.iter().map(|(_, ids)| ids.len()).sum::<usize>() == 400 {
                break files;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not all delivered: {files:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let _ = stop_tx.send(true);
        for t in tasks {
            t.await.expect("worker");
        }
        // About one file per second of streaming, plus the first and the last partial ones.
        let bound = (streamed.as_millis() / 1000) as usize + 3;
        assert!(
            files.len() <= bound,
            "{} files for 400 events over {streamed:?} (bound {bound})",
            files.len()
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn stopped_spans_and_pending_stops_are_respected() {
        let f = fixture(6).await;
        // Logging covered seqs [0, 3) only.
        f.catalog
            .modify(&f.arn, 5, |t| -> Result<(), ()> {
                t.is_logging = false;
                Ok(())
            })
            .expect("modify")
            .expect("ok");
        let d = f.deliverer();
        assert!(
            matches!(d.step(&f.arn).await, Ok(Step::Idle)),
            "a stop without its sealed span waits"
        );
        assert!(f.delivered().is_empty());
        f.catalog
            .modify(&f.arn, 5, |t| -> Result<(), ()> {
                t.close_span(3);
                Ok(())
            })
            .expect("modify")
            .expect("ok");
        assert!(matches!(
            d.step(&f.arn).await,
            Ok(Step::Delivered { more: false })
        ));
        let mut ids: Vec<String> = f.delivered().into_iter().flat_map(|(_, i)| i).collect();
        ids.sort();
        assert_eq!(ids, ["e0", "e1", "e2"]);
        assert_eq!(d.retention_floor().expect("floor"), u64::MAX);
    }

    fn gunzip(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("gunzip");
        out
    }

    /// Digest rounds: a chain per region, contiguous windows of exactly one period, pointers
    /// to the previous digest, an identical replay after a crash mid-round, and a last round when
    /// logging stops.
    #[tokio::test(flavor = "multi_thread")]
    async fn digest_rounds_chain_replay_identically_and_end_on_stop() {
        let f = fixture(6).await;
        f.catalog
            .modify(&f.arn, 5, |t| -> Result<(), ()> {
                t.log_file_validation_enabled = true;
                Ok(())
            })
            .expect("modify")
            .expect("ok");
        let d = f.deliverer();
        let period = Duration::from_secs(10);
        let t0 = now_ms();
        let round = |now: i64| {
            prepare_round(
                &f.catalog, &f.keyring, None, &f.arn, period, now, false, now,
            )
        };
        // The chain starts (home region only) and its first window ends one period later.
        let start = t0 - t0.rem_euclid(1000);
        assert!(
            matches!(round(t0).expect("start"), RoundWork::Wait(Some(due)) if due == start + 10_000)
        );
        assert!(matches!(
            d.step(&f.arn).await,
            Ok(Step::Delivered { more: false })
        ));
        assert!(matches!(
            round(t0 + 5_000).expect("early"),
            RoundWork::Wait(_)
        ));
        // Due: one digest per region, the files listed in the region's digest.
        let RoundWork::Write {
            digests,
            bucket,
            round: r1,
        } = round(t0 + 10_000).expect("due")
        else {
            panic!("expected a round");
        };
        assert_eq!(bucket, "b");
        assert_eq!(r1.end_ms, start + 10_000);
        let chains: Vec<&str> = digests.iter().map(|x| x.chain.as_str()).collect();
        assert_eq!(chains, ["111122223333/eu-west-1", "111122223333/us-east-1"]);
        // A crash after the first digest was written: the stored round rebuilds the same bytes.
        d.buckets
            .put_create("b", &digests[0].key, digests[0].body.clone())
            .await
            .expect("first digest");
        let RoundWork::Write {
            digests: again,
            round: r1b,
            ..
        } = round(t0 + 60_000).expect("replay")
        else {
            panic!("expected the stored round");
        };
        assert_eq!(r1b, r1, "the stored round, not a new one");
        for (a, b) in digests.iter().zip(&again) {
            assert_eq!(
                (&a.key, &a.sha256, &a.signature),
                (&b.key, &b.sha256, &b.signature)
            );
            assert_eq!(gunzip(&a.body), gunzip(&b.body));
        }
        assert!(
            d.digest_step(&f.arn, now_ms())
                .await
                .expect("finish round")
                .is_some()
        );
        let east: serde_json::Value = serde_json::from_slice(&gunzip(
            &std::fs::read(f.dir.path().join("buckets/b").join(&digests[1].key)).expect("read"),
        ))
        .expect("json");
        assert_eq!(east["previousDigestSignature"], serde_json::Value::Null);
        assert_eq!(east["logFiles"].as_array().expect("files").len(), 1);
        assert_eq!(
            east["digestStartTime"],
            opentrail_model::time::format_event_time(start)
        );
        let meta =
            crate::buckets::read_metadata_sidecar(&f.dir.path().join("buckets/b"), &digests[1].key)
                .expect("meta");
        assert_eq!(meta.get("signature"), Some(&digests[1].signature));
        // The next round (late by two periods: one window of two periods) points back.
        let RoundWork::Write {
            digests: next,
            round: r2,
            ..
        } = round(start + 31_000).expect("next")
        else {
            panic!("expected a round");
        };
        assert_eq!(r2.end_ms, start + 30_000);
        let doc: serde_json::Value = serde_json::from_slice(&gunzip(&next[1].body)).expect("json");
        assert_eq!(doc["previousDigestS3Object"], digests[1].key.as_str());
        assert_eq!(doc["previousDigestHashValue"], digests[1].sha256.as_str());
        assert_eq!(
            doc["previousDigestSignature"],
            digests[1].signature.as_str()
        );
        assert_eq!(doc["logFiles"], serde_json::json!([]));
        assert_eq!(doc["oldestEventTime"], serde_json::Value::Null);
        d.digest_step(&f.arn, now_ms())
            .await
            .expect("write round 2");
        // Logging stops: a last, shorter round, then no chain.
        f.catalog
            .modify(&f.arn, 5, |t| -> Result<(), ()> {
                t.is_logging = false;
                t.close_span(6);
                Ok(())
            })
            .expect("modify")
            .expect("ok");
        // A file delivered after the round's time (the stop's own file, say) is still listed.
        f.catalog
            .update_delivery_with(
                &f.arn,
                || unreachable!(),
                |_| {},
                &[],
                &[DigestFile {
                    account: ACCT.into(),
                    region: "us-east-1".into(),
                    bucket: "b".into(),
                    key: "late.json.gz".into(),
                    sha256: "0".repeat(64),
                    oldest_event_ms: None,
                    newest_event_ms: None,
                    delivered_ms: start + 33_700,
                }],
                None,
            )
            .expect("late file");
        let RoundWork::Write {
            round: r3,
            digests: last,
            ..
        } = round(start + 33_500).expect("last")
        else {
            panic!("expected the last round");
        };
        assert!(r3.last);
        assert_eq!(r3.end_ms, start + 34_000, "rounded up to the second");
        let doc: serde_json::Value = serde_json::from_slice(&gunzip(&last[1].body)).expect("json");
        assert_eq!(doc["logFiles"][0]["s3Object"], "late.json.gz");
        d.digest_step(&f.arn, now_ms()).await.expect("write last");
        let state = f
            .catalog
            .delivery_state(&f.arn)
            .expect("state")
            .expect("some");
        assert_eq!(state.digest, None);
        assert_eq!(state.digests_delivered, 6);
        assert!(matches!(
            round(start + 99_000).expect("none"),
            RoundWork::Wait(None)
        ));
    }
}

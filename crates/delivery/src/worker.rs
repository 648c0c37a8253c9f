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

use opentrail_catalog::{Catalog, CatalogError, DeliveryState, Notification, Plan, Trail};
use opentrail_log::{EventLog, LogError};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::buckets::{BucketError, Buckets, Written};
use crate::files::{FileBuilder, LogFile, Naming};
use crate::filter::{Organization, TrailFilter};
use crate::notify::{Sender, Topics, announce};

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
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    pub files: AtomicU64,
    pub events: AtomicU64,
    pub json_bytes: AtomicU64,
    pub gzip_bytes: AtomicU64,
    pub failures: AtomicU64,
    pub notifications: AtomicU64,
    pub notification_failures: AtomicU64,
}

/// Delivery for every trail.
pub struct Deliverer {
    log: EventLog,
    catalog: Arc<Catalog>,
    buckets: Arc<Buckets>,
    config: DeliveryConfig,
    sender: Sender,
    outbox_wake: Notify,
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
        config: DeliveryConfig,
    ) -> Result<Self, String> {
        Ok(Self {
            log,
            catalog,
            buckets,
            config,
            sender: Sender::new()?,
            outbox_wake: Notify::new(),
            stats: DeliveryStats::default(),
        })
    }

    pub fn buckets(&self) -> &Buckets {
        &self.buckets
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
            let wait = match self.step(&arn).await {
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
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One step for one trail (see the module docs).
    async fn step(&self, arn: &str) -> Result<Step, DeliveryError> {
        let prepared = {
            let log = self.log.clone();
            let catalog = Arc::clone(&self.catalog);
            let org = self.config.org.clone();
            let arn = arn.to_owned();
            tokio::task::spawn_blocking(move || prepare(&log, &catalog, org.as_ref(), &arn))
                .await??
        };
        let (trail, plan, files) = match prepared {
            Prepared::Gone => return Ok(Step::Gone),
            Prepared::Idle => return Ok(Step::Idle),
            Prepared::Skipped => return Ok(Step::Delivered { more: true }),
            Prepared::Files { trail, plan, files } => (trail, plan, files),
        };
        let attempt_ms = now_ms();
        for f in &files {
            let put = self
                .buckets
                .put_create(&trail.s3_bucket_name, &f.key, f.body.clone())
                .await;
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
        tokio::task::spawn_blocking(move || {
            catalog.update_delivery(
                &arn2,
                || DeliveryState::new(plan.from),
                |s| {
                    s.cursor = plan.to;
                    s.plan = None;
                    s.latest_delivery_attempt_ms = Some(attempt_ms);
                    s.latest_delivery_attempt_succeeded_ms = Some(done_ms);
                    s.latest_delivery_time_ms = Some(done_ms);
                    s.latest_delivery_error = None;
                    s.files_delivered += nfiles;
                    s.events_delivered += events as u64;
                },
                &notes,
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
fn prepare(
    log: &EventLog,
    catalog: &Catalog,
    org: Option<&Organization>,
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
                builder.push(route, &r.json);
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
            },
            &[],
        )?;
        return Ok(if plan.to < end {
            Prepared::Skipped
        } else {
            Prepared::Idle
        });
    }
    if stored_plan.is_none() {
        catalog.update_delivery(
            arn,
            || DeliveryState::new(plan.from),
            |s| {
                s.cursor = plan.from;
                s.plan = Some(plan);
            },
            &[],
        )?;
    }
    Ok(Prepared::Files {
        trail: Box::new(trail),
        plan,
        files,
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
                DeliveryConfig {
                    interval,
                    max_backoff: Duration::from_millis(100),
                    org: None,
                    topics: Topics::default(),
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
        Fixture {
            dir,
            log,
            catalog,
            arn: t.arn,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_plan_cut_short_by_a_crash_replays_to_the_same_keys() {
        let f = fixture(10).await;
        // The first attempt: the plan is stored and one of its two files written, then the
        // process dies (nothing more of this attempt runs).
        let first = {
            let prepared = prepare(&f.log, &f.catalog, None, &f.arn).expect("prepare");
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
                prepare(&f.log, &f.catalog, None, &f.arn).expect("prepare")
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
}

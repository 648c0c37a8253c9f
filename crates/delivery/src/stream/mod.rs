//! Log streaming (CloudTrail's CloudWatch Logs integration): a trail whose
//! `CloudWatchLogsLogGroupArn` names a declared log group sends every record it delivers to that
//! group's destination ([`groups`]): a JSON-lines file set ([`files`]), syslog ([`syslog`]) or
//! HTTP NDJSON batches ([`http`]).
//!
//! One task per streaming trail follows the event log from the trail's stream cursor (catalog
//! table `log_streams`), keeps the trail's records (the delivery filter: logging spans, event
//! selectors, regions), leaves out records over 256 KB as CloudTrail does, sends a batch and then
//! commits the cursor. It wakes as the log grows, so records reach the destination within
//! moments, not at the delivery cadence.
//!
//! A trail streams what it logs from the moment it was pointed at its group (the log's end then,
//! kept in the trail); a trail from before log streaming starts at its delivery cursor. Delivery is exactly
//! once for file sets (see [`files`]) and for the network destinations across clean restarts;
//! after a crash, syslog and HTTP may repeat the last batch (at least once), which receivers
//! can drop by the sequence numbers the messages carry.

pub mod files;
pub mod groups;
pub mod http;
pub mod syslog;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentrail_catalog::{Catalog, CatalogError, StreamState, Trail};
use opentrail_log::{EventLog, LogError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::filter::{Organization, TrailFilter};
use files::{FileSet, FileSetError, Line};
use groups::{Destination, LogGroups, normal_group_arn};
use http::HttpSink;
use syslog::Syslog;

/// CloudTrail leaves out of CloudWatch Logs any event larger than 256 KB; CloudWatch Logs counts
/// 26 bytes of overhead per event against that limit.
pub const MAX_STREAMED_RECORD: usize = 256 * 1024 - 26;
/// Records and bytes one step of a file or syslog stream takes at most.
const STEP_RECORDS: usize = 4096;
const STEP_BYTES: usize = 8 << 20;
const READ_CHUNK: usize = 1024;

/// Errors of a streaming step.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("trail {arn} has unreadable settings: {message}")]
    BadTrail { arn: String, message: String },
    #[error("record {seq} is not a readable CloudTrail record: {message}")]
    BadRecord { seq: u64, message: String },
    #[error("{0}")]
    Files(#[from] FileSetError),
    #[error("{0}")]
    Send(String),
    #[error("a streaming task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub skipped: AtomicU64,
    pub failures: AtomicU64,
}

/// Log streaming for every trail with a log group.
pub struct Streamer {
    log: EventLog,
    catalog: Arc<Catalog>,
    groups: Arc<LogGroups>,
    org: Option<Organization>,
    max_backoff: Duration,
    pub stats: StreamStats,
}

/// A destination's live part (connections, the file set's recovery state).
enum Sink {
    /// Locked on the blocking thread that writes it.
    Files(Arc<std::sync::Mutex<FileSet>>),
    Syslog(Syslog),
    Http(HttpSink),
}

/// What the blocking part of a step found.
enum Gathered {
    /// The trail is gone or streams elsewhere now.
    Gone,
    Idle,
    Batch(Box<Batch>),
}

struct Batch {
    trail: Trail,
    state: StreamState,
    /// (sequence number, record) of each record to send.
    records: Vec<(u64, Vec<u8>)>,
    skipped: u64,
    /// The cursor after this batch.
    to: u64,
    /// More records were waiting past the batch.
    more: bool,
}

enum Stepped {
    Gone,
    Idle,
    Sent { more: bool },
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// A trail's directory inside a file-set destination.
pub fn trail_dir_name(t: &Trail) -> String {
    format!("{}_{}_{}", t.account, t.home_region, t.name)
}

/// The trail's group, if it streams to one that is declared.
fn streamed_group(t: &Trail, groups: &LogGroups) -> Option<String> {
    t.cloud_watch_logs_log_group_arn
        .as_deref()
        .filter(|g| groups.contains(g))
        .map(|g| normal_group_arn(g).to_owned())
}

impl Streamer {
    pub fn new(
        log: EventLog,
        catalog: Arc<Catalog>,
        groups: Arc<LogGroups>,
        org: Option<Organization>,
        max_backoff: Duration,
    ) -> Self {
        Self {
            log,
            catalog,
            groups,
            org,
            max_backoff,
            stats: StreamStats::default(),
        }
    }

    pub fn groups(&self) -> &LogGroups {
        &self.groups
    }

    /// The stream state of a trail streaming to `group` now (`None` before its first step, or
    /// if the state is of another group).
    pub fn state_for(&self, t: &Trail) -> Result<Option<StreamState>, CatalogError> {
        let Some(group) = t.cloud_watch_logs_log_group_arn.as_deref() else {
            return Ok(None);
        };
        Ok(self
            .catalog
            .log_stream(&t.arn)?
            .filter(|s| s.group_arn == normal_group_arn(group)))
    }

    /// The lowest log sequence number some stream still has to send (`u64::MAX` if none).
    pub fn retention_floor(&self) -> Result<u64, CatalogError> {
        let states: HashMap<String, StreamState> =
            self.catalog.log_streams()?.into_iter().collect();
        let mut floor = u64::MAX;
        for t in self.catalog.all_trails()? {
            let Some(group) = streamed_group(&t, &self.groups) else {
                continue;
            };
            // A trail without a state yet starts at its delivery cursor, which delivery's own
            // floor already holds.
            if let Some(s) = states.get(&t.arn).filter(|s| s.group_arn == group)
                && let Some(next) = t.next_logged(s.cursor)
            {
                floor = floor.min(next);
            }
        }
        Ok(floor)
    }

    /// Starts the supervisor: one task per streaming trail.
    pub fn spawn(self: &Arc<Self>, stop: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(Arc::clone(self).supervise(stop))
    }

    async fn supervise(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut running: HashMap<(String, String), JoinHandle<()>> = HashMap::new();
        loop {
            let catalog = Arc::clone(&self.catalog);
            match tokio::task::spawn_blocking(move || catalog.all_trails()).await {
                Ok(Ok(trails)) => {
                    running.retain(|_, h| !h.is_finished());
                    for t in trails {
                        let Some(group) = streamed_group(&t, &self.groups) else {
                            continue;
                        };
                        let key = (t.arn.clone(), group.clone());
                        if running.contains_key(&key) {
                            continue;
                        }
                        match self.sink(&t, &group) {
                            Ok(sink) => {
                                let h = tokio::spawn(Arc::clone(&self).trail_worker(
                                    t.arn.clone(),
                                    group,
                                    sink,
                                    stop.clone(),
                                ));
                                running.insert(key, h);
                            }
                            Err(e) => {
                                tracing::error!(trail = %t.arn, error = %e, "log stream destination unusable");
                            }
                        }
                    }
                }
                Ok(Err(e)) => tracing::error!(error = %e, "log streaming: listing trails failed"),
                Err(e) => tracing::error!(error = %e, "log streaming: listing trails panicked"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => break,
            }
        }
        for (_, h) in running {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "log stream worker ended abnormally");
            }
        }
    }

    fn sink(&self, t: &Trail, group: &str) -> Result<Sink, String> {
        match self.groups.get(group) {
            Some(Destination::Files(c)) => Ok(Sink::Files(Arc::new(std::sync::Mutex::new(
                FileSet::new(c.clone(), &trail_dir_name(t)),
            )))),
            Some(Destination::Syslog(c)) => Ok(Sink::Syslog(Syslog::new(c.clone())?)),
            Some(Destination::Http(c)) => Ok(Sink::Http(HttpSink::new(c.clone())?)),
            None => Err(format!("log group {group} is not declared")),
        }
    }

    async fn trail_worker(
        self: Arc<Self>,
        arn: String,
        group: String,
        mut sink: Sink,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut durable = self.log.subscribe();
        let first = Duration::from_millis(500);
        let mut backoff = first;
        loop {
            if *stop.borrow() {
                return;
            }
            durable.borrow_and_update();
            let wait = match self.step(&arn, &group, &mut sink).await {
                Ok(Stepped::Gone) => return,
                Ok(Stepped::Sent { more: true }) => {
                    backoff = first;
                    continue;
                }
                Ok(Stepped::Idle | Stepped::Sent { more: false }) => {
                    backoff = first;
                    None
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(trail = %arn, group = %group, error = %e, retry_in = ?backoff, "log streaming failed; will retry");
                    if let Sink::Files(f) = &sink
                        && let Ok(mut f) = f.lock()
                    {
                        f.forget_recovery();
                    }
                    if let Err(e2) = self.record_failure(&arn, &group, e.to_string()).await {
                        tracing::warn!(trail = %arn, error = %e2, "log stream status could not be stored");
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(self.max_backoff.max(first));
                    Some(wait)
                }
            };
            match wait {
                Some(w) => tokio::select! {
                    () = tokio::time::sleep(w) => {}
                    _ = stop.changed() => return,
                },
                // Idle: the log growing wakes the worker; a second passing does too, so a
                // trail's changes (a sealed StopLogging, another group) are seen.
                None => tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                },
            }
        }
    }

    async fn record_failure(
        &self,
        arn: &str,
        group: &str,
        error: String,
    ) -> Result<(), StreamError> {
        let catalog = Arc::clone(&self.catalog);
        let (arn, group) = (arn.to_owned(), group.to_owned());
        tokio::task::spawn_blocking(move || -> Result<(), CatalogError> {
            if let Some(mut s) = catalog.log_stream(&arn)?.filter(|s| s.group_arn == group) {
                s.latest_attempt_ms = Some(now_ms());
                s.latest_error = Some(error);
                catalog.put_log_stream(&arn, &s)?;
            }
            Ok(())
        })
        .await??;
        Ok(())
    }

    /// One step: gather a batch, send it, commit the cursor.
    async fn step(&self, arn: &str, group: &str, sink: &mut Sink) -> Result<Stepped, StreamError> {
        let (limit_records, limit_bytes) = match sink {
            Sink::Http(h) => (h.config().batch_records, h.config().batch_bytes),
            _ => (STEP_RECORDS, STEP_BYTES),
        };
        let gathered = {
            let (log, catalog, groups) = (
                self.log.clone(),
                Arc::clone(&self.catalog),
                Arc::clone(&self.groups),
            );
            let (org, arn, group) = (self.org.clone(), arn.to_owned(), group.to_owned());
            tokio::task::spawn_blocking(move || {
                gather(
                    &log,
                    &catalog,
                    &groups,
                    org.as_ref(),
                    &arn,
                    &group,
                    limit_records,
                    limit_bytes,
                )
            })
            .await??
        };
        let batch = match gathered {
            Gathered::Gone => return Ok(Stepped::Gone),
            Gathered::Idle => return Ok(Stepped::Idle),
            Gathered::Batch(b) => b,
        };
        let Batch {
            trail,
            mut state,
            records,
            skipped,
            to,
            more,
        } = *batch;
        let sent_bytes: usize = records.iter().map(|(_, r)| r.len()).sum();
        let count = records.len() as u64;
        let now = now_ms();
        match sink {
            Sink::Files(set) => {
                let (catalog, set) = (Arc::clone(&self.catalog), Arc::clone(set));
                let arn2 = arn.to_owned();
                state = tokio::task::spawn_blocking(move || -> Result<StreamState, StreamError> {
                    let lines: Vec<Line<'_>> = records
                        .iter()
                        .map(|(seq, json)| Line { seq: *seq, json })
                        .collect();
                    let mut commit = |s: &StreamState| -> Result<(), String> {
                        catalog
                            .put_log_stream(&arn2, s)
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    };
                    let mut set = set
                        .lock()
                        .map_err(|_| StreamError::Send("file set lock poisoned".into()))?;
                    set.write(&mut state, &lines, now, &mut commit)?;
                    Ok(state)
                })
                .await??;
            }
            Sink::Syslog(s) => {
                if !records.is_empty() {
                    let mut frames = Vec::with_capacity(sent_bytes + records.len() * 128);
                    for (seq, json) in &records {
                        syslog::frame(s.config(), &trail.name, *seq, json, &mut frames);
                    }
                    s.send(&frames).await.map_err(StreamError::Send)?;
                }
                state.records += count;
            }
            Sink::Http(h) => {
                if let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) {
                    let mut body = Vec::with_capacity(sent_bytes + records.len());
                    for (_, json) in &records {
                        body.extend_from_slice(json);
                        body.push(b'\n');
                    }
                    h.send(&trail.arn, group, *first, *last, body)
                        .await
                        .map_err(StreamError::Send)?;
                }
                state.records += count;
            }
        }
        state.cursor = to;
        state.skipped += skipped;
        state.latest_attempt_ms = Some(now);
        if count > 0 {
            state.latest_delivery_ms = Some(now_ms());
        }
        state.latest_error = None;
        let catalog = Arc::clone(&self.catalog);
        let arn2 = arn.to_owned();
        let stored =
            tokio::task::spawn_blocking(move || catalog.put_log_stream(&arn2, &state)).await??;
        self.stats.records.fetch_add(count, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(sent_bytes as u64, Ordering::Relaxed);
        self.stats.skipped.fetch_add(skipped, Ordering::Relaxed);
        if !stored {
            return Ok(Stepped::Gone);
        }
        Ok(Stepped::Sent { more })
    }
}

/// Reads the next batch of the trail's records (blocking).
#[allow(clippy::too_many_arguments)]
fn gather(
    log: &EventLog,
    catalog: &Catalog,
    groups: &LogGroups,
    org: Option<&Organization>,
    arn: &str,
    group: &str,
    limit_records: usize,
    limit_bytes: usize,
) -> Result<Gathered, StreamError> {
    // The end first, then the trail (as delivery does): a StopLogging committed after the end
    // was read cannot have recorded anything below it.
    let end = log.durable_end().next_seq;
    let Some(trail) = catalog.get(arn)? else {
        return Ok(Gathered::Gone);
    };
    if streamed_group(&trail, groups).as_deref() != Some(group) {
        return Ok(Gathered::Gone);
    }
    let state = match catalog.log_stream(arn)?.filter(|s| s.group_arn == group) {
        Some(s) => s,
        None => {
            let start = match (trail.cloud_watch_logs_since, catalog.delivery_state(arn)?) {
                (Some(since), _) => since,
                (None, Some(d)) => d.cursor,
                (None, None) => trail.next_logged(0).unwrap_or(end).min(end),
            };
            let s = StreamState::new(group.to_owned(), start);
            if !catalog.put_log_stream(arn, &s)? {
                return Ok(Gathered::Gone);
            }
            s
        }
    };
    let pending_stop =
        !trail.is_logging && trail.logging_spans.last().is_some_and(|s| s.to.is_none());
    if pending_stop {
        // StopLogging is between its catalog change and its own record: wait for the span to
        // be sealed, so nothing past the stop is sent.
        return Ok(Gathered::Idle);
    }
    let from = match trail.next_logged(state.cursor) {
        Some(n) => n.min(end),
        None => end.max(state.cursor),
    };
    if from >= end {
        if from != state.cursor {
            let mut s = state;
            s.cursor = from;
            catalog.put_log_stream(arn, &s)?;
        }
        return Ok(Gathered::Idle);
    }
    let filter = TrailFilter::new(&trail, org).map_err(|e| StreamError::BadTrail {
        arn: arn.to_owned(),
        message: e.to_string(),
    })?;
    let mut reader = log.reader(from);
    let (mut records, mut bytes, mut skipped) = (Vec::new(), 0usize, 0u64);
    let mut to = from;
    'read: while to < end {
        let chunk = reader.read(READ_CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        for r in chunk {
            if r.seq >= end {
                break 'read;
            }
            let keep = filter
                .route(r.seq, &r.json)
                .map_err(|e| StreamError::BadRecord {
                    seq: r.seq,
                    message: e.to_string(),
                })?
                .is_some();
            if keep {
                if r.json.len() > MAX_STREAMED_RECORD {
                    skipped += 1;
                } else {
                    if !records.is_empty()
                        && (records.len() >= limit_records || bytes + r.json.len() > limit_bytes)
                    {
                        break 'read;
                    }
                    bytes += r.json.len();
                    records.push((r.seq, r.json));
                }
            }
            to = r.seq + 1;
        }
    }
    Ok(Gathered::Batch(Box::new(Batch {
        trail,
        state,
        records,
        skipped,
        to,
        more: to < end,
    })))
}

//! The catalog: the small, transactional state of OpenTrail — trails with their settings,
//! selectors, tags and logging state. Embedded SQLite (WAL, `synchronous=FULL`) used from blocking
//! threads; every change is one transaction.
//!
//! Schema version 6 (`PRAGMA user_version = 6`):
//! - `trails(arn TEXT PRIMARY KEY, account TEXT, home_region TEXT, name TEXT, body TEXT)`, unique on
//!   (account, home_region, name); `body` is the [`Trail`] as JSON with its own `"v": 1`.
//! - `deliveries(trail_arn TEXT PRIMARY KEY, body TEXT)`: each trail's delivery cursor, pending
//!   plan and status ([`DeliveryState`], JSON with its own `"v": 1`). Added in version 2.
//! - `outbox(id INTEGER PRIMARY KEY, trail_arn, topic_arn, endpoint, message, attempts,
//!   next_attempt_ms)`: delivery notifications not yet accepted by their subscriber. Added in 2.
//!
//! - `digest_files(id INTEGER PRIMARY KEY, trail_arn, account, region, bucket, key, sha256,
//!   oldest_ms, newest_ms, delivered_ms)`: delivered log files not yet listed in a digest. Added
//!   in 3.
//! - `signing_keys(fingerprint TEXT PRIMARY KEY, region, public_der BLOB, sealed_private BLOB,
//!   created_ms, valid_from_ms, valid_to_ms)`: each region's digest signing keys, the private
//!   half encrypted with the master key. Added in 3.
//! - `iam_directory(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER, body TEXT)`: the
//!   principal directory (users, groups, access keys with sealed secrets, policies) as one JSON
//!   document with its own `"format": 1`; `version` counts its changes. Added in 4.
//! - `kms_keystore(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER, body TEXT)`: the KMS
//!   keys (state, rotation, key material sealed under the master key) and aliases as one JSON
//!   document with its own `"format": 1`, versioned like the directory. Added in 5.
//! - `alerts_config(id = 1, version, body)`: topics, subscriptions and event rules as one JSON
//!   document with its own `"format": 1`, versioned like the directory. Added in 6.
//! - `alert_view(id = 1, cursor, state)`, `alert_messages`, `alert_dead_letters`,
//!   `alert_subscription_stats`: the rules view's cursor and state, the messages waiting for
//!   their subscribers, the ones given up on, and each subscription's delivery counters (see
//!   `alerts.rs`). Added in 6.
//! - `log_streams(trail_arn, body)`: each trail's log streaming cursor, the file a file-set
//!   destination appends to and its committed length, and the status (see `streams.rs`).
//!   Added in 7.
//!
//! Older files are upgraded in place on open (the newer tables are added).

mod alerts;
mod delivery;
mod digests;
mod documents;
mod streams;

pub use alerts::{AlertMessageRow, AlertOutcome, DeadLetter, NewAlertMessage, SubscriptionStats};
pub use delivery::{DeliveryState, Notification, OutboxRow, Plan};
pub use digests::{
    DigestChains, DigestFile, DigestRound, PreviousDigest, StoredDigestFile, StoredSigningKey,
};
pub use streams::{STREAM_BODY_VERSION, StreamFile, StreamState};

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// The schema version this code reads and writes.
pub const SCHEMA_VERSION: i32 = 7;
/// The version of a stored [`Trail`] body.
pub const TRAIL_BODY_VERSION: u32 = 1;

/// Errors of the catalog, by meaning.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog storage error: {0}")]
    Store(#[from] rusqlite::Error),
    #[error("catalog record is unreadable: {0}")]
    Corrupt(String),
    #[error(
        "catalog schema version {found} is newer than this server understands ({SCHEMA_VERSION})"
    )]
    TooNew { found: i32 },
    #[error("a trail named {0} already exists in this region")]
    AlreadyExists(String),
    #[error("the number of trails in region {region} would exceed {max}")]
    QuotaExceeded { region: String, max: usize },
    #[error("catalog lock poisoned")]
    Lock,
    #[error("the document changed since version {expected} was read (now {found})")]
    Conflict { expected: u64, found: u64 },
}

/// A tag: key, and a value that may be absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: Option<String>,
}

/// Everything OpenTrail keeps about one trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trail {
    pub v: u32,
    pub arn: String,
    pub name: String,
    pub account: String,
    pub home_region: String,
    pub s3_bucket_name: String,
    pub s3_key_prefix: Option<String>,
    pub sns_topic_arn: Option<String>,
    pub include_global_service_events: bool,
    pub is_multi_region_trail: bool,
    pub log_file_validation_enabled: bool,
    pub cloud_watch_logs_log_group_arn: Option<String>,
    pub cloud_watch_logs_role_arn: Option<String>,
    /// The event log's end when the trail was pointed at its current log group: streaming
    /// starts there. Absent in bodies written before log streaming (those stream from their
    /// delivery cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_watch_logs_since: Option<u64>,
    pub kms_key_arn: Option<String>,
    pub is_organization_trail: bool,
    /// Basic selectors as given (the wire shape), when basic selectors are in force.
    pub event_selectors: Option<serde_json::Value>,
    /// Advanced selectors as given, when advanced selectors are in force.
    pub advanced_event_selectors: Option<serde_json::Value>,
    pub has_custom_event_selectors: bool,
    pub insight_selectors: Option<serde_json::Value>,
    pub tags: Vec<Tag>,
    pub is_logging: bool,
    pub start_logging_ms: Option<i64>,
    pub stop_logging_ms: Option<i64>,
    pub created_ms: i64,
    /// The stretches of the event log (by sequence number) recorded while the trail was logging,
    /// oldest first. Only events inside a span are delivered. Absent in bodies written before
    /// delivery existed (read as empty; the server opens a span for a logging trail on start).
    #[serde(default)]
    pub logging_spans: Vec<LoggingSpan>,
}

/// Log sequence numbers `[from, to)` recorded while a trail was logging; `to` is `None` while it
/// still logs, and also for a moment after StopLogging, until the StopLogging call's own record
/// has a sequence number (it is delivered: the stop is part of the trail's story).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggingSpan {
    pub from: u64,
    pub to: Option<u64>,
}

/// How many closed spans a trail keeps; older ones are far behind any delivery cursor.
pub const MAX_LOGGING_SPANS: usize = 1000;

impl Trail {
    /// Whether an event with sequence number `seq` was recorded while the trail was logging.
    pub fn logged_at(&self, seq: u64) -> bool {
        self.logging_spans
            .iter()
            .any(|s| seq >= s.from && s.to.is_none_or(|to| seq < to))
    }

    /// The first sequence number at or after `seq` that falls in a span, if any.
    pub fn next_logged(&self, seq: u64) -> Option<u64> {
        self.logging_spans
            .iter()
            .filter(|s| s.to.is_none_or(|to| to > seq))
            .map(|s| s.from.max(seq))
            .min()
    }

    /// Opens a span at `seq` (StartLogging), unless one is open.
    pub fn open_span(&mut self, seq: u64) {
        if self.logging_spans.last().is_some_and(|s| s.to.is_none()) {
            return;
        }
        self.logging_spans.push(LoggingSpan {
            from: seq,
            to: None,
        });
        let excess = self.logging_spans.len().saturating_sub(MAX_LOGGING_SPANS);
        self.logging_spans.drain(..excess);
    }

    /// Closes the open span at `seq` (exclusive), if there is one.
    pub fn close_span(&mut self, seq: u64) {
        if let Some(last) = self.logging_spans.last_mut()
            && last.to.is_none()
        {
            last.to = Some(seq.max(last.from));
        }
    }
}

impl Trail {
    /// A new trail with CloudTrail's defaults: global service events included, single-region, no
    /// log file validation, default selectors, no Insights, not logging.
    pub fn new(
        arn: String,
        name: String,
        account: String,
        home_region: String,
        bucket: String,
        created_ms: i64,
    ) -> Self {
        Self {
            v: TRAIL_BODY_VERSION,
            arn,
            name,
            account,
            home_region,
            s3_bucket_name: bucket,
            s3_key_prefix: None,
            sns_topic_arn: None,
            include_global_service_events: true,
            is_multi_region_trail: false,
            log_file_validation_enabled: false,
            cloud_watch_logs_log_group_arn: None,
            cloud_watch_logs_role_arn: None,
            cloud_watch_logs_since: None,
            kms_key_arn: None,
            is_organization_trail: false,
            event_selectors: None,
            advanced_event_selectors: None,
            has_custom_event_selectors: false,
            insight_selectors: None,
            tags: Vec::new(),
            is_logging: false,
            start_logging_ms: None,
            stop_logging_ms: None,
            created_ms,
            logging_spans: Vec::new(),
        }
    }
}

/// The catalog.
pub struct Catalog {
    conn: Mutex<Connection>,
}

fn decode(body: &str) -> Result<Trail, CatalogError> {
    let t: Trail = serde_json::from_str(body).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    if t.v != TRAIL_BODY_VERSION {
        return Err(CatalogError::Corrupt(format!(
            "trail body version {} is unknown",
            t.v
        )));
    }
    Ok(t)
}

fn encode(t: &Trail) -> Result<String, CatalogError> {
    serde_json::to_string(t).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

impl Catalog {
    /// Opens (creating if needed) the catalog database at `path`.
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(CatalogError::TooNew { found: version });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS trails (
                     arn TEXT PRIMARY KEY,
                     account TEXT NOT NULL,
                     home_region TEXT NOT NULL,
                     name TEXT NOT NULL,
                     body TEXT NOT NULL,
                     UNIQUE (account, home_region, name)
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS deliveries (
                     trail_arn TEXT PRIMARY KEY,
                     body TEXT NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS outbox (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     trail_arn TEXT NOT NULL,
                     topic_arn TEXT NOT NULL,
                     endpoint TEXT NOT NULL,
                     message TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0,
                     next_attempt_ms INTEGER NOT NULL DEFAULT 0
                 );
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        if version < 3 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS digest_files (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     trail_arn TEXT NOT NULL,
                     account TEXT NOT NULL,
                     region TEXT NOT NULL,
                     bucket TEXT NOT NULL,
                     key TEXT NOT NULL,
                     sha256 TEXT NOT NULL,
                     oldest_ms INTEGER,
                     newest_ms INTEGER,
                     delivered_ms INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS digest_files_by_trail ON digest_files (trail_arn, id);
                 CREATE TABLE IF NOT EXISTS signing_keys (
                     fingerprint TEXT PRIMARY KEY,
                     region TEXT NOT NULL,
                     public_der BLOB NOT NULL,
                     sealed_private BLOB NOT NULL,
                     created_ms INTEGER NOT NULL,
                     valid_from_ms INTEGER NOT NULL,
                     valid_to_ms INTEGER NOT NULL
                 );
                 CREATE INDEX IF NOT EXISTS signing_keys_by_region ON signing_keys (region, created_ms);
                 PRAGMA user_version = 3;
                 COMMIT;",
            )?;
        }
        if version < 4 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS iam_directory (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     version INTEGER NOT NULL,
                     body TEXT NOT NULL
                 );
                 PRAGMA user_version = 4;
                 COMMIT;",
            )?;
        }
        if version < 5 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS kms_keystore (
                     id INTEGER PRIMARY KEY CHECK (id = 1),
                     version INTEGER NOT NULL,
                     body TEXT NOT NULL
                 );
                 PRAGMA user_version = 5;
                 COMMIT;",
            )?;
        }
        if version < 6 {
            conn.execute_batch(alerts::SCHEMA_V6)?;
        }
        if version < 7 {
            conn.execute_batch(streams::SCHEMA_V7)?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, CatalogError> {
        self.conn.lock().map_err(|_| CatalogError::Lock)
    }

    /// Every trail of every account (the catalog is small).
    pub fn all_trails(&self) -> Result<Vec<Trail>, CatalogError> {
        let conn = self.conn()?;
        let mut st =
            conn.prepare_cached("SELECT body FROM trails ORDER BY account, home_region, name")?;
        let bodies: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        bodies.iter().map(|b| decode(b)).collect()
    }

    pub fn get(&self, arn: &str) -> Result<Option<Trail>, CatalogError> {
        let conn = self.conn()?;
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM trails WHERE arn = ?1",
                params![arn],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| decode(&b)).transpose()
    }

    /// Adds a trail, checking in the same transaction that its name is free (see
    /// [`check_placement`]) and that no region would hold more than `max_per_region` trails.
    pub fn create(&self, trail: &Trail, max_per_region: usize) -> Result<(), CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let others = account_trails(&tx, &trail.account)?;
        check_placement(&others, trail, max_per_region)?;
        tx.execute(
            "INSERT INTO trails (arn, account, home_region, name, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![trail.arn, trail.account, trail.home_region, trail.name, encode(trail)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Replaces a trail's stored state. Returns false if it no longer exists.
    pub fn put(&self, trail: &Trail) -> Result<bool, CatalogError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE trails SET body = ?2 WHERE arn = ?1",
            params![trail.arn, encode(trail)?],
        )?;
        Ok(n == 1)
    }

    /// Applies `change` to the stored trail inside one transaction. Returns the new state, or
    /// `None` if there is no such trail. `change` may refuse with its own error. A trail that
    /// becomes multi-region is checked against the names and the quota of every region.
    pub fn modify<E>(
        &self,
        arn: &str,
        max_per_region: usize,
        change: impl FnOnce(&mut Trail) -> Result<(), E>,
    ) -> Result<Result<Option<Trail>, E>, CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let body: Option<String> = tx
            .query_row(
                "SELECT body FROM trails WHERE arn = ?1",
                params![arn],
                |r| r.get(0),
            )
            .optional()?;
        let Some(body) = body else {
            return Ok(Ok(None));
        };
        let mut trail = decode(&body)?;
        let was_multi = trail.is_multi_region_trail;
        if let Err(e) = change(&mut trail) {
            return Ok(Err(e));
        }
        if trail.is_multi_region_trail && !was_multi {
            let others: Vec<Trail> = account_trails(&tx, &trail.account)?
                .into_iter()
                .filter(|t| t.arn != trail.arn)
                .collect();
            check_placement(&others, &trail, max_per_region)?;
        }
        tx.execute(
            "UPDATE trails SET body = ?2 WHERE arn = ?1",
            params![arn, encode(&trail)?],
        )?;
        tx.commit()?;
        Ok(Ok(Some(trail)))
    }

    /// Removes a trail with its delivery state and pending notifications. Returns false if
    /// there was none.
    pub fn delete(&self, arn: &str) -> Result<bool, CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let n = tx.execute("DELETE FROM trails WHERE arn = ?1", params![arn])?;
        tx.execute("DELETE FROM deliveries WHERE trail_arn = ?1", params![arn])?;
        tx.execute("DELETE FROM outbox WHERE trail_arn = ?1", params![arn])?;
        tx.execute("DELETE FROM log_streams WHERE trail_arn = ?1", params![arn])?;
        digests::drop_files(&tx, arn, None)?;
        tx.commit()?;
        Ok(n == 1)
    }
}

fn account_trails(
    tx: &rusqlite::Transaction<'_>,
    account: &str,
) -> Result<Vec<Trail>, CatalogError> {
    let mut st = tx.prepare_cached("SELECT body FROM trails WHERE account = ?1")?;
    let bodies: Vec<String> = st
        .query_map(params![account], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    bodies.iter().map(|b| decode(b)).collect()
}

/// Whether `trail` may exist beside `others` (the account's other trails):
/// - its name is free in every region it appears in (its home region, or every region for a
///   multi-region trail; a multi-region trail elsewhere occupies its name here too);
/// - no region would hold more than `max_per_region` trails (a multi-region trail counts once in
///   every region).
pub fn check_placement(
    others: &[Trail],
    trail: &Trail,
    max_per_region: usize,
) -> Result<(), CatalogError> {
    let clash = others.iter().any(|t| {
        t.name == trail.name
            && (t.home_region == trail.home_region
                || t.is_multi_region_trail
                || trail.is_multi_region_trail)
    });
    if clash {
        return Err(CatalogError::AlreadyExists(trail.name.clone()));
    }
    let mut regions: Vec<&str> = others.iter().map(|t| t.home_region.as_str()).collect();
    regions.push(&trail.home_region);
    regions.sort_unstable();
    regions.dedup();
    for region in regions {
        if !trail.is_multi_region_trail && region != trail.home_region {
            continue;
        }
        let count = others
            .iter()
            .filter(|t| t.is_multi_region_trail || t.home_region == region)
            .count();
        if count + 1 > max_per_region {
            return Err(CatalogError::QuotaExceeded {
                region: region.to_owned(),
                max: max_per_region,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn trail(name: &str, region: &str, multi: bool) -> Trail {
        let mut t = Trail::new(
            format!("arn:aws:cloudtrail:{region}:111122223333:trail/{name}"),
            name.into(),
            "111122223333".into(),
            region.into(),
            "bucket".into(),
            1,
        );
        t.is_multi_region_trail = multi;
        t.tags = vec![Tag {
            key: "k".into(),
            value: None,
        }];
        t
    }

    #[test]
    fn create_get_modify_delete_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        let cat = Catalog::open(&path).expect("open");
        let t = trail("one", "us-east-1", false);
        cat.create(&t, 5).expect("create");
        assert!(matches!(
            cat.create(&t, 5),
            Err(CatalogError::AlreadyExists(_))
        ));
        // Same name in another region is a different trail.
        cat.create(&trail("one", "eu-west-1", false), 5)
            .expect("other region");
        let changed = cat
            .modify(&t.arn, 5, |t| -> Result<(), ()> {
                t.is_logging = true;
                Ok(())
            })
            .expect("modify")
            .expect("allowed")
            .expect("exists");
        assert!(changed.is_logging);
        assert_eq!(
            cat.modify(&t.arn, 5, |_| Err("no")).expect("modify"),
            Err("no")
        );
        drop(cat);
        let cat = Catalog::open(&path).expect("reopen");
        assert_eq!(cat.get(&t.arn).expect("get"), Some(changed));
        assert_eq!(cat.all_trails().expect("all").len(), 2);
        assert!(cat.delete(&t.arn).expect("delete"));
        assert!(!cat.delete(&t.arn).expect("delete again"));
        assert_eq!(cat.get(&t.arn).expect("get"), None);
    }

    #[test]
    fn quota_counts_multi_region_trails_everywhere() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        cat.create(&trail("m1", "us-west-2", true), 2)
            .expect("multi");
        cat.create(&trail("e1", "eu-west-1", false), 2).expect("eu");
        // eu-west-1 now holds m1 (multi) and e1: full.
        assert!(matches!(
            cat.create(&trail("e2", "eu-west-1", false), 2),
            Err(CatalogError::QuotaExceeded { .. })
        ));
        // A second multi-region trail would overflow eu-west-1 too.
        assert!(matches!(
            cat.create(&trail("m2", "us-east-1", true), 2),
            Err(CatalogError::QuotaExceeded { .. })
        ));
        cat.create(&trail("u1", "us-east-1", false), 2)
            .expect("us-east-1 has room");
        // Turning u1 multi-region would overflow eu-west-1: refused, and u1 stays as it was.
        let u1 = trail("u1", "us-east-1", false);
        let refused = cat.modify(&u1.arn, 2, |t| -> Result<(), ()> {
            t.is_multi_region_trail = true;
            Ok(())
        });
        assert!(matches!(refused, Err(CatalogError::QuotaExceeded { .. })));
        let stored = cat.get(&u1.arn).expect("get").expect("exists");
        assert!(!stored.is_multi_region_trail);
    }

    #[test]
    fn a_multi_region_trail_holds_its_name_in_every_region() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        cat.create(&trail("shared", "us-east-1", true), 5)
            .expect("multi");
        let clash = cat.create(&trail("shared", "eu-west-1", false), 5);
        assert!(matches!(clash, Err(CatalogError::AlreadyExists(_))));
        cat.create(&trail("solo", "eu-west-1", false), 5)
            .expect("solo");
        let clash = cat.create(&trail("solo", "us-east-1", true), 5);
        assert!(matches!(clash, Err(CatalogError::AlreadyExists(_))));
        cat.create(&trail("solo", "us-east-1", false), 5)
            .expect("single-region trails may share a name across regions");
    }

    fn fixture_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1/catalog.db")
    }

    /// The committed schema-v1 catalog (made by `make_fixture`, never regenerated for v1) still
    /// opens and reads back exactly.
    #[test]
    fn fixture_v1_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(fixture_path(), &path).expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v1");
        let mut expected = trail("fixture-trail", "us-east-1", true);
        expected.is_logging = true;
        expected.start_logging_ms = Some(1_767_323_045_000);
        expected.tags = vec![Tag {
            key: "team".into(),
            value: Some("security".into()),
        }];
        assert_eq!(cat.get(&expected.arn).expect("get"), Some(expected));
        assert_eq!(cat.all_trails().expect("all").len(), 1);
    }

    #[test]
    #[ignore = "writes the committed v1 fixture; never rerun for v1"]
    fn make_fixture() {
        let path = fixture_path();
        let _ = std::fs::remove_file(&path);
        let cat = Catalog::open(&path).expect("open");
        let mut t = trail("fixture-trail", "us-east-1", true);
        t.is_logging = true;
        t.start_logging_ms = Some(1_767_323_045_000);
        t.tags = vec![Tag {
            key: "team".into(),
            value: Some("security".into()),
        }];
        cat.create(&t, 5).expect("create");
        let conn = cat.conn().expect("conn");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL so the file is whole");
    }

    #[test]
    fn logging_spans_decide_what_was_recorded_while_logging() {
        let mut t = trail("s", "us-east-1", false);
        assert!(!t.logged_at(0));
        assert_eq!(t.next_logged(0), None);
        t.open_span(10);
        t.open_span(12); // already open: no change
        assert!(!t.logged_at(9) && t.logged_at(10) && t.logged_at(1_000));
        t.close_span(20);
        assert!(t.logged_at(19) && !t.logged_at(20));
        t.open_span(30);
        t.close_span(35);
        assert_eq!(t.next_logged(0), Some(10));
        assert_eq!(t.next_logged(15), Some(15));
        assert_eq!(t.next_logged(20), Some(30));
        assert_eq!(t.next_logged(35), None);
        t.close_span(99); // nothing open: no change
        assert_eq!(t.logging_spans.len(), 2);
        for i in 0..(MAX_LOGGING_SPANS as u64 + 5) {
            t.open_span(100 + 2 * i);
            t.close_span(101 + 2 * i);
        }
        assert_eq!(t.logging_spans.len(), MAX_LOGGING_SPANS);
    }

    fn fixture_v2_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v2/catalog.db")
    }

    fn fixture_v2_trail() -> Trail {
        let mut t = trail("fixture-trail", "us-east-1", true);
        t.is_logging = true;
        t.start_logging_ms = Some(1_767_323_045_000);
        t.logging_spans = vec![
            LoggingSpan {
                from: 5,
                to: Some(9),
            },
            LoggingSpan { from: 12, to: None },
        ];
        t
    }

    fn fixture_v2_state() -> DeliveryState {
        let mut s = DeliveryState::new(7);
        s.plan = Some(Plan {
            from: 7,
            to: 20,
            time_ms: 1_767_323_100_000,
        });
        s.latest_delivery_error = Some("NoSuchBucket".into());
        s.latest_delivery_attempt_ms = Some(1_767_323_100_000);
        s
    }

    /// The committed schema-v2 catalog (made by `make_fixture_v2`) still opens and reads back.
    #[test]
    fn fixture_v2_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(fixture_v2_path(), &path).expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v2");
        let t = fixture_v2_trail();
        assert_eq!(cat.get(&t.arn).expect("get"), Some(t.clone()));
        assert_eq!(
            cat.delivery_state(&t.arn).expect("state"),
            Some(fixture_v2_state())
        );
        let due = cat.outbox_due(i64::MAX, 10).expect("outbox");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].message, "{\"s3Bucket\":\"bucket\"}");
    }

    /// A version-1 file gains the delivery tables on open and takes delivery state.
    #[test]
    fn fixture_v1_upgrades_to_v2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(fixture_path(), &path).expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v1");
        let arn = trail("fixture-trail", "us-east-1", true).arn;
        cat.update_delivery(&arn, || DeliveryState::new(4), |_| {}, &[])
            .expect("update")
            .expect("trail exists");
        drop(cat);
        let version: i32 = Connection::open(&path)
            .expect("raw")
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    #[ignore = "writes the committed v2 fixture; never rerun for v2"]
    fn make_fixture_v2() {
        let path = fixture_v2_path();
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        let _ = std::fs::remove_file(&path);
        let cat = Catalog::open(&path).expect("open");
        let t = fixture_v2_trail();
        cat.create(&t, 5).expect("create");
        let note = Notification {
            topic_arn: "arn:aws:sns:us-east-1:111122223333:t".into(),
            endpoint: "http://127.0.0.1:9/hook".into(),
            message: "{\"s3Bucket\":\"bucket\"}".into(),
        };
        cat.update_delivery(&t.arn, fixture_v2_state, |_| {}, &[note])
            .expect("state");
        let conn = cat.conn().expect("conn");
        conn.pragma_update(None, "journal_mode", "DELETE")
            .expect("leave WAL so the file is whole");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        drop(Catalog::open(&path).expect("open"));
        Connection::open(&path)
            .expect("raw")
            .pragma_update(None, "user_version", 9)
            .expect("bump");
        assert!(matches!(
            Catalog::open(&path),
            Err(CatalogError::TooNew { found: 9 })
        ));
    }
}

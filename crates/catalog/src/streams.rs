//! Log streaming state per trail (schema v7): how far a trail's records have been streamed to
//! its log group's destination, and, for a file-set destination, which file is being appended
//! to and how long it was at the last commit (so a restart cuts off bytes written after it).

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Catalog, CatalogError};

/// The version of a stored [`StreamState`] body.
pub const STREAM_BODY_VERSION: u32 = 1;

pub(crate) const SCHEMA_V7: &str = "BEGIN;
     CREATE TABLE IF NOT EXISTS log_streams (
         trail_arn TEXT PRIMARY KEY,
         body TEXT NOT NULL
     );
     PRAGMA user_version = 7;
     COMMIT;";

/// The file a file-set destination appends to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFile {
    /// File name inside the trail's directory of the destination.
    pub name: String,
    /// Bytes of the file that belong to committed records; anything past it was written by a
    /// step that did not commit and is cut off before the next write.
    pub len: u64,
    /// When the file was started (for rotation by age).
    pub opened_ms: i64,
}

/// Where a trail's log stream stands, and what GetTrailStatus reports about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub v: u32,
    /// The log group this state streams to; a trail pointed at another group starts afresh.
    pub group_arn: String,
    /// Every record below this sequence number has been dealt with (sent or skipped).
    pub cursor: u64,
    /// The file being appended to, for a file-set destination.
    pub file: Option<StreamFile>,
    pub latest_delivery_ms: Option<i64>,
    pub latest_attempt_ms: Option<i64>,
    pub latest_error: Option<String>,
    /// Records sent.
    pub records: u64,
    /// Records left out because they are larger than a log event may be (256 KB).
    pub skipped: u64,
}

impl StreamState {
    pub fn new(group_arn: String, cursor: u64) -> Self {
        Self {
            v: STREAM_BODY_VERSION,
            group_arn,
            cursor,
            ..Self::default()
        }
    }
}

fn decode(body: &str) -> Result<StreamState, CatalogError> {
    let s: StreamState =
        serde_json::from_str(body).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    if s.v != STREAM_BODY_VERSION {
        return Err(CatalogError::Corrupt(format!(
            "log stream state version {} is unknown",
            s.v
        )));
    }
    Ok(s)
}

impl Catalog {
    /// A trail's log stream state, if it has one.
    pub fn log_stream(&self, arn: &str) -> Result<Option<StreamState>, CatalogError> {
        let conn = self.conn()?;
        let body: Option<String> = conn
            .query_row(
                "SELECT body FROM log_streams WHERE trail_arn = ?1",
                params![arn],
                |r| r.get(0),
            )
            .optional()?;
        body.map(|b| decode(&b)).transpose()
    }

    /// Every stored log stream state, by trail ARN.
    pub fn log_streams(&self) -> Result<Vec<(String, StreamState)>, CatalogError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached("SELECT trail_arn, body FROM log_streams")?;
        let rows: Vec<(String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(a, b)| Ok((a, decode(&b)?)))
            .collect()
    }

    /// Stores a trail's log stream state. Returns false (and stores nothing) if the trail no
    /// longer exists.
    pub fn put_log_stream(&self, arn: &str, state: &StreamState) -> Result<bool, CatalogError> {
        let body =
            serde_json::to_string(state).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row("SELECT 1 FROM trails WHERE arn = ?1", params![arn], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        if !exists {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO log_streams (trail_arn, body) VALUES (?1, ?2)
             ON CONFLICT (trail_arn) DO UPDATE SET body = excluded.body",
            params![arn, body],
        )?;
        tx.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Trail;
    use std::path::Path;

    fn fixture(version: u32) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/v{version}/catalog.db"))
    }

    const FIXTURE_V7_STATE: &str = r#"{"v":1,"group_arn":"arn:aws:logs:us-east-1:123456789012:log-group:audit","cursor":42,"file":{"name":"20260102T030405.000Z-00000000000000000040.jsonl","len":2048,"opened_ms":1767323045000},"latest_delivery_ms":1767323046000,"latest_attempt_ms":1767323046000,"latest_error":null,"records":7,"skipped":1}"#;
    const FIXTURE_V7_TRAIL: &str = "arn:aws:cloudtrail:us-east-1:123456789012:trail/streamed";

    /// A v7 file reads back its stream state.
    #[test]
    fn fixture_v7_reads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(fixture(7), &path).expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v7");
        let want: StreamState = serde_json::from_str(FIXTURE_V7_STATE).expect("state");
        assert_eq!(
            cat.log_stream(FIXTURE_V7_TRAIL).expect("read"),
            Some(want.clone())
        );
        assert_eq!(
            cat.log_streams().expect("all"),
            vec![(FIXTURE_V7_TRAIL.to_owned(), want)]
        );
    }

    /// A v6 catalog gains the stream table on open; states are kept per trail, refused for a
    /// trail that does not exist and dropped with the trail.
    #[test]
    fn fixture_v6_upgrades_to_v7() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("catalog.db");
        std::fs::copy(fixture(6), &path).expect("copy fixture");
        let cat = Catalog::open(&path).expect("open v6");
        assert_eq!(cat.log_streams().expect("all"), vec![]);
        let arn = "arn:aws:cloudtrail:us-east-1:123456789012:trail/t";
        let state = StreamState::new("arn:aws:logs:us-east-1:123456789012:log-group:g".into(), 5);
        assert!(!cat.put_log_stream(arn, &state).expect("put"));
        let t = Trail::new(
            arn.into(),
            "t".into(),
            "123456789012".into(),
            "us-east-1".into(),
            "b".into(),
            0,
        );
        cat.create(&t, 5).expect("create");
        assert!(cat.put_log_stream(arn, &state).expect("put"));
        assert_eq!(cat.log_stream(arn).expect("read"), Some(state));
        assert!(cat.delete(arn).expect("delete"));
        assert_eq!(cat.log_stream(arn).expect("read"), None);
        assert!(cat.alerts_config().expect("alerts").is_some());
    }
}

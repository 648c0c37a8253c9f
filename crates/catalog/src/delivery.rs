//! Delivery state per trail (cursor, pending plan, status) and the notification outbox.
//!
//! A delivery worker commits its progress here: the plan it is about to carry out is stored
//! before any object is written, and the cursor moves past the plan in the same transaction that
//! queues the plan's notifications. A crash in between replays the same plan.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::digests::{self, DigestChains, DigestFile};
use crate::{Catalog, CatalogError};

/// The version of a stored [`DeliveryState`] body.
pub const DELIVERY_BODY_VERSION: u32 = 1;

/// A batch being delivered: log sequence numbers `[from, to)`, stamped with the delivery time
/// that names its files. Replaying a plan writes the same object keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub from: u64,
    pub to: u64,
    pub time_ms: i64,
}

/// Where one trail's delivery stands, and what GetTrailStatus reports about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    pub v: u32,
    /// Every event below this sequence number has been dealt with.
    pub cursor: u64,
    pub plan: Option<Plan>,
    pub latest_delivery_time_ms: Option<i64>,
    pub latest_delivery_attempt_ms: Option<i64>,
    pub latest_delivery_attempt_succeeded_ms: Option<i64>,
    pub latest_delivery_error: Option<String>,
    pub latest_notification_time_ms: Option<i64>,
    pub latest_notification_attempt_ms: Option<i64>,
    pub latest_notification_attempt_succeeded_ms: Option<i64>,
    pub latest_notification_error: Option<String>,
    pub files_delivered: u64,
    pub events_delivered: u64,
    /// The trail's digest chains while log file validation is on (absent in bodies written
    /// before digests existed).
    #[serde(default)]
    pub digest: Option<DigestChains>,
    #[serde(default)]
    pub latest_digest_delivery_time_ms: Option<i64>,
    #[serde(default)]
    pub latest_digest_delivery_error: Option<String>,
    #[serde(default)]
    pub digests_delivered: u64,
    /// The plan's data keys while the trail encrypts its files: object key → the data key
    /// wrapped by the trail's KMS key (base64). Stored before the first write, so a replay
    /// encrypts to the same bytes; cleared with the plan. Absent in older bodies.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub plan_data_keys: std::collections::BTreeMap<String, String>,
}

impl DeliveryState {
    pub fn new(cursor: u64) -> Self {
        Self {
            v: DELIVERY_BODY_VERSION,
            cursor,
            ..Self::default()
        }
    }
}

/// A notification to queue: one message for one subscriber endpoint of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub topic_arn: String,
    pub endpoint: String,
    pub message: String,
}

/// A queued notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub trail_arn: String,
    pub topic_arn: String,
    pub endpoint: String,
    pub message: String,
    pub attempts: u32,
    pub next_attempt_ms: i64,
}

fn decode(body: &str) -> Result<DeliveryState, CatalogError> {
    let s: DeliveryState =
        serde_json::from_str(body).map_err(|e| CatalogError::Corrupt(e.to_string()))?;
    if s.v != DELIVERY_BODY_VERSION {
        return Err(CatalogError::Corrupt(format!(
            "delivery state version {} is unknown",
            s.v
        )));
    }
    Ok(s)
}

fn encode(s: &DeliveryState) -> Result<String, CatalogError> {
    serde_json::to_string(s).map_err(|e| CatalogError::Corrupt(e.to_string()))
}

fn read(tx: &rusqlite::Connection, arn: &str) -> Result<Option<DeliveryState>, CatalogError> {
    let body: Option<String> = tx
        .query_row(
            "SELECT body FROM deliveries WHERE trail_arn = ?1",
            params![arn],
            |r| r.get(0),
        )
        .optional()?;
    body.map(|b| decode(&b)).transpose()
}

fn trail_exists(tx: &rusqlite::Connection, arn: &str) -> Result<bool, CatalogError> {
    Ok(tx
        .query_row("SELECT 1 FROM trails WHERE arn = ?1", params![arn], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

impl Catalog {
    /// A trail's delivery state, if it has one yet.
    pub fn delivery_state(&self, arn: &str) -> Result<Option<DeliveryState>, CatalogError> {
        let conn = self.conn()?;
        read(&conn, arn)
    }

    /// Every stored delivery state, by trail ARN.
    pub fn delivery_states(&self) -> Result<Vec<(String, DeliveryState)>, CatalogError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached("SELECT trail_arn, body FROM deliveries")?;
        let rows: Vec<(String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(a, b)| Ok((a, decode(&b)?)))
            .collect()
    }

    /// Changes a trail's delivery state in one transaction (`init` when it has none yet) and
    /// queues `notifications` with it. Returns the new state, or `None` (and changes nothing)
    /// if the trail no longer exists.
    pub fn update_delivery(
        &self,
        arn: &str,
        init: impl FnOnce() -> DeliveryState,
        change: impl FnOnce(&mut DeliveryState),
        notifications: &[Notification],
    ) -> Result<Option<DeliveryState>, CatalogError> {
        self.update_delivery_with(arn, init, change, notifications, &[], None)
    }

    /// [`Catalog::update_delivery`] that also records delivered files for the digests
    /// (`add_files`) and drops the files a digest round listed (row ids up to `drop_files_upto`),
    /// all in the same transaction.
    pub fn update_delivery_with(
        &self,
        arn: &str,
        init: impl FnOnce() -> DeliveryState,
        change: impl FnOnce(&mut DeliveryState),
        notifications: &[Notification],
        add_files: &[DigestFile],
        drop_files_upto: Option<i64>,
    ) -> Result<Option<DeliveryState>, CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !trail_exists(&tx, arn)? {
            return Ok(None);
        }
        let mut state = read(&tx, arn)?.unwrap_or_else(init);
        change(&mut state);
        tx.execute(
            "INSERT INTO deliveries (trail_arn, body) VALUES (?1, ?2)
             ON CONFLICT (trail_arn) DO UPDATE SET body = excluded.body",
            params![arn, encode(&state)?],
        )?;
        for n in notifications {
            tx.execute(
                "INSERT INTO outbox (trail_arn, topic_arn, endpoint, message) VALUES (?1, ?2, ?3, ?4)",
                params![arn, n.topic_arn, n.endpoint, n.message],
            )?;
        }
        digests::insert_files(&tx, arn, add_files)?;
        if let Some(upto) = drop_files_upto {
            digests::drop_files(&tx, arn, Some(upto))?;
        }
        tx.commit()?;
        Ok(Some(state))
    }

    /// Up to `limit` queued notifications due at `now_ms`, oldest first.
    pub fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxRow>, CatalogError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT id, trail_arn, topic_arn, endpoint, message, attempts, next_attempt_ms
             FROM outbox WHERE next_attempt_ms <= ?1 ORDER BY id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![now_ms, limit], |r| {
                Ok(OutboxRow {
                    id: r.get(0)?,
                    trail_arn: r.get(1)?,
                    topic_arn: r.get(2)?,
                    endpoint: r.get(3)?,
                    message: r.get(4)?,
                    attempts: r.get(5)?,
                    next_attempt_ms: r.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The earliest time a queued notification is due, if any is queued.
    pub fn outbox_next_due(&self) -> Result<Option<i64>, CatalogError> {
        let conn = self.conn()?;
        Ok(conn.query_row("SELECT MIN(next_attempt_ms) FROM outbox", [], |r| r.get(0))?)
    }

    /// Settles one notification: removes it after a success, or counts the failed attempt and
    /// sets when to try again. Records the outcome in its trail's status in the same transaction.
    pub fn outbox_settle(
        &self,
        id: i64,
        trail_arn: &str,
        now_ms: i64,
        outcome: Result<(), (String, i64)>,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        match &outcome {
            Ok(()) => {
                tx.execute("DELETE FROM outbox WHERE id = ?1", params![id])?;
            }
            Err((_, retry_at)) => {
                tx.execute(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2 WHERE id = ?1",
                    params![id, retry_at],
                )?;
            }
        }
        if let Some(mut state) = read(&tx, trail_arn)? {
            state.latest_notification_attempt_ms = Some(now_ms);
            match outcome {
                Ok(()) => {
                    state.latest_notification_time_ms = Some(now_ms);
                    state.latest_notification_attempt_succeeded_ms = Some(now_ms);
                    state.latest_notification_error = None;
                }
                Err((e, _)) => state.latest_notification_error = Some(e),
            }
            tx.execute(
                "UPDATE deliveries SET body = ?2 WHERE trail_arn = ?1",
                params![trail_arn, encode(&state)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::trail;

    #[test]
    fn delivery_state_and_outbox_commit_together_and_go_with_the_trail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        let t = trail("d", "us-east-1", false);
        assert_eq!(
            cat.update_delivery(&t.arn, || DeliveryState::new(0), |_| {}, &[])
                .expect("update"),
            None,
            "no trail, no state"
        );
        cat.create(&t, 5).expect("create");
        let plan = Plan {
            from: 3,
            to: 9,
            time_ms: 1000,
        };
        let s = cat
            .update_delivery(
                &t.arn,
                || DeliveryState::new(3),
                |s| s.plan = Some(plan),
                &[],
            )
            .expect("update")
            .expect("exists");
        assert_eq!((s.cursor, s.plan), (3, Some(plan)));
        let note = Notification {
            topic_arn: "arn:aws:sns:us-east-1:111122223333:t".into(),
            endpoint: "http://127.0.0.1:1/hook".into(),
            message: "{}".into(),
        };
        cat.update_delivery(
            &t.arn,
            || unreachable!("state exists"),
            |s| {
                s.cursor = 9;
                s.plan = None;
            },
            std::slice::from_ref(&note),
        )
        .expect("commit");
        let due = cat.outbox_due(0, 10).expect("due");
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].endpoint, note.endpoint);
        cat.outbox_settle(due[0].id, &t.arn, 5, Err(("refused".into(), 100)))
            .expect("settle");
        assert!(cat.outbox_due(99, 10).expect("due").is_empty());
        assert_eq!(cat.outbox_next_due().expect("next"), Some(100));
        let s = cat.delivery_state(&t.arn).expect("get").expect("exists");
        assert_eq!(s.latest_notification_error.as_deref(), Some("refused"));
        assert_eq!(s.latest_notification_time_ms, None);
        let due = cat.outbox_due(100, 10).expect("due");
        assert_eq!(due[0].attempts, 1);
        cat.outbox_settle(due[0].id, &t.arn, 200, Ok(()))
            .expect("settle");
        let s = cat.delivery_state(&t.arn).expect("get").expect("exists");
        assert_eq!(s.latest_notification_time_ms, Some(200));
        assert_eq!(s.latest_notification_error, None);
        assert_eq!(cat.outbox_next_due().expect("next"), None);

        cat.update_delivery(&t.arn, || unreachable!(), |_| {}, &[note])
            .expect("queue");
        assert!(cat.delete(&t.arn).expect("delete"));
        assert_eq!(cat.delivery_state(&t.arn).expect("get"), None);
        assert!(cat.outbox_due(i64::MAX, 10).expect("due").is_empty());
    }
}

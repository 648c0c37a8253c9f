//! Alerts: the rules view's cursor and state, the messages it queued for each subscription, their
//! delivery outcomes and dead letters. The rules, topics and subscriptions themselves are one
//! versioned document (`alerts_config`, see `documents.rs`).
//!
//! The view commits the messages a batch of events produced together with its new cursor, so a
//! crash replays the batch from the old cursor and queues nothing twice. Messages leave the queue
//! when their subscriber accepts them, or as a dead letter after the last allowed attempt.

use rusqlite::{OptionalExtension, params};

use crate::{Catalog, CatalogError};

/// A message for one subscription, as the rules view or a Publish queues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlertMessage {
    pub subscription_arn: String,
    /// Stable across retries (receivers deduplicate on it).
    pub message_id: String,
    /// What to send, as the alerts crate encodes it.
    pub body: String,
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertMessageRow {
    pub id: i64,
    pub subscription_arn: String,
    pub message_id: String,
    pub body: String,
    /// Failed attempts so far.
    pub attempts: u32,
    pub created_ms: i64,
}

/// How an attempt to send a message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertOutcome {
    Delivered,
    /// Failed; try again at the given time.
    Retry {
        error: String,
        at_ms: i64,
    },
    /// Failed for the last time: becomes a dead letter.
    DeadLetter {
        error: String,
    },
}

/// A message given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub id: i64,
    pub subscription_arn: String,
    pub message_id: String,
    pub body: String,
    pub attempts: u32,
    pub error: String,
    pub created_ms: i64,
    pub failed_ms: i64,
}

/// One subscription's delivery record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscriptionStats {
    pub subscription_arn: String,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    /// Messages waiting (first attempt or retry).
    pub pending: u64,
    pub last_success_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// When the next waiting message is due.
    pub next_attempt_ms: Option<i64>,
}

pub(crate) const SCHEMA_V6: &str = "BEGIN;
     CREATE TABLE IF NOT EXISTS alerts_config (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         version INTEGER NOT NULL,
         body TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS alert_view (
         id INTEGER PRIMARY KEY CHECK (id = 1),
         cursor INTEGER NOT NULL,
         state TEXT NOT NULL
     );
     CREATE TABLE IF NOT EXISTS alert_messages (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         subscription_arn TEXT NOT NULL,
         message_id TEXT NOT NULL,
         body TEXT NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         next_attempt_ms INTEGER NOT NULL DEFAULT 0,
         created_ms INTEGER NOT NULL
     );
     CREATE INDEX IF NOT EXISTS alert_messages_due ON alert_messages (next_attempt_ms, id);
     CREATE INDEX IF NOT EXISTS alert_messages_by_subscription ON alert_messages (subscription_arn);
     CREATE TABLE IF NOT EXISTS alert_dead_letters (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         subscription_arn TEXT NOT NULL,
         message_id TEXT NOT NULL,
         body TEXT NOT NULL,
         attempts INTEGER NOT NULL,
         error TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         failed_ms INTEGER NOT NULL
     );
     CREATE TABLE IF NOT EXISTS alert_subscription_stats (
         subscription_arn TEXT PRIMARY KEY,
         delivered INTEGER NOT NULL DEFAULT 0,
         failed_attempts INTEGER NOT NULL DEFAULT 0,
         dead_lettered INTEGER NOT NULL DEFAULT 0,
         last_success_ms INTEGER,
         last_error TEXT,
         last_error_ms INTEGER
     );
     PRAGMA user_version = 6;
     COMMIT;";

/// Queues `messages`, due at once.
fn insert_messages(
    tx: &rusqlite::Transaction<'_>,
    messages: &[NewAlertMessage],
    now_ms: i64,
) -> Result<(), CatalogError> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO alert_messages (subscription_arn, message_id, body, next_attempt_ms, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )?;
    for m in messages {
        insert.execute(params![m.subscription_arn, m.message_id, m.body, now_ms])?;
    }
    Ok(())
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Catalog {
    /// The rules view's cursor (the next sequence number to read) and its state, if it ever
    /// committed.
    pub fn alert_view(&self) -> Result<Option<(u64, String)>, CatalogError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(
                "SELECT cursor, state FROM alert_view WHERE id = 1",
                [],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?;
        Ok(row.map(|(c, s)| (u64_of(c), s)))
    }

    /// Queues `messages` and moves the view to `cursor` with `state`, in one transaction.
    pub fn alert_advance(
        &self,
        cursor: u64,
        state: &str,
        messages: &[NewAlertMessage],
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let cursor = i64::try_from(cursor).map_err(|_| CatalogError::Corrupt("cursor".into()))?;
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        insert_messages(&tx, messages, now_ms)?;
        tx.execute(
            "INSERT INTO alert_view (id, cursor, state) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET cursor = excluded.cursor, state = excluded.state",
            params![cursor, state],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Queues messages outside the view (a Publish).
    pub fn alert_enqueue(
        &self,
        messages: &[NewAlertMessage],
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        insert_messages(&tx, messages, now_ms)?;
        tx.commit()?;
        Ok(())
    }

    /// Up to `limit` messages due at `now_ms`, oldest first.
    pub fn alert_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<AlertMessageRow>, CatalogError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT id, subscription_arn, message_id, body, attempts, created_ms
             FROM alert_messages WHERE next_attempt_ms <= ?1 ORDER BY next_attempt_ms, id LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![now_ms, limit], |r| {
                Ok(AlertMessageRow {
                    id: r.get(0)?,
                    subscription_arn: r.get(1)?,
                    message_id: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                    created_ms: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// When the earliest queued message is due, if any is queued.
    pub fn alert_next_due(&self) -> Result<Option<i64>, CatalogError> {
        let conn = self.conn()?;
        Ok(
            conn.query_row("SELECT MIN(next_attempt_ms) FROM alert_messages", [], |r| {
                r.get(0)
            })?,
        )
    }

    /// Records how an attempt ended, with the subscription's counters, in one transaction.
    pub fn alert_settle(
        &self,
        row: &AlertMessageRow,
        outcome: &AlertOutcome,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let still_queued = tx
            .query_row(
                "SELECT 1 FROM alert_messages WHERE id = ?1",
                params![row.id],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !still_queued {
            // Unsubscribed while the attempt was under way.
            return Ok(());
        }
        tx.execute(
            "INSERT INTO alert_subscription_stats (subscription_arn) VALUES (?1)
             ON CONFLICT (subscription_arn) DO NOTHING",
            params![row.subscription_arn],
        )?;
        match outcome {
            AlertOutcome::Delivered => {
                tx.execute("DELETE FROM alert_messages WHERE id = ?1", params![row.id])?;
                tx.execute(
                    "UPDATE alert_subscription_stats SET delivered = delivered + 1, last_success_ms = ?2
                     WHERE subscription_arn = ?1",
                    params![row.subscription_arn, now_ms],
                )?;
            }
            AlertOutcome::Retry { error, at_ms } => {
                tx.execute(
                    "UPDATE alert_messages SET attempts = attempts + 1, next_attempt_ms = ?2 WHERE id = ?1",
                    params![row.id, at_ms],
                )?;
                tx.execute(
                    "UPDATE alert_subscription_stats SET failed_attempts = failed_attempts + 1,
                     last_error = ?2, last_error_ms = ?3 WHERE subscription_arn = ?1",
                    params![row.subscription_arn, error, now_ms],
                )?;
            }
            AlertOutcome::DeadLetter { error } => {
                tx.execute("DELETE FROM alert_messages WHERE id = ?1", params![row.id])?;
                tx.execute(
                    "INSERT INTO alert_dead_letters
                     (subscription_arn, message_id, body, attempts, error, created_ms, failed_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        row.subscription_arn,
                        row.message_id,
                        row.body,
                        row.attempts + 1,
                        error,
                        row.created_ms,
                        now_ms
                    ],
                )?;
                tx.execute(
                    "UPDATE alert_subscription_stats SET failed_attempts = failed_attempts + 1,
                     dead_lettered = dead_lettered + 1, last_error = ?2, last_error_ms = ?3
                     WHERE subscription_arn = ?1",
                    params![row.subscription_arn, error, now_ms],
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The delivery record of `subscription_arn` (zeros when nothing was sent yet).
    pub fn alert_stats(&self, subscription_arn: &str) -> Result<SubscriptionStats, CatalogError> {
        let conn = self.conn()?;
        let mut stats = conn
            .query_row(
                "SELECT delivered, failed_attempts, dead_lettered, last_success_ms, last_error, last_error_ms
                 FROM alert_subscription_stats WHERE subscription_arn = ?1",
                params![subscription_arn],
                |r| {
                    Ok(SubscriptionStats {
                        subscription_arn: subscription_arn.to_owned(),
                        delivered: u64_of(r.get(0)?),
                        failed_attempts: u64_of(r.get(1)?),
                        dead_lettered: u64_of(r.get(2)?),
                        pending: 0,
                        last_success_ms: r.get(3)?,
                        last_error: r.get(4)?,
                        last_error_ms: r.get(5)?,
                        next_attempt_ms: None,
                    })
                },
            )
            .optional()?
            .unwrap_or_else(|| SubscriptionStats {
                subscription_arn: subscription_arn.to_owned(),
                ..SubscriptionStats::default()
            });
        let (pending, next): (i64, Option<i64>) = conn.query_row(
            "SELECT COUNT(*), MIN(next_attempt_ms) FROM alert_messages WHERE subscription_arn = ?1",
            params![subscription_arn],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        stats.pending = u64_of(pending);
        stats.next_attempt_ms = next;
        Ok(stats)
    }

    /// Dead letters, newest first, of one subscription or of all; at most `limit`.
    pub fn alert_dead_letters(
        &self,
        subscription_arn: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, CatalogError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(
            "SELECT id, subscription_arn, message_id, body, attempts, error, created_ms, failed_ms
             FROM alert_dead_letters WHERE ?1 IS NULL OR subscription_arn = ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![subscription_arn, limit], |r| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    subscription_arn: r.get(1)?,
                    message_id: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                    error: r.get(5)?,
                    created_ms: r.get(6)?,
                    failed_ms: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Forgets a removed subscription's waiting messages and counters (its dead letters stay).
    pub fn alert_forget_subscription(&self, subscription_arn: &str) -> Result<(), CatalogError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM alert_messages WHERE subscription_arn = ?1",
            params![subscription_arn],
        )?;
        tx.execute(
            "DELETE FROM alert_subscription_stats WHERE subscription_arn = ?1",
            params![subscription_arn],
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sub: &str, id: &str) -> NewAlertMessage {
        NewAlertMessage {
            subscription_arn: sub.to_owned(),
            message_id: id.to_owned(),
            body: format!("body of {id}"),
        }
    }

    #[test]
    fn view_commits_messages_with_its_cursor_and_settles_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.db");
        let cat = Catalog::open(&path).expect("open");
        assert_eq!(cat.alert_view().expect("view"), None);
        cat.alert_advance(10, "{\"s\":1}", &[msg("a", "m1"), msg("b", "m2")], 1000)
            .expect("advance");
        drop(cat);
        let cat = Catalog::open(&path).expect("reopen");
        assert_eq!(
            cat.alert_view().expect("view"),
            Some((10, "{\"s\":1}".to_owned()))
        );
        assert_eq!(cat.alert_next_due().expect("next"), Some(1000));
        let due = cat.alert_due(1000, 10).expect("due");
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].message_id, "m1");

        cat.alert_settle(&due[0], &AlertOutcome::Delivered, 1100)
            .expect("settle");
        cat.alert_settle(
            &due[1],
            &AlertOutcome::Retry {
                error: "503".into(),
                at_ms: 3000,
            },
            1100,
        )
        .expect("retry");
        assert!(cat.alert_due(2999, 10).expect("due").is_empty());
        let again = cat.alert_due(3000, 10).expect("due");
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].attempts, 1);
        cat.alert_settle(
            &again[0],
            &AlertOutcome::DeadLetter {
                error: "still 503".into(),
            },
            3100,
        )
        .expect("dead letter");
        assert_eq!(cat.alert_next_due().expect("next"), None);

        let a = cat.alert_stats("a").expect("stats");
        assert_eq!(
            (a.delivered, a.pending, a.last_success_ms),
            (1, 0, Some(1100))
        );
        let b = cat.alert_stats("b").expect("stats");
        assert_eq!(
            (b.delivered, b.failed_attempts, b.dead_lettered, b.pending),
            (0, 2, 1, 0)
        );
        assert_eq!(b.last_error.as_deref(), Some("still 503"));
        let dead = cat.alert_dead_letters(Some("b"), 10).expect("dead");
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (
                dead[0].message_id.as_str(),
                dead[0].attempts,
                dead[0].failed_ms
            ),
            ("m2", 2, 3100)
        );
        assert!(
            cat.alert_dead_letters(Some("a"), 10)
                .expect("dead")
                .is_empty()
        );
    }

    #[test]
    fn forgetting_a_subscription_drops_its_queue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = Catalog::open(&dir.path().join("c.db")).expect("open");
        cat.alert_enqueue(&[msg("a", "m1"), msg("b", "m2")], 5)
            .expect("enqueue");
        let due = cat.alert_due(5, 10).expect("due");
        cat.alert_forget_subscription("a").expect("forget");
        // A settle racing the removal is a no-op.
        cat.alert_settle(&due[0], &AlertOutcome::Delivered, 6)
            .expect("settle");
        assert_eq!(cat.alert_stats("a").expect("stats").delivered, 0);
        let left = cat.alert_due(10, 10).expect("due");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].subscription_arn, "b");
    }
}

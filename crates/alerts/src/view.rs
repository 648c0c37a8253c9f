//! The rules view: follows the event log from its own cursor, matches each record's EventBridge
//! envelope against the enabled rules, and queues one message per subscription of each target
//! topic. The messages of a batch, the new cursor and the thresholds' state commit in one
//! catalog transaction, so a crash replays the batch and queues nothing twice; the dispatcher
//! sends them at least once. Ingest never waits for it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use opentrail_catalog::{Catalog, CatalogError, NewAlertMessage};
use opentrail_log::{EventLog, LogError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{AlertsConfig, Protocol, RuleState, SubscriptionDef, Threshold};
use crate::event::{envelope, is_read_only_management};
use crate::pattern::Pattern;

/// Namespace of message ids (UUIDv5 of rule, event and subscription).
const MESSAGE_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x2c9d_41a7_6b3e_4f10_8d52_c7e9_1a4b_3f66);
/// SNS's longest subject.
const MAX_SUBJECT: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("stored rules view state is unreadable: {0}")]
    Corrupt(String),
}

/// What a queued message carries (the catalog keeps it as JSON with `"v": 1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    pub v: u32,
    pub topic_arn: String,
    pub protocol: Protocol,
    pub endpoint: String,
    pub subject: String,
    /// The EventBridge event (or a published message) as sent.
    pub message: String,
    /// The rule that matched; none for a published message.
    #[serde(default)]
    pub rule: Option<String>,
}

impl Outgoing {
    pub fn decode(body: &str) -> Result<Self, String> {
        serde_json::from_str(body).map_err(|e| format!("unreadable queued message: {e}"))
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One enabled rule with targets, ready to match.
#[derive(Debug)]
struct CompiledRule {
    name: String,
    arn: String,
    pattern: Pattern,
    all_management: bool,
    threshold: Option<Threshold>,
    subscriptions: Vec<SubscriptionDef>,
}

/// The configuration as the view and the dispatcher use it.
#[derive(Debug, Default)]
pub struct Compiled {
    pub config: AlertsConfig,
    rules: Vec<CompiledRule>,
}

impl Compiled {
    pub fn new(config: AlertsConfig) -> Self {
        let mut rules = Vec::new();
        for r in config.rules.values() {
            if r.state == RuleState::Disabled || r.targets.is_empty() {
                continue;
            }
            let Ok(pattern) = Pattern::parse(&r.event_pattern) else {
                tracing::error!(rule = %r.name, "stored rule pattern does not parse; skipped");
                continue;
            };
            let mut subscriptions: Vec<SubscriptionDef> = Vec::new();
            for t in &r.targets {
                for s in config
                    .subscriptions
                    .values()
                    .filter(|s| s.topic_arn == t.arn)
                {
                    if !subscriptions.iter().any(|x| x.arn == s.arn) {
                        subscriptions.push(s.clone());
                    }
                }
            }
            rules.push(CompiledRule {
                name: r.name.clone(),
                arn: r.arn.clone(),
                pattern,
                all_management: r.state == RuleState::EnabledWithAllManagementEvents,
                threshold: r.threshold,
                subscriptions,
            });
        }
        Self { config, rules }
    }

    /// Rules that could queue anything.
    pub fn active_rules(&self) -> usize {
        self.rules.len()
    }
}

/// The current configuration, swapped whole on every change.
#[derive(Debug, Default)]
pub struct Live {
    current: RwLock<Arc<Compiled>>,
}

impl Live {
    pub fn new(config: AlertsConfig) -> Self {
        Self {
            current: RwLock::new(Arc::new(Compiled::new(config))),
        }
    }

    pub fn get(&self) -> Arc<Compiled> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub fn set(&self, config: AlertsConfig) {
        let next = Arc::new(Compiled::new(config));
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(p) => *p.into_inner() = next,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Burst {
    /// Event times (ms) of the recent matches, oldest first.
    times: Vec<i64>,
    quiet_until_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ViewState {
    #[serde(default)]
    bursts: BTreeMap<String, Burst>,
}

impl Burst {
    /// Counts a match at `t`; true when it completes a burst (and starts a quiet period).
    fn hit(&mut self, t: i64, th: Threshold) -> bool {
        let period = i64::from(th.period_secs) * 1000;
        self.times.push(t);
        self.times.sort_unstable();
        let newest = self.times.last().copied().unwrap_or(t);
        self.times.retain(|x| *x > newest - period);
        let keep = usize::try_from(th.count).unwrap_or(usize::MAX);
        if self.times.len() > keep {
            let cut = self.times.len() - keep;
            self.times.drain(..cut);
        }
        if self.times.len() >= keep && t >= self.quiet_until_ms {
            self.quiet_until_ms = t + period;
            self.times.clear();
            return true;
        }
        false
    }
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Records the cursor moved past.
    pub records: u64,
    pub matches: u64,
    pub messages: u64,
}

/// The view over the log.
pub struct RuleView {
    log: EventLog,
    catalog: Arc<Catalog>,
    account: String,
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(1);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn who(record: &Value) -> String {
    let id = &record["userIdentity"];
    ["arn", "userName", "type"]
        .iter()
        .find_map(|k| id.get(*k).and_then(Value::as_str))
        .unwrap_or("unknown")
        .to_owned()
}

impl RuleView {
    pub fn new(log: EventLog, catalog: Arc<Catalog>, account: impl Into<String>) -> Self {
        Self {
            log,
            catalog,
            account: account.into(),
        }
    }

    /// The view's cursor, once it has one.
    pub fn cursor(&self) -> Result<Option<u64>, ViewError> {
        Ok(self.catalog.alert_view()?.map(|(c, _)| c))
    }

    /// Reads up to `max` records from the cursor, queues their messages and commits.
    pub fn step(&self, live: &Compiled, max: usize, now_ms: i64) -> Result<Step, ViewError> {
        let end = self.log.durable_end().next_seq;
        let Some((mut cursor, state)) = self.catalog.alert_view()? else {
            // First run: rules apply to events recorded from now on.
            self.catalog.alert_advance(end, "{}", &[], now_ms)?;
            return Ok(Step::default());
        };
        let first = self.log.first_seq();
        if cursor < first {
            tracing::warn!(
                cursor,
                first,
                "rules view cursor is below the log's first record; skipping ahead"
            );
            cursor = first;
        }
        if cursor >= end {
            return Ok(Step::default());
        }
        let mut state: ViewState =
            serde_json::from_str(&state).map_err(|e| ViewError::Corrupt(e.to_string()))?;
        if live.rules.is_empty() {
            // Nothing can match: move on without reading.
            self.catalog
                .alert_advance(end, &encode_state(&state)?, &[], now_ms)?;
            return Ok(Step {
                records: end - cursor,
                ..Step::default()
            });
        }
        let mut reader = self.log.reader(cursor);
        let records = reader.read(max)?;
        let next = reader.next_seq();
        let mut messages = Vec::new();
        let mut matches = 0u64;
        for rec in &records {
            let Ok(value) = serde_json::from_slice::<Value>(&rec.json) else {
                tracing::warn!(seq = rec.seq, "record is not JSON; no rule sees it");
                continue;
            };
            let read_only = is_read_only_management(&value);
            if read_only && !live.rules.iter().any(|r| r.all_management) {
                continue;
            }
            let env = envelope(value, &self.account);
            let mut text: Option<String> = None;
            for rule in &live.rules {
                if (read_only && !rule.all_management) || !rule.pattern.matches(&env) {
                    continue;
                }
                matches += 1;
                let detail = &env["detail"];
                let event_name = detail["eventName"].as_str().unwrap_or("event");
                let subject = match rule.threshold {
                    Some(th) => {
                        let burst = state.bursts.entry(rule.name.clone()).or_default();
                        if !burst.hit(rec.time_ms, th) {
                            continue;
                        }
                        format!(
                            "[OpenTrail] {}: {} matching events within {}s, the last {} by {}",
                            rule.name,
                            th.count,
                            th.period_secs,
                            event_name,
                            who(detail)
                        )
                    }
                    None => format!(
                        "[OpenTrail] {}: {} by {}",
                        rule.name,
                        event_name,
                        who(detail)
                    ),
                };
                let subject = truncate(subject, MAX_SUBJECT);
                let message = text.get_or_insert_with(|| env.to_string()).clone();
                let event_id = env["id"].as_str().unwrap_or_default();
                for sub in &rule.subscriptions {
                    let id = uuid::Uuid::new_v5(
                        &MESSAGE_NAMESPACE,
                        format!("{}\n{}\n{}", rule.arn, event_id, sub.arn).as_bytes(),
                    );
                    messages.push(NewAlertMessage {
                        subscription_arn: sub.arn.clone(),
                        message_id: id.to_string(),
                        body: Outgoing {
                            v: 1,
                            topic_arn: sub.topic_arn.clone(),
                            protocol: sub.protocol,
                            endpoint: sub.endpoint.clone(),
                            subject: subject.clone(),
                            message: message.clone(),
                            rule: Some(rule.name.clone()),
                        }
                        .encode(),
                    });
                }
            }
        }
        // Forget bursts of rules that are gone.
        state
            .bursts
            .retain(|name, _| live.rules.iter().any(|r| &r.name == name));
        let queued = messages.len() as u64;
        self.catalog
            .alert_advance(next, &encode_state(&state)?, &messages, now_ms)?;
        Ok(Step {
            records: next - cursor,
            matches,
            messages: queued,
        })
    }
}

fn encode_state(state: &ViewState) -> Result<String, ViewError> {
    serde_json::to_string(state).map_err(|e| ViewError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TargetDef;
    use opentrail_log::{LogConfig, NewRecord};

    fn record(name: &str, id: &str, read_only: bool) -> NewRecord {
        let json = serde_json::json!({
            "eventVersion": "1.11", "eventID": id, "eventTime": "2026-11-21T10:00:00Z",
            "eventSource": "cloudtrail.amazonaws.com", "eventName": name, "awsRegion": "us-east-1",
            "eventType": "AwsApiCall", "readOnly": read_only, "recipientAccountId": "111122223333",
            "userIdentity": {"type": "Root", "arn": "arn:aws:iam::111122223333:root"}
        });
        NewRecord {
            time_ms: 1_000,
            json: serde_json::to_vec(&json).expect("json"),
        }
    }

    fn config() -> AlertsConfig {
        let mut c = AlertsConfig::default();
        let t = c
            .create_topic("t", "k", "arn:aws:sns:us-east-1:111122223333", 0, false)
            .expect("topic");
        c.subscribe(&t, "https", "https://a.example/", 0, false)
            .expect("sub");
        c.subscribe(&t, "email", "ops@example.com", 0, false)
            .expect("sub");
        c.put_rule(
            "stop",
            r#"{"detail":{"eventName":["StopLogging"]}}"#,
            RuleState::Enabled,
            None,
            None,
            "arn:aws:events:us-east-1:111122223333:rule",
            0,
        )
        .expect("rule");
        c.put_targets(
            "stop",
            &[TargetDef {
                id: "1".into(),
                arn: t,
            }],
        )
        .expect("targets");
        c
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_view_queues_each_match_once_per_subscriber_and_resumes_from_its_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Arc::new(Catalog::open(&dir.path().join("c.db")).expect("catalog"));
        let (log, _) = EventLog::open(LogConfig::new(dir.path().join("log"))).expect("log");
        log.append(vec![record("StopLogging", "before", false)])
            .await
            .expect("append");
        let view = RuleView::new(log.clone(), Arc::clone(&catalog), "111122223333");
        let live = Compiled::new(config());
        assert_eq!(live.active_rules(), 1);
        // The first step only places the cursor: rules see events from now on.
        assert_eq!(view.step(&live, 100, 0).expect("step"), Step::default());
        assert_eq!(view.cursor().expect("cursor"), Some(1));
        // One append each: the reader reads whole frames.
        for r in [
            record("StopLogging", "e1", false),
            record("StartLogging", "e2", false),
            record("StopLogging", "e3", true),
        ] {
            log.append(vec![r]).await.expect("append");
        }
        let step = view.step(&live, 2, 0).expect("step");
        assert_eq!((step.records, step.matches, step.messages), (2, 1, 2));
        let step = view.step(&live, 100, 0).expect("step");
        assert_eq!(
            (step.records, step.matches),
            (1, 0),
            "an ENABLED rule does not see a read-only call"
        );
        assert_eq!(view.step(&live, 100, 0).expect("step"), Step::default());
        let due = catalog.alert_due(i64::MAX, 100).expect("due");
        assert_eq!(due.len(), 2);
        let out = Outgoing::decode(&due[0].body).expect("outgoing");
        let event: Value = serde_json::from_str(&out.message).expect("event");
        assert_eq!(event["detail"]["eventID"], "e1");
        assert_eq!(
            out.subject,
            "[OpenTrail] stop: StopLogging by arn:aws:iam::111122223333:root"
        );
        assert_ne!(
            due[0].message_id, due[1].message_id,
            "one id per subscription"
        );

        // A new view over the same catalog (a restart) starts where the last commit left off.
        let again = RuleView::new(log.clone(), Arc::clone(&catalog), "111122223333");
        assert_eq!(again.cursor().expect("cursor"), Some(4));
        assert_eq!(again.step(&live, 100, 0).expect("step"), Step::default());
        assert_eq!(catalog.alert_due(i64::MAX, 100).expect("due").len(), 2);
        log.close();
    }

    #[test]
    fn bursts_fire_once_per_period() {
        let th = Threshold {
            count: 3,
            period_secs: 60,
        };
        let mut b = Burst::default();
        assert!(!b.hit(0, th));
        assert!(!b.hit(20_000, th));
        assert!(!b.hit(70_000, th), "the first fell out of the window");
        assert!(b.hit(71_000, th), "three within a minute");
        assert!(!b.hit(72_000, th));
        assert!(!b.hit(73_000, th));
        assert!(!b.hit(74_000, th), "quiet for a period after firing");
        assert!(b.hit(131_000, th), "fires again after the quiet period");
    }
}

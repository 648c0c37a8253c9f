//! The alerts configuration: topics, their subscriptions and the event rules, kept as one
//! versioned JSON document in the catalog (`"format": 1`). Changes are made to a copy and stored
//! with a version check; every change is checked here, with the limits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pattern::Pattern;

/// The document format this code reads and writes.
pub const FORMAT: u32 = 1;
pub const MAX_TOPICS: usize = 100;
pub const MAX_SUBSCRIPTIONS_PER_TOPIC: usize = 100;
/// EventBridge's default rules per event bus.
pub const MAX_RULES: usize = 300;
/// EventBridge's targets per rule.
pub const MAX_TARGETS_PER_RULE: usize = 5;
pub const MAX_DESCRIPTION: usize = 512;
/// Longest endpoint (URL, address or NATS subject URL).
pub const MAX_ENDPOINT: usize = 2048;

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Pattern(String),
    #[error("{0}")]
    Limit(String),
    #[error("the stored alerts configuration is unreadable: {0}")]
    Corrupt(String),
}

/// How a subscription receives messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Https,
    Email,
    Nats,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            "email" => Some(Self::Email),
            "nats" => Some(Self::Nats),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Email => "email",
            Self::Nats => "nats",
        }
    }

    /// The protocol a configured endpoint implies: its URL scheme, or `mailto:`.
    pub fn of_endpoint(endpoint: &str) -> Option<(Self, String)> {
        if let Some(addr) = endpoint.strip_prefix("mailto:") {
            return Some((Self::Email, addr.to_owned()));
        }
        let scheme = endpoint.split_once("://")?.0;
        Some((Self::parse(scheme)?, endpoint.to_owned()))
    }
}

/// Where a NATS subscription publishes: `nats://host:port/subject`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsEndpoint {
    pub server: String,
    pub subject: String,
}

impl NatsEndpoint {
    pub fn parse(endpoint: &str) -> Result<Self, String> {
        let rest = endpoint
            .strip_prefix("nats://")
            .ok_or_else(|| format!("{endpoint:?} does not start with nats://"))?;
        let (host, subject) = rest
            .split_once('/')
            .ok_or_else(|| format!("{endpoint:?} names no subject (nats://host:port/subject)"))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(format!("{endpoint:?} names no server"));
        }
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        };
        if !subject.split('.').all(token_ok) {
            return Err(format!(
                "{subject:?} is not a NATS subject: dot-separated tokens of letters, digits, _ and - (no wildcards)"
            ));
        }
        Ok(Self {
            server: format!("nats://{host}"),
            subject: subject.to_owned(),
        })
    }
}

fn check_endpoint(protocol: Protocol, endpoint: &str) -> Result<(), ConfigError> {
    let bad = |why: String| {
        Err(ConfigError::Invalid(format!(
            "Invalid parameter: Endpoint: {why}"
        )))
    };
    if endpoint.is_empty() || endpoint.len() > MAX_ENDPOINT {
        return bad(format!("must be 1 to {MAX_ENDPOINT} characters"));
    }
    match protocol {
        Protocol::Http | Protocol::Https => {
            let prefix = if protocol == Protocol::Http {
                "http://"
            } else {
                "https://"
            };
            match endpoint.strip_prefix(prefix) {
                Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(()),
                _ => bad(format!(
                    "{endpoint:?} is not a {} URL",
                    protocol.name().to_uppercase()
                )),
            }
        }
        Protocol::Email => {
            let ok = endpoint.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty()
                    && d.contains('.')
                    && !d.starts_with('.')
                    && !d.ends_with('.')
                    && !endpoint.contains(char::is_whitespace)
                    && !endpoint.contains(['<', '>', ',', ';'])
            });
            if ok {
                Ok(())
            } else {
                bad(format!("{endpoint:?} is not an email address"))
            }
        }
        Protocol::Nats => NatsEndpoint::parse(endpoint).map(|_| ()).or_else(bad),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicDef {
    pub name: String,
    pub arn: String,
    /// The HMAC-SHA256 key webhook messages are signed with.
    pub secret: String,
    pub created_ms: i64,
    /// Declared in the settings (re-declared at every start).
    #[serde(default)]
    pub declared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionDef {
    pub arn: String,
    pub topic_arn: String,
    pub protocol: Protocol,
    pub endpoint: String,
    pub created_ms: i64,
    #[serde(default)]
    pub declared: bool,
}

/// EventBridge's rule states. `ENABLED` sees every event but read-only management calls;
/// `ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS` sees those too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleState {
    #[serde(rename = "ENABLED")]
    Enabled,
    #[serde(rename = "DISABLED")]
    Disabled,
    #[serde(rename = "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS")]
    EnabledWithAllManagementEvents,
}

impl RuleState {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ENABLED" => Some(Self::Enabled),
            "DISABLED" => Some(Self::Disabled),
            "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS" => {
                Some(Self::EnabledWithAllManagementEvents)
            }
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Enabled => "ENABLED",
            Self::Disabled => "DISABLED",
            Self::EnabledWithAllManagementEvents => "ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS",
        }
    }
}

/// An OpenTrail extension: fire once `count` matching events fall within `period_secs` (by
/// event time), then stay quiet for a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threshold {
    pub count: u32,
    pub period_secs: u32,
}

impl Threshold {
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(2..=10_000).contains(&self.count) || !(1..=86_400).contains(&self.period_secs) {
            return Err(ConfigError::Invalid(
                "Threshold: Count must be 2 to 10000 and Period 1 to 86400 seconds".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDef {
    pub id: String,
    pub arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDef {
    pub name: String,
    pub arn: String,
    pub event_pattern: String,
    pub state: RuleState,
    pub description: Option<String>,
    pub targets: Vec<TargetDef>,
    pub threshold: Option<Threshold>,
    pub created_ms: i64,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsConfig {
    pub format: u32,
    /// By name.
    pub topics: BTreeMap<String, TopicDef>,
    /// By ARN.
    pub subscriptions: BTreeMap<String, SubscriptionDef>,
    /// By name.
    pub rules: BTreeMap<String, RuleDef>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            format: FORMAT,
            topics: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            rules: BTreeMap::new(),
        }
    }
}

/// Rule and target names: 1–64 of letters, digits, `.`, `-`, `_`.
pub fn check_rule_name(member: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{member} {name:?} must be 1 to 64 letters, digits, '.', '-' or '_'"
        )))
    }
}

impl AlertsConfig {
    /// Reads a stored document.
    pub fn decode(body: &str) -> Result<Self, ConfigError> {
        let c: Self =
            serde_json::from_str(body).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        if c.format != FORMAT {
            return Err(ConfigError::Corrupt(format!(
                "format {} is not the one this server reads ({FORMAT})",
                c.format
            )));
        }
        Ok(c)
    }

    pub fn encode(&self) -> Result<String, ConfigError> {
        serde_json::to_string(self).map_err(|e| ConfigError::Corrupt(e.to_string()))
    }

    /// The topic a name or ARN refers to.
    pub fn topic(&self, name_or_arn: &str) -> Option<&TopicDef> {
        let name = name_or_arn.rsplit(':').next().unwrap_or(name_or_arn);
        self.topics
            .get(name)
            .filter(|t| !name_or_arn.starts_with("arn:") || t.arn == name_or_arn)
    }

    /// The topic with exactly this ARN.
    pub fn topic_by_arn(&self, arn: &str) -> Result<&TopicDef, ConfigError> {
        self.topic(arn)
            .filter(|t| t.arn == arn)
            .ok_or_else(|| ConfigError::NotFound(format!("Topic does not exist: {arn}")))
    }

    /// Creates a topic (or returns the one of that name). `secret` signs webhook messages.
    pub fn create_topic(
        &mut self,
        name: &str,
        secret: &str,
        arn_prefix: &str,
        now_ms: i64,
        declared: bool,
    ) -> Result<String, ConfigError> {
        if !opentrail_model::names::is_valid_topic_name(name) {
            return Err(ConfigError::Invalid(format!(
                "Invalid parameter: Topic Name {name:?}: 1 to 256 letters, digits, '_' or '-'"
            )));
        }
        if let Some(t) = self.topics.get_mut(name) {
            if declared {
                t.declared = true;
                if !secret.is_empty() {
                    t.secret = secret.to_owned();
                }
            }
            return Ok(t.arn.clone());
        }
        if self.topics.len() >= MAX_TOPICS {
            return Err(ConfigError::Limit(format!(
                "Topic limit exceeded: at most {MAX_TOPICS} topics"
            )));
        }
        let arn = format!("{arn_prefix}:{name}");
        self.topics.insert(
            name.to_owned(),
            TopicDef {
                name: name.to_owned(),
                arn: arn.clone(),
                secret: secret.to_owned(),
                created_ms: now_ms,
                declared,
            },
        );
        Ok(arn)
    }

    /// Deletes a topic with its subscriptions; gives the removed subscriptions' ARNs.
    pub fn delete_topic(&mut self, arn: &str) -> Result<Vec<String>, ConfigError> {
        let name = self.topic_by_arn(arn)?.name.clone();
        self.topics.remove(&name);
        let gone: Vec<String> = self
            .subscriptions
            .values()
            .filter(|s| s.topic_arn == arn)
            .map(|s| s.arn.clone())
            .collect();
        for s in &gone {
            self.subscriptions.remove(s);
        }
        Ok(gone)
    }

    /// Subscribes an endpoint (or returns the existing identical subscription).
    pub fn subscribe(
        &mut self,
        topic_arn: &str,
        protocol: &str,
        endpoint: &str,
        now_ms: i64,
        declared: bool,
    ) -> Result<String, ConfigError> {
        let topic = self.topic_by_arn(topic_arn)?.clone();
        let Some(protocol) = Protocol::parse(protocol) else {
            return Err(ConfigError::Invalid(format!(
                "Invalid parameter: Protocol {protocol:?}: one of http, https, email, nats"
            )));
        };
        check_endpoint(protocol, endpoint)?;
        let mut existing = self.subscriptions.values_mut().filter(|s| {
            s.topic_arn == topic.arn && s.protocol == protocol && s.endpoint == endpoint
        });
        if let Some(s) = existing.next() {
            s.declared |= declared;
            return Ok(s.arn.clone());
        }
        let count = self
            .subscriptions
            .values()
            .filter(|s| s.topic_arn == topic.arn)
            .count();
        if count >= MAX_SUBSCRIPTIONS_PER_TOPIC {
            return Err(ConfigError::Limit(format!(
                "Subscription limit exceeded: at most {MAX_SUBSCRIPTIONS_PER_TOPIC} per topic"
            )));
        }
        let arn = format!("{}:{}", topic.arn, uuid::Uuid::new_v4());
        self.subscriptions.insert(
            arn.clone(),
            SubscriptionDef {
                arn: arn.clone(),
                topic_arn: topic.arn,
                protocol,
                endpoint: endpoint.to_owned(),
                created_ms: now_ms,
                declared,
            },
        );
        Ok(arn)
    }

    pub fn unsubscribe(&mut self, arn: &str) -> Result<SubscriptionDef, ConfigError> {
        self.subscriptions
            .remove(arn)
            .ok_or_else(|| ConfigError::NotFound(format!("Subscription does not exist: {arn}")))
    }

    pub fn rule(&self, name: &str) -> Result<&RuleDef, ConfigError> {
        self.rules.get(name).ok_or_else(|| {
            ConfigError::NotFound(format!("Rule {name} does not exist on EventBus default."))
        })
    }

    fn rule_mut(&mut self, name: &str) -> Result<&mut RuleDef, ConfigError> {
        self.rules.get_mut(name).ok_or_else(|| {
            ConfigError::NotFound(format!("Rule {name} does not exist on EventBus default."))
        })
    }

    /// Creates or replaces a rule (its targets stay).
    #[allow(clippy::too_many_arguments)]
    pub fn put_rule(
        &mut self,
        name: &str,
        event_pattern: &str,
        state: RuleState,
        description: Option<String>,
        threshold: Option<Threshold>,
        arn_prefix: &str,
        now_ms: i64,
    ) -> Result<String, ConfigError> {
        check_rule_name("Name", name)?;
        Pattern::parse(event_pattern).map_err(|e| ConfigError::Pattern(e.to_string()))?;
        if description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_DESCRIPTION)
        {
            return Err(ConfigError::Invalid(format!(
                "Description is longer than {MAX_DESCRIPTION} characters"
            )));
        }
        if let Some(t) = &threshold {
            t.check()?;
        }
        if let Some(r) = self.rules.get_mut(name) {
            r.event_pattern = event_pattern.to_owned();
            r.state = state;
            r.description = description;
            r.threshold = threshold;
            return Ok(r.arn.clone());
        }
        if self.rules.len() >= MAX_RULES {
            return Err(ConfigError::Limit(format!(
                "The requested resource exceeds the maximum number allowed: at most {MAX_RULES} rules"
            )));
        }
        let arn = format!("{arn_prefix}/{name}");
        self.rules.insert(
            name.to_owned(),
            RuleDef {
                name: name.to_owned(),
                arn: arn.clone(),
                event_pattern: event_pattern.to_owned(),
                state,
                description,
                targets: Vec::new(),
                threshold,
                created_ms: now_ms,
            },
        );
        Ok(arn)
    }

    pub fn delete_rule(&mut self, name: &str, force: bool) -> Result<(), ConfigError> {
        let rule = self.rule(name)?;
        if !rule.targets.is_empty() && !force {
            return Err(ConfigError::Invalid(
                "Rule can't be deleted since it has targets.".into(),
            ));
        }
        self.rules.remove(name);
        Ok(())
    }

    pub fn set_rule_state(&mut self, name: &str, enabled: bool) -> Result<(), ConfigError> {
        let rule = self.rule_mut(name)?;
        rule.state = match (enabled, rule.state) {
            (false, _) => RuleState::Disabled,
            (true, RuleState::EnabledWithAllManagementEvents) => {
                RuleState::EnabledWithAllManagementEvents
            }
            (true, _) => RuleState::Enabled,
        };
        Ok(())
    }

    /// Adds or replaces targets; gives (id, error code, message) for each one refused.
    pub fn put_targets(
        &mut self,
        rule: &str,
        targets: &[TargetDef],
    ) -> Result<Vec<(String, String, String)>, ConfigError> {
        let known: Vec<String> = self.topics.values().map(|t| t.arn.clone()).collect();
        let r = self.rule_mut(rule)?;
        let mut failed = Vec::new();
        for t in targets {
            if let Err(e) = check_rule_name("Target Id", &t.id) {
                failed.push((t.id.clone(), "ValidationException".into(), e.to_string()));
                continue;
            }
            if !known.contains(&t.arn) {
                failed.push((
                    t.id.clone(),
                    "ResourceNotFoundException".into(),
                    format!("Target {} is not a topic of this server", t.arn),
                ));
                continue;
            }
            if let Some(existing) = r.targets.iter_mut().find(|x| x.id == t.id) {
                existing.arn = t.arn.clone();
            } else if r.targets.len() >= MAX_TARGETS_PER_RULE {
                return Err(ConfigError::Limit(format!(
                    "The requested resource exceeds the maximum number allowed: at most {MAX_TARGETS_PER_RULE} targets per rule"
                )));
            } else {
                r.targets.push(t.clone());
            }
        }
        Ok(failed)
    }

    /// Removes targets by id; gives (id, error code, message) for each id the rule lacks.
    pub fn remove_targets(
        &mut self,
        rule: &str,
        ids: &[String],
    ) -> Result<Vec<(String, String, String)>, ConfigError> {
        let r = self.rule_mut(rule)?;
        let mut failed = Vec::new();
        for id in ids {
            let before = r.targets.len();
            r.targets.retain(|t| &t.id != id);
            if r.targets.len() == before {
                failed.push((
                    id.clone(),
                    "ResourceNotFoundException".into(),
                    format!("Target {id} is not a target of rule {rule}"),
                ));
            }
        }
        Ok(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPICS: &str = "arn:aws:sns:us-east-1:111122223333";
    const RULES: &str = "arn:aws:events:us-east-1:111122223333:rule";

    #[test]
    fn topics_subscriptions_rules_and_targets() {
        let mut c = AlertsConfig::default();
        let t = c.create_topic("sec", "k", TOPICS, 1, false).expect("topic");
        assert_eq!(t, "arn:aws:sns:us-east-1:111122223333:sec");
        assert_eq!(
            c.create_topic("sec", "", TOPICS, 2, false).expect("again"),
            t
        );
        assert!(matches!(
            c.create_topic("bad name", "", TOPICS, 1, false),
            Err(ConfigError::Invalid(_))
        ));
        let s = c
            .subscribe(&t, "https", "https://hooks.example/x", 3, false)
            .expect("sub");
        assert!(s.starts_with(&format!("{t}:")));
        assert_eq!(
            c.subscribe(&t, "https", "https://hooks.example/x", 4, false)
                .expect("same"),
            s
        );
        c.subscribe(&t, "email", "ops@example.com", 5, false)
            .expect("email");
        c.subscribe(&t, "nats", "nats://127.0.0.1:4222/audit.alerts", 5, false)
            .expect("nats");
        for (p, e) in [
            ("email", "not-an-address"),
            ("http", "https://wrong.scheme/"),
            ("nats", "nats://h:1/a.*"),
            ("nats", "nats://h:1"),
            ("sms", "+15555550100"),
        ] {
            assert!(
                matches!(
                    c.subscribe(&t, p, e, 6, false),
                    Err(ConfigError::Invalid(_))
                ),
                "{p} {e}"
            );
        }
        assert!(matches!(
            c.subscribe(
                "arn:aws:sns:us-east-1:111122223333:nope",
                "email",
                "a@b.c",
                1,
                false
            ),
            Err(ConfigError::NotFound(_))
        ));

        let r = c
            .put_rule(
                "stop",
                r#"{"detail":{"eventName":["StopLogging"]}}"#,
                RuleState::Enabled,
                None,
                None,
                RULES,
                7,
            )
            .expect("rule");
        assert_eq!(r, "arn:aws:events:us-east-1:111122223333:rule/stop");
        assert!(matches!(
            c.put_rule(
                "x",
                r#"{"a":"b"}"#,
                RuleState::Enabled,
                None,
                None,
                RULES,
                7
            ),
            Err(ConfigError::Pattern(_))
        ));
        let failed = c
            .put_targets(
                "stop",
                &[
                    TargetDef {
                        id: "1".into(),
                        arn: t.clone(),
                    },
                    TargetDef {
                        id: "2".into(),
                        arn: "arn:aws:sqs:us-east-1:1:q".into(),
                    },
                ],
            )
            .expect("targets");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1, "ResourceNotFoundException");
        assert!(matches!(
            c.delete_rule("stop", false),
            Err(ConfigError::Invalid(_))
        ));
        c.set_rule_state("stop", false).expect("disable");
        assert_eq!(c.rule("stop").expect("rule").state, RuleState::Disabled);
        assert_eq!(
            c.remove_targets("stop", &["1".into(), "9".into()])
                .expect("remove")
                .len(),
            1
        );
        c.delete_rule("stop", false).expect("delete");
        assert!(matches!(c.rule("stop"), Err(ConfigError::NotFound(_))));

        let gone = c.delete_topic(&t).expect("delete topic");
        assert_eq!(gone.len(), 3);
        assert!(c.subscriptions.is_empty());
        let back = AlertsConfig::decode(&c.encode().expect("encode")).expect("decode");
        assert_eq!(back, c);
    }

    #[test]
    fn limits_hold() {
        let mut c = AlertsConfig::default();
        let t = c.create_topic("t", "", TOPICS, 1, false).expect("topic");
        c.put_rule(
            "r",
            r#"{"source":["aws.iam"]}"#,
            RuleState::Enabled,
            None,
            None,
            RULES,
            1,
        )
        .expect("rule");
        let targets: Vec<TargetDef> = (0..MAX_TARGETS_PER_RULE)
            .map(|i| TargetDef {
                id: i.to_string(),
                arn: t.clone(),
            })
            .collect();
        assert!(c.put_targets("r", &targets).expect("five").is_empty());
        assert!(matches!(
            c.put_targets(
                "r",
                &[TargetDef {
                    id: "extra".into(),
                    arn: t.clone()
                }]
            ),
            Err(ConfigError::Limit(_))
        ));
        assert!(matches!(
            c.put_rule(
                "r",
                "{\"a\":[1]}",
                RuleState::Enabled,
                Some("d".repeat(513)),
                None,
                RULES,
                1
            ),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            c.put_rule(
                "r",
                "{\"a\":[1]}",
                RuleState::Enabled,
                None,
                Some(Threshold {
                    count: 1,
                    period_secs: 60
                }),
                RULES,
                1
            ),
            Err(ConfigError::Invalid(_))
        ));
    }
}

//! The alerts APIs, both `POST /` in AWS JSON 1.1 and recorded like every call:
//!
//! - **Rules**: EventBridge's own operations (`X-Amz-Target: AWSEvents.<Operation>`, SigV4
//!   service `events`, eventSource `events.amazonaws.com`) on the `default` bus, so `aws events
//!   put-rule/put-targets/test-event-pattern ... --endpoint-url` work unchanged. One extension:
//!   `PutRule` takes `Threshold: {"Count": n, "Period": seconds}`.
//! - **Topics**: SNS's action names and members over JSON (`X-Amz-Target:
//!   OpenTrailSNS.<Action>`, SigV4 service `sns`, eventSource `sns.amazonaws.com`), with
//!   OpenTrail's delivery state and dead letters; `opentrail topics ...` calls it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::response::Response;
use opentrail_alerts::config::{RuleState, TargetDef, Threshold};
use opentrail_alerts::{ConfigError, Outgoing, Pattern};
use opentrail_catalog::NewAlertMessage;
use opentrail_protocol::{ApiError, Exception};
use serde_json::{Value, json};

use crate::App;
use crate::access::Caller;
use crate::alerts::{random_secret, rule_arn_prefix, topic_arn_prefix};
use crate::api::{CallContext, answer, json_body, read_call_body, record_call};

pub(crate) const EVENTS_PREFIX: &str = "AWSEvents.";
pub(crate) const TOPICS_PREFIX: &str = "OpenTrailSNS.";
/// Largest request body (a Publish message is at most 256 KB, as SNS allows).
const MAX_BODY: usize = 300 * 1024;
const MAX_MESSAGE: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Events,
    Topics,
}

impl Api {
    fn service(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Topics => "sns",
        }
    }

    fn event_source(self) -> &'static str {
        match self {
            Self::Events => "events.amazonaws.com",
            Self::Topics => "sns.amazonaws.com",
        }
    }

    /// Whether the operation is read-only; `None` when this API has no such operation.
    fn read_only(self, op: &str) -> Option<bool> {
        let (reads, writes): (&[&str], &[&str]) = match self {
            Self::Events => (
                &[
                    "DescribeRule",
                    "ListRules",
                    "ListTargetsByRule",
                    "TestEventPattern",
                ],
                &[
                    "PutRule",
                    "DeleteRule",
                    "EnableRule",
                    "DisableRule",
                    "PutTargets",
                    "RemoveTargets",
                ],
            ),
            Self::Topics => (
                &[
                    "ListTopics",
                    "GetTopicAttributes",
                    "ListSubscriptions",
                    "ListSubscriptionsByTopic",
                    "GetSubscriptionAttributes",
                    "ListDeadLetters",
                    "GetTopicSigningSecret",
                ],
                &[
                    "CreateTopic",
                    "DeleteTopic",
                    "Subscribe",
                    "Unsubscribe",
                    "Publish",
                ],
            ),
        };
        if reads.contains(&op) {
            Some(true)
        } else if writes.contains(&op) {
            Some(false)
        } else {
            None
        }
    }

    fn error(self, e: ConfigError) -> ApiError {
        let exception = match (self, &e) {
            (Self::Events, ConfigError::NotFound(_)) => Exception::ResourceNotFoundException,
            (Self::Topics, ConfigError::NotFound(_)) => Exception::NotFound,
            (Self::Events, ConfigError::Invalid(_)) => Exception::ValidationException,
            (Self::Topics, ConfigError::Invalid(_)) => Exception::InvalidParameter,
            (_, ConfigError::Pattern(_)) => Exception::InvalidEventPatternException,
            (_, ConfigError::Limit(_)) => Exception::LimitExceededException,
            (_, ConfigError::Corrupt(_)) => Exception::InternalException,
        };
        ApiError::new(exception, e.to_string())
    }

    fn invalid(self, message: impl Into<String>) -> ApiError {
        let exception = match self {
            Self::Events => Exception::ValidationException,
            Self::Topics => Exception::InvalidParameter,
        };
        ApiError::new(exception, message)
    }
}

/// The optional string member `k`.
fn opt<'a>(api: Api, v: &'a Value, k: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(api.invalid(format!("{k} must be a string"))),
    }
}

/// The required string member `k`.
fn req<'a>(api: Api, v: &'a Value, k: &str) -> Result<&'a str, ApiError> {
    opt(api, v, k)?.ok_or_else(|| {
        api.invalid(format!(
            "1 validation error detected: Value null at '{k}' failed to satisfy constraint: Member must not be null"
        ))
    })
}

fn to_json(v: &Value) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))
}

fn check_bus(v: &Value, app: &App) -> Result<(), ApiError> {
    let Some(bus) = opt(Api::Events, v, "EventBusName")? else {
        return Ok(());
    };
    let default_arn = format!(
        "arn:aws:events:{}:{}:event-bus/default",
        app.settings.region, app.settings.account_id
    );
    if bus == "default" || bus == default_arn {
        Ok(())
    } else {
        Err(ApiError::new(
            Exception::ResourceNotFoundException,
            format!("Event bus {bus} does not exist."),
        ))
    }
}

fn rule_json(r: &opentrail_alerts::config::RuleDef) -> Value {
    let mut out = json!({
        "Name": r.name,
        "Arn": r.arn,
        "EventPattern": r.event_pattern,
        "State": r.state.name(),
        "EventBusName": "default",
    });
    if let Some(d) = &r.description {
        out["Description"] = json!(d);
    }
    if let Some(t) = &r.threshold {
        out["Threshold"] = json!({"Count": t.count, "Period": t.period_secs});
    }
    out
}

fn failed_entries(failed: Vec<(String, String, String)>) -> Value {
    json!({
        "FailedEntryCount": failed.len(),
        "FailedEntries": failed.into_iter().map(|(id, code, msg)| json!({
            "TargetId": id, "ErrorCode": code, "ErrorMessage": msg
        })).collect::<Vec<_>>(),
    })
}

async fn events_dispatch(app: &Arc<App>, op: &str, v: &Value) -> Result<Vec<u8>, ApiError> {
    let api = Api::Events;
    let err = |e| api.error(e);
    if op != "TestEventPattern" {
        check_bus(v, app)?;
    }
    match op {
        "PutRule" => {
            let name = req(api, v, "Name")?.to_owned();
            if opt(api, v, "ScheduleExpression")?.is_some() {
                return Err(api.invalid(
                    "ScheduleExpression is not supported by OpenTrail: rules match recorded events",
                ));
            }
            if v.get("Tags").is_some() || v.get("RoleArn").is_some() {
                return Err(api.invalid("Tags and RoleArn on rules are not supported by OpenTrail"));
            }
            let pattern = opt(api, v, "EventPattern")?
                .ok_or_else(|| {
                    api.invalid(
                        "Parameter(s) EventPattern or ScheduleExpression must be specified.",
                    )
                })?
                .to_owned();
            let state = match opt(api, v, "State")? {
                None => RuleState::Enabled,
                Some(s) => RuleState::parse(s).ok_or_else(|| {
                    api.invalid(format!(
                        "State {s:?} is not one of ENABLED, DISABLED, ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS"
                    ))
                })?,
            };
            let description = opt(api, v, "Description")?.map(str::to_owned);
            let threshold = match v.get("Threshold") {
                None | Some(Value::Null) => None,
                Some(t) => {
                    let n = |k: &str| {
                        t.get(k)
                            .and_then(Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(|| {
                                api.invalid(format!("Threshold.{k} must be a whole number"))
                            })
                    };
                    Some(Threshold {
                        count: n("Count")?,
                        period_secs: n("Period")?,
                    })
                }
            };
            let (prefix, now) = (rule_arn_prefix(&app.settings), App::now_ms());
            let arn = app
                .alerts
                .change(&app.catalog, move |c| {
                    c.put_rule(&name, &pattern, state, description, threshold, &prefix, now)
                        .map(|a| (a, Vec::new()))
                })
                .await
                .map_err(err)?;
            to_json(&json!({ "RuleArn": arn }))
        }
        "DescribeRule" => {
            let name = req(api, v, "Name")?;
            let live = app.alerts.live.get();
            let r = live.config.rule(name).map_err(err)?;
            let mut out = rule_json(r);
            out["CreatedBy"] = json!(app.settings.account_id);
            to_json(&out)
        }
        "ListRules" => {
            let prefix = opt(api, v, "NamePrefix")?.unwrap_or("");
            let limit = match v.get("Limit") {
                None | Some(Value::Null) => 100,
                Some(l) => l
                    .as_u64()
                    .filter(|l| (1..=100).contains(l))
                    .ok_or_else(|| api.invalid("Limit must be 1 to 100"))?,
            };
            let after = opt(api, v, "NextToken")?.unwrap_or("");
            let live = app.alerts.live.get();
            let matching: Vec<_> = live
                .config
                .rules
                .values()
                .filter(|r| r.name.starts_with(prefix) && r.name.as_str() > after)
                .collect();
            let limit = usize::try_from(limit).unwrap_or(100);
            let page: Vec<Value> = matching.iter().take(limit).map(|r| rule_json(r)).collect();
            let mut out = json!({ "Rules": page });
            if matching.len() > limit
                && let Some(last) = matching.get(limit - 1)
            {
                out["NextToken"] = json!(last.name);
            }
            to_json(&out)
        }
        "DeleteRule" => {
            let name = req(api, v, "Name")?.to_owned();
            let force = v.get("Force").and_then(Value::as_bool).unwrap_or(false);
            app.alerts
                .change(&app.catalog, move |c| {
                    c.delete_rule(&name, force).map(|()| ((), Vec::new()))
                })
                .await
                .map_err(err)?;
            Ok(b"{}".to_vec())
        }
        "EnableRule" | "DisableRule" => {
            let name = req(api, v, "Name")?.to_owned();
            let enable = op == "EnableRule";
            app.alerts
                .change(&app.catalog, move |c| {
                    c.set_rule_state(&name, enable).map(|()| ((), Vec::new()))
                })
                .await
                .map_err(err)?;
            Ok(b"{}".to_vec())
        }
        "PutTargets" => {
            let rule = req(api, v, "Rule")?.to_owned();
            let Some(list) = v.get("Targets").and_then(Value::as_array) else {
                return Err(api.invalid("Targets must be a list"));
            };
            if list.is_empty() || list.len() > 10 {
                return Err(api.invalid("Targets must hold 1 to 10 targets"));
            }
            let mut targets = Vec::new();
            let mut refused = Vec::new();
            for t in list {
                let id = req(api, t, "Id")?.to_owned();
                let arn = req(api, t, "Arn")?.to_owned();
                let extras = t
                    .as_object()
                    .map(|o| o.keys().filter(|k| *k != "Id" && *k != "Arn").count())
                    .unwrap_or(0);
                if extras > 0 {
                    refused.push((
                        id,
                        "ValidationException".to_owned(),
                        "only Id and Arn are supported: targets receive the whole event".to_owned(),
                    ));
                } else {
                    targets.push(TargetDef { id, arn });
                }
            }
            let mut failed = app
                .alerts
                .change(&app.catalog, move |c| {
                    c.put_targets(&rule, &targets).map(|f| (f, Vec::new()))
                })
                .await
                .map_err(err)?;
            refused.append(&mut failed);
            to_json(&failed_entries(refused))
        }
        "RemoveTargets" => {
            let rule = req(api, v, "Rule")?.to_owned();
            let ids: Vec<String> = v
                .get("Ids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() {
                return Err(api.invalid("Ids must hold at least one target id"));
            }
            let failed = app
                .alerts
                .change(&app.catalog, move |c| {
                    c.remove_targets(&rule, &ids).map(|f| (f, Vec::new()))
                })
                .await
                .map_err(err)?;
            to_json(&failed_entries(failed))
        }
        "ListTargetsByRule" => {
            let rule = req(api, v, "Rule")?;
            let live = app.alerts.live.get();
            let r = live.config.rule(rule).map_err(err)?;
            let targets: Vec<Value> = r
                .targets
                .iter()
                .map(|t| json!({"Id": t.id, "Arn": t.arn}))
                .collect();
            to_json(&json!({ "Targets": targets }))
        }
        "TestEventPattern" => {
            let pattern = Pattern::parse(req(api, v, "EventPattern")?).map_err(|e| {
                ApiError::new(Exception::InvalidEventPatternException, e.to_string())
            })?;
            let event: Value = serde_json::from_str(req(api, v, "Event")?)
                .map_err(|e| api.invalid(format!("Parameter Event is not valid: {e}")))?;
            opentrail_alerts::event::check_test_event(&event).map_err(|m| api.invalid(m))?;
            to_json(&json!({ "Result": pattern.matches(&event) }))
        }
        _ => Err(unsupported(op)),
    }
}

fn unsupported(op: &str) -> ApiError {
    ApiError::new(
        Exception::UnsupportedOperationException,
        format!("{op} is not implemented by this OpenTrail server"),
    )
}

fn ms_iso(ms: Option<i64>) -> Value {
    ms.and_then(|m| jiff::Timestamp::from_millisecond(m).ok())
        .map(|t| json!(t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()))
        .unwrap_or(Value::Null)
}

fn delivery_json(s: &opentrail_catalog::SubscriptionStats) -> Value {
    json!({
        "Delivered": s.delivered,
        "FailedAttempts": s.failed_attempts,
        "DeadLettered": s.dead_lettered,
        "Pending": s.pending,
        "LastSuccessTime": ms_iso(s.last_success_ms),
        "LastError": s.last_error,
        "LastErrorTime": ms_iso(s.last_error_ms),
        "NextAttemptTime": ms_iso(s.next_attempt_ms),
    })
}

async fn stats(
    app: &App,
    arns: Vec<String>,
) -> Result<Vec<opentrail_catalog::SubscriptionStats>, ApiError> {
    let cat = Arc::clone(&app.catalog);
    tokio::task::spawn_blocking(move || {
        arns.iter()
            .map(|a| cat.alert_stats(a))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))?
    .map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))
}

async fn topics_dispatch(app: &Arc<App>, op: &str, v: &Value) -> Result<Vec<u8>, ApiError> {
    let api = Api::Topics;
    let err = |e| api.error(e);
    let owner = app.settings.account_id.clone();
    match op {
        "CreateTopic" => {
            let name = req(api, v, "Name")?.to_owned();
            let secret = match v.pointer("/Attributes/SigningSecret") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if (16..=256).contains(&s.len()) => Some(s.clone()),
                Some(_) => {
                    return Err(api.invalid(
                        "Invalid parameter: Attributes.SigningSecret must be 16 to 256 characters",
                    ));
                }
            };
            let secret = match secret {
                Some(s) => s,
                None => random_secret()?,
            };
            let (prefix, now) = (topic_arn_prefix(&app.settings), App::now_ms());
            let arn = app
                .alerts
                .change(&app.catalog, move |c| {
                    c.create_topic(&name, &secret, &prefix, now, false)
                        .map(|a| (a, Vec::new()))
                })
                .await
                .map_err(err)?;
            to_json(&json!({ "TopicArn": arn }))
        }
        "DeleteTopic" => {
            let arn = req(api, v, "TopicArn")?.to_owned();
            app.alerts
                .change(&app.catalog, move |c| {
                    c.delete_topic(&arn).map(|gone| ((), gone))
                })
                .await
                .map_err(err)?;
            Ok(b"{}".to_vec())
        }
        "ListTopics" => {
            let live = app.alerts.live.get();
            let topics: Vec<Value> = live
                .config
                .topics
                .values()
                .map(|t| json!({ "TopicArn": t.arn }))
                .collect();
            to_json(&json!({ "Topics": topics }))
        }
        "GetTopicAttributes" => {
            let arn = req(api, v, "TopicArn")?;
            let live = app.alerts.live.get();
            let t = live.config.topic_by_arn(arn).map_err(err)?;
            let subs = live
                .config
                .subscriptions
                .values()
                .filter(|s| s.topic_arn == t.arn)
                .count();
            to_json(&json!({ "Attributes": {
                "TopicArn": t.arn,
                "Owner": owner,
                "SubscriptionsConfirmed": subs.to_string(),
                "SubscriptionsPending": "0",
                "SubscriptionsDeleted": "0",
                "DeclaredInSettings": t.declared.to_string(),
            }}))
        }
        "GetTopicSigningSecret" => {
            // Its own action, so that reading a topic's attributes does not let a caller forge
            // its webhook signatures.
            let arn = req(api, v, "TopicArn")?;
            let live = app.alerts.live.get();
            let t = live.config.topic_by_arn(arn).map_err(err)?;
            to_json(&json!({ "TopicArn": t.arn, "SigningSecret": t.secret }))
        }
        "Subscribe" => {
            let topic = req(api, v, "TopicArn")?.to_owned();
            let protocol = req(api, v, "Protocol")?.to_owned();
            let endpoint = req(api, v, "Endpoint")?.to_owned();
            let now = App::now_ms();
            let arn = app
                .alerts
                .change(&app.catalog, move |c| {
                    c.subscribe(&topic, &protocol, &endpoint, now, false)
                        .map(|a| (a, Vec::new()))
                })
                .await
                .map_err(err)?;
            to_json(&json!({ "SubscriptionArn": arn }))
        }
        "Unsubscribe" => {
            let arn = req(api, v, "SubscriptionArn")?.to_owned();
            app.alerts
                .change(&app.catalog, move |c| {
                    c.unsubscribe(&arn).map(|s| ((), vec![s.arn]))
                })
                .await
                .map_err(err)?;
            Ok(b"{}".to_vec())
        }
        "ListSubscriptions" | "ListSubscriptionsByTopic" => {
            let live = app.alerts.live.get();
            let topic = if op == "ListSubscriptionsByTopic" {
                let arn = req(api, v, "TopicArn")?;
                live.config.topic_by_arn(arn).map_err(err)?;
                Some(arn.to_owned())
            } else {
                None
            };
            let subs: Vec<_> = live
                .config
                .subscriptions
                .values()
                .filter(|s| topic.as_ref().is_none_or(|t| &s.topic_arn == t))
                .cloned()
                .collect();
            let st = stats(app, subs.iter().map(|s| s.arn.clone()).collect()).await?;
            let list: Vec<Value> = subs
                .iter()
                .zip(&st)
                .map(|(s, st)| {
                    json!({
                        "SubscriptionArn": s.arn,
                        "Owner": owner,
                        "Protocol": s.protocol.name(),
                        "Endpoint": s.endpoint,
                        "TopicArn": s.topic_arn,
                        "Delivery": delivery_json(st),
                    })
                })
                .collect();
            to_json(&json!({ "Subscriptions": list }))
        }
        "GetSubscriptionAttributes" => {
            let arn = req(api, v, "SubscriptionArn")?;
            let live = app.alerts.live.get();
            let s = live.config.subscriptions.get(arn).cloned().ok_or_else(|| {
                api.error(ConfigError::NotFound(format!(
                    "Subscription does not exist: {arn}"
                )))
            })?;
            let st = stats(app, vec![s.arn.clone()]).await?;
            let d = st.first().map(delivery_json).unwrap_or(Value::Null);
            let text = |v: &Value| match v {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            to_json(&json!({ "Attributes": {
                "SubscriptionArn": s.arn,
                "TopicArn": s.topic_arn,
                "Protocol": s.protocol.name(),
                "Endpoint": s.endpoint,
                "Owner": owner,
                "PendingConfirmation": "false",
                "ConfirmationWasAuthenticated": "true",
                "DeliveredCount": text(&d["Delivered"]),
                "FailedAttemptCount": text(&d["FailedAttempts"]),
                "DeadLetterCount": text(&d["DeadLettered"]),
                "PendingCount": text(&d["Pending"]),
                "LastSuccessTime": text(&d["LastSuccessTime"]),
                "LastError": text(&d["LastError"]),
                "LastErrorTime": text(&d["LastErrorTime"]),
                "NextAttemptTime": text(&d["NextAttemptTime"]),
            }}))
        }
        "Publish" => {
            let arn = req(api, v, "TopicArn")?.to_owned();
            let message = req(api, v, "Message")?.to_owned();
            if message.is_empty() || message.len() > MAX_MESSAGE {
                return Err(api.invalid(format!(
                    "Invalid parameter: Message must be 1 to {MAX_MESSAGE} bytes"
                )));
            }
            let subject = opt(api, v, "Subject")?
                .unwrap_or("OpenTrail notification")
                .to_owned();
            if subject.len() > 100 || subject.contains(['\r', '\n']) {
                return Err(api.invalid(
                    "Invalid parameter: Subject must be at most 100 characters on one line",
                ));
            }
            let live = app.alerts.live.get();
            live.config.topic_by_arn(&arn).map_err(err)?;
            let message_id = uuid::Uuid::new_v4().to_string();
            let messages: Vec<NewAlertMessage> = live
                .config
                .subscriptions
                .values()
                .filter(|s| s.topic_arn == arn)
                .map(|s| NewAlertMessage {
                    subscription_arn: s.arn.clone(),
                    message_id: message_id.clone(),
                    body: Outgoing {
                        v: 1,
                        topic_arn: arn.clone(),
                        protocol: s.protocol,
                        endpoint: s.endpoint.clone(),
                        subject: subject.clone(),
                        message: message.clone(),
                        rule: None,
                    }
                    .encode(),
                })
                .collect();
            let cat = Arc::clone(&app.catalog);
            tokio::task::spawn_blocking(move || cat.alert_enqueue(&messages, App::now_ms()))
                .await
                .map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))?
                .map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))?;
            app.alerts.wake.notify_one();
            to_json(&json!({ "MessageId": message_id }))
        }
        "ListDeadLetters" => {
            let sub = opt(api, v, "SubscriptionArn")?.map(str::to_owned);
            let max = match v.get("MaxItems") {
                None | Some(Value::Null) => 100,
                Some(m) => m
                    .as_u64()
                    .filter(|m| (1..=1000).contains(m))
                    .ok_or_else(|| api.invalid("MaxItems must be 1 to 1000"))?,
            };
            let cat = Arc::clone(&app.catalog);
            let dead = tokio::task::spawn_blocking(move || {
                cat.alert_dead_letters(sub.as_deref(), usize::try_from(max).unwrap_or(100))
            })
            .await
            .map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))?
            .map_err(|e| ApiError::new(Exception::InternalException, e.to_string()))?;
            let list: Vec<Value> = dead
                .iter()
                .map(|d| {
                    let out = Outgoing::decode(&d.body).ok();
                    json!({
                        "Id": d.id,
                        "SubscriptionArn": d.subscription_arn,
                        "MessageId": d.message_id,
                        "Attempts": d.attempts,
                        "Error": d.error,
                        "CreatedTime": ms_iso(Some(d.created_ms)),
                        "FailedTime": ms_iso(Some(d.failed_ms)),
                        "Subject": out.as_ref().map(|o| o.subject.clone()),
                        "Rule": out.as_ref().and_then(|o| o.rule.clone()),
                        "Message": out.map(|o| o.message),
                    })
                })
                .collect();
            to_json(&json!({ "DeadLetters": list }))
        }
        _ => Err(unsupported(op)),
    }
}

/// The resource a call is authorized on.
/// The resource a call is authorized on: taken from the very member the operation acts on.
fn resource(app: &App, api: Api, op: &str, v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str);
    let rule = |k: &str| {
        s(k).map_or_else(
            || "*".to_owned(),
            |name| format!("{}/{name}", rule_arn_prefix(&app.settings)),
        )
    };
    // A subscription is authorized as its topic (the stored one, when it exists).
    let subscription_topic = || match s("SubscriptionArn") {
        None => "*".to_owned(),
        Some(sub) => app
            .alerts
            .live
            .get()
            .config
            .subscriptions
            .get(sub)
            .map(|d| d.topic_arn.clone())
            .unwrap_or_else(|| sub.rsplit_once(':').map_or(sub, |(t, _)| t).to_owned()),
    };
    match (api, op) {
        (Api::Events, "PutRule" | "DescribeRule" | "DeleteRule" | "EnableRule" | "DisableRule") => {
            rule("Name")
        }
        (Api::Events, "PutTargets" | "RemoveTargets" | "ListTargetsByRule") => rule("Rule"),
        (Api::Topics, "CreateTopic") => s("Name").map_or_else(
            || "*".to_owned(),
            |name| format!("{}:{name}", topic_arn_prefix(&app.settings)),
        ),
        (
            Api::Topics,
            "DeleteTopic"
            | "GetTopicAttributes"
            | "GetTopicSigningSecret"
            | "Subscribe"
            | "ListSubscriptionsByTopic"
            | "Publish",
        ) => s("TopicArn").unwrap_or("*").to_owned(),
        (Api::Topics, "Unsubscribe" | "GetSubscriptionAttributes" | "ListDeadLetters") => {
            subscription_topic()
        }
        _ => "*".to_owned(),
    }
}

async fn run(
    app: &Arc<App>,
    api: Api,
    ctx: &CallContext,
    caller: &Caller,
    body: &[u8],
    op: &str,
) -> Result<Vec<u8>, ApiError> {
    let value = json_body(body)?;
    if !value.is_object() {
        return Err(ApiError::new(
            Exception::SerializationException,
            "the request body must be a JSON object",
        ));
    }
    if api.read_only(op).is_none() {
        return Err(unsupported(op));
    }
    app.access.authorize(
        caller,
        &format!("{}:{op}", api.service()),
        &resource(app, api, op, &value),
        &ctx.source_ip,
        &ctx.region,
        ctx.now_ms,
    )?;
    match api {
        Api::Events => events_dispatch(app, op, &value).await,
        Api::Topics => topics_dispatch(app, op, &value).await,
    }
}

/// The request as recorded: without a topic's signing secret or a published message's text.
fn audited(body: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return body.to_vec();
    };
    if let Some(attrs) = v.get_mut("Attributes").and_then(Value::as_object_mut)
        && attrs.contains_key("SigningSecret")
    {
        attrs.insert(
            "SigningSecret".into(),
            json!("HIDDEN_DUE_TO_SECURITY_REASONS"),
        );
    }
    if let Some(obj) = v.as_object_mut()
        && let Some(Value::String(m)) = obj.remove("Message")
    {
        obj.insert("messageBytes".into(), json!(m.len()));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

async fn handle(
    app: Arc<App>,
    api: Api,
    peer: SocketAddr,
    parts: Parts,
    body: Body,
    op: String,
) -> Response {
    let mut ctx = CallContext::new(&app, &parts.headers, peer, api.event_source());
    let (body, caller) = match read_call_body(body, MAX_BODY).await {
        Err(e) => (Vec::new(), Err(e)),
        Ok(b) => {
            let caller = ctx.authenticate(&app, &parts, &b, &[api.service()]);
            (b, caller)
        }
    };
    respond(&app, api, &ctx, caller, &body, &op).await
}

/// The console's way in: `events.<Operation>` or `sns.<Action>` for a signed-in caller.
pub(crate) async fn console_call(
    app: &Arc<App>,
    ctx: &mut CallContext,
    caller: Result<Caller, ApiError>,
    qualified: &str,
    body: &[u8],
) -> Option<Response> {
    let (api, op) = match qualified.split_once('.') {
        Some(("events", op)) => (Api::Events, op),
        Some(("sns", op)) => (Api::Topics, op),
        _ => return None,
    };
    ctx.event_source = api.event_source();
    Some(respond(app, api, ctx, caller, body, op).await)
}

/// Runs an authenticated (or refused) call, records it and answers it.
async fn respond(
    app: &Arc<App>,
    api: Api,
    ctx: &CallContext,
    caller: Result<Caller, ApiError>,
    body: &[u8],
    op: &str,
) -> Response {
    let read_only = api.read_only(op).unwrap_or(false);
    let result = match caller {
        Ok(c) => run(app, api, ctx, &c, body, op).await,
        Err(e) => Err(e),
    };
    let request = audited(body);
    let event_name: String = op
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(128)
        .collect();
    if let Err(refused) = record_call(app, ctx, &event_name, read_only, &request, &result).await {
        return refused;
    }
    answer(ctx, result)
}

pub(crate) async fn handle_events(
    app: Arc<App>,
    peer: SocketAddr,
    parts: Parts,
    body: Body,
    op: String,
) -> Response {
    handle(app, Api::Events, peer, parts, body, op).await
}

pub(crate) async fn handle_topics(
    app: Arc<App>,
    peer: SocketAddr,
    parts: Parts,
    body: Body,
    op: String,
) -> Response {
    handle(app, Api::Topics, peer, parts, body, op).await
}

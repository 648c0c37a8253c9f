//! `opentrail topics ...` and `opentrail rules ...`: alert topics, their subscribers' delivery
//! state and dead letters, and the starter rules. Topics go through the server's
//! `OpenTrailSNS.<Action>` API (SNS's action and member names); rules through EventBridge's own
//! `AWSEvents.<Operation>` (so `aws events ... --endpoint-url` works for everything else).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::client::Connection;

#[derive(Args, Debug)]
pub struct TopicsArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: TopicsCommand,
}

#[derive(Subcommand, Debug)]
pub enum TopicsCommand {
    /// Create a topic (or get the existing one's ARN).
    CreateTopic {
        #[arg(long)]
        name: String,
        /// The key webhook messages are signed with (16–256 characters) [default: random].
        #[arg(long)]
        signing_secret: Option<String>,
    },
    DeleteTopic {
        #[arg(long)]
        topic_arn: String,
    },
    ListTopics,
    /// A topic's attributes.
    GetTopicAttributes {
        #[arg(long)]
        topic_arn: String,
    },
    /// The secret a topic's webhook messages are signed with (its own permission:
    /// sns:GetTopicSigningSecret).
    GetSigningSecret {
        #[arg(long)]
        topic_arn: String,
    },
    /// Subscribe an endpoint: http/https (a URL), email (an address) or nats
    /// (nats://host:port/subject, published through JetStream).
    Subscribe {
        #[arg(long)]
        topic_arn: String,
        #[arg(long, value_parser = ["http", "https", "email", "nats"])]
        protocol: String,
        #[arg(long)]
        notification_endpoint: String,
    },
    Unsubscribe {
        #[arg(long)]
        subscription_arn: String,
    },
    /// Subscriptions with their delivery state (JSON).
    ListSubscriptions {
        #[arg(long)]
        topic_arn: Option<String>,
    },
    GetSubscriptionAttributes {
        #[arg(long)]
        subscription_arn: String,
    },
    /// Send a message to every subscriber of a topic.
    Publish {
        #[arg(long)]
        topic_arn: String,
        #[arg(long)]
        message: String,
        #[arg(long)]
        subject: Option<String>,
    },
    /// Messages given up on after their last attempt, newest first.
    ListDeadLetters {
        #[arg(long)]
        subscription_arn: Option<String>,
        #[arg(long)]
        max_items: Option<u32>,
    },
    /// Every subscription's delivery state as a table.
    Status,
}

#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// The starter rules that can be enabled by name.
    Starters,
    /// Create (or update) a starter rule and send what it matches to a topic.
    EnableStarter {
        /// The starter's name (see `opentrail rules starters`).
        name: String,
        #[arg(long)]
        topic_arn: String,
        /// Name the rule differently [default: the starter's name].
        #[arg(long)]
        rule_name: Option<String>,
    },
    /// The rules of the server, with state and targets.
    List,
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    if v.as_object().is_some_and(|m| !m.is_empty()) {
        println!("{}", serde_json::to_string_pretty(v)?);
    }
    Ok(())
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn run_topics(args: TopicsArgs) -> anyhow::Result<()> {
    let client = args.conn.client()?;
    let call =
        |action: &str, body: Value| client.call("sns", &format!("OpenTrailSNS.{action}"), &body);
    let out = match args.command {
        TopicsCommand::CreateTopic {
            name,
            signing_secret,
        } => {
            let mut body = json!({ "Name": name });
            if let Some(s) = signing_secret {
                body["Attributes"] = json!({ "SigningSecret": s });
            }
            call("CreateTopic", body)?
        }
        TopicsCommand::DeleteTopic { topic_arn } => {
            call("DeleteTopic", json!({ "TopicArn": topic_arn }))?
        }
        TopicsCommand::ListTopics => call("ListTopics", json!({}))?,
        TopicsCommand::GetTopicAttributes { topic_arn } => {
            call("GetTopicAttributes", json!({ "TopicArn": topic_arn }))?
        }
        TopicsCommand::GetSigningSecret { topic_arn } => {
            call("GetTopicSigningSecret", json!({ "TopicArn": topic_arn }))?
        }
        TopicsCommand::Subscribe {
            topic_arn,
            protocol,
            notification_endpoint,
        } => call(
            "Subscribe",
            json!({ "TopicArn": topic_arn, "Protocol": protocol, "Endpoint": notification_endpoint }),
        )?,
        TopicsCommand::Unsubscribe { subscription_arn } => call(
            "Unsubscribe",
            json!({ "SubscriptionArn": subscription_arn }),
        )?,
        TopicsCommand::ListSubscriptions { topic_arn } => match topic_arn {
            Some(t) => call("ListSubscriptionsByTopic", json!({ "TopicArn": t }))?,
            None => call("ListSubscriptions", json!({}))?,
        },
        TopicsCommand::GetSubscriptionAttributes { subscription_arn } => call(
            "GetSubscriptionAttributes",
            json!({ "SubscriptionArn": subscription_arn }),
        )?,
        TopicsCommand::Publish {
            topic_arn,
            message,
            subject,
        } => {
            let mut body = json!({ "TopicArn": topic_arn, "Message": message });
            if let Some(s) = subject {
                body["Subject"] = json!(s);
            }
            call("Publish", body)?
        }
        TopicsCommand::ListDeadLetters {
            subscription_arn,
            max_items,
        } => {
            let mut body = json!({});
            if let Some(s) = subscription_arn {
                body["SubscriptionArn"] = json!(s);
            }
            if let Some(m) = max_items {
                body["MaxItems"] = json!(m);
            }
            call("ListDeadLetters", body)?
        }
        TopicsCommand::Status => {
            let subs = call("ListSubscriptions", json!({}))?;
            let mut rows = vec![
                [
                    "SUBSCRIPTION",
                    "PROTOCOL",
                    "ENDPOINT",
                    "DELIVERED",
                    "PENDING",
                    "FAILED",
                    "DEAD",
                    "LAST SUCCESS",
                    "LAST ERROR",
                ]
                .map(str::to_owned)
                .to_vec(),
            ];
            for s in subs["Subscriptions"].as_array().into_iter().flatten() {
                let d = &s["Delivery"];
                rows.push(vec![
                    text(&s["SubscriptionArn"]),
                    text(&s["Protocol"]),
                    text(&s["Endpoint"]),
                    text(&d["Delivered"]),
                    text(&d["Pending"]),
                    text(&d["FailedAttempts"]),
                    text(&d["DeadLettered"]),
                    text(&d["LastSuccessTime"]),
                    text(&d["LastError"]),
                ]);
            }
            print!("{}", table(&rows));
            return Ok(());
        }
    };
    print_json(&out)
}

pub fn run_rules(args: RulesArgs) -> anyhow::Result<()> {
    use opentrail_alerts::starter::{STARTERS, starter};
    match args.command {
        RulesCommand::Starters => {
            let mut rows = vec![vec![
                "NAME".to_owned(),
                "THRESHOLD".to_owned(),
                "DESCRIPTION".to_owned(),
            ]];
            for s in STARTERS {
                rows.push(vec![
                    s.name.to_owned(),
                    s.threshold.map_or("-".to_owned(), |t| {
                        format!("{} in {}s", t.count, t.period_secs)
                    }),
                    s.description.to_owned(),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        RulesCommand::EnableStarter {
            name,
            topic_arn,
            rule_name,
        } => {
            let s = starter(&name).with_context(|| {
                format!(
                    "no starter rule {name:?}; the starters are: {}",
                    STARTERS
                        .iter()
                        .map(|s| s.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            let client = args.conn.client()?;
            let rule = rule_name.unwrap_or_else(|| s.name.to_owned());
            let mut put = json!({
                "Name": rule,
                "EventPattern": s.pattern,
                "State": s.state.name(),
                "Description": s.description,
            });
            if let Some(t) = s.threshold {
                put["Threshold"] = json!({"Count": t.count, "Period": t.period_secs});
            }
            let created = client.call("events", "AWSEvents.PutRule", &put)?;
            let targets = client.call(
                "events",
                "AWSEvents.PutTargets",
                &json!({"Rule": rule, "Targets": [{"Id": "topic", "Arn": topic_arn}]}),
            )?;
            if targets["FailedEntryCount"].as_u64().unwrap_or(0) > 0 {
                anyhow::bail!(
                    "the rule was created but its target was refused: {}",
                    targets["FailedEntries"]
                );
            }
            print_json(&created)
        }
        RulesCommand::List => {
            let client = args.conn.client()?;
            let mut rows = vec![
                ["NAME", "STATE", "TARGETS", "DESCRIPTION"]
                    .map(str::to_owned)
                    .to_vec(),
            ];
            let mut token: Option<String> = None;
            loop {
                let mut body = json!({});
                if let Some(t) = &token {
                    body["NextToken"] = json!(t);
                }
                let page = client.call("events", "AWSEvents.ListRules", &body)?;
                for r in page["Rules"].as_array().into_iter().flatten() {
                    let targets = client.call(
                        "events",
                        "AWSEvents.ListTargetsByRule",
                        &json!({"Rule": r["Name"]}),
                    )?;
                    let arns: Vec<String> = targets["Targets"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| text(&t["Arn"]))
                        .collect();
                    rows.push(vec![
                        text(&r["Name"]),
                        text(&r["State"]),
                        if arns.is_empty() {
                            "-".to_owned()
                        } else {
                            arns.join(",")
                        },
                        text(&r["Description"]),
                    ]);
                }
                token = page["NextToken"].as_str().map(str::to_owned);
                if token.is_none() {
                    break;
                }
            }
            print!("{}", table(&rows));
            Ok(())
        }
    }
}

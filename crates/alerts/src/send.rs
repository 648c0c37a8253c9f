//! The dispatcher: sends queued messages to their subscribers (webhooks, email over SMTP, NATS
//! JetStream), retrying with exponential backoff and dead-lettering a message after its last
//! allowed attempt. Each outcome is recorded with the subscription's counters.
//!
//! - **Webhooks** get SNS's notification envelope (`Type`, `MessageId`, `TopicArn`, `Subject`,
//!   `Message`, `Timestamp`) signed as delivery notifications are (the same code): `X-OpenTrail-Signature:
//!   sha256=<HMAC-SHA256 of the body under the topic's secret>`. A 2xx answer is success.
//! - **Email** is a plain-text message from the configured sender, with the subject and the
//!   event pretty-printed; `Message-ID: <message id@opentrail>`.
//! - **NATS** publishes the event JSON to the subject through JetStream and waits for the
//!   stream's acknowledgement; `Nats-Msg-Id` is the message id, so a retry after a lost ack is
//!   dropped by the stream's duplicate window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use opentrail_catalog::{AlertMessageRow, AlertOutcome, Catalog};
use opentrail_delivery::notify::{SIGNATURE_HEADER, envelope, signature};
use tokio::sync::{Notify, watch};

use crate::config::{NatsEndpoint, Protocol};
use crate::view::{Live, Outgoing};

/// Messages attempted at once.
const CONCURRENCY: usize = 16;
const BATCH: usize = 256;
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required).
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
    /// No encryption (only for a relay on the same host).
    None,
}

impl SmtpTls {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "starttls" => Some(Self::StartTls),
            "tls" => Some(Self::Tls),
            "none" => Some(Self::None),
            _ => None,
        }
    }
}

/// The one SMTP server email subscriptions go through.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// Extra CA certificates (PEM) to trust for the server's certificate.
    pub ca_file: Option<PathBuf>,
}

/// Whether `s` is a mailbox lettre can send from or to (`a@b.c` or `Name <a@b.c>`).
pub fn is_address(s: &str) -> bool {
    s.parse::<Mailbox>().is_ok()
}

/// When to try again and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub max: Duration,
    /// Attempts before a message becomes a dead letter.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// The outcome of a failed attempt, the row having failed `row_attempts` times before.
    pub fn after_failure(&self, row_attempts: u32, error: String, now_ms: i64) -> AlertOutcome {
        let attempts = row_attempts + 1;
        if attempts >= self.max_attempts {
            return AlertOutcome::DeadLetter { error };
        }
        let factor = 1u32 << (attempts - 1).min(20);
        let wait = self.base.saturating_mul(factor).min(self.max);
        AlertOutcome::Retry {
            error,
            at_ms: now_ms + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2),
        }
    }
}

/// Sends queued messages.
pub struct Dispatcher {
    catalog: Arc<Catalog>,
    live: Arc<Live>,
    http: reqwest::Client,
    smtp: Option<(AsyncSmtpTransport<Tokio1Executor>, Mailbox)>,
    nats: tokio::sync::Mutex<HashMap<String, async_nats::Client>>,
    policy: RetryPolicy,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

impl Dispatcher {
    pub fn new(
        catalog: Arc<Catalog>,
        live: Arc<Live>,
        smtp: Option<&SmtpSettings>,
        policy: RetryPolicy,
    ) -> Result<Self, String> {
        // No redirects: a 3xx is a failure (a followed POST would become a GET, and an alert
        // that was never posted would count as delivered).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let smtp = smtp.map(smtp_transport).transpose()?;
        Ok(Self {
            catalog,
            live,
            http,
            smtp,
            nats: tokio::sync::Mutex::new(HashMap::new()),
            policy,
        })
    }

    /// Sends what is due until `stop`; `wake` is notified when something new is queued.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            let notified = wake.notified();
            let sent = self.round().await;
            let wait = match sent {
                Ok(n) if n > 0 => continue,
                Ok(_) => {
                    let cat = Arc::clone(&self.catalog);
                    match tokio::task::spawn_blocking(move || cat.alert_next_due()).await {
                        Ok(Ok(Some(due))) => {
                            Duration::from_millis(u64::try_from(due - now_ms()).unwrap_or(0))
                                .min(Duration::from_secs(60))
                        }
                        _ => Duration::from_secs(60),
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "alert dispatcher failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = notified => {},
                () = tokio::time::sleep(wait) => {},
                _ = stop.changed() => return,
            }
        }
    }

    /// Attempts every message due now; returns how many were attempted.
    pub async fn round(&self) -> Result<usize, String> {
        let cat = Arc::clone(&self.catalog);
        let now = now_ms();
        let due = tokio::task::spawn_blocking(move || cat.alert_due(now, BATCH))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        // Messages of subscriptions that are gone (removed while a view step or a Publish was
        // queueing from the configuration before) are dropped, never sent.
        let live = self.live.get();
        let (due, gone): (Vec<_>, Vec<_>) = due.into_iter().partition(|row| {
            live.config
                .subscriptions
                .contains_key(&row.subscription_arn)
        });
        if !gone.is_empty() {
            let cat = Arc::clone(&self.catalog);
            let mut arns: Vec<String> = gone.into_iter().map(|r| r.subscription_arn).collect();
            arns.dedup();
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                for arn in &arns {
                    cat.alert_forget_subscription(arn)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())??;
        }
        let n = due.len();
        // Outcomes are recorded a few at a time as they come, so a crash repeats few sends.
        let mut settled = futures::stream::iter(due)
            .map(|row| async move {
                let result = match Outgoing::decode(&row.body) {
                    Ok(out) => self.send(&row, &out).await,
                    Err(e) => Err(e),
                };
                let outcome = match result {
                    Ok(()) => AlertOutcome::Delivered,
                    Err(e) => {
                        tracing::warn!(subscription = %row.subscription_arn, attempt = row.attempts + 1, error = %e, "alert message not delivered");
                        self.policy.after_failure(row.attempts, e, now_ms())
                    }
                };
                (row, outcome)
            })
            .buffer_unordered(CONCURRENCY)
            .ready_chunks(CONCURRENCY);
        while let Some(outcomes) = settled.next().await {
            let cat = Arc::clone(&self.catalog);
            tokio::task::spawn_blocking(move || -> Result<(), String> {
                let now = now_ms();
                for (row, outcome) in &outcomes {
                    cat.alert_settle(row, outcome, now)
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())??;
        }
        Ok(n)
    }

    async fn send(&self, row: &AlertMessageRow, out: &Outgoing) -> Result<(), String> {
        let attempt = async {
            match out.protocol {
                Protocol::Http | Protocol::Https => self.webhook(row, out).await,
                Protocol::Email => self.email(row, out).await,
                Protocol::Nats => self.nats(row, out).await,
            }
        };
        tokio::time::timeout(SEND_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", SEND_TIMEOUT.as_secs())))
    }

    async fn webhook(&self, row: &AlertMessageRow, out: &Outgoing) -> Result<(), String> {
        let secret = self
            .live
            .get()
            .config
            .topic(&out.topic_arn)
            .map(|t| t.secret.clone())
            .unwrap_or_default();
        let body = envelope(
            &row.message_id,
            &out.topic_arn,
            &out.subject,
            &out.message,
            row.created_ms,
        )
        .map_err(|e| e.to_string())?;
        let resp = self
            .http
            .post(&out.endpoint)
            .header("Content-Type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .header("x-amz-sns-message-id", &row.message_id)
            .header("x-amz-sns-topic-arn", &out.topic_arn)
            .header("x-amz-sns-subscription-arn", &row.subscription_arn)
            .header(SIGNATURE_HEADER, signature(&secret, body.as_bytes()))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("posting to {}: {e}", out.endpoint))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{} answered {}", out.endpoint, resp.status()))
        }
    }

    async fn email(&self, row: &AlertMessageRow, out: &Outgoing) -> Result<(), String> {
        let Some((transport, from)) = &self.smtp else {
            return Err("no SMTP server is configured (smtp_host)".into());
        };
        let to: Mailbox = out
            .endpoint
            .parse()
            .map_err(|e| format!("{:?} is not an address: {e}", out.endpoint))?;
        let pretty = serde_json::from_str::<serde_json::Value>(&out.message)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| out.message.clone());
        let body = format!(
            "{}\n\nTopic: {}\nRule: {}\nMessage ID: {}\n\n{}\n",
            out.subject,
            out.topic_arn,
            out.rule.as_deref().unwrap_or("(published message)"),
            row.message_id,
            pretty
        );
        let email = lettre::Message::builder()
            .from(from.clone())
            .to(to)
            .subject(&out.subject)
            .message_id(Some(format!("<{}@opentrail>", row.message_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| format!("building the email: {e}"))?;
        transport
            .send(email)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }

    async fn nats(&self, row: &AlertMessageRow, out: &Outgoing) -> Result<(), String> {
        let ep = NatsEndpoint::parse(&out.endpoint)?;
        // The lock is not held while connecting: one unreachable server must not hold up
        // sends to the others.
        let cached = self
            .nats
            .lock()
            .await
            .get(&ep.server)
            .cloned()
            .filter(|c| c.connection_state() == async_nats::connection::State::Connected);
        let client = match cached {
            Some(c) => c,
            None => {
                let c = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(5))
                    .connect(ep.server.as_str())
                    .await
                    .map_err(|e| format!("connecting to {}: {e}", ep.server))?;
                self.nats.lock().await.insert(ep.server.clone(), c.clone());
                c
            }
        };
        let js = async_nats::jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        // One id per (message, subscription): a Publish gives every subscriber the same message
        // id, and two subjects in one stream must not drop each other as duplicates.
        let msg_id = format!(
            "{}:{}",
            row.message_id,
            row.subscription_arn.rsplit(':').next().unwrap_or_default()
        );
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        headers.insert("OpenTrail-Topic-Arn", out.topic_arn.as_str());
        if let Some(rule) = &out.rule {
            headers.insert("OpenTrail-Rule", rule.as_str());
        }
        let ack = js
            .publish_with_headers(ep.subject.clone(), headers, out.message.clone().into())
            .await
            .map_err(|e| format!("publishing to {}: {e}", ep.subject))?;
        ack.await
            .map(|_| ())
            .map_err(|e| format!("no JetStream acknowledgement for {}: {e}", ep.subject))
    }
}

fn smtp_transport(
    s: &SmtpSettings,
) -> Result<(AsyncSmtpTransport<Tokio1Executor>, Mailbox), String> {
    let from: Mailbox = s
        .from
        .parse()
        .map_err(|e| format!("smtp_from {:?} is not an address: {e}", s.from))?;
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(path) = &s.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("reading smtp_ca_file {}: {e}", path.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("smtp_ca_file {}: {e}", path.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls().map_err(|e| format!("SMTP TLS: {e}"))
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.as_str())
        .port(s.port)
        .timeout(Some(Duration::from_secs(10)));
    builder = match s.tls {
        SmtpTls::StartTls => builder.tls(Tls::Required(tls()?)),
        SmtpTls::Tls => builder.tls(Tls::Wrapper(tls()?)),
        SmtpTls::None => builder.tls(Tls::None),
    };
    if let (Some(u), Some(p)) = (&s.username, &s.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    Ok((builder.build(), from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_then_dead_letters() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(5),
            max_attempts: 5,
        };
        let at = |attempts| match p.after_failure(attempts, "x".into(), 0) {
            AlertOutcome::Retry { at_ms, .. } => Some(at_ms),
            _ => None,
        };
        assert_eq!(at(0), Some(1000));
        assert_eq!(at(1), Some(2000));
        assert_eq!(at(2), Some(4000));
        assert_eq!(at(3), Some(5000), "capped");
        assert!(matches!(
            p.after_failure(4, "gone".into(), 0),
            AlertOutcome::DeadLetter { error } if error == "gone"
        ));
    }
}

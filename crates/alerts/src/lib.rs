//! Alerts: event rules that send matching events to topics, and the topics' subscribers.
//!
//! - [`pattern`]: the EventBridge event pattern language (pure).
//! - [`event`]: a CloudTrail record as an EventBridge event (the envelope rules match).
//! - [`config`]: topics, subscriptions and rules as one versioned document, with every check.
//! - [`starter`]: ready-made rules for the classic cases, enabled by name.
//! - [`view`]: the rules view over the event log (cursor, crash-safe, queues messages).
//! - [`send`]: the dispatcher (webhooks, SMTP, NATS JetStream; retries, dead letters).

pub mod config;
pub mod event;
pub mod pattern;
pub mod send;
pub mod starter;
pub mod view;

pub use config::{AlertsConfig, ConfigError, Protocol, RuleState, Threshold};
pub use pattern::{Pattern, PatternError};
pub use send::{Dispatcher, RetryPolicy, SmtpSettings, SmtpTls};
pub use view::{Compiled, Live, Outgoing, RuleView, Step, ViewError};

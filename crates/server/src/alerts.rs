//! Alerts wiring: the configuration's one writer, the topics the settings declare, and the two
//! workers (the rules view following the log, the dispatcher sending queued messages).

use std::sync::Arc;

use opentrail_alerts::{AlertsConfig, ConfigError, Dispatcher, Live, RetryPolicy, RuleView};
use opentrail_catalog::Catalog;
use opentrail_log::EventLog;
use opentrail_protocol::{ApiError, Exception};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::{App, ServerError, Settings};

/// Records the rules view reads per step.
const VIEW_BATCH: usize = 4096;

pub(crate) struct Alerts {
    pub live: Arc<Live>,
    /// Notified when messages are queued.
    pub wake: Arc<Notify>,
    pub view: Arc<RuleView>,
    pub dispatcher: Arc<Dispatcher>,
    /// Serializes configuration changes (the version check backs it up).
    lock: tokio::sync::Mutex<()>,
}

/// `arn:aws:sns:<region>:<account>`, the prefix of topic ARNs.
pub(crate) fn topic_arn_prefix(s: &Settings) -> String {
    format!("arn:aws:sns:{}:{}", s.region, s.account_id)
}

/// `arn:aws:events:<region>:<account>:rule`, the prefix of rule ARNs.
pub(crate) fn rule_arn_prefix(s: &Settings) -> String {
    format!("arn:aws:events:{}:{}:rule", s.region, s.account_id)
}

/// 256 random bits as hex: a topic's signing secret when none is given.
pub(crate) fn random_secret() -> Result<String, ApiError> {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApiError::new(Exception::InternalException, "no randomness available"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn load(catalog: &Catalog) -> Result<(u64, AlertsConfig), ServerError> {
    match catalog.alerts_config()? {
        None => Ok((0, AlertsConfig::default())),
        Some((v, body)) => Ok((
            v,
            AlertsConfig::decode(&body).map_err(|e| ServerError::Alerts(e.to_string()))?,
        )),
    }
}

impl Alerts {
    /// Loads the configuration and adds the topics and subscriptions the settings declare.
    /// Blocking.
    pub fn open(
        catalog: &Arc<Catalog>,
        log: &EventLog,
        settings: &Settings,
    ) -> Result<Self, ServerError> {
        let (version, mut config) = load(catalog)?;
        let before = config.clone();
        let now = App::now_ms();
        let prefix = topic_arn_prefix(settings);
        let secrets: std::collections::HashMap<String, String> = settings
            .sns_topic_secrets
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let bad = |e: ConfigError| ServerError::Alerts(e.to_string());
        for name in &settings.sns_topics {
            let secret = match secrets.get(name) {
                Some(s) => s.clone(),
                None if config.topics.contains_key(name) => String::new(),
                None => random_secret().map_err(|e| ServerError::Alerts(e.message))?,
            };
            config
                .create_topic(name, &secret, &prefix, now, true)
                .map_err(bad)?;
        }
        for (topic, endpoint) in settings.declared_subscriptions() {
            let Some((protocol, endpoint)) = opentrail_alerts::Protocol::of_endpoint(&endpoint)
            else {
                continue;
            };
            let arn = format!("{prefix}:{topic}");
            config
                .subscribe(&arn, protocol.name(), &endpoint, now, true)
                .map_err(bad)?;
        }
        if config != before {
            let body = config.encode().map_err(bad)?;
            catalog.put_alerts_config(version, &body)?;
        }
        let live = Arc::new(Live::new(config));
        let smtp = settings.smtp();
        let dispatcher = Dispatcher::new(
            Arc::clone(catalog),
            Arc::clone(&live),
            smtp.as_ref(),
            RetryPolicy {
                base: settings.alert_retry_base,
                max: settings.alert_max_backoff,
                max_attempts: settings.alert_max_attempts,
            },
        )
        .map_err(ServerError::Alerts)?;
        Ok(Self {
            live,
            wake: Arc::new(Notify::new()),
            view: Arc::new(RuleView::new(
                log.clone(),
                Arc::clone(catalog),
                settings.account_id.clone(),
            )),
            dispatcher: Arc::new(dispatcher),
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Applies `f` to the stored configuration and stores the result, then makes it live.
    /// Subscriptions that `f` reports removed lose their waiting messages.
    pub async fn change<T: Send + 'static>(
        &self,
        catalog: &Arc<Catalog>,
        f: impl FnOnce(&mut AlertsConfig) -> Result<(T, Vec<String>), ConfigError> + Send + 'static,
    ) -> Result<T, ConfigError> {
        let _guard = self.lock.lock().await;
        let cat = Arc::clone(catalog);
        let (out, config) = tokio::task::spawn_blocking(move || {
            let (version, mut config) =
                load(&cat).map_err(|e| ConfigError::Corrupt(e.to_string()))?;
            let (out, removed) = f(&mut config)?;
            let body = config.encode()?;
            cat.put_alerts_config(version, &body)
                .map_err(|e| ConfigError::Corrupt(e.to_string()))?;
            // Stored: from here on the change takes effect whatever else happens. Messages of
            // removed subscriptions that this misses (or that a view step queues from the old
            // configuration) are dropped by the dispatcher.
            for arn in &removed {
                if let Err(e) = cat.alert_forget_subscription(arn) {
                    tracing::warn!(subscription = %arn, error = %e, "could not drop a removed subscription's messages yet");
                }
            }
            Ok::<_, ConfigError>((out, config))
        })
        .await
        .map_err(|e| ConfigError::Corrupt(e.to_string()))??;
        self.live.set(config);
        Ok(out)
    }
}

pub(crate) fn spawn(app: Arc<App>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let dispatcher = Arc::clone(&app.alerts.dispatcher);
    let wake = Arc::clone(&app.alerts.wake);
    vec![
        tokio::spawn(view_worker(app, stop.clone())),
        tokio::spawn(dispatcher.run(wake, stop)),
    ]
}

async fn view_worker(app: Arc<App>, stop: watch::Receiver<bool>) {
    crate::views::follow_log(app, stop, "rules", |app| {
        let step = app
            .alerts
            .view
            .step(&app.alerts.live.get(), VIEW_BATCH, App::now_ms())
            .map_err(|e| e.to_string())?;
        if step.messages > 0 {
            app.alerts.wake.notify_one();
        }
        Ok(step.records)
    })
    .await;
}

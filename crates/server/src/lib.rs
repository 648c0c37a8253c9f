//! The OpenTrail server: wires the event log, the history index and the HTTP API together.
//!
//! Data flow: `POST /v1/events` (ingest) and every CloudTrail API call's self-audit record are
//! appended to the event log and acknowledged after fsync. The history index worker follows the
//! log from its own cursor; LookupEvents reads the index. See `ARCHITECTURE.md`.
//!
//! [`run`] serves on a listener the caller bound (tests use port 0) until `shutdown` resolves,
//! then lets in-flight calls finish, stops the workers, persists the index and closes the log.

mod access;
mod alerts;
mod alerts_api;
mod api;
mod audit;
pub mod config;
mod console;
mod http;
mod iam_api;
mod ingest;
mod insights;
mod kms_api;
mod lookup;
mod tail;
mod trails;
mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use opentrail_catalog::{Catalog, CatalogError};
use opentrail_delivery::{Buckets, Deliverer, DeliveryConfig, Keyring, Streamer};
use opentrail_index::{HistoryIndex, IndexError};
use opentrail_insights::{Counters, CountersError, Engine, EngineConfig, InsightsError};
use opentrail_log::{EventLog, LogConfig, LogError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{ConfigError, Settings};

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid settings: {0}")]
    Config(#[from] ConfigError),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("history index: {0}")]
    Index(#[from] IndexError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    #[error("a startup task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("delivery: {0}")]
    Delivery(String),
    #[error("access control: {0}")]
    Access(String),
    #[error("insights counters: {0}")]
    Counters(#[from] CountersError),
    #[error("insights: {0}")]
    Insights(#[from] InsightsError),
    #[error("alerts: {0}")]
    Alerts(String),
    #[error("key service: {0}")]
    Kms(#[from] opentrail_delivery::kms::KmsError),
}

/// Shared state of the running server.
pub(crate) struct App {
    pub settings: Settings,
    pub log: EventLog,
    pub index: HistoryIndex,
    pub catalog: Arc<Catalog>,
    pub delivery: Arc<Deliverer>,
    pub streamer: Arc<Streamer>,
    pub access: access::Access,
    pub counters: Counters,
    pub insights: std::sync::Mutex<Engine>,
    pub kms: Arc<opentrail_delivery::kms::KeyService>,
    pub console: console::Sessions,
    pub alerts: alerts::Alerts,
    pub tails: tail::Tails,
    /// Turns true when the server starts shutting down: long-lived responses (live tails) end
    /// then, so the graceful shutdown does not wait for them.
    pub closing: watch::Receiver<bool>,
}

impl App {
    pub fn now_ms() -> i64 {
        jiff::Timestamp::now().as_millisecond()
    }

    pub fn retention_cutoff_ms(&self) -> i64 {
        let keep = i64::try_from(self.settings.history_retention.as_millis()).unwrap_or(i64::MAX);
        Self::now_ms().saturating_sub(keep)
    }
}

/// Opens the key service and creates the keys the settings declare (`kms_keys`: a key id, or
/// `alias/Name=<key id>`) in the server's region, where they are missing.
fn open_key_service(
    catalog: Arc<Catalog>,
    settings: &Settings,
    master: opentrail_delivery::MasterKey,
) -> Result<Arc<opentrail_delivery::kms::KeyService>, ServerError> {
    use opentrail_delivery::kms::{KeyRef, KeyService};
    let kms = KeyService::open(catalog, master, &settings.account_id)?;
    let (region, now) = (settings.region.clone(), App::now_ms());
    for entry in &settings.kms_keys {
        let (alias, id) = match entry.split_once('=') {
            Some((a, id)) => (Some(a.to_owned()), id.to_owned()),
            None => (None, entry.clone()),
        };
        kms.change(|s, m| {
            let account = settings.account_id.as_str();
            if !s.keys.contains_key(&id) {
                s.create_key_with_id(m, &id, &region, "declared in the settings", Vec::new(), now)?;
            }
            if let Some(a) = &alias {
                let parsed = KeyRef::parse(a)?;
                if s.resolve(account, &region, &parsed).is_err() {
                    s.create_alias(a, &region, &id, now, account)?;
                }
            }
            Ok(())
        })?;
    }
    Ok(Arc::new(kms))
}

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    settings.validate()?;
    let data_dir = settings.data_dir.clone();
    let segment_bytes = settings.log_segment_bytes;
    let engine_config = EngineConfig {
        sensitivity: settings.insights_sensitivity,
        min_history_minutes: i64::try_from(settings.insights_min_history.as_secs() / 60)
            .unwrap_or(i64::MAX),
        backfill: settings.insights_backfill,
    };
    let (log, index, catalog, counters, engine) =
        tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
            std::fs::create_dir_all(&data_dir)?;
            let mut log_config = LogConfig::new(data_dir.join("log"));
            log_config.segment_bytes = segment_bytes;
            let (log, report) = EventLog::open(log_config)?;
            tracing::info!(
                segments = report.segments,
                next_seq = report.next_seq,
                truncated_bytes = report.truncated_bytes,
                "event log recovered"
            );
            let index = HistoryIndex::open(&data_dir.join("index"), log.clone())?;
            let catalog = Catalog::open(&data_dir.join("catalog.db"))?;
            let counters = Counters::open(&data_dir.join("insights"), log.clone())?;
            let engine = Engine::open(counters.clone(), log.clone(), engine_config)?;
            Ok((log, index, catalog, counters, engine))
        })
        .await??;
    let catalog = Arc::new(catalog);
    let master = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || s.load_master_key())
            .await?
            .map_err(|e| ServerError::Delivery(e.to_string()))?
    };
    let access = {
        let (cat, s, m) = (Arc::clone(&catalog), settings.clone(), master.clone());
        tokio::task::spawn_blocking(move || access::Access::open(&cat, &s, m)).await??
    };
    let kms = {
        let (cat, s, m) = (Arc::clone(&catalog), settings.clone(), master.clone());
        tokio::task::spawn_blocking(move || open_key_service(cat, &s, m)).await??
    };
    let keyring = Arc::new(Keyring::new(
        Arc::clone(&catalog),
        master,
        settings.signing_key_rotation,
    ));
    let (default_target, bucket_targets) = settings.bucket_targets();
    let delivery = Arc::new(
        Deliverer::new(
            log.clone(),
            Arc::clone(&catalog),
            Arc::new(Buckets::new(default_target, bucket_targets)),
            keyring,
            DeliveryConfig {
                interval: settings.delivery_interval,
                max_backoff: settings.delivery_max_backoff,
                org: settings.organization(),
                topics: settings.topics(),
                digest_interval: settings.digest_interval,
            },
        )
        .map_err(ServerError::Delivery)?
        .with_kms(Arc::clone(&kms)),
    );
    let streamer = Arc::new(Streamer::new(
        log.clone(),
        Arc::clone(&catalog),
        Arc::new(settings.log_groups()?),
        settings.organization(),
        settings.delivery_max_backoff,
    ));
    let alerts = {
        let (cat, l, s) = (Arc::clone(&catalog), log.clone(), settings.clone());
        tokio::task::spawn_blocking(move || alerts::Alerts::open(&cat, &l, &s)).await??
    };
    let reconciled = {
        let d = Arc::clone(&delivery);
        tokio::task::spawn_blocking(move || d.reconcile()).await??
    };
    let (closing_tx, closing_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = closing_tx.send(true);
    };
    if reconciled > 0 {
        tracing::info!(
            trails = reconciled,
            "logging spans reconciled with logging state after restart"
        );
    }
    let app = Arc::new(App {
        settings,
        log: log.clone(),
        index: index.clone(),
        catalog,
        delivery: Arc::clone(&delivery),
        streamer: Arc::clone(&streamer),
        access,
        counters: counters.clone(),
        insights: std::sync::Mutex::new(engine),
        kms,
        console: console::Sessions::default(),
        alerts,
        tails: tail::Tails::default(),
        closing: closing_rx,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = views::spawn(Arc::clone(&app), stop_rx.clone());
    workers.extend(alerts::spawn(Arc::clone(&app), stop_rx.clone()));
    workers.push(streamer.spawn(stop_rx.clone()));
    workers.extend(delivery.spawn(stop_rx));

    let router = Router::new()
        .route("/", post(api::handle))
        .route("/v1/events", post(ingest::handle))
        .route("/v1/tail", get(tail::handle))
        .route("/health", get(http::health))
        .route("/metrics", get(http::metrics))
        .route("/console", get(console::redirect))
        .route("/console/", get(console::index))
        .route("/console/assets/{name}", get(console::assets))
        .route("/console/api/signin", post(console::sign_in))
        .route("/console/api/signout", post(console::sign_out))
        .route("/console/api/session", get(console::session))
        .route("/console/api/call/{operation}", post(console::call))
        .route("/console/api/download", get(console::download))
        .with_state(Arc::clone(&app));
    let addr = listener.local_addr()?;
    tracing::info!(%addr, account = %app.settings.account_id, region = %app.settings.region, "opentrail listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;

    tracing::info!("shutting down: stopping workers");
    let _ = stop_tx.send(true);
    for w in workers {
        if let Err(e) = w.await {
            tracing::error!(error = %e, "worker ended abnormally");
        }
    }
    tokio::task::spawn_blocking(move || -> Result<(), ServerError> {
        index.persist()?;
        counters.persist()?;
        log.close();
        Ok(())
    })
    .await??;
    tracing::info!("stopped cleanly");
    Ok(())
}

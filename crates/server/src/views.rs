//! Background workers: the history index view (follows the event log from its cursor) and
//! maintenance (history retention, log segment deletion). Each stops when told, within one step.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::App;

/// Records applied to the index per atomic batch.
const INDEX_BATCH: usize = 4096;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub(crate) fn spawn(app: Arc<App>, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(index_worker(Arc::clone(&app), stop.clone())),
        tokio::spawn(crate::insights::worker(Arc::clone(&app), stop.clone())),
        tokio::spawn(maintenance(app, stop)),
    ]
}

async fn index_worker(app: Arc<App>, stop: watch::Receiver<bool>) {
    follow_log(app, stop, "history index", |app| {
        app.index
            .apply_next(INDEX_BATCH, app.retention_cutoff_ms())
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Runs a view that follows the event log: `step` (on a blocking thread) applies what it can
/// and says how many records it moved past; at 0 the loop waits for the log to grow. A failing
/// step is retried with capped exponential backoff. Ends when told to stop, or if a step panics.
pub(crate) async fn follow_log<F>(
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
    step: F,
) where
    F: Fn(&App) -> Result<u64, String> + Clone + Send + 'static,
{
    let mut durable = app.log.subscribe();
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        durable.borrow_and_update();
        let (app2, step2) = (Arc::clone(&app), step.clone());
        match tokio::task::spawn_blocking(move || step2(&app2)).await {
            Ok(Ok(0)) => {
                backoff = Duration::from_millis(100);
                tokio::select! {
                    changed = durable.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
            Ok(Ok(_)) => backoff = Duration::from_millis(100),
            Ok(Err(e)) => {
                tracing::error!(view = what, error = %e, retry_in = ?backoff, "view failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => {
                tracing::error!(view = what, error = %e, "view task panicked");
                return;
            }
        }
    }
}

async fn maintenance(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(app.settings.maintenance_interval);
    // Expiring Insights counters walks their keys, so it runs once an hour, not every tick.
    let mut counters_expired_hour = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stop.changed() => return,
        }
        let app2 = Arc::clone(&app);
        let hour = App::now_ms().div_euclid(3_600_000);
        let expire_counters = counters_expired_hour != Some(hour);
        counters_expired_hour = Some(hour);
        let done = tokio::task::spawn_blocking(move || -> Result<(usize, usize), String> {
            let cutoff = app2.retention_cutoff_ms();
            let days = app2.index.expire(cutoff).map_err(|e| e.to_string())?;
            let floor = app2
                .index
                .cursor()
                .map_err(|e| e.to_string())?
                .min(app2.delivery.retention_floor().map_err(|e| e.to_string())?)
                .min(app2.counters.cursor().map_err(|e| e.to_string())?)
                .min(app2.streamer.retention_floor().map_err(|e| e.to_string())?)
                .min(
                    app2.alerts
                        .view
                        .cursor()
                        .map_err(|e| e.to_string())?
                        .unwrap_or(0),
                );
            let segments = app2
                .log
                .delete_segments(floor, cutoff)
                .map_err(|e| e.to_string())?;
            // Keys whose deletion date has passed go; keys due for rotation get new material.
            app2.kms
                .change(|s, m| s.tick(m, App::now_ms()))
                .map_err(|e| e.to_string())?;
            // Counts live as long as event history (ListInsightsMetricData); attributions
            // as long as a baseline looks back (seven days), and a day more.
            if expire_counters {
                let counted = app2
                    .counters
                    .expire(
                        cutoff.div_euclid(60_000),
                        (App::now_ms() - 8 * 86_400_000).div_euclid(60_000),
                    )
                    .map_err(|e| e.to_string())?;
                if counted > 0 {
                    tracing::debug!(entries = counted, "expired insights counters");
                }
            }
            Ok((days, segments))
        })
        .await;
        match done {
            Ok(Ok((days, segments))) if days + segments > 0 => {
                tracing::info!(days, segments, "retention removed expired history");
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task panicked"),
        }
    }
}

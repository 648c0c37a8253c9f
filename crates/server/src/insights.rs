//! Insights in the server: which trails ask for them, the worker that keeps the counters and
//! the detector up to date, and ListInsightsMetricData over the counters.

use std::sync::Arc;
use std::time::Duration;

use opentrail_catalog::Trail;
use opentrail_insights::{Coverage, InsightType, SeriesKey, SourceCategory};
use opentrail_protocol::insights::{ListInsightsMetricDataRequest, ListInsightsMetricDataResponse};
use opentrail_protocol::{ApiError, Exception};
use tokio::sync::watch;

use crate::App;
use crate::api::CallContext;

/// Log records counted per atomic batch.
const COUNT_BATCH: usize = 4096;
const TICK: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MAX_DATA_POINTS: i64 = 21_600;
const DAY_MS: i64 = 86_400_000;

/// What the logging trails' insight selectors cover.
pub(crate) fn coverage(trails: &[Trail]) -> Vec<Coverage> {
    let mut out = Vec::new();
    for t in trails.iter().filter(|t| t.is_logging) {
        let Some(selectors) = t.insight_selectors.as_ref().and_then(|v| v.as_array()) else {
            continue;
        };
        for s in selectors {
            let Some(kind) = s
                .get("InsightType")
                .and_then(|v| v.as_str())
                .and_then(InsightType::parse)
            else {
                continue;
            };
            let categories: Vec<SourceCategory> =
                match s.get("EventCategories").and_then(|v| v.as_array()) {
                    Some(list) => list
                        .iter()
                        .filter_map(|c| match c.as_str() {
                            Some("Management") => Some(SourceCategory::Management),
                            Some("Data") => Some(SourceCategory::Data),
                            _ => None,
                        })
                        .collect(),
                    None => vec![SourceCategory::Management],
                };
            for category in categories {
                out.push(Coverage {
                    account: (!t.is_organization_trail).then(|| t.account.clone()),
                    region: (!t.is_multi_region_trail).then(|| t.home_region.clone()),
                    kind,
                    category,
                });
            }
        }
    }
    out
}

/// One round: count what the log holds, then evaluate the completed minutes. Blocking.
fn round(app: &App) -> Result<Vec<opentrail_log::NewRecord>, String> {
    // The clock first, then the log's end: every event acknowledged before `now` is below it.
    let now = App::now_ms();
    let end = app.log.durable_end().next_seq;
    while app.counters.cursor().map_err(|e| e.to_string())? < end {
        if app
            .counters
            .apply_next(COUNT_BATCH)
            .map_err(|e| e.to_string())?
            == 0
        {
            break;
        }
    }
    let trails = app.catalog.all_trails().map_err(|e| e.to_string())?;
    let cov = coverage(&trails);
    let settle = i64::try_from(app.settings.insights_settle.as_millis()).unwrap_or(i64::MAX);
    let mut engine = app
        .insights
        .lock()
        .map_err(|_| "insights engine lock poisoned")?;
    let (records, report) = engine.step(now, settle, &cov).map_err(|e| e.to_string())?;
    if report.starts + report.ends > 0 {
        tracing::info!(
            minutes = report.minutes,
            starts = report.starts,
            ends = report.ends,
            "insights recorded"
        );
    }
    Ok(records)
}

/// Keeps the counters and the detector up to date, once a second; appends the Insights events
/// a round stages, then tells the engine they are in the log.
pub(crate) async fn worker(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = TICK;
    loop {
        tokio::select! {
            _ = tick.tick() => {},
            _ = stop.changed() => return,
        }
        let a = Arc::clone(&app);
        let result = match tokio::task::spawn_blocking(move || round(&a)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "insights task panicked");
                return;
            }
        };
        let outcome = match result {
            Ok(records) if records.is_empty() => Ok(()),
            Ok(records) => match app.log.append(records).await {
                Ok(_) => {
                    let a = Arc::clone(&app);
                    tokio::task::spawn_blocking(move || {
                        a.insights
                            .lock()
                            .map_err(|_| "insights engine lock poisoned".to_owned())?
                            .appended()
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                }
                Err(e) => Err(format!("appending Insights events: {e}")),
            },
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => backoff = TICK,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "insights worker failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {},
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(Exception::InvalidParameterException, message)
}

fn token_hash(parts: &[&str]) -> u32 {
    parts
        .iter()
        .fold(0u32, |h, p| crc32c::crc32c_append(h, p.as_bytes()) ^ 0x5c)
}

pub(crate) async fn list_insights_metric_data(
    app: &Arc<App>,
    ctx: &CallContext,
    req: ListInsightsMetricDataRequest,
) -> Result<ListInsightsMetricDataResponse, ApiError> {
    let need = |v: Option<String>, name: &str| {
        v.filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("{name} is required")))
    };
    let event_source = need(req.event_source, "EventSource")?;
    let event_name = need(req.event_name, "EventName")?;
    let insight_type = need(req.insight_type, "InsightType")?;
    let kind = InsightType::parse(&insight_type).ok_or_else(|| {
        invalid(format!(
            "InsightType {insight_type:?} is not ApiCallRateInsight or ApiErrorRateInsight"
        ))
    })?;
    let error_code = match (kind, req.error_code.filter(|c| !c.is_empty())) {
        (InsightType::ApiErrorRateInsight, None) => {
            return Err(invalid(
                "ErrorCode is required when InsightType is ApiErrorRateInsight",
            ));
        }
        (InsightType::ApiCallRateInsight, Some(_)) => {
            return Err(invalid(
                "ErrorCode goes with InsightType ApiErrorRateInsight only",
            ));
        }
        (_, code) => code,
    };
    for (name, v) in [("EventSource", &event_source), ("EventName", &event_name)] {
        if v.len() > 256 {
            return Err(invalid(format!("{name} must be at most 256 characters")));
        }
    }
    let period = req.period.unwrap_or(3600);
    if ![60, 300, 3600].contains(&period) {
        return Err(invalid(format!(
            "Period must be 60, 300 or 3600; got {period}"
        )));
    }
    let fill = match req.data_type.as_deref().unwrap_or("NonZeroData") {
        "NonZeroData" => false,
        "FillWithZeros" => true,
        other => {
            return Err(invalid(format!(
                "DataType {other:?} is not FillWithZeros or NonZeroData"
            )));
        }
    };
    let max_results = req.max_results.unwrap_or(MAX_DATA_POINTS);
    if !(1..=MAX_DATA_POINTS).contains(&max_results) {
        return Err(invalid(format!(
            "MaxResults must be from 1 to {MAX_DATA_POINTS}; got {max_results}"
        )));
    }
    let end_ms = req.end_time.map_or(ctx.now_ms, |t| t.0);
    let start_ms = req.start_time.map_or(ctx.now_ms - 90 * DAY_MS, |t| t.0);
    if start_ms >= end_ms {
        return Err(invalid("StartTime must be before EndTime"));
    }
    if end_ms - start_ms > 400 * DAY_MS {
        return Err(invalid("the time range must be at most 400 days"));
    }
    let (category, trail_arn) = match req.trail_name.as_deref() {
        Some(name) => {
            let t = crate::trails::resolve(app, ctx, name).await?;
            (SourceCategory::Data, Some(t.arn))
        }
        None => (SourceCategory::Management, None),
    };
    let period_ms = period * 1000;
    let hash = token_hash(&[
        &event_source,
        &event_name,
        kind.as_str(),
        error_code.as_deref().unwrap_or(""),
        &start_ms.to_string(),
        &end_ms.to_string(),
        &period.to_string(),
        if fill { "f" } else { "n" },
        trail_arn.as_deref().unwrap_or(""),
    ]);
    let first_period = start_ms.div_euclid(period_ms) * period_ms;
    let resume = match req.next_token.as_deref() {
        None => first_period,
        Some(t) => {
            let bad = || invalid("NextToken is not valid for these parameters");
            let (at, h) = t.split_once('-').ok_or_else(bad)?;
            let at: i64 = at.parse().map_err(|_| bad())?;
            let h = u32::from_str_radix(h, 16).map_err(|_| bad())?;
            if h != hash
                || at < first_period
                || at >= end_ms
                || (at - first_period) % period_ms != 0
            {
                return Err(bad());
            }
            at
        }
    };
    let key = SeriesKey {
        account: ctx.account.clone(),
        region: ctx.region.clone(),
        category,
        event_source: event_source.clone(),
        event_name: event_name.clone(),
        error_code: error_code.clone(),
    };
    let counters = app.counters.clone();
    let points = tokio::task::spawn_blocking(move || -> Result<Vec<(i64, u64)>, String> {
        let Some(id) = counters.find(&key).map_err(|e| e.to_string())? else {
            return Ok(Vec::new());
        };
        let from_min = resume.div_euclid(60_000);
        let to_min = end_ms.div_euclid(60_000) + i64::from(end_ms.rem_euclid(60_000) != 0);
        let counts = counters
            .counts(id, from_min, to_min)
            .map_err(|e| e.to_string())?;
        let per = period / 60;
        Ok(counts
            .chunks(usize::try_from(per).unwrap_or(1))
            .enumerate()
            .map(|(i, c)| {
                (
                    resume + i as i64 * period_ms,
                    c.iter().map(|x| u64::from(*x)).sum(),
                )
            })
            .collect())
    })
    .await
    .map_err(|e| ApiError::new(Exception::InternalFailure, e.to_string()))?
    .map_err(|e| ApiError::new(Exception::InternalFailure, e))?;
    let mut by_start: std::collections::BTreeMap<i64, u64> = points.into_iter().collect();
    let mut timestamps = Vec::new();
    let mut values = Vec::new();
    let mut next_token = None;
    let mut at = resume;
    while at < end_ms {
        let v = by_start.remove(&at).unwrap_or(0);
        if fill || v > 0 {
            if timestamps.len() as i64 == max_results {
                next_token = Some(format!("{at}-{hash:08x}"));
                break;
            }
            timestamps.push(at as f64 / 1000.0);
            values.push(v as f64);
        }
        at += period_ms;
    }
    Ok(ListInsightsMetricDataResponse {
        trail_arn,
        event_source,
        event_name,
        insight_type: kind.as_str().to_owned(),
        error_code,
        timestamps,
        values,
        next_token,
    })
}

//! Insights: unusual API call rates and error rates, found in the event log and recorded in it.
//!
//! - [`counters`]: a crash-safe view over the event log with per-minute counts per API and per
//!   (API, error code), and the callers, user agents and error codes behind them.
//! - [`detector`]: the anomaly detector, pure arithmetic over those counts.
//! - [`Engine`]: walks the completed minutes for every series an Insights selector covers, runs
//!   the detector, and builds the CloudTrail Insights records (a Start and an End sharing a
//!   `sharedEventID`). The records are staged in the stored state before they are appended to
//!   the event log, and a restart appends only those the log does not already hold, so each is
//!   recorded exactly once.

pub mod counters;
pub mod detector;

use std::collections::{BTreeMap, HashMap, HashSet};

use opentrail_log::{EventLog, NewRecord};
use opentrail_model::time::format_event_time;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use counters::{
    Attribute, Attributions, Counters, CountersError, SeriesInfo, SeriesKey, SourceCategory,
};
use detector::{BASELINE_MINUTES, HISTORY, MINUTES_PER_HOUR, Params, Runner, Transition};
pub use detector::{Episode, Sensitivity};

/// The `eventVersion` of the Insights records we write (what CloudTrail writes today).
pub const INSIGHT_EVENT_VERSION: &str = "1.09";
/// The version of the stored engine state.
const STATE_VERSION: u32 = 1;
/// Values per attribution list, as CloudTrail gives them.
const TOP_VALUES: usize = 5;
/// Namespace of the deterministic Insights event ids.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f70_656e_7472_6169_6c2d_696e_7369_6768);

/// The two kinds of Insight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InsightType {
    ApiCallRateInsight,
    ApiErrorRateInsight,
}

impl InsightType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ApiCallRateInsight" => Some(Self::ApiCallRateInsight),
            "ApiErrorRateInsight" => Some(Self::ApiErrorRateInsight),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiCallRateInsight => "ApiCallRateInsight",
            Self::ApiErrorRateInsight => "ApiErrorRateInsight",
        }
    }
}

/// The Insights kind a series is watched for, if any: write APIs for call rates, error series
/// for error rates. Read-only APIs have no call-rate Insights (as in CloudTrail).
pub fn kind_of(info: &SeriesInfo) -> Option<InsightType> {
    match (&info.key.error_code, info.write) {
        (Some(_), _) => Some(InsightType::ApiErrorRateInsight),
        (None, true) => Some(InsightType::ApiCallRateInsight),
        (None, false) => None,
    }
}

/// Where some trail asks for Insights: an insight type for a category of events, in an account
/// (`None`: any, for organization trails) and a region (`None`: any, for multi-region trails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    pub account: Option<String>,
    pub region: Option<String>,
    pub kind: InsightType,
    pub category: SourceCategory,
}

fn covered(cov: &[Coverage], key: &SeriesKey, kind: InsightType) -> bool {
    cov.iter().any(|c| {
        c.kind == kind
            && c.category == key.category
            && c.account.as_ref().is_none_or(|a| *a == key.account)
            && c.region.as_ref().is_none_or(|r| *r == key.region)
    })
}

/// Settings of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    pub sensitivity: Sensitivity,
    /// Minutes of history an account and region need before any Insight is reported.
    pub min_history_minutes: i64,
    /// When Insights are first enabled, evaluate the whole counted history (not only from then
    /// on).
    pub backfill: bool,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum InsightsError {
    #[error(transparent)]
    Counters(#[from] CountersError),
    #[error("event log: {0}")]
    Log(#[from] opentrail_log::LogError),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored insights state has version {0}, this build reads {STATE_VERSION}")]
    StateVersion(u32),
}

/// Records staged for the log, with where the log ended before they were appended.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    log_end: u64,
    records: Vec<(String, String)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    v: u32,
    /// The first minute not yet evaluated.
    next_minute: Option<i64>,
    ever_enabled: bool,
    series: BTreeMap<u32, Runner>,
    pending: Option<Pending>,
}

/// The Insights engine (one per server; runs on a blocking thread).
pub struct Engine {
    counters: Counters,
    log: EventLog,
    config: EngineConfig,
    params: Params,
    state: State,
}

/// What one step did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepReport {
    pub minutes: i64,
    pub starts: usize,
    pub ends: usize,
}

impl Engine {
    /// Opens the engine over its counters, reading the stored state.
    pub fn open(
        counters: Counters,
        log: EventLog,
        config: EngineConfig,
    ) -> Result<Self, InsightsError> {
        let state = match counters.state()? {
            Some(bytes) => {
                let s: State = serde_json::from_slice(&bytes)?;
                if s.v != STATE_VERSION {
                    return Err(InsightsError::StateVersion(s.v));
                }
                s
            }
            None => State {
                v: STATE_VERSION,
                ..State::default()
            },
        };
        Ok(Self {
            counters,
            log,
            params: config.sensitivity.params(),
            config,
            state,
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    fn save(&self) -> Result<(), InsightsError> {
        self.counters.put_state(&serde_json::to_vec(&self.state)?)?;
        Ok(())
    }

    /// The records to append now: those staged by an earlier step that the log does not hold
    /// yet (after a crash), else the Insights of the minutes completed by `now_ms - settle_ms`.
    /// Records returned are staged durably; call [`Engine::appended`] once they are in the log.
    /// The counters must have counted the log up to the moment `now_ms` was read.
    pub fn step(
        &mut self,
        now_ms: i64,
        settle_ms: i64,
        coverage: &[Coverage],
    ) -> Result<(Vec<NewRecord>, StepReport), InsightsError> {
        if let Some(p) = self.state.pending.clone() {
            let missing = self.not_in_log(&p)?;
            if !missing.is_empty() {
                return Ok((missing, StepReport::default()));
            }
            self.state.pending = None;
            self.save()?;
        }
        let watermark = (now_ms - settle_ms).div_euclid(60_000);
        let infos = self.counters.series()?;
        let any_enabled = !coverage.is_empty();
        let mut next = match self.state.next_minute {
            Some(n) => n,
            None => watermark,
        };
        if any_enabled && !self.state.ever_enabled {
            self.state.ever_enabled = true;
            if self.config.backfill {
                next = infos
                    .iter()
                    .map(|i| i.first_minute)
                    .min()
                    .unwrap_or(watermark)
                    .min(next);
            } else {
                next = next.max(watermark);
            }
        }
        if next >= watermark {
            if self.state.next_minute.is_none() {
                self.state.next_minute = Some(next);
                self.save()?;
            }
            return Ok((Vec::new(), StepReport::default()));
        }
        // History starts per (account, region).
        let mut history: HashMap<(&str, &str), i64> = HashMap::new();
        for i in &infos {
            let e = history
                .entry((i.key.account.as_str(), i.key.region.as_str()))
                .or_insert(i.first_minute);
            *e = (*e).min(i.first_minute);
        }
        let calls_ids: HashMap<SeriesKey, u32> = infos
            .iter()
            .enumerate()
            .filter(|(_, i)| i.key.error_code.is_none())
            .filter_map(|(id, i)| Some((i.key.clone(), u32::try_from(id).ok()?)))
            .collect();
        let mut out: Vec<(i64, Value)> = Vec::new();
        let mut report = StepReport {
            minutes: watermark - next,
            ..StepReport::default()
        };
        for (idx, info) in infos.iter().enumerate() {
            let Ok(id) = u32::try_from(idx) else { break };
            let Some(kind) = kind_of(info) else { continue };
            let enabled = covered(coverage, &info.key, kind);
            if !enabled {
                // Insights turned off mid-episode: close it, so every Start has its End.
                if let Some(runner) = self.state.series.get_mut(&id)
                    && let Some(ep) = runner.tracker.active.take()
                {
                    let end = ep.last_hot + 1;
                    let rec = record(&self.counters, id, info, kind, &ep, Some(end), runner)?;
                    out.push((end, rec));
                    report.ends += 1;
                }
                continue;
            }
            let born = history
                .get(&(info.key.account.as_str(), info.key.region.as_str()))
                .copied()
                .unwrap_or(info.first_minute);
            let first_eval = next.max(born + self.config.min_history_minutes);
            if first_eval >= watermark {
                continue;
            }
            let lead = HISTORY as i64 - 1;
            let counts = self.counters.counts(id, first_eval - lead, watermark)?;
            let calls = match (&info.key.error_code, kind) {
                (Some(_), InsightType::ApiErrorRateInsight) => {
                    let mut k = info.key.clone();
                    k.error_code = None;
                    match calls_ids.get(&k) {
                        Some(cid) => Some((
                            *cid,
                            self.counters.counts(*cid, first_eval - lead, watermark)?,
                        )),
                        None => None,
                    }
                }
                _ => None,
            };
            let runner = self.state.series.entry(id).or_default();
            for t in first_eval..watermark {
                let i = usize::try_from(t - first_eval + lead).unwrap_or(0);
                if let Some((from, hour)) = runner.needs(t, born) {
                    let window = self.counters.counts(id, from, hour)?;
                    let calls_window = match &calls {
                        Some((cid, _)) => Some(self.counters.counts(*cid, from, hour)?),
                        None => None,
                    };
                    runner.learn(from, hour, &window, calls_window.as_deref(), &self.params);
                }
                let a = (i + 1).saturating_sub(HISTORY);
                let cx = calls.as_ref().map(|(_, c)| &c[a..=i]);
                match runner.step(t, &counts[a..=i], cx, &self.params) {
                    Some(Transition::Start { start }) => {
                        report.starts += 1;
                        if let Some(ep) = runner.tracker.active.clone() {
                            let rec = record(&self.counters, id, info, kind, &ep, None, runner)?;
                            out.push((start, rec));
                        }
                    }
                    Some(Transition::End { start, end }) => {
                        report.ends += 1;
                        let ep = Episode {
                            start,
                            detected: start,
                            last_hot: end - 1,
                            calls: 0.0,
                            expected: 0.0,
                        };
                        let rec = record(&self.counters, id, info, kind, &ep, Some(end), runner)?;
                        out.push((end, rec));
                    }
                    None => {}
                }
            }
        }
        self.state.next_minute = Some(watermark);
        out.sort_by_key(|(t, _)| *t);
        let mut staged = Vec::with_capacity(out.len());
        let mut records = Vec::with_capacity(out.len());
        for (t, rec) in out {
            let json = serde_json::to_string(&rec)?;
            let id = rec["eventID"].as_str().unwrap_or_default().to_owned();
            records.push(NewRecord {
                time_ms: t * 60_000,
                json: json.clone().into_bytes(),
            });
            staged.push((id, json));
        }
        if !staged.is_empty() {
            self.state.pending = Some(Pending {
                log_end: self.log.durable_end().next_seq,
                records: staged,
            });
        }
        self.save()?;
        Ok((records, report))
    }

    /// The staged records are in the log.
    pub fn appended(&mut self) -> Result<(), InsightsError> {
        if self.state.pending.take().is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// The staged records the log does not hold.
    fn not_in_log(&self, p: &Pending) -> Result<Vec<NewRecord>, InsightsError> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut reader = self.log.reader(p.log_end);
        loop {
            let batch = reader.read(4096)?;
            if batch.is_empty() {
                break;
            }
            for r in batch {
                if let Ok(v) = serde_json::from_slice::<Value>(&r.json)
                    && v["eventType"] == "AwsCloudTrailInsight"
                    && let Some(id) = v["eventID"].as_str()
                {
                    seen.insert(id.to_owned());
                }
            }
        }
        let mut out = Vec::new();
        for (id, json) in &p.records {
            if seen.contains(id) {
                continue;
            }
            let v: Value = serde_json::from_str(json)?;
            let time_ms = v["eventTime"]
                .as_str()
                .and_then(|t| opentrail_model::time::parse_event_time(t).ok())
                .unwrap_or(0);
            out.push(NewRecord {
                time_ms,
                json: json.clone().into_bytes(),
            });
        }
        Ok(out)
    }
}

/// Builds a Start (`end: None`) or End record of series `id`'s episode.
#[allow(clippy::too_many_arguments)]
fn record(
    counters: &Counters,
    id: u32,
    info: &SeriesInfo,
    kind: InsightType,
    ep: &Episode,
    end: Option<i64>,
    runner: &Runner,
) -> Result<Value, InsightsError> {
    let key = &info.key;
    let shared = uuid::Uuid::new_v5(
        &ID_NAMESPACE,
        format!(
            "{}|{}|{}|{}|{}|{}|{}|{}",
            key.account,
            key.region,
            key.category.as_str(),
            key.event_source,
            key.event_name,
            key.error_code.as_deref().unwrap_or(""),
            kind.as_str(),
            ep.start
        )
        .as_bytes(),
    );
    let state = if end.is_some() { "End" } else { "Start" };
    let event_id = uuid::Uuid::new_v5(&shared, state.as_bytes());
    // Insight period: Start covers onset to detection, End the whole episode.
    let (from, to) = match end {
        Some(e) => (ep.start, e.max(ep.start + 1)),
        None => (ep.start, (ep.detected + 1).max(ep.start + 1)),
    };
    let minutes = (to - from).max(1);
    let insight_counts = counters.counts(id, from, to)?;
    let insight_calls: u64 = insight_counts.iter().map(|c| u64::from(*c)).sum();
    let hour = from.div_euclid(MINUTES_PER_HOUR) * MINUTES_PER_HOUR;
    let base_from = (hour - BASELINE_MINUTES).max(info.first_minute.min(hour));
    let learned = runner.learned.as_ref();
    let (baseline_avg, baseline_minutes) = match learned {
        Some(l) => {
            let exp: f64 = (from..to).map(|m| l.baseline.expected(m)).sum();
            (exp / minutes as f64, l.baseline.minutes)
        }
        None => (0.0, hour - base_from),
    };
    let ins_attr = counters.attributions(id, from, to)?;
    let base_attr = counters.attributions(id, base_from, hour)?;
    let base_span = (hour - base_from).max(1) as f64;
    let top = |list: &[(String, u64)], per: f64| -> Vec<Value> {
        list.iter()
            .take(TOP_VALUES)
            .map(|(v, c)| json!({"value": v, "average": round3(*c as f64 / per)}))
            .collect()
    };
    let attributions: Vec<Value> = Attribute::ALL
        .iter()
        .map(|a| {
            json!({
                "attribute": a.as_str(),
                "insight": top(&ins_attr.values[*a as usize], minutes as f64),
                "baseline": top(&base_attr.values[*a as usize], base_span),
            })
        })
        .collect();
    let time = end.unwrap_or(ep.start);
    let mut details = json!({
        "state": state,
        "eventSource": key.event_source,
        "eventName": key.event_name,
        "insightType": kind.as_str(),
    });
    if let Some(code) = &key.error_code {
        details["errorCode"] = json!(code);
    }
    details["sourceEventCategory"] = json!(key.category.as_str());
    details["insightContext"] = json!({
        "statistics": {
            "baseline": {"average": round3(baseline_avg)},
            "insight": {"average": round3(insight_calls as f64 / minutes as f64)},
            "insightDuration": minutes,
            "baselineDuration": baseline_minutes,
        },
        "attributions": attributions,
    });
    Ok(json!({
        "eventVersion": INSIGHT_EVENT_VERSION,
        "eventTime": format_event_time(time * 60_000),
        "awsRegion": key.region,
        "eventID": event_id.to_string(),
        "eventType": "AwsCloudTrailInsight",
        "recipientAccountId": key.account,
        "sharedEventID": shared.to_string(),
        "insightDetails": details,
        "eventCategory": "Insight",
    }))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

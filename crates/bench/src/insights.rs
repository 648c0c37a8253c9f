//! The Insights evaluation harness: weeks of synthetic per-minute API traffic with known
//! anomalies, run through our detector at each sensitivity and through a simple baseline
//! (mean + 3σ of the trailing hour), scored against the ground truth. Two reference rows show
//! what is possible at all: a detector given each series' true rate and noise, with its
//! threshold fitted on anomaly-free traffic to one or two false Insights per API and week.
//!
//! Traffic: every API has a rate with a daily cycle, a weekday/weekend factor (some APIs are
//! busier at weekends) and gamma-Poisson noise; "quiet" APIs are called a few times a day in
//! clumps; "noisy" APIs are strongly over-dispersed and have short natural flurries. Each API
//! has an error series (a small share of its calls fail). Injected anomalies: call bursts
//! (3×–20× for 1–60 minutes), error storms, slow ramps, level shifts, and traffic spikes that
//! keep the usual share of errors (a call-rate anomaly, and a trap for error-rate detection).
//! Burst sizes are relative to the API's rate but at least one call a minute (a 5× burst on an
//! API called twice a day is five calls a minute).
//!
//! For tuning: `OPENTRAIL_INSIGHTS_TRY="k,z,margin,min_excess,peak_rank;..."` replaces the
//! rows with those parameter sets (a single number `r` is the reference fitted to `r` false
//! Insights per API-week); `OPENTRAIL_INSIGHTS_DEBUG=1` adds false Insights by kind of API,
//! recall by kind of API, and recall per burst size and length.

use std::collections::BTreeMap;
use std::time::Instant;

use opentrail_insights::detector::{
    HISTORY, MINUTES_PER_DAY, MINUTES_PER_HOUR, Params, Runner, Sensitivity, Transition,
};
use rand::{RngExt, SeedableRng};
use rand_distr::{Binomial, Distribution, Gamma, Poisson};

type Rng = rand::rngs::Xoshiro256PlusPlus;

/// Minutes after an anomaly ends in which a Start still counts as finding it.
const SLACK: i64 = 5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Busy,
    Moderate,
    Quiet,
    Noisy,
}

struct Api {
    kind: Kind,
    rate: f64,
    amplitude: f64,
    peak_hour: f64,
    weekend: f64,
    shape: f64,
    error_share: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Anomaly {
    Burst { factor: f64, minutes: i64 },
    ErrorStorm { factor: f64, minutes: i64 },
    TrafficSpike { factor: f64, minutes: i64 },
    Ramp { factor: f64, minutes: i64 },
    LevelShift { factor: f64 },
}

impl Anomaly {
    fn label(&self) -> &'static str {
        match self {
            Self::Burst { .. } => "burst",
            Self::ErrorStorm { .. } => "error storm",
            Self::TrafficSpike { .. } => "traffic spike",
            Self::Ramp { .. } => "ramp",
            Self::LevelShift { .. } => "level shift",
        }
    }
}

/// Anomalies found and injected, by kind.
type Found = BTreeMap<&'static str, (usize, usize)>;

/// One injected anomaly: API, first minute, last minute (exclusive).
struct Truth {
    api: usize,
    start: i64,
    end: i64,
    anomaly: Anomaly,
}

fn poisson(rng: &mut Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    Poisson::new(lambda).map_or(0, |p| p.sample(rng) as u32)
}

fn rate_at(api: &Api, m: i64) -> f64 {
    let hour = (m.rem_euclid(MINUTES_PER_DAY)) as f64 / 60.0;
    let daily =
        1.0 + api.amplitude * (2.0 * std::f64::consts::PI * (hour - api.peak_hour) / 24.0).cos();
    let day = m.div_euclid(MINUTES_PER_DAY).rem_euclid(7);
    let weekly = if day >= 5 { api.weekend } else { 1.0 };
    api.rate * daily * weekly
}

fn make_api(rng: &mut Rng) -> Api {
    let r: f64 = rng.random();
    let log_uniform = |rng: &mut Rng, lo: f64, hi: f64| -> f64 {
        (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp()
    };
    let kind = if r < 0.3 {
        Kind::Busy
    } else if r < 0.6 {
        Kind::Moderate
    } else if r < 0.85 {
        Kind::Quiet
    } else {
        Kind::Noisy
    };
    let (rate, shape) = match kind {
        Kind::Busy => (log_uniform(rng, 5.0, 200.0), rng.random_range(5.0..50.0)),
        Kind::Moderate => (log_uniform(rng, 0.2, 5.0), rng.random_range(2.0..20.0)),
        // Sessions per minute; each session is a clump of calls.
        Kind::Quiet => (log_uniform(rng, 1.0, 20.0) / MINUTES_PER_DAY as f64, 1.0),
        Kind::Noisy => (log_uniform(rng, 1.0, 50.0), rng.random_range(0.7..2.0)),
    };
    let weekend = if rng.random::<f64>() < 0.1 {
        rng.random_range(1.2..1.6)
    } else {
        rng.random_range(0.3..1.0)
    };
    Api {
        kind,
        rate,
        amplitude: rng.random_range(0.0..0.9),
        peak_hour: rng.random_range(8.0..18.0),
        weekend,
        shape,
        error_share: log_uniform(rng, 0.001, 0.05),
    }
}

/// Normal traffic of one minute: (calls, errors).
fn normal_minute(rng: &mut Rng, api: &Api, m: i64, clump: f64) -> (u32, u32) {
    let lambda = rate_at(api, m);
    let calls = match api.kind {
        Kind::Quiet => {
            let sessions = poisson(rng, lambda);
            (0..sessions)
                .map(|_| 1 + poisson(rng, clump - 1.0))
                .sum::<u32>()
        }
        Kind::Noisy => {
            let g = Gamma::new(api.shape, 1.0 / api.shape).map_or(1.0, |g| g.sample(rng));
            // Short natural flurries: 1.5–2× for a few minutes, a few times a day.
            let flurry = if (m / 5) % 97 == (api.rate as i64) % 97 {
                1.8
            } else {
                1.0
            };
            poisson(rng, lambda * g * flurry)
        }
        _ => {
            let g = Gamma::new(api.shape, 1.0 / api.shape).map_or(1.0, |g| g.sample(rng));
            poisson(rng, lambda * g)
        }
    };
    let errors =
        Binomial::new(u64::from(calls), api.error_share).map_or(0, |b| b.sample(rng) as u32);
    (calls, errors)
}

struct Scenario {
    seed: u64,
    apis: Vec<Api>,
    /// Each API's mean clump size (quiet APIs are called in clumps).
    clumps: Vec<f64>,
    calls: Vec<Vec<u32>>,
    errors: Vec<Vec<u32>>,
    truth: Vec<Truth>,
    minutes: i64,
    eval_from: i64,
}

fn generate(seed: u64, n_apis: usize, weeks: i64) -> Scenario {
    let mut rng = Rng::seed_from_u64(seed);
    let minutes = weeks * 7 * MINUTES_PER_DAY;
    let eval_from = MINUTES_PER_DAY; // the default minimum history
    let apis: Vec<Api> = (0..n_apis).map(|_| make_api(&mut rng)).collect();
    let mut calls = Vec::with_capacity(n_apis);
    let mut errors = Vec::with_capacity(n_apis);
    let mut truth = Vec::new();
    let mut clumps = Vec::with_capacity(n_apis);
    for (i, api) in apis.iter().enumerate() {
        let clump = rng.random_range(1.0..6.0);
        clumps.push(clump);
        let mut c = Vec::with_capacity(minutes as usize);
        let mut e = Vec::with_capacity(minutes as usize);
        for m in 0..minutes {
            let (a, b) = normal_minute(&mut rng, api, m, clump);
            c.push(a);
            e.push(b);
        }
        // Anomalies: about two a week, at least a day apart, none in the first day.
        let mut at = eval_from + rng.random_range(6 * 60..2 * MINUTES_PER_DAY);
        let mut shifted = false;
        while at < minutes - 6 * 60 {
            let pick: f64 = rng.random();
            let factor = [3.0, 5.0, 10.0, 20.0][rng.random_range(0..4)];
            let minutes_of = [1, 3, 5, 15, 60][rng.random_range(0..5)];
            let anomaly = if pick < 0.45 {
                Anomaly::Burst {
                    factor,
                    minutes: minutes_of,
                }
            } else if pick < 0.7 {
                Anomaly::ErrorStorm {
                    factor,
                    minutes: minutes_of,
                }
            } else if pick < 0.8 {
                Anomaly::TrafficSpike {
                    factor: factor.max(3.0),
                    minutes: minutes_of.max(5),
                }
            } else if pick < 0.93 || shifted {
                Anomaly::Ramp {
                    factor: factor.max(5.0),
                    minutes: [30, 60, 120][rng.random_range(0..3)],
                }
            } else {
                shifted = true;
                Anomaly::LevelShift {
                    factor: [3.0, 5.0][rng.random_range(0..2)],
                }
            };
            let end = match anomaly {
                Anomaly::Burst { minutes, .. }
                | Anomaly::ErrorStorm { minutes, .. }
                | Anomaly::TrafficSpike { minutes, .. } => at + minutes,
                Anomaly::Ramp { minutes, .. } => at + minutes + 30,
                Anomaly::LevelShift { .. } => minutes,
            };
            for m in at..end.min(minutes) {
                let idx = m as usize;
                let base = rate_at(api, m).max(1.0);
                match anomaly {
                    Anomaly::Burst { factor, .. } => {
                        let extra = poisson(&mut rng, (factor - 1.0) * base);
                        c[idx] += extra;
                    }
                    Anomaly::ErrorStorm { factor, .. } => {
                        let err_base = (rate_at(api, m) * api.error_share).max(1.0);
                        let extra = poisson(&mut rng, (factor - 1.0) * err_base);
                        c[idx] += extra;
                        e[idx] += extra;
                    }
                    Anomaly::TrafficSpike { factor, .. } => {
                        let extra = poisson(&mut rng, (factor - 1.0) * base);
                        let extra_err = Binomial::new(u64::from(extra), api.error_share)
                            .map_or(0, |b| b.sample(&mut rng) as u32);
                        c[idx] += extra;
                        e[idx] += extra_err;
                    }
                    Anomaly::Ramp { factor, minutes } => {
                        let f = 1.0 + (factor - 1.0) * ((m - at) as f64 / minutes as f64).min(1.0);
                        c[idx] += poisson(&mut rng, (f - 1.0) * base);
                    }
                    Anomaly::LevelShift { factor } => {
                        c[idx] += poisson(&mut rng, (factor - 1.0) * base);
                    }
                }
            }
            truth.push(Truth {
                api: i,
                start: at,
                end,
                anomaly,
            });
            if matches!(anomaly, Anomaly::LevelShift { .. }) {
                break;
            }
            at = end + rng.random_range(MINUTES_PER_DAY..4 * MINUTES_PER_DAY);
        }
        calls.push(c);
        errors.push(e);
    }
    Scenario {
        seed,
        apis,
        clumps,
        calls,
        errors,
        truth,
        minutes,
        eval_from,
    }
}

/// A detector under evaluation: ours with its parameters, or the simple baseline at `k`σ.
enum Detector {
    Ours(Params),
    Simple(f64),
    /// A reference given what no real detector has: each series' true expected count and
    /// variance per minute (for an error series, given its calls), and a threshold fitted on a
    /// second, anomaly-free run of the same series so that the API raises about this many
    /// false Insights a week (half on each series). A detector that must learn the rate and
    /// thresholds windowed counts should not expect to find what it misses at that rate.
    Oracle(f64),
}

/// The windows the oracle sums over, in minutes.
const ORACLE_WINDOWS: [usize; 5] = [1, 3, 5, 15, 60];

/// The true mean and variance of a minute's normal calls.
fn true_moments(api: &Api, m: i64, clump: f64) -> (f64, f64) {
    let lambda = rate_at(api, m);
    match api.kind {
        // A Poisson number of sessions, each 1 + Poisson(clump - 1) calls.
        Kind::Quiet => (lambda * clump, lambda * ((clump - 1.0) + clump * clump)),
        Kind::Noisy => {
            let flurry = if (m / 5) % 97 == (api.rate as i64) % 97 {
                1.8
            } else {
                1.0
            };
            let l = lambda * flurry;
            (l, l + l * l / api.shape)
        }
        _ => (lambda, lambda + lambda * lambda / api.shape),
    }
}

/// The oracle's statistic per minute: the largest standardized excess over its windows.
fn oracle_scores(series: &[u32], moments: &[(f64, f64)]) -> Vec<f64> {
    let n = series.len();
    let (mut px, mut pe, mut pv) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
    for i in 0..n {
        px[i + 1] = px[i] + f64::from(series[i]);
        pe[i + 1] = pe[i] + moments[i].0;
        pv[i + 1] = pv[i] + moments[i].1;
    }
    (0..n)
        .map(|i| {
            ORACLE_WINDOWS
                .iter()
                .filter(|w| **w <= i + 1)
                .map(|w| {
                    let a = i + 1 - w;
                    let (x, e, v) = (px[i + 1] - px[a], pe[i + 1] - pe[a], pv[i + 1] - pv[a]);
                    (x - e) / (v + 0.25).sqrt()
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

/// Episodes of `scores` over `tau` from minute `from`: Start on the first minute over it, End
/// after five minutes under it (as the simple baseline).
fn oracle_episodes(scores: &[f64], from: i64, tau: f64) -> Vec<Detection> {
    let mut episodes = Episodes::default();
    for (i, z) in scores
        .iter()
        .enumerate()
        .skip(usize::try_from(from).unwrap_or(0))
    {
        episodes.step(i as i64, *z > tau);
    }
    episodes.starts
}

/// The simple detectors' episodes: Start on a minute over the threshold, End after five
/// minutes under it.
#[derive(Default)]
struct Episodes {
    active: bool,
    calm: u32,
    starts: Vec<Detection>,
}

impl Episodes {
    fn step(&mut self, minute: i64, over: bool) {
        if !self.active && over {
            self.active = true;
            self.calm = 0;
            self.starts.push(Detection { decided: minute });
        } else if self.active {
            self.calm = if over { 0 } else { self.calm + 1 };
            if self.calm >= 5 {
                self.active = false;
            }
        }
    }
}

/// Runs the oracle over API `i`'s call series, or its error series.
fn run_oracle(sc: &Scenario, i: usize, errors: bool, per_week: f64) -> Vec<Detection> {
    let api = &sc.apis[i];
    let clump = sc.clumps[i];
    let moments = |calls: &[u32]| -> Vec<(f64, f64)> {
        (0..calls.len())
            .map(|m| {
                if errors {
                    let c = f64::from(calls[m]);
                    let q = api.error_share;
                    (c * q, c * q * (1.0 - q))
                } else {
                    true_moments(api, m as i64, clump)
                }
            })
            .collect()
    };
    // A second, anomaly-free run of the same series fits the threshold.
    let mut rng = Rng::seed_from_u64(sc.seed ^ 0x5eed_0ac1e ^ (i as u64) << 20);
    let (mut cc, mut ce) = (Vec::new(), Vec::new());
    for m in 0..sc.minutes {
        let (a, b) = normal_minute(&mut rng, api, m, clump);
        cc.push(a);
        ce.push(b);
    }
    let clean = if errors { &ce } else { &cc };
    let clean_scores = oracle_scores(clean, &moments(&cc));
    let weeks = (sc.minutes - sc.eval_from) as f64 / (7.0 * MINUTES_PER_DAY as f64);
    let allowed = (per_week * weeks).floor() as usize;
    let (mut lo, mut hi) = (0.0f64, 1.0e4f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if oracle_episodes(&clean_scores, sc.eval_from, mid).len() > allowed {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (series, calls) = if errors {
        (&sc.errors[i], &sc.calls[i])
    } else {
        (&sc.calls[i], &sc.calls[i])
    };
    oracle_episodes(&oracle_scores(series, &moments(calls)), sc.eval_from, hi)
}

/// A detection: the minute the Start was decided, and the episode's first minute.
#[derive(Clone, Copy)]
struct Detection {
    decided: i64,
}

/// Runs our detector over one series; `calls` for error series.
fn run_ours(series: &[u32], calls: Option<&[u32]>, from: i64, params: &Params) -> Vec<Detection> {
    let mut runner = Runner::default();
    let mut out = Vec::new();
    let len = series.len() as i64;
    for t in from.max(2)..len {
        if let Some((lo, hour)) = runner.needs(t, 0) {
            let (a, b) = (lo as usize, hour as usize);
            runner.learn(lo, hour, &series[a..b], calls.map(|c| &c[a..b]), params);
        }
        let i = t as usize;
        let a = (i + 1).saturating_sub(HISTORY);
        let cx = calls.map(|c| &c[a..=i]);
        if let Some(Transition::Start { .. }) = runner.step(t, &series[a..=i], cx, params) {
            out.push(Detection { decided: t });
        }
    }
    out
}

/// The simple baseline: Start when a minute exceeds the trailing hour's mean + `k`σ; End after
/// five minutes back under it.
fn run_simple(series: &[u32], from: i64, k: f64) -> Vec<Detection> {
    let mut episodes = Episodes::default();
    let w = MINUTES_PER_HOUR as usize;
    let (mut sum, mut sq) = (0.0f64, 0.0f64);
    for (i, c) in series.iter().enumerate() {
        let x = f64::from(*c);
        if i >= w {
            let mean = sum / w as f64;
            let sd = (sq / w as f64 - mean * mean).max(0.0).sqrt();
            let over = x > mean + k * sd;
            if i as i64 >= from {
                episodes.step(i as i64, over);
            }
            let old = f64::from(series[i - w]);
            sum -= old;
            sq -= old * old;
        }
        sum += x;
        sq += x * x;
    }
    episodes.starts
}

#[derive(Default)]
struct Score {
    detections: usize,
    false_positives: usize,
    /// False Insights of each API, its call-rate and error-rate series together.
    fp_per_api: Vec<usize>,
    found: Found,
    strong_bursts: (usize, usize),
    delays: Vec<i64>,
    strong_delays: Vec<i64>,
    spike_traps: usize,
    fp_by_kind: BTreeMap<String, usize>,
    bursts: BTreeMap<(u32, i64), (usize, usize)>,
    /// False Insights by week of the run.
    fp_by_week: BTreeMap<i64, usize>,
    /// Missed anomalies by kind of API, kind of anomaly, factor and length.
    missed: BTreeMap<String, usize>,
    /// Anomalies found and injected by kind of API.
    by_api: BTreeMap<String, (usize, usize)>,
}

/// Scores detections of one series against the truths that series should report.
fn score(s: &mut Score, api: Kind, dets: &[Detection], truths: &[&Truth], traps: &[&Truth]) {
    s.detections += dets.len();
    let slack = SLACK;
    let mut fp = 0;
    for d in dets {
        let hit = truths
            .iter()
            .any(|t| d.decided >= t.start && d.decided < t.end + slack);
        if !hit {
            fp += 1;
            *s.fp_by_week
                .entry(d.decided / (7 * MINUTES_PER_DAY))
                .or_default() += 1;
            if traps
                .iter()
                .any(|t| d.decided >= t.start && d.decided < t.end + slack)
            {
                s.spike_traps += 1;
            }
        }
    }
    s.false_positives += fp;
    for t in truths {
        let first = dets
            .iter()
            .find(|d| d.decided >= t.start && d.decided < t.end + slack);
        let e = s.found.entry(t.anomaly.label()).or_default();
        e.1 += 1;
        let strong = matches!(t.anomaly, Anomaly::Burst { factor, minutes } if factor >= 5.0 && minutes >= 3);
        if strong {
            s.strong_bursts.1 += 1;
        }
        if let Anomaly::Burst { factor, minutes } = t.anomaly {
            let e = s.bursts.entry((factor as u32, minutes)).or_default();
            e.1 += 1;
            e.0 += usize::from(first.is_some());
        }
        let e2 = s.by_api.entry(format!("{api:?}")).or_default();
        e2.1 += 1;
        e2.0 += usize::from(first.is_some());
        if first.is_none() {
            *s.missed
                .entry(format!("{api:?} {:?}", t.anomaly))
                .or_default() += 1;
        }
        if let Some(d) = first {
            e.0 += 1;
            // The Start is decided once minute `decided` is complete.
            let delay = d.decided + 1 - t.start;
            s.delays.push(delay);
            if strong {
                s.strong_bursts.0 += 1;
                s.strong_delays.push(delay);
            }
        }
    }
}

/// Runs one detector over every series of the scenario and scores it.
fn evaluate(sc: &Scenario, detector: &Detector) -> Score {
    let mut s = Score::default();
    for (i, _) in sc.apis.iter().enumerate() {
        let api_before = s.false_positives;
        let of = |pred: &dyn Fn(&Anomaly) -> bool| -> Vec<&Truth> {
            sc.truth
                .iter()
                .filter(|t| t.api == i && pred(&t.anomaly))
                .collect()
        };
        // Call-rate series: bursts, ramps, level shifts and traffic spikes are anomalies;
        // error storms add calls too, so a call-rate Insight there is not false.
        let call_truths = of(&|a| !matches!(a, Anomaly::ErrorStorm { .. }));
        let call_extra = of(&|a| matches!(a, Anomaly::ErrorStorm { .. }));
        let dets = match detector {
            Detector::Ours(p) => run_ours(&sc.calls[i], None, sc.eval_from, p),
            Detector::Simple(k) => run_simple(&sc.calls[i], sc.eval_from, *k),
            Detector::Oracle(r) => run_oracle(sc, i, false, r / 2.0),
        };
        // Error storms counted on the call series would inflate recall: drop detections
        // they explain before scoring.
        let dets: Vec<Detection> = dets
            .into_iter()
            .filter(|d| {
                !call_extra
                    .iter()
                    .any(|t| d.decided >= t.start && d.decided < t.end + SLACK)
            })
            .collect();
        let before = s.false_positives;
        score(&mut s, sc.apis[i].kind, &dets, &call_truths, &[]);
        *s.fp_by_kind
            .entry(format!("{:?} calls", sc.apis[i].kind))
            .or_default() += s.false_positives - before;
        // Error series: only error storms; traffic spikes are traps.
        let err_truths = of(&|a| matches!(a, Anomaly::ErrorStorm { .. }));
        let traps = of(&|a| matches!(a, Anomaly::TrafficSpike { .. }));
        let dets = match detector {
            Detector::Ours(p) => run_ours(&sc.errors[i], Some(&sc.calls[i]), sc.eval_from, p),
            Detector::Simple(k) => run_simple(&sc.errors[i], sc.eval_from, *k),
            Detector::Oracle(r) => run_oracle(sc, i, true, r / 2.0),
        };
        let dets: Vec<Detection> = dets
            .into_iter()
            .filter(|d| {
                !of(&|a| !matches!(a, Anomaly::ErrorStorm { .. } | Anomaly::TrafficSpike { .. }))
                    .iter()
                    .any(|t| d.decided >= t.start && d.decided < t.end + SLACK)
            })
            .collect();
        let before = s.false_positives;
        score(&mut s, sc.apis[i].kind, &dets, &err_truths, &traps);
        *s.fp_by_kind
            .entry(format!("{:?} errors", sc.apis[i].kind))
            .or_default() += s.false_positives - before;
        s.fp_per_api.push(s.false_positives - api_before);
    }
    s
}

fn median(v: &mut [i64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// Runs the evaluation and prints the tables.
pub fn run(seed: u64, n_apis: usize, weeks: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let sc = generate(seed, n_apis, weeks);
    let eval_weeks = (sc.minutes - sc.eval_from) as f64 / (7.0 * MINUTES_PER_DAY as f64);
    let kinds = |k: Kind| sc.apis.iter().filter(|a| a.kind == k).count();
    println!(
        "\n## Insights detector evaluation\n\n{} APIs ({} busy, {} moderate, {} quiet, {} noisy) x {} weeks of per-minute traffic, \
         each with an error series; {} injected anomalies; evaluated after the first day (the default minimum history); seed {seed}; generated in {:.1} s\n",
        sc.apis.len(),
        kinds(Kind::Busy),
        kinds(Kind::Moderate),
        kinds(Kind::Quiet),
        kinds(Kind::Noisy),
        weeks,
        sc.truth.len(),
        started.elapsed().as_secs_f64()
    );
    // The simple baseline at 3σ is the reference; at 6σ and 10σ it shows what its recall is
    // worth at fewer false Insights (the same trade our sensitivity settings make).
    let detectors: Vec<(String, Detector)> = vec![
        (
            "OpenTrail, low".into(),
            Detector::Ours(Sensitivity::Low.params()),
        ),
        (
            "OpenTrail, medium (default)".into(),
            Detector::Ours(Sensitivity::Medium.params()),
        ),
        (
            "OpenTrail, high".into(),
            Detector::Ours(Sensitivity::High.params()),
        ),
        (
            "mean + 3σ of the trailing hour".into(),
            Detector::Simple(3.0),
        ),
        (
            "mean + 6σ of the trailing hour".into(),
            Detector::Simple(6.0),
        ),
        (
            "mean + 10σ of the trailing hour".into(),
            Detector::Simple(10.0),
        ),
        (
            "reference: true rates, fitted to 1 false / API-week".into(),
            Detector::Oracle(1.0),
        ),
        (
            "reference: true rates, fitted to 2 false / API-week".into(),
            Detector::Oracle(2.0),
        ),
    ];
    let mut detectors = detectors;
    if let Ok(v) = std::env::var("OPENTRAIL_INSIGHTS_TRY") {
        detectors.clear();
        for spec in v.split(';') {
            let f: Vec<f64> = spec.split(',').filter_map(|x| x.parse().ok()).collect();
            if let [rate] = f[..] {
                detectors.push((format!("oracle {rate}"), Detector::Oracle(rate)));
            } else if let [k, z, margin, min_excess, rank] = f[..] {
                detectors.push((
                    format!("try {spec}"),
                    Detector::Ours(Params {
                        k,
                        z,
                        margin,
                        min_excess,
                        peak_rank: rank as usize,
                        ..Params::default()
                    }),
                ));
            }
        }
    }
    println!(
        "| detector | Insights | precision | recall (all) | recall, bursts ≥5× ≥3 min | false / API-week (mean, worst API) | error Insights on traffic spikes | median delay (all / strong bursts) | run time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut per_kind: Vec<(String, Found)> = Vec::new();
    // Detectors run on every core; rows print in order.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<(Score, f64)>> = (0..detectors.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.min(detectors.len()))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, detector)) = detectors.get(i) else {
                            break;
                        };
                        let t0 = Instant::now();
                        let s = evaluate(&sc, detector);
                        done.push((i, s, t0.elapsed().as_secs_f64()));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            for (i, s, secs) in h.join().unwrap_or_default() {
                results[i] = Some((s, secs));
            }
        }
    });
    for ((name, _), result) in detectors.iter().zip(results) {
        let Some((mut s, secs)) = result else {
            anyhow::bail!("the evaluation of {name} failed");
        };
        let (found, total) = s.found.values().fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        let precision = if s.detections == 0 {
            f64::NAN
        } else {
            (s.detections - s.false_positives) as f64 / s.detections as f64
        };
        let apis = s.fp_per_api.len() as f64;
        let worst = s.fp_per_api.iter().copied().max().unwrap_or(0) as f64 / eval_weeks;
        println!(
            "| {name} | {} | {:.3} | {:.3} ({found}/{total}) | {:.3} ({}/{}) | {:.3}, {:.1} | {} | {:.0} / {:.0} min | {:.1} s |",
            s.detections,
            precision,
            found as f64 / total.max(1) as f64,
            s.strong_bursts.0 as f64 / s.strong_bursts.1.max(1) as f64,
            s.strong_bursts.0,
            s.strong_bursts.1,
            s.false_positives as f64 / (apis * eval_weeks),
            worst,
            s.spike_traps,
            median(&mut s.delays),
            median(&mut s.strong_delays),
            secs,
        );
        if std::env::var_os("OPENTRAIL_INSIGHTS_DEBUG").is_some() {
            println!("    false by kind: {:?}", s.fp_by_kind);
            println!("    false by week: {:?}", s.fp_by_week);
            println!("    found by kind of API: {:?}", s.by_api);
            println!(
                "    bursts (factor, minutes) -> found/total: {:?}",
                s.bursts
            );
            for (what, n) in &s.missed {
                println!("    missed {n}: {what}");
            }
        }
        per_kind.push((name.clone(), s.found));
    }
    println!("\nRecall by kind of anomaly:\n");
    let labels: Vec<&'static str> = per_kind
        .first()
        .map(|(_, m)| m.keys().copied().collect())
        .unwrap_or_default();
    println!("| detector | {} |", labels.join(" | "));
    println!("|---|{}", "---|".repeat(labels.len()));
    for (name, m) in &per_kind {
        let cells: Vec<String> = labels
            .iter()
            .map(|l| {
                let (f, t) = m.get(l).copied().unwrap_or((0, 0));
                format!("{:.2} ({f}/{t})", f as f64 / t.max(1) as f64)
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    Ok(())
}

//! The anomaly detector: pure arithmetic over per-minute counts, no IO and no clock.
//!
//! The method (see `docs/insights.md` for the reasoning):
//!
//! 1. **Expected rate.** From up to seven trailing days of per-minute counts, the mean count of
//!    every clock hour. The expected rate of an hour is the median of the same hour on the
//!    previous days (daily cycles; robust to one odd day), raised to the same hour one week
//!    earlier when there is one (weekly cycles: a busy Monday morning is not measured against a
//!    quiet Sunday). Within an hour the rate is interpolated between hour centres, and it never
//!    drops below a floor (a tenth of the overall mean, at least one call a day).
//! 2. **Excess.** Each minute, the excess over their expected count of the windows of the last
//!    1, 3, 15 and 60 minutes. In the 15- and 60-minute windows a minute counts for at most
//!    `2k - 1` times its expected count (and at least one call): they look for sustained
//!    rises, and a quiet API's clumps must not add up to one there.
//! 3. **Threshold.** One window's excess must reach the largest of: a ratio term (`k - 1` times
//!    the expected count: "k times the normal rate"), a noise term (`z` standard deviations of
//!    an over-dispersed Poisson count, the dispersion learned from the residuals), a
//!    calibration term (`margin` times the window's normal peak: the level its daily maximum
//!    excess reaches once or twice a week, extrapolated along a Gumbel tail while the history
//!    is shorter than that, so a quiet API that is called in clumps of ten once a day does not
//!    alarm on its daily clump; for a sparse API, one called in fewer than one minute in ten,
//!    the level is always the largest day's), and an absolute minimum of calls.
//! 4. **Hysteresis.** An episode starts when a window reaches its threshold and ends only after
//!    `cooldown` minutes without a "hot" minute (one where the 1-, 3- or 15-minute window is at
//!    `end_fraction` of its threshold) and once no window is. So one burst gives one Start and
//!    one End, and a burst with short gaps stays one episode.
//!
//! For error-rate series the caller raises the expected error count to the baseline error ratio
//! times the current call count, so a traffic spike with the usual share of errors is not an
//! error-rate anomaly.

use serde::{Deserialize, Serialize};

pub const MINUTES_PER_HOUR: i64 = 60;
pub const MINUTES_PER_DAY: i64 = 1440;
/// The trailing window a baseline is learned from: seven days.
pub const BASELINE_MINUTES: i64 = 7 * MINUTES_PER_DAY;
/// The windows the excess is measured over, in minutes: one minute catches sharp spikes at
/// once, three minutes short bursts, and fifteen and sixty minutes sustained moderate rises
/// (a quiet API called a few times a minute for an hour) that no short window can tell from
/// its normal clumps.
pub const WINDOWS: [usize; 4] = [1, 3, 15, 60];
/// The longest window: how many trailing minutes [`Runner::step`] wants.
pub const HISTORY: usize = 60;
/// The windows whose excess keeps a minute "hot" (the sixty-minute window lags too far behind
/// the end of an anomaly to say when it ended).
const HOT_WINDOWS: usize = 3;
/// The first of the long windows ([`WINDOWS`]), in which a minute counts for at most its
/// expected count plus twice the excess the ratio term asks of it (`1 + 2(k - 1)` times its
/// expected count), and at least one call. A sustained rise is found from many minutes each
/// somewhat above normal; without the cap, two clumps of a quiet API in one hour looked like
/// one.
const FIRST_LONG: usize = 2;
/// A series with calls in fewer than this share of its minutes is sparse: each of its daily
/// peaks rests on a few clumps, and the second-largest day of a week is too low a level to
/// calibrate on, so it calibrates on the largest.
pub const SPARSE_SHARE: f64 = 0.1;

/// A minute's count `x` as the long windows see it, expecting `mu`, for the ratio `k`.
fn capped(x: f64, mu: f64, k: f64) -> f64 {
    x.min(((2.0 * k - 1.0) * mu).ceil().max(1.0))
}

/// How eager the detector is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sensitivity {
    Low,
    #[default]
    Medium,
    High,
}

impl Sensitivity {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }

    /// The parameters of this setting.
    pub fn params(self) -> Params {
        match self {
            Self::Low => Params {
                k: 3.0,
                z: 5.0,
                margin: 2.0,
                min_excess: 8.0,
                peak_rank: 0,
                ..Params::default()
            },
            Self::Medium => Params::default(),
            Self::High => Params {
                margin: 1.1,
                ..Params::default()
            },
        }
    }
}

/// The detector's knobs (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// An episode needs the window's count to reach `k` times its expected count.
    pub k: f64,
    /// ... and to be `z` standard deviations above it.
    pub z: f64,
    /// ... and to exceed `margin` times the series' normal daily peak excess.
    pub margin: f64,
    /// ... and to exceed the expected count by at least this many calls.
    pub min_excess: f64,
    /// A minute is hot when a short window's excess reaches this fraction of its threshold.
    pub end_fraction: f64,
    /// Minutes without a hot minute before an episode ends.
    pub cooldown: i64,
    /// Which daily peak calibrates (0: the largest day of the trailing week, 1: the second).
    pub peak_rank: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            k: 1.75,
            z: 4.0,
            margin: 1.25,
            min_excess: 4.0,
            end_fraction: 0.5,
            cooldown: 5,
            peak_rank: 1,
        }
    }
}

/// What a baseline was learned from and what it expects.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// The first minute of the hourly means (hour-aligned).
    first_minute: i64,
    /// The minute learning stopped at (exclusive).
    until: i64,
    /// Mean count per minute of each hour since `first_minute`; `None` when too little of the
    /// hour was usable (excluded as an earlier anomaly, or outside the history).
    hour_means: Vec<Option<f64>>,
    /// The expected rate of every hour from `first_minute` to two hours past `until`.
    rates: Vec<f64>,
    /// The floor of the expected rate.
    floor: f64,
    /// Mean count per minute over the usable history.
    pub mean: f64,
    /// Residual variance over expected count (at least 1).
    pub dispersion: f64,
    /// The calibration terms: for each of [`WINDOWS`], the daily maxima of the window's excess
    /// over the usable history, in units of `sqrt(expected + 1)`, largest first.
    pub daily_peaks: [Vec<f64>; WINDOWS.len()],
    /// Usable minutes learned from.
    pub minutes: i64,
    /// Calls counted over the usable minutes.
    pub total: u64,
    /// Share of the usable minutes with at least one call.
    pub active_share: f64,
}

/// Mean of the usable minutes of an hour, when at least half of it is usable.
fn hour_mean(counts: &[u32], usable: &[bool]) -> Option<f64> {
    let (mut sum, mut n) = (0u64, 0u32);
    for (c, u) in counts.iter().zip(usable) {
        if *u {
            sum += u64::from(*c);
            n += 1;
        }
    }
    (n >= 30).then(|| sum as f64 / f64::from(n))
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    // With an even count, the upper of the two middle values: erring high costs a little
    // recall, erring low costs false Insights.
    Some(v[v.len() / 2])
}

impl Baseline {
    /// Learns from `counts`, the per-minute counts of minutes `[first_minute, first_minute +
    /// counts.len())`. `usable(minute)` is false for minutes that must not shape the baseline
    /// (earlier anomalies). `first_minute` is rounded down to an hour by the caller's choice of
    /// window; counts before it are simply absent. The long windows' normal peaks depend on
    /// `p.k`, which caps what a minute counts for in them.
    pub fn learn(
        first_minute: i64,
        counts: &[u32],
        usable: impl Fn(i64) -> bool,
        p: &Params,
    ) -> Self {
        let aligned = first_minute - first_minute.rem_euclid(MINUTES_PER_HOUR);
        let until = first_minute + counts.len() as i64;
        let lead = usize::try_from(first_minute - aligned).unwrap_or(0);
        // Per-minute arrays starting at the aligned hour.
        let total_len = lead + counts.len();
        let hours = total_len.div_ceil(60);
        let mut minute_counts = vec![0u32; hours * 60];
        let mut minute_usable = vec![false; hours * 60];
        let (mut total, mut minutes, mut active) = (0u64, 0i64, 0i64);
        for (i, c) in counts.iter().enumerate() {
            let m = first_minute + i as i64;
            if usable(m) {
                minute_counts[lead + i] = *c;
                minute_usable[lead + i] = true;
                total += u64::from(*c);
                minutes += 1;
                active += i64::from(*c > 0);
            }
        }
        let hour_means: Vec<Option<f64>> = (0..hours)
            .map(|h| {
                hour_mean(
                    &minute_counts[h * 60..h * 60 + 60],
                    &minute_usable[h * 60..h * 60 + 60],
                )
            })
            .collect();
        let mean = if minutes > 0 {
            total as f64 / minutes as f64
        } else {
            0.0
        };
        let mut b = Self {
            first_minute: aligned,
            until,
            hour_means,
            rates: Vec::new(),
            floor: (mean * 0.1).max(1.0 / MINUTES_PER_DAY as f64),
            mean,
            dispersion: 1.0,
            daily_peaks: Default::default(),
            minutes,
            total,
            active_share: if minutes > 0 {
                active as f64 / minutes as f64
            } else {
                0.0
            },
        };
        let first_hour = aligned.div_euclid(MINUTES_PER_HOUR);
        let last_hour = until.div_euclid(MINUTES_PER_HOUR) + 2;
        b.rates = (first_hour..=last_hour).map(|h| b.hour_rate(h)).collect();
        // Residuals against the model, for the dispersion and the calibration term.
        let mut expected = vec![0.0f64; counts.len()];
        for (i, e) in expected.iter_mut().enumerate() {
            *e = b.expected(first_minute + i as i64);
        }
        let (mut sq, mut mu_sum) = (0.0f64, 0.0f64);
        for (i, c) in counts.iter().enumerate() {
            if minute_usable[lead + i] {
                let r = f64::from(*c) - expected[i];
                sq += r * r;
                mu_sum += expected[i];
            }
        }
        if mu_sum > 0.0 {
            b.dispersion = (sq / mu_sum).clamp(1.0, 1.0e6);
        }
        // Daily maxima of each window's excess, days counted back from `until`. Prefix sums
        // of counts (as they are and as the long windows cap them), expected counts and
        // unusable minutes make every window O(1).
        let n = counts.len();
        let mut pc = vec![0.0f64; n + 1];
        let mut pcc = vec![0.0f64; n + 1];
        let mut pe = vec![0.0f64; n + 1];
        let mut pu = vec![0u32; n + 1];
        for i in 0..n {
            pc[i + 1] = pc[i] + f64::from(counts[i]);
            pcc[i + 1] = pcc[i] + capped(f64::from(counts[i]), expected[i], p.k);
            pe[i + 1] = pe[i] + expected[i];
            pu[i + 1] = pu[i] + u32::from(!minute_usable[lead + i]);
        }
        for (slot, w) in WINDOWS.iter().copied().enumerate() {
            let sums = if slot >= FIRST_LONG { &pcc } else { &pc };
            let mut daily: Vec<f64> = Vec::new();
            let mut day_max = f64::NEG_INFINITY;
            let mut day_len = 0i64;
            for i in (w.saturating_sub(1)..n).rev() {
                let a = i + 1 - w;
                if pu[i + 1] == pu[a] {
                    let x = sums[i + 1] - sums[a];
                    let mu = pe[i + 1] - pe[a];
                    day_max = day_max.max((x - mu) / (mu + 1.0).sqrt());
                }
                day_len += 1;
                if day_len == MINUTES_PER_DAY {
                    if day_max.is_finite() {
                        daily.push(day_max);
                    }
                    day_max = f64::NEG_INFINITY;
                    day_len = 0;
                }
            }
            if day_len >= MINUTES_PER_DAY / 2 && day_max.is_finite() {
                daily.push(day_max);
            }
            daily.sort_by(|a, b| b.total_cmp(a));
            b.daily_peaks[slot] = daily;
        }
        b
    }

    /// The minute learning stopped at.
    pub fn until(&self) -> i64 {
        self.until
    }

    fn mean_of_hour(&self, hour: i64) -> Option<f64> {
        let first_hour = self.first_minute.div_euclid(MINUTES_PER_HOUR);
        let i = usize::try_from(hour - first_hour).ok()?;
        self.hour_means.get(i).copied().flatten()
    }

    /// The expected count of an hour: median of the same hour on earlier days, raised to the
    /// same hour a week earlier.
    fn hour_rate(&self, hour: i64) -> f64 {
        let mut same = [0.0f64; 7];
        let mut n = 0;
        for d in 1..=7 {
            if let Some(m) = self.mean_of_hour(hour - 24 * d) {
                same[n] = m;
                n += 1;
            }
        }
        let week = self.mean_of_hour(hour - 24 * 7);
        let daily = median(&mut same[..n]);
        match (daily, week) {
            (Some(d), Some(w)) => d.max(w),
            (Some(d), None) => d,
            (None, _) => self.mean,
        }
    }

    /// The expected rate of an hour, from the cache when it is there.
    fn rate(&self, hour: i64) -> f64 {
        let first_hour = self.first_minute.div_euclid(MINUTES_PER_HOUR);
        usize::try_from(hour - first_hour)
            .ok()
            .and_then(|i| self.rates.get(i).copied())
            .unwrap_or_else(|| self.hour_rate(hour))
    }

    /// The expected count of `minute`.
    pub fn expected(&self, minute: i64) -> f64 {
        let hour = minute.div_euclid(MINUTES_PER_HOUR);
        let offset = minute.rem_euclid(MINUTES_PER_HOUR) as f64 + 0.5;
        let here = self.rate(hour);
        // Interpolate towards the neighbouring hour's centre.
        let (other, w) = if offset < 30.0 {
            (self.rate(hour - 1), (30.0 - offset) / 60.0)
        } else {
            (self.rate(hour + 1), (offset - 30.0) / 60.0)
        };
        (here * (1.0 - w) + other * w).max(self.floor)
    }

    /// The series' normal peak excess over the window `WINDOWS[slot]`: the level its daily
    /// maxima reach once every `7 / (peak_rank + 1)` days (the largest day of a full week for
    /// rank 0, the second largest for rank 1).
    ///
    /// A young history has fewer days than that return period, and the largest of a few days
    /// underestimates it, so the level is extrapolated along a Gumbel tail (the usual law of
    /// maxima): `+ b·ln(period / days)`, with the scale `b` from the spread of the daily maxima
    /// (`σ·√6/π`), at least a quarter of the largest.
    pub fn normal_peak(&self, slot: usize, p: &Params) -> f64 {
        let Some(peaks) = self.daily_peaks.get(slot) else {
            return 0.0;
        };
        let days = peaks.len();
        if days == 0 {
            return 0.0;
        }
        let rank = if self.active_share < SPARSE_SHARE {
            0
        } else {
            p.peak_rank
        };
        let period = 7.0 / (rank as f64 + 1.0);
        // The k-th largest of `days` maxima is about the once-in-`days / (k + 1)` level.
        let k = ((days as f64 / period).floor() as usize)
            .saturating_sub(1)
            .min(days - 1);
        let level = peaks[k].max(0.0);
        let covered = days as f64 / (k as f64 + 1.0);
        if covered >= period {
            return level;
        }
        let n = days as f64;
        let mean = peaks.iter().sum::<f64>() / n;
        let var = peaks.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let b = (var.sqrt() * 6f64.sqrt() / std::f64::consts::PI).max(0.25 * peaks[0].max(0.0));
        level + b * (period / covered).ln()
    }

    /// The excess the window `WINDOWS[slot]`, expecting `expected` calls, must reach to start
    /// an episode.
    pub fn threshold(&self, expected: f64, slot: usize, p: &Params) -> f64 {
        ((p.k - 1.0) * expected)
            .max(p.z * (self.dispersion * expected).sqrt())
            .max(p.margin * self.normal_peak(slot, p) * (expected + 1.0).sqrt())
            .max(p.min_excess)
    }
}

/// An episode in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// The first minute of the anomaly.
    pub start: i64,
    /// The minute the Start was decided.
    pub detected: i64,
    /// The last hot minute so far.
    pub last_hot: i64,
    /// Calls and expected calls summed over the episode's minutes so far.
    pub calls: f64,
    pub expected: f64,
}

/// A change of state.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// An anomaly began at `start` (decided at the minute stepped).
    Start { start: i64 },
    /// The anomaly `[start, end)` is over.
    End { start: i64, end: i64 },
}

/// The per-series state machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tracker {
    pub active: Option<Episode>,
}

impl Tracker {
    /// Steps to minute `t`: `x` are the counts of the minutes up to and including `t` (the
    /// last [`HISTORY`] of them; fewer early in a history), `mu` their expected counts,
    /// `baseline` the series' learned baseline.
    pub fn step(
        &mut self,
        t: i64,
        x: &[u32],
        mu: &[f64],
        baseline: &Baseline,
        p: &Params,
    ) -> Option<Transition> {
        let n = x.len().min(mu.len());
        if n == 0 {
            return None;
        }
        let (x, mu) = (&x[x.len() - n..], &mu[mu.len() - n..]);
        // Each window's excess over its threshold, for the windows the history covers.
        let mut excess = [0.0f64; WINDOWS.len()];
        let mut threshold = [f64::INFINITY; WINDOWS.len()];
        let count = |slot: usize, i: usize| {
            if slot >= FIRST_LONG {
                capped(f64::from(x[i]), mu[i], p.k)
            } else {
                f64::from(x[i])
            }
        };
        let (mut sum_x, mut sum_capped, mut sum_mu, mut covered) = (0.0f64, 0.0f64, 0.0f64, 0);
        for slot in 0..WINDOWS.len() {
            let w = WINDOWS[slot];
            if w > n {
                break;
            }
            for i in n - w..n - covered {
                sum_x += f64::from(x[i]);
                sum_capped += capped(f64::from(x[i]), mu[i], p.k);
                sum_mu += mu[i];
            }
            covered = w;
            let sum = if slot >= FIRST_LONG {
                sum_capped
            } else {
                sum_x
            };
            excess[slot] = sum - sum_mu;
            threshold[slot] = baseline.threshold(sum_mu, slot, p);
        }
        let over = |slot: usize, fraction: f64| excess[slot] >= fraction * threshold[slot];
        // A minute is hot when a short window is at `end_fraction` of its threshold; it then
        // stretches the episode to the window's last minute above its expected count.
        let hot_until = (0..HOT_WINDOWS)
            .filter(|s| over(*s, p.end_fraction))
            .map(|s| {
                let w = WINDOWS[s].min(n);
                (n - w..n)
                    .rev()
                    .find(|i| f64::from(x[*i]) > mu[*i])
                    .map_or(t, |i| t - (n - 1 - i) as i64)
            })
            .max();
        match &mut self.active {
            None => {
                let slot = (0..WINDOWS.len()).find(|s| over(*s, 1.0))?;
                let w = WINDOWS[slot].min(n);
                let first = if w <= 3 {
                    // A short burst starts at the first minute that is hot on its own.
                    (n - w..n)
                        .find(|i| {
                            f64::from(x[*i]) - mu[*i]
                                >= p.end_fraction * baseline.threshold(mu[*i], 0, p)
                        })
                        .unwrap_or(n - 1)
                } else {
                    // A sustained rise starts where the window's largest suffix excess does.
                    let (mut best, mut at, mut acc) = (f64::NEG_INFINITY, n - 1, 0.0);
                    for i in (n - w..n).rev() {
                        acc += count(slot, i) - mu[i];
                        if acc > best {
                            best = acc;
                            at = i;
                        }
                    }
                    at
                };
                let start = t - (n - 1 - first) as i64;
                let (mut calls, mut expected) = (0.0, 0.0);
                for i in first..n {
                    calls += f64::from(x[i]);
                    expected += mu[i];
                }
                self.active = Some(Episode {
                    start,
                    detected: t,
                    last_hot: t,
                    calls,
                    expected,
                });
                Some(Transition::Start { start })
            }
            Some(ep) => {
                ep.calls += f64::from(x[n - 1]);
                ep.expected += mu[n - 1];
                if let Some(h) = hot_until {
                    ep.last_hot = ep.last_hot.max(h);
                }
                let elevated = (0..WINDOWS.len()).any(|s| over(s, p.end_fraction));
                if t - ep.last_hot < p.cooldown || elevated {
                    return None;
                }
                let (start, end) = (ep.start, ep.last_hot + 1);
                self.active = None;
                Some(Transition::End { start, end })
            }
        }
    }
}

/// Episodes longer than this are taken as a new normal: they shape later baselines.
pub const EXCLUDE_EPISODES_SHORTER_THAN: i64 = 6 * 60;

/// A baseline with what it was learned for.
#[derive(Debug, Clone)]
pub struct Learned {
    pub hour: i64,
    pub baseline: Baseline,
    /// Error series: errors per call over the same window.
    pub error_ratio: Option<f64>,
}

/// One series' detector: the tracker, its recent episodes (kept out of later baselines), and
/// the baseline of the current hour (relearned every hour and after every episode).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runner {
    pub tracker: Tracker,
    #[serde(default)]
    pub recent: Vec<(i64, i64)>,
    #[serde(skip)]
    pub learned: Option<Learned>,
    /// An episode ended since the baseline was learned.
    #[serde(skip)]
    stale: bool,
}

impl Runner {
    /// `Some((from, hour))` when minute `t` needs a baseline learned from minutes
    /// `[from, hour)`; `born` is where the history starts.
    pub fn needs(&self, t: i64, born: i64) -> Option<(i64, i64)> {
        let hour = t.div_euclid(MINUTES_PER_HOUR) * MINUTES_PER_HOUR;
        if !self.stale && self.learned.as_ref().is_some_and(|l| l.hour == hour) {
            return None;
        }
        Some(((hour - BASELINE_MINUTES).max(born), hour))
    }

    /// The minutes `[a, b)` that must not shape a baseline learned for `hour`: recent short
    /// episodes and the one in progress.
    fn excluded(&self, hour: i64) -> Vec<(i64, i64)> {
        let mut out: Vec<(i64, i64)> = self
            .recent
            .iter()
            .copied()
            .filter(|(a, b)| b - a < EXCLUDE_EPISODES_SHORTER_THAN)
            .collect();
        if let Some(ep) = &self.tracker.active
            && hour - ep.start < EXCLUDE_EPISODES_SHORTER_THAN
        {
            out.push((ep.start, i64::MAX));
        }
        out
    }

    /// Learns the baseline for `hour` from the counts of `[from, hour)` (and, for an error
    /// series, its API's call counts over the same minutes).
    pub fn learn(
        &mut self,
        from: i64,
        hour: i64,
        counts: &[u32],
        calls: Option<&[u32]>,
        p: &Params,
    ) {
        let excluded = self.excluded(hour);
        let usable = |m: i64| !excluded.iter().any(|(a, b)| (*a..*b).contains(&m));
        let baseline = Baseline::learn(from, counts, usable, p);
        let error_ratio = calls.map(|c| {
            let total: u64 = c
                .iter()
                .enumerate()
                .filter(|(i, _)| usable(from + *i as i64))
                .map(|(_, c)| u64::from(*c))
                .sum();
            if total == 0 {
                0.0
            } else {
                baseline.total as f64 / total as f64
            }
        });
        self.learned = Some(Learned {
            hour,
            baseline,
            error_ratio,
        });
        self.stale = false;
    }

    /// The expected count of minute `m` given its API's call count (error series).
    pub fn expected(&self, m: i64, calls: Option<u32>) -> f64 {
        let Some(l) = &self.learned else { return 0.0 };
        let mu = l.baseline.expected(m);
        match (l.error_ratio, calls) {
            (Some(r), Some(c)) => mu.max(r * f64::from(c)),
            _ => mu,
        }
    }

    /// Steps to minute `t` (after [`Runner::learn`] when [`Runner::needs`] said so): `x` are
    /// the counts of the minutes up to and including `t` (up to [`HISTORY`] of them), `calls`
    /// the same minutes' call counts of its API for an error series.
    pub fn step(
        &mut self,
        t: i64,
        x: &[u32],
        calls: Option<&[u32]>,
        p: &Params,
    ) -> Option<Transition> {
        let l = self.learned.as_ref()?;
        let x = &x[x.len().saturating_sub(HISTORY)..];
        let first = t + 1 - x.len() as i64;
        let calls = calls.map(|c| &c[c.len().saturating_sub(x.len())..]);
        let mu: Vec<f64> = (0..x.len())
            .map(|i| {
                let base = l.baseline.expected(first + i as i64);
                match (l.error_ratio, calls.and_then(|c| c.get(i))) {
                    (Some(r), Some(c)) => base.max(r * f64::from(*c)),
                    _ => base,
                }
            })
            .collect();
        let tr = self.tracker.step(t, x, &mu, &l.baseline, p);
        if let Some(Transition::End { start, end }) = tr {
            self.recent.push((start, end));
            self.recent
                .retain(|(_, e)| *e > t - BASELINE_MINUTES - MINUTES_PER_HOUR);
            // The episode's shape changes the baseline.
            self.stale = true;
        }
        tr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(days: i64, rate: u32) -> Vec<u32> {
        vec![rate; usize::try_from(days * MINUTES_PER_DAY).unwrap_or(0)]
    }

    /// A week of an API called once a day, at a different time each day, in a clump of
    /// `size(day)` calls.
    fn daily_clumps(size: impl Fn(i64) -> u32) -> Vec<u32> {
        let mut counts = flat(7, 0);
        for d in 0..7 {
            counts[(d * MINUTES_PER_DAY + 100 + d * 97) as usize] = size(d);
        }
        counts
    }

    fn run(baseline: &Baseline, t0: i64, series: &[u32], p: &Params) -> Vec<(i64, Transition)> {
        let mut tr = Tracker::default();
        let mut out = Vec::new();
        for i in 0..series.len() {
            let t = t0 + i as i64;
            let from = (i + 1).saturating_sub(HISTORY);
            let x = &series[from..=i];
            let mu: Vec<f64> = (from..=i)
                .map(|j| baseline.expected(t0 + j as i64))
                .collect();
            if let Some(tr) = tr.step(t, x, &mu, baseline, p) {
                out.push((t, tr));
            }
        }
        out
    }

    #[test]
    fn a_flat_series_expects_its_rate() {
        let b = Baseline::learn(0, &flat(7, 10), |_| true, &Params::default());
        let e = b.expected(7 * MINUTES_PER_DAY + 5);
        assert!((e - 10.0).abs() < 1e-9, "{e}");
        assert!((b.mean - 10.0).abs() < 1e-9);
        assert_eq!(b.minutes, 7 * MINUTES_PER_DAY);
        // Residuals are zero: dispersion stays at its floor of 1, no normal peak.
        assert!((b.dispersion - 1.0).abs() < 1e-9);
        assert!(b.normal_peak(1, &Params::default()).abs() < 1e-9);
    }

    #[test]
    fn daily_cycles_are_followed() {
        // 20 calls a minute from 08:00 to 18:00, 1 at night.
        let counts: Vec<u32> = (0..7 * MINUTES_PER_DAY)
            .map(|m| {
                if (8 * 60..18 * 60).contains(&(m % MINUTES_PER_DAY)) {
                    20
                } else {
                    0
                }
            })
            .collect();
        let b = Baseline::learn(0, &counts, |_| true, &Params::default());
        let day = 7 * MINUTES_PER_DAY;
        assert!((b.expected(day + 12 * 60) - 20.0).abs() < 1e-9);
        let floor = b.mean / 10.0;
        assert!(
            (b.expected(day + 3 * 60) - floor).abs() < 1e-9,
            "a tenth of the mean at night"
        );
    }

    #[test]
    fn one_burst_gives_one_start_and_one_end() {
        let b = Baseline::learn(0, &flat(7, 10), |_| true, &Params::default());
        let t0 = 7 * MINUTES_PER_DAY;
        let mut s = vec![10u32; 60];
        for c in &mut s[20..26] {
            *c = 60;
        }
        s[23] = 12; // a dip inside the burst does not split it
        let out = run(&b, t0, &s, &Params::default());
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].1, Transition::Start { start: t0 + 20 });
        assert!(out[0].0 <= t0 + 21, "decided within two minutes: {out:?}");
        assert_eq!(
            out[1].1,
            Transition::End {
                start: t0 + 20,
                end: t0 + 26
            }
        );
    }

    #[test]
    fn normal_noise_and_small_rises_do_not_alarm() {
        let b = Baseline::learn(0, &flat(7, 10), |_| true, &Params::default());
        let t0 = 7 * MINUTES_PER_DAY;
        let s: Vec<u32> = (0..600).map(|i| if i % 7 == 0 { 18 } else { 10 }).collect();
        assert!(run(&b, t0, &s, &Params::default()).is_empty());
    }

    #[test]
    fn a_quiet_api_with_daily_clumps_is_calibrated() {
        // Called in a clump of 8 once a day at a different time: the clumps are its normal.
        let b = Baseline::learn(0, &daily_clumps(|_| 8), |_| true, &Params::default());
        assert!(b.normal_peak(0, &Params::default()) >= 7.0);
        let t0 = 7 * MINUTES_PER_DAY;
        let mut s = vec![0u32; 120];
        s[50] = 8;
        assert!(run(&b, t0, &s, &Params::default()).is_empty());
        // Forty calls in three minutes is not its normal.
        s[80] = 15;
        s[81] = 15;
        s[82] = 10;
        let out = run(&b, t0, &s, &Params::default());
        assert!(
            matches!(out.first(), Some((_, Transition::Start { .. }))),
            "{out:?}"
        );
    }

    #[test]
    fn a_young_history_extrapolates_its_normal_peak() {
        // The same daily flurry seen for one day and for seven: one day's peak is a weaker
        // estimate of the weekly one, so it is extrapolated upwards.
        let day = |d: i64| -> Vec<u32> {
            let mut v = vec![10u32; MINUTES_PER_DAY as usize];
            v[600] = 30 + d as u32;
            v
        };
        let week: Vec<u32> = (0..7).flat_map(day).collect();
        let p = Params::default();
        let old = Baseline::learn(0, &week, |_| true, &Params::default());
        let young = Baseline::learn(0, &day(0), |_| true, &Params::default());
        assert_eq!(old.daily_peaks[0].len(), 7);
        assert_eq!(young.daily_peaks[0].len(), 1);
        assert!(young.normal_peak(0, &p) > young.daily_peaks[0][0] * 1.2);
        // A full week at rank 1 is its second largest day.
        assert!((old.normal_peak(0, &p) - old.daily_peaks[0][1]).abs() < 1e-9);
    }

    #[test]
    fn a_quiet_rise_over_an_hour_is_found_by_the_long_window() {
        // Called in a clump of up to 8 once a day; then 2 calls a minute for an hour: no minute
        // and no three minutes beat its clumps, the hour does.
        let b = Baseline::learn(
            0,
            &daily_clumps(|d| 4 + d as u32 % 5),
            |_| true,
            &Params::default(),
        );
        let t0 = 7 * MINUTES_PER_DAY;
        let mut s = vec![0u32; 240];
        for c in &mut s[60..120] {
            *c = 2;
        }
        let out = run(&b, t0, &s, &Params::default());
        assert!(
            matches!(out.first(), Some((t, Transition::Start { start })) if *t < t0 + 80 && *start >= t0 + 55 && *start <= t0 + 62),
            "{out:?}"
        );
        assert!(
            matches!(out.get(1), Some((_, Transition::End { end, .. })) if (t0 + 119..=t0 + 122).contains(end)),
            "{out:?}"
        );
        assert_eq!(out.len(), 2, "one episode: {out:?}");
    }

    #[test]
    fn two_normal_clumps_in_one_hour_are_not_a_sustained_rise() {
        // Called in one clump of 8 a day; then two such clumps in one hour. Counted as they
        // are, the hour holds twice its normal peak; the long windows count each minute once.
        let b = Baseline::learn(0, &daily_clumps(|_| 8), |_| true, &Params::default());
        assert!(b.active_share < SPARSE_SHARE);
        let t0 = 7 * MINUTES_PER_DAY;
        let mut s = vec![0u32; 120];
        s[10] = 8;
        s[40] = 8;
        assert!(run(&b, t0, &s, &Params::default()).is_empty());
    }

    #[test]
    fn a_sparse_api_calibrates_on_its_largest_day() {
        // One clump a day, of 3 to 9 calls: its second-largest day (8) is not its normal peak.
        let mut counts = flat(7, 0);
        for (d, size) in [3u32, 9, 4, 5, 8, 3, 4].iter().enumerate() {
            counts[d * MINUTES_PER_DAY as usize + 300] = *size;
        }
        let b = Baseline::learn(0, &counts, |_| true, &Params::default());
        let peak = b.normal_peak(0, &Params::default());
        assert!((peak - b.daily_peaks[0][0]).abs() < 1e-9, "{peak}");
        assert!(peak > 8.5, "{peak}");
        // A busy series with the same shape of peaks calibrates on its second-largest day.
        let mut busy = flat(7, 10);
        for (d, size) in [13u32, 19, 14, 15, 18, 13, 14].iter().enumerate() {
            busy[d * MINUTES_PER_DAY as usize + 300] = *size;
        }
        let b = Baseline::learn(0, &busy, |_| true, &Params::default());
        assert!((b.normal_peak(0, &Params::default()) - b.daily_peaks[0][1]).abs() < 1e-9);
    }

    #[test]
    fn excluded_minutes_do_not_shape_the_baseline() {
        let mut counts = flat(7, 10);
        // An earlier anomaly at the same clock hour on one day.
        for c in &mut counts[(6 * MINUTES_PER_DAY) as usize..(6 * MINUTES_PER_DAY + 120) as usize] {
            *c = 500;
        }
        let excluded = 6 * MINUTES_PER_DAY..6 * MINUTES_PER_DAY + 120;
        let b = Baseline::learn(0, &counts, |m| !excluded.contains(&m), &Params::default());
        assert!((b.expected(7 * MINUTES_PER_DAY + 30) - 10.0).abs() < 1e-9);
        assert!(b.normal_peak(1, &Params::default()).abs() < 1e-9);
    }

    #[test]
    fn sensitivity_orders_thresholds() {
        // Ten calls a minute with a daily flurry: the calibration term decides.
        let mut counts = flat(7, 10);
        for d in 0..7 {
            for m in 0..3 {
                counts[(d * MINUTES_PER_DAY + 600 + d * 7 + m) as usize] = 25 + d as u32;
            }
        }
        let b = Baseline::learn(0, &counts, |_| true, &Params::default());
        for (slot, w) in WINDOWS.iter().enumerate() {
            let t = |s: Sensitivity| b.threshold(10.0 * *w as f64, slot, &s.params());
            let (high, medium, low) = (
                t(Sensitivity::High),
                t(Sensitivity::Medium),
                t(Sensitivity::Low),
            );
            assert!(high <= medium && medium < low, "{w}: {high} {medium} {low}");
            if *w <= 3 {
                assert!(high < medium, "{w}: {high} {medium}");
            }
        }
        assert_eq!(Sensitivity::parse("HIGH"), Some(Sensitivity::High));
        assert_eq!(Sensitivity::parse("extreme"), None);
    }
}

//! The engine over a real event log and counters: an Insight found in replayed history, and
//! the crash windows around appending its records (staged but not appended; appended but not
//! cleared), each giving every record exactly once.

use std::collections::HashSet;

use opentrail_insights::{
    Attributions, Counters, Coverage, Engine, EngineConfig, InsightType, Sensitivity,
    SourceCategory,
};
use opentrail_log::{EventLog, LogConfig, NewRecord};
use serde_json::{Value, json};

const ACCOUNT: &str = "111122223333";
const REGION: &str = "us-east-1";
/// 2026-11-01T00:00:00Z in minutes since the epoch.
const DAY0: i64 = 29_365_920;
const BURST_AT: i64 = DAY0 + 2 * 1440 + 10 * 60;

fn call(minute: i64, i: u32) -> NewRecord {
    let time_ms = minute * 60_000 + i64::from(i % 60) * 1000;
    let t = jiff::Timestamp::from_millisecond(time_ms).expect("time");
    let rec = json!({
        "eventVersion": "1.11",
        "eventTime": t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": "ec2.amazonaws.com",
        "eventName": "RunInstances",
        "awsRegion": REGION,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
        "readOnly": false,
        "userAgent": "aws-cli/2",
        "userIdentity": {"arn": format!("arn:aws:iam::{ACCOUNT}:user/u{}", i % 3)},
        "eventID": format!("{minute}-{i}"),
    });
    NewRecord {
        time_ms,
        json: serde_json::to_vec(&rec).expect("json"),
    }
}

/// Two days and a half of 3 calls a minute, with a 60-call-a-minute burst of five minutes.
async fn history(log: &EventLog) {
    let mut batch = Vec::new();
    for m in DAY0..BURST_AT + 120 {
        let n = if (BURST_AT..BURST_AT + 5).contains(&m) {
            60
        } else {
            3
        };
        for i in 0..n {
            batch.push(call(m, i));
        }
        if batch.len() >= 4000 {
            log.append(std::mem::take(&mut batch))
                .await
                .expect("append");
        }
    }
    log.append(batch).await.expect("append");
}

fn coverage() -> Vec<Coverage> {
    vec![Coverage {
        account: Some(ACCOUNT.into()),
        region: Some(REGION.into()),
        kind: InsightType::ApiCallRateInsight,
        category: SourceCategory::Management,
    }]
}

fn config() -> EngineConfig {
    EngineConfig {
        sensitivity: Sensitivity::Medium,
        min_history_minutes: 1440,
        backfill: true,
    }
}

fn open(dir: &std::path::Path, log: &EventLog) -> Engine {
    let counters = Counters::open(&dir.join("insights"), log.clone()).expect("counters");
    while counters.apply_next(10_000).expect("count") > 0 {}
    Engine::open(counters, log.clone(), config()).expect("engine")
}

fn ids(records: &[NewRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.json).expect("json");
            v["eventID"].as_str().expect("id").to_owned()
        })
        .collect()
}

fn insights_in_log(log: &EventLog) -> Vec<Value> {
    let mut reader = log.reader(0);
    let mut out = Vec::new();
    loop {
        let batch = reader.read(4096).expect("read");
        if batch.is_empty() {
            return out;
        }
        for r in batch {
            let v: Value = serde_json::from_slice(&r.json).expect("json");
            if v["eventType"] == "AwsCloudTrailInsight" {
                out.push(v);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn staged_records_reach_the_log_exactly_once_across_crashes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let now_ms = (BURST_AT + 120) * 60_000;
    let (log, _) = EventLog::open(LogConfig::new(dir.path().join("log"))).expect("log");
    history(&log).await;

    // First run: the Insight is found in the replayed history and staged; the process dies
    // before appending it.
    let mut engine = open(dir.path(), &log);
    let (first, report) = engine.step(now_ms, 0, &coverage()).expect("step");
    assert_eq!((report.starts, report.ends), (1, 1), "{report:?}");
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 2);
    let start: Value = serde_json::from_slice(&first[0].json).expect("json");
    assert_eq!(start["insightDetails"]["state"], "Start");
    assert_eq!(
        first[0].time_ms,
        BURST_AT * 60_000,
        "the Start is at the onset"
    );
    drop(engine);

    // Second run: the staged records come back, unchanged; this time they are appended, but
    // the process dies before clearing them.
    let mut engine = open(dir.path(), &log);
    let (again, report) = engine.step(now_ms, 0, &coverage()).expect("step");
    assert_eq!(ids(&again), first_ids, "the same records, not new ones");
    assert_eq!(report.starts + report.ends, 0, "nothing judged twice");
    log.append(again).await.expect("append");
    drop(engine);

    // Third run: the records are in the log, so nothing is appended again.
    let mut engine = open(dir.path(), &log);
    let (none, _) = engine.step(now_ms, 0, &coverage()).expect("step");
    assert!(none.is_empty(), "{:?}", ids(&none));
    let (later, _) = engine.step(now_ms + 60_000, 0, &coverage()).expect("step");
    assert!(later.is_empty());
    engine.appended().expect("clear");

    let logged = insights_in_log(&log);
    let logged_ids: HashSet<&str> = logged
        .iter()
        .filter_map(|v| v["eventID"].as_str())
        .collect();
    assert_eq!(logged.len(), 2, "each record once");
    assert_eq!(logged_ids.len(), 2);
    assert_eq!(logged[0]["sharedEventID"], logged[1]["sharedEventID"]);
    assert_eq!(logged[1]["insightDetails"]["state"], "End");
    log.close();
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_counts_are_gone_and_newer_ones_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, _) = EventLog::open(LogConfig::new(dir.path().join("log"))).expect("log");
    history(&log).await;
    let counters = Counters::open(&dir.path().join("insights"), log.clone()).expect("counters");
    while counters.apply_next(10_000).expect("count") > 0 {}
    let id = 0; // the only series
    assert_eq!(counters.counts(id, DAY0, DAY0 + 2).expect("counts"), [3, 3]);
    let cutoff = DAY0 + 1440;
    let dropped = counters.expire(cutoff, cutoff).expect("expire");
    assert!(
        dropped >= 24 + 1440,
        "a day of hours and of minutes: {dropped}"
    );
    assert_eq!(counters.counts(id, DAY0, DAY0 + 2).expect("counts"), [0, 0]);
    assert_eq!(
        counters.counts(id, cutoff, cutoff + 2).expect("counts"),
        [3, 3]
    );
    let attrs = counters
        .attributions(id, cutoff - 10, cutoff)
        .expect("attributions");
    let fresh = counters
        .attributions(id, cutoff, cutoff + 10)
        .expect("attributions");
    assert_eq!(
        attrs,
        Attributions::default(),
        "expired minutes lose theirs"
    );
    assert_eq!(fresh.values[1], [("aws-cli/2".to_owned(), 30)]);
    log.close();
}

use std::path::Path;

use opentrail_log::{LogConfig, NewRecord};
use opentrail_model::time::format_event_time;
use serde_json::json;

use super::*;

const ACCT: &str = "111122223333";
const T0: i64 = 1_790_000_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    log: EventLog,
    index: HistoryIndex,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, index) = open_at(dir.path());
    Fixture {
        _dir: dir,
        log,
        index,
    }
}

fn event(
    id: &str,
    name: &str,
    user: &str,
    time_ms: i64,
    region: &str,
    read_only: bool,
) -> serde_json::Value {
    json!({
        "eventVersion": "1.11",
        "userIdentity": {"type": "IAMUser", "userName": user, "accessKeyId": format!("AKIA{user}")},
        "eventTime": format_event_time(time_ms),
        "eventSource": "ec2.amazonaws.com",
        "eventName": name,
        "awsRegion": region,
        "eventID": id,
        "readOnly": read_only,
        "resources": [{"ARN": format!("arn:aws:ec2:us-east-1:{ACCT}:instance/i-{id}"), "type": "AWS::EC2::Instance"}],
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": ACCT,
        "eventCategory": "Management"
    })
}

async fn ingest(f: &Fixture, events: &[serde_json::Value]) {
    ingest_into(&f.log, &f.index, events).await;
}

async fn ingest_into(log: &EventLog, index: &HistoryIndex, events: &[serde_json::Value]) {
    let records = events
        .iter()
        .map(|e| NewRecord {
            time_ms: opentrail_model::time::parse_event_time(
                e["eventTime"].as_str().expect("time"),
            )
            .expect("time"),
            json: serde_json::to_vec(e).expect("json"),
        })
        .collect();
    log.append(records).await.expect("append");
    while index.apply_next(1000, 0).expect("apply") > 0 {}
}

fn query(attrs: &[(AttributeKey, &str)], start: i64, end: i64, max: usize) -> Query {
    Query {
        scope: Scope {
            account: ACCT.into(),
            region: "us-east-1".into(),
            category: Category::Management,
        },
        attributes: attrs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        start_ms: start,
        end_ms: end,
        max_results: max,
        token: None,
        params_hash: 1,
    }
}

fn ids(page: &Page) -> Vec<String> {
    page.hits
        .iter()
        .map(|h| {
            let v: serde_json::Value = serde_json::from_slice(&h.json).expect("json");
            v["eventID"].as_str().expect("id").to_owned()
        })
        .collect()
}

fn walk(index: &HistoryIndex, mut q: Query) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let page = index.lookup(&q).expect("lookup");
        out.extend(ids(&page));
        match page.next {
            Some(t) => q.token = Some(t),
            None => return out,
        }
    }
}

#[tokio::test]
async fn attributes_times_and_order() {
    let f = fixture();
    ingest(
        &f,
        &[
            event("a", "RunInstances", "alice", T0, "us-east-1", false),
            event(
                "b",
                "DescribeInstances",
                "alice",
                T0 + 1000,
                "us-east-1",
                true,
            ),
            event("c", "RunInstances", "bob", T0 + 2000, "us-east-1", false),
            event("d", "RunInstances", "alice", T0 + 3000, "eu-west-1", false),
            event(
                "e",
                "RunInstances",
                "alice",
                T0 + 86_400_000,
                "us-east-1",
                false,
            ),
        ],
    )
    .await;
    let all = query(&[], 0, T0 * 2, 50);
    assert_eq!(
        ids(&f.index.lookup(&all).expect("lookup")),
        ["e", "c", "b", "a"]
    );
    let by_name = query(&[(AttributeKey::EventName, "RunInstances")], 0, T0 * 2, 50);
    assert_eq!(
        ids(&f.index.lookup(&by_name).expect("lookup")),
        ["e", "c", "a"]
    );
    let and = query(
        &[
            (AttributeKey::EventName, "RunInstances"),
            (AttributeKey::Username, "alice"),
        ],
        0,
        T0 * 2,
        50,
    );
    assert_eq!(ids(&f.index.lookup(&and).expect("lookup")), ["e", "a"]);
    let three = query(
        &[
            (AttributeKey::EventName, "RunInstances"),
            (AttributeKey::Username, "alice"),
            (AttributeKey::ReadOnly, "false"),
        ],
        0,
        T0 * 2,
        50,
    );
    assert_eq!(ids(&f.index.lookup(&three).expect("lookup")), ["e", "a"]);
    let ro = query(&[(AttributeKey::ReadOnly, "true")], 0, T0 * 2, 50);
    assert_eq!(ids(&f.index.lookup(&ro).expect("lookup")), ["b"]);
    let short = query(&[(AttributeKey::ResourceName, "i-c")], 0, T0 * 2, 50);
    assert_eq!(ids(&f.index.lookup(&short).expect("lookup")), ["c"]);
    // Inclusive bounds at both ends.
    let window = query(&[], T0 + 1000, T0 + 2000, 50);
    assert_eq!(ids(&f.index.lookup(&window).expect("lookup")), ["c", "b"]);
    let none = query(&[(AttributeKey::Username, "carol")], 0, T0 * 2, 50);
    assert!(f.index.lookup(&none).expect("lookup").hits.is_empty());
    let mut eu = query(&[], 0, T0 * 2, 50);
    eu.scope.region = "eu-west-1".into();
    assert_eq!(ids(&f.index.lookup(&eu).expect("lookup")), ["d"]);
}

#[tokio::test]
async fn paging_is_complete_and_stable_while_events_arrive() {
    let f = fixture();
    let evs: Vec<_> = (0..23)
        .map(|i| {
            event(
                &format!("p{i:02}"),
                "Op",
                "u",
                T0 + i * 1000,
                "us-east-1",
                false,
            )
        })
        .collect();
    ingest(&f, &evs).await;
    let mut q = query(&[(AttributeKey::EventName, "Op")], 0, T0 * 2, 5);
    let first = f.index.lookup(&q).expect("lookup");
    assert_eq!(ids(&first), ["p22", "p21", "p20", "p19", "p18"]);
    // New events, newer and older than the page position, arrive between pages.
    ingest(
        &f,
        &[
            event("new-old", "Op", "u", T0 + 500, "us-east-1", false),
            event("new-new", "Op", "u", T0 + 99_000, "us-east-1", false),
        ],
    )
    .await;
    q.token = first.next;
    let rest = walk(&f.index, q);
    let expected: Vec<String> = (0..18).rev().map(|i| format!("p{i:02}")).collect();
    assert_eq!(rest, expected);
    // Same time, different sequence: ties are broken newest sequence first, none lost.
    let f2 = fixture();
    let same: Vec<_> = (0..7)
        .map(|i| event(&format!("s{i}"), "Same", "u", T0, "us-east-1", false))
        .collect();
    ingest(&f2, &same).await;
    let walked = walk(
        &f2.index,
        query(
            &[
                (AttributeKey::EventName, "Same"),
                (AttributeKey::Username, "u"),
            ],
            0,
            T0 * 2,
            2,
        ),
    );
    assert_eq!(walked, ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]);
}

#[tokio::test]
async fn categories_scope_lookups() {
    let f = fixture();
    let mut data = event("data", "GetObject", "u", T0, "us-east-1", true);
    data["eventCategory"] = json!("Data");
    data["managementEvent"] = json!(false);
    let insight = json!({
        "eventVersion": "1.11", "eventTime": format_event_time(T0), "awsRegion": "us-east-1", "eventID": "ins",
        "eventType": "AwsCloudTrailInsight", "recipientAccountId": ACCT, "eventCategory": "Insight",
        "insightDetails": {"state": "Start", "eventSource": "ec2.amazonaws.com", "eventName": "RunInstances", "insightType": "ApiCallRateInsight"}
    });
    ingest(
        &f,
        &[
            data,
            insight,
            event("mgmt", "RunInstances", "u", T0, "us-east-1", false),
        ],
    )
    .await;
    assert_eq!(
        ids(&f.index.lookup(&query(&[], 0, T0 * 2, 50)).expect("lookup")),
        ["mgmt"]
    );
    let mut q = query(&[(AttributeKey::EventName, "RunInstances")], 0, T0 * 2, 50);
    q.scope.category = Category::Insight;
    assert_eq!(ids(&f.index.lookup(&q).expect("lookup")), ["ins"]);
}

fn open_at(dir: &Path) -> (EventLog, HistoryIndex) {
    let (log, _) = EventLog::open(LogConfig::new(dir.join("log"))).expect("log");
    let index = HistoryIndex::open(&dir.join("index"), log.clone()).expect("index");
    (log, index)
}

#[tokio::test]
async fn resumes_from_its_cursor_without_duplicates_and_expires_days() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, index) = open_at(dir.path());
    ingest_into(
        &log,
        &index,
        &[event("x1", "Op", "u", T0, "us-east-1", false)],
    )
    .await;
    assert_eq!(index.cursor().expect("cursor"), 1);
    index.persist().expect("persist");
    drop(index);
    let later = event("x2", "Op", "u", T0 + 86_400_000, "us-east-1", false);
    let json = serde_json::to_vec(&later).expect("json");
    log.append(vec![NewRecord {
        time_ms: T0 + 86_400_000,
        json,
    }])
    .await
    .expect("append");
    let index = HistoryIndex::open(&dir.path().join("index"), log.clone()).expect("reopen");
    assert_eq!(index.cursor().expect("cursor"), 1);
    while index.apply_next(1000, 0).expect("apply") > 0 {}
    // Replaying an already-applied record (as after a crash) rewrites the same keys.
    index
        .meta
        .insert(CURSOR_KEY, 0u64.to_be_bytes())
        .expect("rewind");
    while index.apply_next(1000, 0).expect("apply") > 0 {}
    assert_eq!(walk(&index, query(&[], 0, T0 * 2, 1)), ["x2", "x1"]);
    assert_eq!(index.expire(T0 + 86_400_000).expect("expire"), 1);
    assert_eq!(walk(&index, query(&[], 0, T0 * 2, 50)), ["x2"]);
}

#[tokio::test]
async fn an_index_ahead_of_the_log_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (log, index) = open_at(dir.path());
        ingest_into(
            &log,
            &index,
            &[event("gone", "Op", "u", T0, "us-east-1", false)],
        )
        .await;
        index.persist().expect("persist");
        log.close();
    }
    // The log is lost (say, restored from an older backup); the index must not point into it.
    std::fs::remove_dir_all(dir.path().join("log")).expect("rm");
    let (_log, index) = open_at(dir.path());
    assert_eq!(index.cursor().expect("cursor"), 0);
    assert!(walk(&index, query(&[], 0, T0 * 2, 50)).is_empty());
}

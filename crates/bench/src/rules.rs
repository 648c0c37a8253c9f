//! Alert rules: how many events per second the rules view gets through with 1 and 100 active
//! rules (the log read and the catalog commit included), and the time from an ingest's
//! acknowledgement to the webhook receiving its alert, through a real server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use opentrail_alerts::config::{RuleState, TargetDef};
use opentrail_alerts::{AlertsConfig, Compiled, RuleView};
use opentrail_catalog::Catalog;
use opentrail_log::{EventLog, LogConfig, NewRecord};
use serde_json::json;

use crate::{ACCOUNT, OpenTrail, events, ms, percentile};

/// Rules in the shapes people write: event names per service, users with errors, deletes
/// from an address range, resource wildcards, `$or` with anything-but. Their values come from
/// generated traffic, and like real alert rules each matches a small share of it.
fn rule_patterns(n: usize) -> Vec<String> {
    events(0x5eed_0001, 0, n, 1_800_000_000)
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let source = e.source.trim_end_matches(".amazonaws.com");
            let verb_end = e.name[1..]
                .find(|c: char| c.is_ascii_uppercase())
                .map_or(e.name.len(), |k| k + 1);
            let verb = &e.name[..verb_end];
            let noun = &e.name[verb_end..];
            let id = e.resource.rsplit('/').next().unwrap_or("");
            let p = match i % 5 {
                0 => json!({"source": [format!("aws.{source}")], "detail": {"eventName": [e.name, format!("Delete{noun}"), format!("Put{noun}")]}}),
                1 => json!({"detail": {"userIdentity": {"arn": [{"suffix": format!("/{}", e.user)}]}, "errorCode": [{"exists": true}]}}),
                2 => json!({"detail": {"eventName": [{"prefix": verb}], "sourceIPAddress": [{"cidr": format!("198.51.100.{}/30", (i * 4) % 256)}]}}),
                3 => json!({"detail": {"resources": {"ARN": [{"wildcard": format!("*/{}*", &id[..id.len().min(8)])}]}}}),
                _ => json!({"$or": [
                    {"detail": {"errorCode": ["AccessDenied"], "eventSource": [e.source]}},
                    {"detail": {"eventName": [{"anything-but": {"prefix": "Describe"}}], "userIdentity": {"accessKeyId": [e.key]}}}
                ]}),
            };
            p.to_string()
        })
        .collect()
}

fn config_with(rules: usize) -> anyhow::Result<AlertsConfig> {
    let mut c = AlertsConfig::default();
    let topic = c.create_topic(
        "bench",
        "secret",
        &format!("arn:aws:sns:us-east-1:{ACCOUNT}"),
        0,
        false,
    )?;
    c.subscribe(&topic, "https", "https://alerts.example/hook", 0, false)?;
    for (i, p) in rule_patterns(rules).iter().enumerate() {
        let name = format!("rule-{i:03}");
        c.put_rule(
            &name,
            p,
            RuleState::Enabled,
            None,
            None,
            &format!("arn:aws:events:us-east-1:{ACCOUNT}:rule"),
            0,
        )?;
        c.put_targets(
            &name,
            &[TargetDef {
                id: "t".into(),
                arn: topic.clone(),
            }],
        )?;
    }
    Ok(c)
}

/// Events/s of the rules view over `n` stored events with `rules` active rules.
fn view_throughput(
    root: &Path,
    seed: u64,
    n: usize,
    rules: usize,
    now_s: i64,
) -> anyhow::Result<(f64, u64, u64)> {
    let dir = root.join(format!("rules-view-{rules}"));
    std::fs::create_dir_all(&dir)?;
    let (log, _) = EventLog::open(LogConfig::new(dir.join("log")))?;
    let catalog = Arc::new(Catalog::open(&dir.join("catalog.db"))?);
    let view = RuleView::new(log.clone(), Arc::clone(&catalog), ACCOUNT);
    let live = Compiled::new(config_with(rules)?);
    view.step(&live, 1, 0)?; // places the cursor at the (empty) log's end
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    for chunk_start in (0..n).step_by(1000) {
        let batch: Vec<NewRecord> =
            events(seed, chunk_start as u64, 1000.min(n - chunk_start), now_s)
                .into_iter()
                .map(|e| NewRecord {
                    time_ms: e.time_s * 1000,
                    json: e.json.into_bytes(),
                })
                .collect();
        rt.block_on(log.append(batch))?;
    }
    let start = Instant::now();
    let (mut done, mut matches, mut messages) = (0u64, 0u64, 0u64);
    while done < n as u64 {
        let step = view.step(&live, 4096, 0)?;
        if step.records == 0 {
            break;
        }
        done += step.records;
        matches += step.matches;
        messages += step.messages;
    }
    let secs = start.elapsed().as_secs_f64();
    log.close();
    Ok((done as f64 / secs, matches, messages))
}

/// A POST body and when it arrived.
type Arrival = (Instant, Vec<u8>);

/// A webhook receiver: answers every POST 200 and reports each body with its arrival time.
pub(crate) fn receiver() -> anyhow::Result<(String, mpsc::Receiver<Arrival>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(conn);
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let at = Instant::now();
                    if out
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                    let _ = tx.send((at, body));
                }
            });
        }
    });
    Ok((url, rx))
}

fn event_id_of(body: &[u8]) -> Option<String> {
    let env: serde_json::Value = serde_json::from_slice(body).ok()?;
    let event: serde_json::Value = serde_json::from_str(env["Message"].as_str()?).ok()?;
    event["detail"]["eventID"].as_str().map(str::to_owned)
}

/// Ack → webhook through a real server with 100 active rules: one event per ingest call.
fn ack_to_webhook(
    root: &Path,
    seed: u64,
    samples: usize,
    now_s: i64,
) -> anyhow::Result<Vec<Duration>> {
    let (url, arrivals) = receiver()?;
    let ot = OpenTrail::start(&root.join("rules-server"))?;
    let topic =
        ot.json_call("sns", "OpenTrailSNS.CreateTopic", &json!({"Name": "bench"}))?["TopicArn"]
            .as_str()
            .context("no TopicArn")?
            .to_owned();
    ot.json_call(
        "sns",
        "OpenTrailSNS.Subscribe",
        &json!({"TopicArn": topic, "Protocol": "http", "Endpoint": url}),
    )?;
    let mut patterns = rule_patterns(99);
    patterns.push(json!({"detail": {"eventName": ["BenchAlert"]}}).to_string());
    for (i, p) in patterns.iter().enumerate() {
        let name = format!("rule-{i:03}");
        ot.json_call(
            "events",
            "AWSEvents.PutRule",
            &json!({"Name": name, "EventPattern": p}),
        )?;
        ot.json_call(
            "events",
            "AWSEvents.PutTargets",
            &json!({"Rule": name, "Targets": [{"Id": "t", "Arn": topic}]}),
        )?;
    }
    let mut lat = Vec::with_capacity(samples);
    for (i, e) in events(seed, 7_000_000, samples, now_s)
        .into_iter()
        .enumerate()
    {
        let mut rec: serde_json::Value = serde_json::from_str(&e.json)?;
        rec["eventName"] = json!("BenchAlert");
        rec["readOnly"] = json!(false);
        ot.ingest(&json!({"Records": [rec]}).to_string())?;
        let acked = Instant::now();
        loop {
            let (at, body) = arrivals
                .recv_timeout(Duration::from_secs(10))
                .with_context(|| format!("no alert for sample {i} within 10 s"))?;
            if event_id_of(&body).as_deref() == Some(e.event_id.as_str()) {
                lat.push(at.saturating_duration_since(acked));
                break;
            }
        }
    }
    drop(ot);
    lat.sort_unstable();
    Ok(lat)
}

pub fn run(seed: u64, n: usize, root: &Path, now_s: i64) -> anyhow::Result<()> {
    println!("\n## Alert rules\n");
    println!(
        "The rules view over {n} stored events (read, parse, envelope, match, queue, commit):\n"
    );
    println!("| active rules | events/s | matches | messages queued |");
    println!("|---|---|---|---|");
    let mut rates = Vec::new();
    for rules in [1usize, 100] {
        let (rate, matches, messages) = view_throughput(root, seed, n, rules, now_s)?;
        println!("| {rules} | {rate:.0} | {matches} | {messages} |");
        rates.push(rate);
    }
    println!(
        "\n100 rules run at {:.2}× the speed of 1 rule.",
        rates[1] / rates[0]
    );
    let samples = 200;
    let lat = ack_to_webhook(root, seed, samples, now_s)?;
    println!(
        "\nAck → webhook with 100 active rules ({samples} events, one per ingest call): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    Ok(())
}

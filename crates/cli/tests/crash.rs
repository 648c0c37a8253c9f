//! SIGKILL the server at random moments while clients ingest, many times; afterwards every
//! acknowledged event is in event history exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Rng, Server, agent, free_port, record};

const SOURCE: &str = "crash.opentrail.test";

#[test]
fn every_acknowledged_event_survives_sigkill_exactly_once() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234);
    let cycles: usize = std::env::var("CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    eprintln!("crash test: seed {seed}, {cycles} cycles");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let port = free_port();
    let acked: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(HashSet::new()));
    let time = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut attempted = 0usize;

    for cycle in 0..cycles {
        let server = Server::start(&data, port);
        let running = Arc::new(AtomicBool::new(true));
        let mut clients = Vec::new();
        for client in 0..4u64 {
            let url = server.url.clone();
            let acked = Arc::clone(&acked);
            let running = Arc::clone(&running);
            let time = time.clone();
            let batch = 1 + (rng.below(50) as usize);
            clients.push(std::thread::spawn(move || {
                let agent = agent();
                let mut sent = 0usize;
                let mut n = 0u64;
                while running.load(Ordering::Relaxed) {
                    let ids: Vec<String> = (0..batch)
                        .map(|i| format!("c{cycle}-t{client}-n{n}-{i}"))
                        .collect();
                    n += 1;
                    let records: Vec<_> = ids.iter().map(|id| record(id, SOURCE, &time)).collect();
                    let body = serde_json::json!({ "Records": records }).to_string();
                    sent += batch;
                    let Ok(mut resp) = common::post(
                        &agent,
                        "opentrail",
                        &format!("{url}/v1/events"),
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    ) else {
                        break;
                    };
                    if resp.status() != 200 {
                        break;
                    }
                    let v: serde_json::Value = match resp
                        .body_mut()
                        .read_to_string()
                        .map(|t| serde_json::from_str(&t))
                    {
                        Ok(Ok(v)) => v,
                        _ => break,
                    };
                    let stored: Vec<String> = v["EventIds"]
                        .as_array()
                        .expect("ids")
                        .iter()
                        .map(|x| x.as_str().expect("id").to_owned())
                        .collect();
                    assert_eq!(stored, ids, "the answer lists the stored ids in order");
                    acked.lock().expect("lock").extend(stored);
                }
                sent
            }));
        }
        std::thread::sleep(Duration::from_millis(50 + rng.below(500)));
        server.kill9();
        running.store(false, Ordering::Relaxed);
        for c in clients {
            attempted += c.join().expect("client");
        }
    }

    let server = Server::start(&data, port);
    server.wait_index_caught_up();
    let found = server
        .lookup_all(serde_json::json!([{"AttributeKey": "EventSource", "AttributeValue": SOURCE}]));
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &found {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let acked = acked.lock().expect("lock");
    eprintln!(
        "crash test: {} attempted, {} acknowledged, {} found",
        attempted,
        acked.len(),
        found.len()
    );
    assert!(
        acked.len() > 100,
        "too few events acknowledged to mean anything: {}",
        acked.len()
    );
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dupes.is_empty(),
        "events found more than once: {:?}",
        &dupes[..dupes.len().min(5)]
    );
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    server.stop();
}

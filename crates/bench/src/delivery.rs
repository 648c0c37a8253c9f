//! Trail delivery: how fast a backlog of events becomes gzip log files in a bucket (the whole
//! pipeline: log read, trail filter, JSON assembly, gzip level 6, create-only write with fsync,
//! catalog commit), side by side with `gzip -6` compressing the same JSON in the same run; and the
//! time from an ingest acknowledgement to the file holding that event, at a 1-second cadence.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{ACCOUNT, OpenTrail, events, ms, percentile};

const BUCKET: &str = "bench-delivery-bucket";

fn settings(dir: &Path, interval: Duration) -> opentrail_server::Settings {
    opentrail_server::Settings {
        data_dir: dir.to_owned(),
        account_id: ACCOUNT.to_owned(),
        delivery_interval: interval,
        ..opentrail_server::Settings::default()
    }
}

/// Every gzip file under `dir`.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "gz") {
            out.push(p);
        }
    }
    Ok(())
}

pub(crate) fn run(seed: u64, count: usize, root: &Path, now_s: i64) -> anyhow::Result<()> {
    println!("\n## Trail delivery ({count} events backlog)\n");
    let dir = root.join("delivery");
    std::fs::create_dir_all(dir.join("buckets").join(BUCKET))?;
    let generated = events(seed ^ 0xde11, 0, count, now_s);
    let trail = json!({"Name": "bench-trail", "S3BucketName": BUCKET});

    // 1. Build a backlog while the trail logs but its worker waits (an hour's cadence; its first
    // step runs within a second of CreateTrail, then it sleeps).
    let ot = OpenTrail::start_with(settings(&dir, Duration::from_secs(3600)))?;
    ot.call("CreateTrail", &trail)?;
    ot.call("StartLogging", &json!({"Name": "bench-trail"}))?;
    std::thread::sleep(Duration::from_secs(2));
    for chunk in generated.chunks(1000) {
        let body = format!(
            "{{\"Records\":[{}]}}",
            chunk
                .iter()
                .map(|g| g.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        ot.ingest(&body)?;
    }
    ot.stop()?;

    // 2. Restart at a 1-second cadence and time the backlog into files.
    let started = Instant::now();
    let ot = OpenTrail::start_with(settings(&dir, Duration::from_secs(1)))?;
    let deadline = started + Duration::from_secs(600);
    let delivered = loop {
        let n = ot.metric("opentrail_delivery_events_total")?;
        if n >= count as u64 {
            break n;
        }
        if Instant::now() > deadline {
            bail!("delivery did not finish: {n} of {count} events");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let json_bytes = ot.metric("opentrail_delivery_json_bytes_total")?;
    let gzip_bytes = ot.metric("opentrail_delivery_gzip_bytes_total")?;
    let nfiles = ot.metric("opentrail_delivery_files_total")?;

    // 3. The peer: gzip -6 on the same JSON, as one file.
    let blob = dir.join("records.json");
    let mut text = String::with_capacity(json_bytes as usize + 64);
    text.push_str("{\"Records\":[");
    for (i, g) in generated.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&g.json);
    }
    text.push_str("]}");
    std::fs::write(&blob, &text)?;
    let t = Instant::now();
    let out = std::process::Command::new("gzip")
        .args(["-6", "-c"])
        .arg(&blob)
        .output()
        .context("running gzip -6")?;
    let gzip_took = t.elapsed();
    if !out.status.success() {
        bail!("gzip -6 failed");
    }
    let mb = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let ours = mb(json_bytes, took);
    let theirs = mb(text.len() as u64, gzip_took);
    println!("| pipeline | events | JSON MB | gzip MB | files | seconds | JSON MB/s | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| OpenTrail delivery (log → filter → gzip -6 → fsync'd file → commit) | {delivered} | {:.1} | {:.1} | {nfiles} | {:.2} | {ours:.1} | {:.2}× |",
        json_bytes as f64 / 1e6,
        gzip_bytes as f64 / 1e6,
        took.as_secs_f64(),
        ours / theirs
    );
    println!(
        "| `gzip -6 -c` on the same JSON | {count} | {:.1} | {:.1} | 1 | {:.2} | {theirs:.1} | 1.00× |",
        text.len() as f64 / 1e6,
        out.stdout.len() as f64 / 1e6,
        gzip_took.as_secs_f64()
    );

    // 4. Ack to file at a 1-second cadence: one event at a time.
    let bucket_dir = dir.join("buckets").join(BUCKET);
    let mut seen = std::collections::HashSet::new();
    let mut before = Vec::new();
    files(&bucket_dir, &mut before)?;
    seen.extend(before);
    let mut latencies = Vec::new();
    for (i, g) in events(seed ^ 0xacc, 10_000_000, 30, now_s)
        .iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(37 * (i as u64 % 9)));
        let body = format!("{{\"Records\":[{}]}}", g.json);
        ot.ingest(&body)?;
        let acked = Instant::now();
        let deadline = acked + Duration::from_secs(30);
        'wait: loop {
            let mut now_files = Vec::new();
            files(&bucket_dir, &mut now_files)?;
            for f in now_files {
                if seen.insert(f.clone()) {
                    let mut s = String::new();
                    flate2_free_gunzip(&f, &mut s)?;
                    if s.contains(&g.event_id) {
                        latencies.push(acked.elapsed());
                        break 'wait;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("event {} was not delivered within 30 s", g.event_id);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    ot.stop()?;
    latencies.sort();
    println!(
        "\nack → file at delivery_interval = 1s ({} single events): p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(percentile(&latencies, 1.0)),
    );
    Ok(())
}

/// Reads a gzip file with the system's `gzip -dc` (the bench has no gzip crate of its own).
fn flate2_free_gunzip(path: &Path, out: &mut String) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdout
        .take()
        .context("gzip stdout")?
        .read_to_string(out)?;
    child.wait()?;
    Ok(())
}

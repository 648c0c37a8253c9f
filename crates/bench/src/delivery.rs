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

/// The key id the encrypted run's trail uses (declared in its settings, so created at start).
const BENCH_KEY: &str = "0b5e7a3c-9d21-4f6e-8a4b-5c3d2e1f0a9b";

/// What timing a backlog's delivery measured.
struct Backlog {
    delivered: u64,
    took: Duration,
    json_bytes: u64,
    gzip_bytes: u64,
    files: u64,
}

/// Builds a backlog of `generated` while the trail logs but its worker waits (an hour's
/// cadence; its first step runs within a second of CreateTrail, then it sleeps), then restarts
/// at a 1-second cadence and times the backlog into files. With `encrypted`, the trail has a
/// KMS key and every file is encrypted. Returns the running server.
fn backlog(
    dir: &Path,
    generated: &[crate::Generated],
    encrypted: bool,
) -> anyhow::Result<(Backlog, OpenTrail)> {
    std::fs::create_dir_all(dir.join("buckets").join(BUCKET))?;
    let with_keys = |mut s: opentrail_server::Settings| {
        if encrypted {
            s.kms_keys = vec![BENCH_KEY.to_owned()];
        }
        s
    };
    let mut trail = json!({"Name": "bench-trail", "S3BucketName": BUCKET});
    if encrypted {
        trail["KmsKeyId"] = json!(BENCH_KEY);
    }
    let ot = OpenTrail::start_with(with_keys(settings(dir, Duration::from_secs(3600))))?;
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

    let count = generated.len() as u64;
    let started = Instant::now();
    let ot = OpenTrail::start_with(with_keys(settings(dir, Duration::from_secs(1))))?;
    let deadline = started + Duration::from_secs(600);
    let delivered = loop {
        let n = ot.metric("opentrail_delivery_events_total")?;
        if n >= count {
            break n;
        }
        if Instant::now() > deadline {
            bail!("delivery did not finish: {n} of {count} events");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    let b = Backlog {
        delivered,
        took,
        json_bytes: ot.metric("opentrail_delivery_json_bytes_total")?,
        gzip_bytes: ot.metric("opentrail_delivery_gzip_bytes_total")?,
        files: ot.metric("opentrail_delivery_files_total")?,
    };
    Ok((b, ot))
}

pub(crate) fn run(seed: u64, count: usize, root: &Path, now_s: i64) -> anyhow::Result<()> {
    println!("\n## Trail delivery ({count} events backlog)\n");
    let dir = root.join("delivery");
    let generated = events(seed ^ 0xde11, 0, count, now_s);

    // 1–2. The same backlog into plain files, and into files encrypted with a KMS key.
    let (enc, ot_enc) = backlog(&root.join("delivery-kms"), &generated, true)?;
    ot_enc.stop()?;
    let (plain, ot) = backlog(&dir, &generated, false)?;
    let (delivered, took, json_bytes, gzip_bytes, nfiles) = (
        plain.delivered,
        plain.took,
        plain.json_bytes,
        plain.gzip_bytes,
        plain.files,
    );

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
    let encrypted = mb(enc.json_bytes, enc.took);
    println!(
        "| OpenTrail delivery, encrypted with a KMS key (+ a data key per file, AES-256-GCM) | {} | {:.1} | {:.1} | {} | {:.2} | {encrypted:.1} | {:.2}× |",
        enc.delivered,
        enc.json_bytes as f64 / 1e6,
        enc.gzip_bytes as f64 / 1e6,
        enc.files,
        enc.took.as_secs_f64(),
        encrypted / theirs
    );
    println!(
        "| `gzip -6 -c` on the same JSON | {count} | {:.1} | {:.1} | 1 | {:.2} | {theirs:.1} | 1.00× |",
        text.len() as f64 / 1e6,
        out.stdout.len() as f64 / 1e6,
        gzip_took.as_secs_f64()
    );
    // The encryption step alone: AES-256-GCM over as many gzip bytes as the backlog made.
    let gz = vec![0x5au8; gzip_bytes as usize];
    let context = opentrail_delivery::kms::envelope::context("arn", BUCKET, "k");
    let t = Instant::now();
    let (sealed, _) =
        opentrail_delivery::kms::envelope::seal(&[7u8; 32], b"wrapped", "arn", "k", &context, &gz)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let seal_took = t.elapsed();
    println!(
        "\nWith encryption, delivery ran at {encrypted:.1} JSON MB/s against {ours:.1} without ({:+.1}%). \
         The encryption itself, AES-256-GCM over the {:.1} MB of gzip, took {:.1} ms ({:.0} MB/s).",
        (encrypted / ours - 1.0) * 100.0,
        sealed.len() as f64 / 1e6,
        seal_took.as_secs_f64() * 1e3,
        gz.len() as f64 / 1e6 / seal_took.as_secs_f64()
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

//! Trail delivery: how fast a backlog of events becomes gzip log files in a bucket (the whole
//! pipeline: log read, trail filter, JSON assembly, gzip level 6, create-only write with fsync,
//! catalog commit), side by side with `gzip -6` compressing the same JSON in the same run; and the
//! time from an ingest acknowledgement to the file holding that event, at a 1-second cadence.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{ACCOUNT, OpenTrail, events, ms, percentile, records_body};

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
        ot.ingest(&records_body(chunk))?;
    }
    // The history index, the Insights counters and the log's packer are done with the backlog
    // before the clock starts, so that what is timed is delivery, not delivery sharing two cores
    // with background work of the ingest.
    ot.settle(Duration::from_secs(600))?;
    ot.stop()?;

    let count = generated.len() as u64;
    // The clock starts once the server is up: its start-up (the index journal's replay among
    // it) is measured by the recovery suite, not here.
    let ot = OpenTrail::start_with(with_keys(settings(dir, Duration::from_secs(1))))?;
    let started = Instant::now();
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
    let text = records_body(&generated);
    std::fs::write(&blob, &text)?;
    let (gzip_took, gzip_len) =
        compress("gzip", &["-6", "-c"], &blob)?.context("gzip is not installed")?;
    let pigz = compress("pigz", &["-6", "-c"], &blob)?;
    let mb = |bytes: u64, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    let ours = mb(json_bytes, took);
    let theirs = mb(text.len() as u64, gzip_took);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
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
        gzip_len as f64 / 1e6,
        gzip_took.as_secs_f64()
    );
    match pigz {
        Some((took, len)) => println!(
            "| `pigz -6 -c` ({threads} threads) on the same JSON | {count} | {:.1} | {:.1} | 1 | {:.2} | {:.1} | {:.2}× |",
            text.len() as f64 / 1e6,
            len as f64 / 1e6,
            took.as_secs_f64(),
            mb(text.len() as u64, took),
            mb(text.len() as u64, took) / theirs
        ),
        None => println!("| `pigz` (not installed: apt-get install pigz) | | | | | | | |"),
    }
    println!("\ndelivery vs gzip -6: {:.2}× (target ≥ 2×)", ours / theirs);
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

    // 4. Questions over the delivered files: DuckDB beside OpenTrail's LookupEvents.
    let bucket_dir = dir.join("buckets").join(BUCKET);
    analytics(&bucket_dir, &ot, &generated, json_bytes)?;

    // 5. Ack to file at a 1-second cadence: one event at a time.
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

/// Runs `program args… file` and times it; gives the time and the output's length, or `None`
/// when the program is not installed.
fn compress(
    program: &str,
    args: &[&str],
    file: &Path,
) -> anyhow::Result<Option<(Duration, usize)>> {
    let t = Instant::now();
    let out = match std::process::Command::new(program)
        .args(args)
        .arg(file)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("running {program}")),
    };
    let took = t.elapsed();
    if !out.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Some((took, out.stdout.len())))
}

/// DuckDB (from PyPI, in the Python named by `OPENTRAIL_PYTHON`) over the delivered `.json.gz`
/// files, the tool one would reach for to ask questions of a bucket of CloudTrail logs.
const DUCKDB: &str = r#"
import sys, time, duckdb
glob, user = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET threads TO " + sys.argv[3])
con.execute("SET enable_progress_bar = false")
base = ("(SELECT unnest(Records) AS r FROM read_json('" + glob + "', columns={'Records': 'JSON[]'}, "
        "format='auto', maximum_object_size=268435456))")
qs = [
    ("events per event source (top 10)",
     f"SELECT r->>'eventSource' s, count(*) n FROM {base} GROUP BY s ORDER BY n DESC LIMIT 10"),
    ("callers with the most errors (top 10)",
     f"SELECT r->'userIdentity'->>'arn' a, count(*) n FROM {base} WHERE (r->>'errorCode') IS NOT NULL "
     "GROUP BY a ORDER BY n DESC LIMIT 10"),
    ("one user's write calls (count)",
     f"SELECT count(*) FROM {base} WHERE (r->'userIdentity'->>'userName') = '{user}' AND (r->>'readOnly') = 'false'"),
]
for name, q in qs:
    t = time.perf_counter()
    rows = con.execute(q).fetchall()
    print(f"{name}\t{time.perf_counter() - t:.4f}\t{rows[0][-1] if rows else 0}")
"#;

fn analytics(
    bucket_dir: &Path,
    ot: &OpenTrail,
    generated: &[crate::Generated],
    json_bytes: u64,
) -> anyhow::Result<()> {
    // The busiest IAM user of the backlog: a needle with a few hundred matches.
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for g in generated.iter().filter(|g| g.key.starts_with("AKIA")) {
        *counts.entry(g.user.as_str()).or_default() += 1;
    }
    let user = counts
        .into_iter()
        .max_by_key(|(u, n)| (*n, *u))
        .map(|(u, _)| u.to_owned())
        .context("no IAM user in the backlog")?;
    let expected = generated
        .iter()
        .filter(|g| g.user == user && g.key.starts_with("AKIA") && !g.read_only)
        .count();
    // OpenTrail answers the needle question with two lookup attributes at once, paging.
    let t = Instant::now();
    let (mut found, mut token) = (0usize, None::<String>);
    loop {
        let mut body = json!({"LookupAttributes": [
            {"AttributeKey": "Username", "AttributeValue": user},
            {"AttributeKey": "ReadOnly", "AttributeValue": "false"}], "MaxResults": 50});
        if let Some(t) = &token {
            body["NextToken"] = t.as_str().into();
        }
        let v = ot.call("LookupEvents", &body)?;
        found += v["Events"].as_array().map_or(0, Vec::len);
        token = v["NextToken"].as_str().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    let ot_took = t.elapsed();
    if found != expected {
        bail!("LookupEvents found {found} write calls of {user}, the backlog has {expected}");
    }
    println!(
        "\n### Questions over the delivered files ({:.1} MB of JSON)\n",
        json_bytes as f64 / 1e6
    );
    println!("| question | DuckDB s (JSON MB/s) | OpenTrail s | answer |");
    println!("|---|---|---|---|");
    let python = std::env::var("OPENTRAIL_PYTHON").unwrap_or_default();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let glob = format!("{}/**/*.json.gz", bucket_dir.display());
    let out = if python.is_empty() {
        None
    } else {
        Some(
            std::process::Command::new(&python)
                .args(["-c", DUCKDB, &glob, &user, &threads.to_string()])
                .output()
                .context("running DuckDB")?,
        )
    };
    match out {
        Some(out) if out.status.success() => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut f = line.split('\t');
                let (Some(q), Some(secs), Some(answer)) = (f.next(), f.next(), f.next()) else {
                    continue;
                };
                let secs: f64 = secs.parse().unwrap_or(f64::NAN);
                let ours = if q.starts_with("one user") {
                    if answer.parse::<usize>().ok() != Some(found) {
                        bail!("DuckDB counted {answer} write calls of {user}, OpenTrail {found}");
                    }
                    format!(
                        "{:.3} (LookupEvents, Username + ReadOnly, {} pages)",
                        ot_took.as_secs_f64(),
                        found.div_ceil(50).max(1)
                    )
                } else {
                    "– (no SQL yet)".to_owned()
                };
                println!(
                    "| {q} | {secs:.3} ({:.0}) | {ours} | {answer} |",
                    json_bytes as f64 / 1e6 / secs
                );
            }
        }
        Some(out) => println!(
            "DuckDB failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ),
        None => println!(
            "(DuckDB skipped: set OPENTRAIL_PYTHON to a Python with duckdb; scripts/bench.sh does)"
        ),
    }
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

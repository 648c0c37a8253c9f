//! Log streaming and live tail through a real server: three trails stream every record to a
//! JSON-lines file set, a syslog receiver (TCP) and an HTTP NDJSON collector, and a live tail
//! follows the same events.
//!
//! - Throughput: events ingested as fast as one client can (batches of 1,000), and the time
//!   until each destination holds all of them; beside it, the same lines written to one plain
//!   file with one fsync (the file set's ceiling on this disk).
//! - Latency: ack → record at each destination and on the live tail, one event per ingest call.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use crate::{ACCOUNT, OpenTrail, events, make_batches, ms, percentile};

const GROUP: &str = "arn:aws:logs:us-east-1:111122223333:log-group:bench-";

/// A syslog receiver: each octet-counted message's eventID and arrival time.
fn syslog_receiver() -> anyhow::Result<(u16, mpsc::Receiver<(Instant, String)>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 20, conn);
                loop {
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut len).unwrap_or(0) == 0 {
                        return;
                    }
                    let Some(n) = std::str::from_utf8(&len[..len.len() - 1])
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        return;
                    };
                    let mut msg = vec![0u8; n];
                    if r.read_exact(&mut msg).is_err() {
                        return;
                    }
                    let at = Instant::now();
                    let text = String::from_utf8_lossy(&msg);
                    if let Some(id) = text
                        .split_once(" eventID=\"")
                        .and_then(|(_, rest)| rest.split_once('"'))
                        .map(|(id, _)| id.to_owned())
                    {
                        let _ = tx.send((at, id));
                    }
                }
            });
        }
    });
    Ok((port, rx))
}

/// The eventIDs in NDJSON lines.
fn ndjson_ids(body: &[u8]) -> Vec<String> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v["eventID"].as_str().map(str::to_owned))
        .collect()
}

/// Reads lines appended to a trail's file set.
struct FileFollower {
    dir: PathBuf,
    file: Option<PathBuf>,
    offset: u64,
    partial: Vec<u8>,
}

impl FileFollower {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            file: None,
            offset: 0,
            partial: Vec::new(),
        }
    }

    /// The eventIDs of lines appended since the last call.
    fn poll(&mut self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(out);
        };
        let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        let start = match &self.file {
            Some(f) => files.iter().position(|p| p == f).unwrap_or(0),
            None => 0,
        };
        for f in &files[start..] {
            if self.file.as_ref() != Some(f) {
                self.file = Some(f.clone());
                self.offset = 0;
                self.partial.clear();
            }
            let Ok(mut h) = std::fs::File::open(f) else {
                return Ok(out);
            };
            std::io::Seek::seek(&mut h, std::io::SeekFrom::Start(self.offset))?;
            let mut buf = Vec::new();
            h.read_to_end(&mut buf)?;
            self.offset += buf.len() as u64;
            self.partial.extend_from_slice(&buf);
            if let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') {
                let done: Vec<u8> = self.partial.drain(..=last).collect();
                out.extend(ndjson_ids(&done));
            }
        }
        Ok(out)
    }
}

fn streaming_trail(ot: &OpenTrail, data: &Path, name: &str, group: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(data.join("buckets").join(format!("{name}-bucket")))?;
    ot.call(
        "CreateTrail",
        &json!({"Name": name, "S3BucketName": format!("{name}-bucket"),
                "CloudWatchLogsLogGroupArn": group,
                "CloudWatchLogsRoleArn": format!("arn:aws:iam::{ACCOUNT}:role/streams")}),
    )?;
    ot.call("StartLogging", &json!({"Name": name}))?;
    Ok(())
}

/// Waits until `want` ids have all come through `next` (which yields what arrived since).
fn wait_all(
    what: &str,
    want: &HashSet<String>,
    mut next: impl FnMut() -> anyhow::Result<Vec<(Instant, String)>>,
) -> anyhow::Result<Instant> {
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = Instant::now();
    while seen.len() < want.len() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: {} of {} records after 300 s",
            seen.len(),
            want.len()
        );
        let got = next()?;
        if got.is_empty() {
            std::thread::sleep(Duration::from_micros(200));
        }
        for (at, id) in got {
            if want.contains(&id) && seen.insert(id) {
                last = at;
            }
        }
    }
    Ok(last)
}

/// When the file set, the syslog receiver and the HTTP collector each had all of `want`.
fn arrivals(
    want: &HashSet<String>,
    files: &mut FileFollower,
    syslog: &mpsc::Receiver<(Instant, String)>,
    http: &mpsc::Receiver<(Instant, Vec<u8>)>,
) -> anyhow::Result<[Instant; 3]> {
    let file = wait_all("file set", want, || {
        let now = Instant::now();
        Ok(files.poll()?.into_iter().map(|id| (now, id)).collect())
    })?;
    let syslog = wait_all("syslog", want, || Ok(syslog.try_iter().collect()))?;
    let http = wait_all("http", want, || {
        Ok(http
            .try_iter()
            .flat_map(|(at, body)| ndjson_ids(&body).into_iter().map(move |id| (at, id)))
            .collect())
    })?;
    Ok([file, syslog, http])
}

pub fn run(seed: u64, n: usize, root: &Path, now_s: i64) -> anyhow::Result<()> {
    println!("\n## Log streaming and live tail\n");
    let data = root.join("streams-server");
    let files_dir = root.join("streams-files");
    let (syslog_port, syslog_rx) = syslog_receiver()?;
    let (http_url, http_rx) = crate::rules::receiver()?;
    let ot = OpenTrail::start_with(opentrail_server::Settings {
        data_dir: data.clone(),
        account_id: ACCOUNT.to_owned(),
        cloudwatch_log_groups: vec![
            format!("{GROUP}files=file://{}", files_dir.display()),
            format!("{GROUP}syslog=syslog+tcp://127.0.0.1:{syslog_port}"),
            format!("{GROUP}http={http_url}"),
        ],
        delivery_max_backoff: Duration::from_secs(1),
        ..opentrail_server::Settings::default()
    })?;
    for (name, group) in [
        ("bench-files", "files"),
        ("bench-syslog", "syslog"),
        ("bench-http", "http"),
    ] {
        streaming_trail(&ot, &data, name, &format!("{GROUP}{group}"))?;
    }
    let mut files = FileFollower::new(files_dir.join(format!("{ACCOUNT}_us-east-1_bench-files")));
    let tail = ot.send(
        "GET",
        "opentrail",
        "/v1/tail?EventName=BenchStream",
        &[],
        b"",
    )?;
    anyhow::ensure!(
        tail.status() == 200,
        "the live tail answered {}",
        tail.status()
    );
    let (tail_tx, tail_rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        let reader = BufReader::new(tail.into_body().into_reader());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ") {
                let at = Instant::now();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(data)
                    && let Some(id) = v["eventID"].as_str()
                {
                    let _ = tail_tx.send((at, id.to_owned()));
                }
            }
        }
    });

    // Latency: one event per ingest call, each followed to every destination. The first
    // (not counted) waits for the streams to start.
    let samples = 200;
    let mut lat: [Vec<Duration>; 4] = Default::default();
    for (i, e) in events(seed, 9_000_000, samples + 1, now_s)
        .into_iter()
        .enumerate()
    {
        let mut rec: serde_json::Value = serde_json::from_str(&e.json)?;
        rec["eventName"] = json!("BenchStream");
        ot.ingest(&json!({"Records": [rec]}).to_string())?;
        let acked = Instant::now();
        let want: HashSet<String> = [e.event_id.clone()].into();
        let [at_file, at_syslog, at_http] = arrivals(&want, &mut files, &syslog_rx, &http_rx)?;
        let at_tail = wait_all("live tail", &want, || Ok(tail_rx.try_iter().collect()))?;
        if i == 0 {
            continue;
        }
        for (k, at) in [at_file, at_syslog, at_http, at_tail]
            .into_iter()
            .enumerate()
        {
            lat[k].push(at.saturating_duration_since(acked));
        }
    }
    println!("Ack → record at the destination ({samples} events, one per ingest call):\n");
    println!("| destination | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for (i, what) in [
        "file set (seen by polling)",
        "syslog (TCP)",
        "HTTP NDJSON",
        "live tail (SSE)",
    ]
    .iter()
    .enumerate()
    {
        lat[i].sort_unstable();
        println!(
            "| {what} | {:.2} | {:.2} | {:.2} |",
            ms(percentile(&lat[i], 0.5)),
            ms(percentile(&lat[i], 0.99)),
            ms(lat[i].last().copied().unwrap_or_default())
        );
    }

    // Throughput: n events as fast as one client ingests them.
    let batches = make_batches(seed, 10_000_000, n, 1000, now_s);
    let want: HashSet<String> = batches
        .iter()
        .flat_map(|(chunk, _)| chunk.iter().map(|e| e.event_id.clone()))
        .collect();
    let json_bytes: usize = batches
        .iter()
        .flat_map(|(chunk, _)| chunk.iter().map(|e| e.json.len() + 1))
        .sum();
    let start = Instant::now();
    for (_, body) in &batches {
        ot.ingest(body)?;
    }
    let ingested = start.elapsed();
    let [file_done, syslog_done, http_done] = arrivals(&want, &mut files, &syslog_rx, &http_rx)?;
    // Backlog: the file set's directory is swapped for a plain file while n more events are
    // ingested (its stream fails and backs off), then put back; the stream drains the backlog.
    let backlog = make_batches(seed, 20_000_000, n, 1000, now_s);
    let backlog_ids: HashSet<String> = backlog
        .iter()
        .flat_map(|(chunk, _)| chunk.iter().map(|e| e.event_id.clone()))
        .collect();
    let trail_dir = files_dir.join(format!("{ACCOUNT}_us-east-1_bench-files"));
    let aside = files_dir.join("aside");
    std::fs::rename(&trail_dir, &aside)?;
    std::fs::write(&trail_dir, b"in the way")?;
    for (_, body) in &backlog {
        ot.ingest(body)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&trail_dir)?;
    std::fs::rename(&aside, &trail_dir)?;
    let released = Instant::now();
    let mut first: Option<Instant> = None;
    let drained = wait_all("file set backlog", &backlog_ids, || {
        let now = Instant::now();
        let got = files.poll()?;
        if !got.is_empty() && first.is_none() {
            first = Some(now);
        }
        Ok(got.into_iter().map(|id| (now, id)).collect())
    })?;
    let drain = drained.saturating_duration_since(first.unwrap_or(released));
    drop(ot);
    // The peer: the same lines into one file, one fsync.
    let plain = root.join("streams-plain.jsonl");
    let peer_start = Instant::now();
    {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&plain)?);
        for (chunk, _) in &batches {
            for e in chunk {
                f.write_all(e.json.as_bytes())?;
                f.write_all(b"\n")?;
            }
        }
        f.into_inner()
            .context("flushing the plain file")?
            .sync_all()?;
    }
    let peer = peer_start.elapsed();
    let mb = json_bytes as f64 / 1e6;
    println!(
        "\n{n} events ({mb:.1} MB of JSON lines), ingested by one client in batches of 1,000 while three trails stream them:\n"
    );
    println!("| | seconds from the first ingest call | events/s | MB/s |");
    println!("|---|---|---|---|");
    let row = |what: &str, d: Duration| {
        let s = d.as_secs_f64();
        println!("| {what} | {s:.2} | {:.0} | {:.1} |", n as f64 / s, mb / s);
    };
    row("ingest calls acknowledged", ingested);
    row(
        "file set holds all",
        file_done.saturating_duration_since(start),
    );
    row(
        "syslog receiver has all",
        syslog_done.saturating_duration_since(start),
    );
    row(
        "HTTP collector has all",
        http_done.saturating_duration_since(start),
    );
    row("peer: the same lines to one plain file, one fsync", peer);
    println!(
        "\nA stream keeps up with ingest when its time is close to the ingest time.\n\nA backlog of {n} events drained into the file set (from its first line to its last; reading the log, filtering, writing, an fsync and a catalog commit per 4,096 records): {:.2} s, {:.0} events/s, {:.1} MB/s; {:.2}× the plain file's MB/s.",
        drain.as_secs_f64(),
        n as f64 / drain.as_secs_f64(),
        mb / drain.as_secs_f64(),
        peer.as_secs_f64() / drain.as_secs_f64()
    );
    Ok(())
}

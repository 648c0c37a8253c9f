//! `opentrail-bench`: durable ingest throughput and LookupEvents latency of OpenTrail, side by side
//! with SQLite (WAL, `synchronous=FULL`, an index on (attribute, event time) for each lookup
//! attribute) on the same generated events, in the same process, with ratios.
//!
//! OpenTrail is measured end to end over loopback HTTP (validation, JSON, the event log's fsync,
//! and for lookups the self-audit record, which is also fsynced); SQLite in-process with no HTTP.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rusqlite::{Connection, params};

const ACCOUNT: &str = "111122223333";
const TARGET: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents";

#[derive(Parser)]
#[command(
    about = "OpenTrail vs SQLite: durable ingest and LookupEvents latency; trail delivery vs gzip -6"
)]
struct Args {
    /// Which measurements: all (ingest-lookup and delivery), ingest-lookup, delivery,
    /// validate (log file validation vs the AWS CLI and sha256sum; needs s3s-fs and the AWS CLI,
    /// see crates/bench/src/validate.rs), or auth (the cost of SigV4 + policies per request, and
    /// LookupEvents with auth on vs off on `--auth-events` stored events), or insights (the
    /// Insights detector's precision, recall and delay on synthetic traffic with injected
    /// anomalies, beside mean + 3σ).
    /// Or recovery: start-up, restart after SIGKILL with the index behind, and peak RSS, on the
    /// real binary as a child process (`--recovery-events`).
    /// Or rules: the alert rules view's events/s with 1 and 100 active rules, and ack → webhook
    /// through a server with 100 rules (`--rules-events`).
    /// Or streams: log streaming to a file set, syslog and HTTP, and the live tail: ack →
    /// destination latency, keeping up with ingest, and a backlog drained (`--streams-events`).
    #[arg(long, default_value = "all", value_parser = ["all", "ingest-lookup", "delivery", "validate", "auth", "insights", "recovery", "rules", "streams"])]
    suite: String,
    /// Events ingested before the SIGKILL of the recovery benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_events: usize,
    /// Events streamed to the three log stream destinations.
    #[arg(long, default_value_t = 50_000)]
    streams_events: usize,
    /// Events the rules view reads per rule configuration.
    #[arg(long, default_value_t = 200_000)]
    rules_events: usize,
    /// MB of JSON delivered for the validation benchmark.
    #[arg(long, default_value_t = 1_000)]
    validate_mb: u64,
    /// Events in the delivery backlog.
    #[arg(long, default_value_t = 100_000)]
    delivery_events: usize,
    /// Store sizes the lookups run at (comma-separated; each engine is loaded up to each in turn).
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    lookup_events: Vec<usize>,
    /// Events per ingest configuration (0 skips the ingest workloads).
    #[arg(long, default_value_t = 100_000)]
    ingest_events: usize,
    /// Lookups per engine.
    #[arg(long, default_value_t = 2_000)]
    lookups: usize,
    /// Events stored for the auth on/off lookup comparison.
    #[arg(long, default_value_t = 200_000)]
    auth_events: usize,
    /// APIs in the Insights evaluation.
    #[arg(long, default_value_t = 200)]
    insights_apis: usize,
    /// Weeks of traffic in the Insights evaluation.
    #[arg(long, default_value_t = 4)]
    insights_weeks: i64,
    /// Seed of the event generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where to put both engines' data (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

mod auth;
mod child;
mod delivery;
mod history;
mod insights;
mod pg;
mod recovery;
mod rules;
mod streams;
mod validate;

/// Deterministic xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One generated event, with the attributes the peers index.
pub(crate) type Generated = opentrail_gen::Event;

/// `count` events numbered from `from`, their times spread over the 7 days before `now_s`.
fn events(seed: u64, from: u64, count: usize, now_s: i64) -> Vec<Generated> {
    opentrail_gen::Generator::new(opentrail_gen::Config::new(seed, from, count as u64, now_s))
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// OpenTrail running in this process on a loopback port.
struct OpenTrail {
    url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    agent: ureq::Agent,
    /// The root key requests are signed with; `None` when the server runs without auth.
    creds: Option<opentrail_auth::client::Credentials>,
}

/// The root key benchmark servers are given (unless a suite sets its own).
pub(crate) const ROOT_ID: &str = "AKIAOPENTRAILBENCH01";
pub(crate) const ROOT_SECRET: &str = "bench/root/secret/0123456789abcdefghijklmn";

impl OpenTrail {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(opentrail_server::Settings {
            data_dir: dir.to_owned(),
            account_id: ACCOUNT.to_owned(),
            ..opentrail_server::Settings::default()
        })
    }

    /// A client of a server running elsewhere (a child process), signing with the bench's root
    /// key.
    fn remote(url: &str) -> Self {
        OpenTrail {
            url: url.to_owned(),
            shutdown: None,
            thread: None,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(60)))
                .build()
                .into(),
            creds: Some(opentrail_auth::client::Credentials::new(
                ROOT_ID.to_owned(),
                ROOT_SECRET.to_owned(),
            )),
        }
    }

    /// Another client of the same server (no ownership of it).
    fn handle(&self) -> Self {
        OpenTrail {
            url: self.url.clone(),
            shutdown: None,
            thread: None,
            agent: self.agent.clone(),
            creds: self.creds.clone(),
        }
    }

    /// Whether `/health` answers 200.
    fn healthy(&self) -> bool {
        self.agent
            .get(&format!("{}/health", self.url))
            .call()
            .is_ok_and(|r| r.status() == 200)
    }

    fn start_with(mut settings: opentrail_server::Settings) -> anyhow::Result<Self> {
        if settings.root_access_key_id.is_none() {
            settings.root_access_key_id = Some(ROOT_ID.to_owned());
            settings.root_secret_access_key = Some(ROOT_SECRET.to_owned());
        }
        let creds = (!settings.insecure_no_auth).then(|| {
            opentrail_auth::client::Credentials::new(
                settings.root_access_key_id.clone().unwrap_or_default(),
                settings.root_secret_access_key.clone().unwrap_or_default(),
            )
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                opentrail_server::run(listener, settings, async move {
                    let _ = rx.await;
                })
                .await?;
                Ok(())
            })
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let ot = OpenTrail {
            url,
            shutdown: Some(tx),
            thread: Some(thread),
            agent,
            creds,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if ot
                .agent
                .get(&format!("{}/health", ot.url))
                .call()
                .is_ok_and(|r| r.status() == 200)
            {
                return Ok(ot);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("opentrail did not start")
    }

    /// A request signed with the root key (when the server checks signatures).
    fn send(
        &self,
        method: &str,
        service: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{path}", self.url);
        let signed = match &self.creds {
            Some(c) => opentrail_auth::client::sign_now(
                c,
                "us-east-1",
                service,
                method,
                &url,
                headers,
                body,
            )?,
            None => Vec::new(),
        };
        let all = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain(signed);
        if method == "GET" {
            let mut req = self.agent.get(&url);
            for (k, v) in all {
                req = req.header(k, v);
            }
            Ok(req.call()?)
        } else {
            let mut req = self.agent.post(&url);
            for (k, v) in all {
                req = req.header(k, v);
            }
            Ok(req.send(body)?)
        }
    }

    /// Signs further requests with `creds` instead of the root key.
    fn use_key(&mut self, creds: opentrail_auth::client::Credentials) {
        self.creds = Some(creds);
    }

    /// An admin API call (`OpenTrailIAM.<action>`).
    fn iam(&self, action: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.json_call("iam", &format!("OpenTrailIAM.{action}"), body)
    }

    fn ingest(&self, body: &str) -> anyhow::Result<()> {
        let mut resp = self.send(
            "POST",
            "opentrail",
            "/v1/events",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )?;
        if resp.status() != 200 {
            bail!(
                "ingest answered {}: {}",
                resp.status(),
                resp.body_mut().read_to_string()?
            );
        }
        Ok(())
    }

    fn lag(&self) -> anyhow::Result<u64> {
        self.metric("opentrail_index_lag")
    }

    /// Waits until the background work of what was ingested is done: the history index and
    /// the Insights counters have every record and no sealed log segment waits for packing.
    /// What a suite times after this is its own work, not a view catching up beside it.
    fn settle(&self, limit: Duration) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let busy: u64 = [
                "opentrail_index_lag",
                "opentrail_insights_lag",
                "opentrail_log_segments_unpacked",
            ]
            .iter()
            .map(|m| self.metric(m))
            .sum::<anyhow::Result<u64>>()?;
            if busy == 0 {
                return Ok(());
            }
            if t.elapsed() > limit {
                bail!("the server's background work did not settle in {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn metric(&self, name: &str) -> anyhow::Result<u64> {
        let text = self
            .send("GET", "opentrail", "/metrics", &[], b"")?
            .body_mut()
            .read_to_string()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no metric {name}"))
    }

    /// A JSON 1.1 call (`X-Amz-Target: target`) signed for `service`; fails unless it answers 200.
    fn json_call(
        &self,
        service: &str,
        target: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let mut resp = self.send(
            "POST",
            service,
            "/",
            &[
                ("x-amz-target", target),
                ("content-type", "application/x-amz-json-1.1"),
            ],
            body.to_string().as_bytes(),
        )?;
        let text = resp.body_mut().read_to_string()?;
        if resp.status() != 200 {
            bail!("{target} answered {}: {text}", resp.status());
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// A CloudTrail API call.
    fn call(&self, operation: &str, body: &serde_json::Value) -> anyhow::Result<serde_json::Value> {
        self.json_call(
            "cloudtrail",
            &format!("com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.{operation}"),
            body,
        )
    }

    fn lookup(&self, key: &str, value: &str) -> anyhow::Result<usize> {
        let body = serde_json::json!({"LookupAttributes": [{"AttributeKey": key, "AttributeValue": value}], "MaxResults": 50});
        let v = self.json_call("cloudtrail", TARGET, &body)?;
        Ok(v["Events"].as_array().map_or(0, Vec::len))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        }
        Ok(())
    }
}

const COLUMNS: [&str; 8] = [
    "event_id",
    "event_name",
    "read_only",
    "username",
    "resource_type",
    "resource_name",
    "event_source",
    "access_key_id",
];

fn sqlite_open(path: &Path) -> anyhow::Result<Connection> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    // A 1 GiB page cache, as one would give a database this size.
    c.pragma_update(None, "cache_size", -1_048_576)?;
    c.busy_timeout(Duration::from_secs(60))?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, event_time INTEGER NOT NULL,
            event_name TEXT, read_only TEXT, username TEXT, resource_type TEXT, resource_name TEXT,
            event_source TEXT, access_key_id TEXT, record TEXT NOT NULL);",
    )?;
    for col in COLUMNS {
        c.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS events_{col} ON events({col}, event_time, seq);"
        ))?;
    }
    Ok(c)
}

fn sqlite_insert(c: &mut Connection, batch: &[Generated]) -> anyhow::Result<()> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO events (event_id, event_time, event_name, read_only, username, resource_type, resource_name, event_source, access_key_id, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for e in batch {
            st.execute(params![
                e.event_id,
                e.time_s,
                e.name,
                e.read_only.to_string(),
                e.user,
                e.resource_type,
                e.resource,
                e.source,
                e.key,
                e.json
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

struct IngestResult {
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// Runs `clients` threads, each sending its share of `batches` through `send`.
fn run_clients<S>(
    batches: Arc<Vec<(Vec<Generated>, String)>>,
    clients: usize,
    send: S,
) -> anyhow::Result<IngestResult>
where
    S: Fn(usize, &[Generated], &str) -> anyhow::Result<()> + Send + Sync + 'static,
{
    let send = Arc::new(send);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for client in 0..clients {
        let (batches, next, send) = (Arc::clone(&batches), Arc::clone(&next), Arc::clone(&send));
        handles.push(std::thread::spawn(
            move || -> anyhow::Result<(usize, Vec<Duration>)> {
                let mut lat = Vec::new();
                let mut n = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((events, body)) = batches.get(i) else {
                        break;
                    };
                    let t = Instant::now();
                    send(client, events, body)?;
                    lat.push(t.elapsed());
                    n += events.len();
                }
                Ok((n, lat))
            },
        ));
    }
    let mut total = 0;
    let mut lat = Vec::new();
    for h in handles {
        let (n, l) = h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        total += n;
        lat.extend(l);
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    Ok(IngestResult {
        events_per_s: total as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    })
}

fn make_batches(
    seed: u64,
    from: u64,
    total: usize,
    batch: usize,
    now_s: i64,
) -> Vec<(Vec<Generated>, String)> {
    let generator =
        opentrail_gen::Generator::new(opentrail_gen::Config::new(seed, from, total as u64, now_s));
    batches_of(&generator, from, total, batch)
}

/// Events `from..from + total` of a stream in ingest bodies of `batch` records.
fn batches_of(
    generator: &opentrail_gen::Generator,
    from: u64,
    total: usize,
    batch: usize,
) -> Vec<(Vec<Generated>, String)> {
    let mut out = Vec::with_capacity(total.div_ceil(batch.max(1)));
    let mut at = from;
    let end = from + total as u64;
    while at < end {
        let chunk: Vec<Generated> = (at..end.min(at + batch as u64))
            .map(|i| generator.event(i))
            .collect();
        at += chunk.len() as u64;
        let body = records_body(&chunk);
        out.push((chunk, body));
    }
    out
}

/// An ingest body (and a CloudTrail log file's JSON): `{"Records":[…]}` of the events' records.
pub(crate) fn records_body(events: &[Generated]) -> String {
    let mut body =
        String::with_capacity(events.iter().map(|e| e.json.len() + 1).sum::<usize>() + 16);
    body.push_str("{\"Records\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.json);
    }
    body.push_str("]}");
    body
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.suite == "insights" {
        return insights::run(args.seed, args.insights_apis, args.insights_weeks);
    }
    let tmp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    std::fs::create_dir_all(&root)?;
    let now_s = jiff::Timestamp::now().as_second();
    println!(
        "opentrail-bench: seed {}, up to {} events per ingest run, {:?} stored for lookups, {} lookups",
        args.seed, args.ingest_events, args.lookup_events, args.lookups
    );
    println!(
        "machine: {} cores; data under {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        root.display()
    );
    let sample = events(args.seed, 0, 10_000, now_s);
    let mean = sample.iter().map(|e| e.json.len()).sum::<usize>() / sample.len();
    let mut sizes: Vec<usize> = sample.iter().map(|e| e.json.len()).collect();
    sizes.sort_unstable();
    println!(
        "record size: mean {mean} B, median {} B, p99 {} B",
        sizes[sizes.len() / 2],
        sizes[sizes.len() * 99 / 100]
    );
    if args.suite == "auth" {
        return auth::run(args.seed, args.auth_events, args.lookups, &root, now_s);
    }
    if args.suite == "rules" {
        return rules::run(args.seed, args.rules_events, &root, now_s);
    }
    if args.suite == "streams" {
        return streams::run(args.seed, args.streams_events, &root, now_s);
    }
    if args.suite == "recovery" {
        return recovery::run(args.seed, args.recovery_events, &root, now_s);
    }
    if args.suite == "validate" {
        return validate::run(args.seed, args.validate_mb, &root, now_s);
    }
    if args.suite != "ingest-lookup" {
        delivery::run(args.seed, args.delivery_events, &root, now_s)?;
    }
    if args.suite == "delivery" {
        return Ok(());
    }
    history::run(
        args.seed,
        args.ingest_events,
        &args.lookup_events,
        args.lookups,
        &root,
        now_s,
    )
}

/// Bytes a file or a tree takes on disk: allocated blocks, so sparse or preallocated files count
/// what they hold, not their length.
fn dir_size(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => m.blocks() * 512,
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.filter_map(Result::ok).map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        _ => 0,
    }
}

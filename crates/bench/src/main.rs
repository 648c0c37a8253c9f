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
    /// Events stored before the lookup benchmark.
    #[arg(long, default_value_t = 1_000_000)]
    lookup_events: usize,
    /// Events per ingest configuration.
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
mod delivery;
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

const VERBS: [&str; 12] = [
    "Create", "Delete", "Describe", "Get", "List", "Put", "Update", "Start", "Stop", "Attach",
    "Detach", "Tag",
];
const NOUNS: [&str; 20] = [
    "Instance", "Bucket", "User", "Role", "Policy", "Trail", "Volume", "Snapshot", "Key",
    "Function", "Table", "Queue", "Topic", "Stack", "Cluster", "Image", "Subnet", "Vpc", "Alias",
    "Group",
];
const SOURCES: [&str; 24] = [
    "ec2",
    "s3",
    "iam",
    "sts",
    "kms",
    "lambda",
    "dynamodb",
    "sqs",
    "sns",
    "cloudformation",
    "rds",
    "ecs",
    "eks",
    "logs",
    "monitoring",
    "cloudtrail",
    "route53",
    "elasticloadbalancing",
    "autoscaling",
    "ssm",
    "secretsmanager",
    "organizations",
    "config",
    "glue",
];

/// One generated event, with the attributes SQLite indexes.
pub(crate) struct Generated {
    event_id: String,
    time_s: i64,
    name: String,
    source: String,
    user: String,
    key: String,
    read_only: bool,
    resource: String,
    resource_type: String,
    json: String,
}

fn generate(rng: &mut Rng, n: u64, now_s: i64) -> Generated {
    let verb = VERBS[rng.below(VERBS.len() as u64) as usize];
    let noun = NOUNS[rng.below(NOUNS.len() as u64) as usize];
    let name = format!("{verb}{noun}");
    let source = format!(
        "{}.amazonaws.com",
        SOURCES[rng.below(SOURCES.len() as u64) as usize]
    );
    let user = format!("user{:03}", rng.below(500));
    let key = format!("AKIA{:016}", rng.below(1000));
    let read_only = matches!(verb, "Describe" | "Get" | "List");
    let time_s = now_s - rng.below(7 * 86_400) as i64;
    let time = jiff::Timestamp::from_second(time_s)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    let resource = format!(
        "arn:aws:{}:us-east-1:{ACCOUNT}:{}/{}-{}",
        SOURCES[0],
        noun.to_lowercase(),
        noun.to_lowercase(),
        rng.below(20_000)
    );
    let resource_type = format!("AWS::EC2::{noun}");
    // Sizes spread around ~1.5 KB: a skewed padding inside requestParameters.
    let pad = 200 + (rng.below(1000) * rng.below(1000) / 400) as usize;
    let error = rng.below(100) < 3;
    let event_id = format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n,
        rng.below(0xffff),
        rng.below(0xfff),
        rng.below(0xfff),
        rng.next() & 0xffff_ffff_ffff
    );
    let mut record = serde_json::json!({
        "eventVersion": "1.11",
        "userIdentity": {"type": "IAMUser", "principalId": format!("AIDA{user}"), "arn": format!("arn:aws:iam::{ACCOUNT}:user/{user}"),
            "accountId": ACCOUNT, "accessKeyId": key, "userName": user,
            "sessionContext": {"attributes": {"creationDate": time, "mfaAuthenticated": "false"}}},
        "eventTime": time,
        "eventSource": source,
        "eventName": name,
        "awsRegion": "us-east-1",
        "sourceIPAddress": format!("198.51.100.{}", rng.below(255)),
        "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 exe/x86_64.debian.12 prompt/off command/x",
        "requestParameters": {"resourceId": resource, "filter": "x".repeat(pad)},
        "responseElements": if read_only { serde_json::Value::Null } else { serde_json::json!({"requestId": n}) },
        "requestID": format!("req-{n}"),
        "eventID": event_id,
        "readOnly": read_only,
        "resources": [{"ARN": resource, "accountId": ACCOUNT, "type": resource_type}],
        "eventType": "AwsApiCall",
        "managementEvent": true,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
        "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256", "clientProvidedHostHeader": format!("{source}")}
    });
    if error {
        record["errorCode"] = serde_json::json!("AccessDenied");
        record["errorMessage"] =
            serde_json::json!("User is not authorized to perform this operation");
    }
    Generated {
        event_id,
        time_s,
        name,
        source,
        user,
        key,
        read_only,
        resource,
        resource_type,
        json: record.to_string(),
    }
}

fn events(seed: u64, from: u64, count: usize, now_s: i64) -> Vec<Generated> {
    let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15 ^ from);
    (0..count as u64)
        .map(|i| generate(&mut rng, from + i, now_s))
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
    c.busy_timeout(Duration::from_secs(60))?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
            seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, event_time INTEGER NOT NULL,
            event_name TEXT, read_only TEXT, username TEXT, resource_type TEXT, resource_name TEXT,
            event_source TEXT, access_key_id TEXT, record TEXT NOT NULL);",
    )?;
    for col in COLUMNS {
        c.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS events_{col} ON events({col}, event_time DESC);"
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
    let evs = events(seed, from, total, now_s);
    let mut out = Vec::new();
    let mut it = evs.into_iter().peekable();
    while it.peek().is_some() {
        let chunk: Vec<Generated> = it.by_ref().take(batch).collect();
        let body = format!(
            "{{\"Records\":[{}]}}",
            chunk
                .iter()
                .map(|e| e.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        out.push((chunk, body));
    }
    out
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
        "opentrail-bench: seed {}, {} events per ingest run, {} stored for lookups, {} lookups",
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

    // Durable ingest.
    println!("\n## Durable ingest (fsync before ack)\n");
    let pg = pg::Pg::start()?;
    println!(
        "| batch | clients | OpenTrail events/s | OpenTrail call p50 / p99 ms | SQLite events/s | SQLite txn p50 / p99 ms | PostgreSQL events/s | PostgreSQL txn p50 / p99 ms | ratio to the faster peer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut offset = 1_000_000_000u64;
    for (batch, clients) in [(100, 1), (100, 8), (1000, 1), (1000, 8)] {
        let batches = Arc::new(make_batches(
            args.seed,
            offset,
            args.ingest_events,
            batch,
            now_s,
        ));
        offset += args.ingest_events as u64;
        let dir = root.join(format!("ingest-ot-{batch}-{clients}"));
        let ot = Arc::new(OpenTrail::start(&dir)?);
        let ot2 = Arc::clone(&ot);
        let ours = run_clients(Arc::clone(&batches), clients, move |_, _, body| {
            ot2.ingest(body)
        })?;
        Arc::try_unwrap(ot)
            .map_err(|_| anyhow::anyhow!("server still shared"))?
            .stop()?;
        let db = root.join(format!("ingest-sqlite-{batch}-{clients}.db"));
        drop(sqlite_open(&db)?);
        let conns: Arc<Vec<std::sync::Mutex<Connection>>> = Arc::new(
            (0..clients)
                .map(|_| sqlite_open(&db).map(std::sync::Mutex::new))
                .collect::<Result<_, _>>()?,
        );
        let peer = run_clients(Arc::clone(&batches), clients, move |client, events, _| {
            let mut c = conns[client].lock().map_err(|_| anyhow::anyhow!("lock"))?;
            sqlite_insert(&mut c, events)
        })?;
        let postgres = match &pg {
            Some(pg) => {
                let table = format!("ingest_{batch}_{clients}");
                pg::create_table(&mut pg.connect()?, &table)?;
                let conns: Arc<Vec<std::sync::Mutex<postgres::Client>>> = Arc::new(
                    (0..clients)
                        .map(|_| pg.connect().map(std::sync::Mutex::new))
                        .collect::<Result<_, _>>()?,
                );
                Some(run_clients(batches, clients, move |client, events, _| {
                    let mut c = conns[client].lock().map_err(|_| anyhow::anyhow!("lock"))?;
                    pg::insert(&mut c, &table, events)
                })?)
            }
            None => None,
        };
        let best_peer = postgres
            .as_ref()
            .map_or(peer.events_per_s, |p| p.events_per_s.max(peer.events_per_s));
        let pg_cells = postgres.as_ref().map_or_else(
            || "– | –".to_owned(),
            |p| {
                format!(
                    "{:.0} | {:.2} / {:.2}",
                    p.events_per_s,
                    ms(p.p50),
                    ms(p.p99)
                )
            },
        );
        println!(
            "| {batch} | {clients} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {pg_cells} | {:.2}× |",
            ours.events_per_s,
            ms(ours.p50),
            ms(ours.p99),
            peer.events_per_s,
            ms(peer.p50),
            ms(peer.p99),
            ours.events_per_s / best_peer
        );
    }

    // Lookups on a large store.
    println!(
        "\n## LookupEvents on {} stored events\n",
        args.lookup_events
    );
    let dir = root.join("lookup-ot");
    let ot = Arc::new(OpenTrail::start(&dir)?);
    let db_path = root.join("lookup-sqlite.db");
    let mut db = sqlite_open(&db_path)?;
    let mut loaded = 0usize;
    let load_started = Instant::now();
    let mut ot_load = Duration::ZERO;
    let mut sqlite_load = Duration::ZERO;
    let mut pg_load = Duration::ZERO;
    let mut pg_client = match &pg {
        Some(pg) => {
            let mut c = pg.connect()?;
            pg::create_table(&mut c, "lookup_events")?;
            Some(c)
        }
        None => None,
    };
    let chunk = 100_000;
    while loaded < args.lookup_events {
        let n = chunk.min(args.lookup_events - loaded);
        let batches = Arc::new(make_batches(args.seed, loaded as u64, n, 1000, now_s));
        let ot2 = Arc::clone(&ot);
        let t = Instant::now();
        run_clients(Arc::clone(&batches), 8, move |_, _, body| ot2.ingest(body))?;
        ot_load += t.elapsed();
        let t = Instant::now();
        for (events, _) in batches.iter() {
            sqlite_insert(&mut db, events)?;
        }
        sqlite_load += t.elapsed();
        if let Some(c) = pg_client.as_mut() {
            let t = Instant::now();
            for (events, _) in batches.iter() {
                pg::insert(c, "lookup_events", events)?;
            }
            pg_load += t.elapsed();
        }
        loaded += n;
    }
    let t = Instant::now();
    while ot.lag()? > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let index_catch_up = t.elapsed();
    println!(
        "loaded in {:.1} s (OpenTrail ingest {:.1} s + index catch-up after the last ack {:.2} s; SQLite {:.1} s; PostgreSQL {:.1} s)",
        load_started.elapsed().as_secs_f64(),
        ot_load.as_secs_f64(),
        index_catch_up.as_secs_f64(),
        sqlite_load.as_secs_f64(),
        pg_load.as_secs_f64()
    );
    let ot_bytes = dir_size(&dir);
    let sqlite_bytes =
        dir_size(&root.join("lookup-sqlite.db")) + dir_size(&root.join("lookup-sqlite.db-wal"));
    let pg_bytes = match pg_client.as_mut() {
        Some(c) => {
            c.batch_execute("VACUUM ANALYZE lookup_events")?;
            Some(pg::table_bytes(c, "lookup_events")?)
        }
        None => None,
    };
    let per = |b: u64| b as f64 / args.lookup_events as f64;
    println!(
        "storage: OpenTrail {:.0} B/event, SQLite {:.0} B/event{}",
        per(ot_bytes),
        per(sqlite_bytes),
        pg_bytes.map_or_else(String::new, |b| format!(
            ", PostgreSQL {:.0} B/event (table, TOAST and indexes; OpenTrail/PostgreSQL {:.0}%)",
            per(b),
            100.0 * ot_bytes as f64 / b as f64
        ))
    );

    let probe = events(args.seed, 0, args.lookups, now_s);
    let mut rng = Rng(args.seed);
    let queries: Vec<(&str, &str, String)> = probe
        .iter()
        .map(|e| {
            let (key, col, v) = match rng.below(7) {
                0 => ("EventName", "event_name", e.name.clone()),
                1 => ("Username", "username", e.user.clone()),
                2 => ("EventSource", "event_source", e.source.clone()),
                3 => ("ResourceName", "resource_name", e.resource.clone()),
                4 => ("EventId", "event_id", e.event_id.clone()),
                5 => ("AccessKeyId", "access_key_id", e.key.clone()),
                _ => ("ReadOnly", "read_only", e.read_only.to_string()),
            };
            (key, col, v)
        })
        .collect();
    println!(
        "\n| engine | lookups | p50 ms | p99 ms | max ms | lookups/s (1 client) | mean results |"
    );
    println!("|---|---|---|---|---|---|---|");
    let ours = measure(
        "OpenTrail (HTTP, incl. self-audit record)",
        &queries,
        |key, _, v| ot.lookup(key, v),
    )?;
    let peer = measure("SQLite (in-process, no HTTP)", &queries, |_, col, v| {
        let mut st = db.prepare_cached(&format!(
            "SELECT record FROM events WHERE {col} = ?1 AND event_time >= ?2 ORDER BY event_time DESC LIMIT 50"
        ))?;
        let rows: Vec<String> = st
            .query_map(params![v, now_s - 90 * 86_400], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(rows.len())
    })?;
    // Ack to visible: single events, each looked up by its id until LookupEvents returns it.
    let mut visible = Vec::new();
    for g in events(args.seed ^ 0xa11, 20_000_000, 200, now_s) {
        ot.ingest(&format!("{{\"Records\":[{}]}}", g.json))?;
        let acked = Instant::now();
        loop {
            if ot.lookup("EventId", &g.event_id)? > 0 {
                visible.push(acked.elapsed());
                break;
            }
            if acked.elapsed() > Duration::from_secs(10) {
                bail!(
                    "event {} not visible in LookupEvents 10 s after its ack",
                    g.event_id
                );
            }
        }
    }
    visible.sort_unstable();
    println!(
        "\nack → visible in LookupEvents ({} single events, polled by EventId back to back): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ 1000 ms)",
        visible.len(),
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.99)),
        ms(percentile(&visible, 1.0))
    );
    let pg_measured = match pg_client.take() {
        Some(c) => {
            let mut l = pg::Lookups::new(c, "lookup_events")?;
            Some(measure(
                "PostgreSQL (in-process client, Unix socket)",
                &queries,
                |_, col, v| l.lookup(col, v, now_s - 90 * 86_400),
            )?)
        }
        None => None,
    };
    if let Some(pg) = pg {
        pg.stop();
    }
    Arc::try_unwrap(ot)
        .map_err(|_| anyhow::anyhow!("server still shared"))?
        .stop()?;

    // The same queries against OpenTrail's index in this process, without HTTP: engine to engine.
    let (log, _) = opentrail_log::EventLog::open(opentrail_log::LogConfig::new(dir.join("log")))?;
    let index = opentrail_index::HistoryIndex::open(&dir.join("index"), log.clone())?;
    let scope = opentrail_index::Scope {
        account: ACCOUNT.to_owned(),
        region: "us-east-1".to_owned(),
        category: opentrail_model::Category::Management,
    };
    let engine = measure(
        "OpenTrail index (in-process, no HTTP)",
        &queries,
        |key, _, v| {
            let attribute = opentrail_model::AttributeKey::parse(key).context("attribute key")?;
            let query = opentrail_index::Query {
                scope: scope.clone(),
                attributes: vec![(attribute, v.to_owned())],
                start_ms: (now_s - 90 * 86_400) * 1000,
                end_ms: (now_s + 86_400) * 1000,
                max_results: 50,
                token: None,
                params_hash: 0,
            };
            Ok(index.lookup(&query)?.hits.len())
        },
    )?;
    log.close();
    println!(
        "\nin-process, engine to engine: p99 SQLite/OpenTrail {:.2}×, lookups/s OpenTrail/SQLite {:.2}×",
        peer.p99_ms / engine.p99_ms,
        engine.rate / peer.rate
    );
    println!(
        "end to end over HTTP vs SQLite in-process: p99 SQLite/OpenTrail {:.2}×, lookups/s OpenTrail/SQLite {:.2}×",
        peer.p99_ms / ours.p99_ms,
        ours.rate / peer.rate
    );
    if let Some(p) = pg_measured {
        println!(
            "PostgreSQL: p99 PostgreSQL/OpenTrail {:.2}× (engine) and {:.2}× (over HTTP); lookups/s OpenTrail/PostgreSQL {:.2}× (engine) and {:.2}× (over HTTP)",
            p.p99_ms / engine.p99_ms,
            p.p99_ms / ours.p99_ms,
            engine.rate / p.rate,
            ours.rate / p.rate
        );
    }
    Ok(())
}

/// The p99 latency and the rate of one engine's lookups.
struct Measured {
    p99_ms: f64,
    rate: f64,
}

/// Runs every query once through `lookup` (which returns the number of results), one at a time,
/// prints the table row and returns the figures the ratios need.
fn measure(
    label: &str,
    queries: &[(&str, &str, String)],
    mut lookup: impl FnMut(&str, &str, &str) -> anyhow::Result<usize>,
) -> anyhow::Result<Measured> {
    let mut lat = Vec::with_capacity(queries.len());
    let mut results = 0usize;
    let t = Instant::now();
    for (key, col, v) in queries {
        let s = Instant::now();
        results += lookup(key, col, v)?;
        lat.push(s.elapsed());
    }
    let rate = queries.len() as f64 / t.elapsed().as_secs_f64();
    lat.sort_unstable();
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.1} |",
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(percentile(&lat, 1.0)),
        rate,
        results as f64 / queries.len().max(1) as f64
    );
    Ok(Measured {
        p99_ms: ms(percentile(&lat, 0.99)),
        rate,
    })
}

fn dir_size(p: &Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.filter_map(Result::ok).map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        _ => 0,
    }
}

//! Durable ingest and LookupEvents: OpenTrail beside SQLite and PostgreSQL on the same generated
//! events (`opentrail-gen`).
//!
//! - OpenTrail is the real binary as a child process, measured over loopback HTTP with SigV4,
//!   so its peak RSS is its own. A lookup includes its self-audit record (fsynced, like every
//!   call's). It is also measured engine to engine: its index opened in this process.
//! - SQLite (WAL, `synchronous=FULL`, 1 GiB cache) and PostgreSQL (see `pg.rs`) run in this
//!   process with no HTTP, each with an index on (attribute, event time, seq) per lookup
//!   attribute, and page with a keyset on (event time, seq), as a competent engineer would.
//!
//! Ingest runs batches of 1, 100 and 1000 events from 1, 8 and 32 clients. Lookups run at each
//! store size: for each of the eight attributes, time windows of 1 h, 6 h, 24 h and the whole
//! store, first pages and deep pages (pages 2 to 10), one client and eight.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use opentrail_gen::{Config, Generator};
use rusqlite::params;

use crate::child::{Served, opentrail_binary, rss_cell, start};
use crate::{
    ACCOUNT, Generated, OpenTrail, Rng, batches_of, dir_size, make_batches, ms, percentile, pg,
    run_clients, sqlite_insert, sqlite_open,
};

/// The eight lookup attributes: the API's key and the peers' column.
const ATTRS: [(&str, &str); 8] = [
    ("EventId", "event_id"),
    ("EventName", "event_name"),
    ("ReadOnly", "read_only"),
    ("Username", "username"),
    ("ResourceType", "resource_type"),
    ("ResourceName", "resource_name"),
    ("EventSource", "event_source"),
    ("AccessKeyId", "access_key_id"),
];
const PAGE: usize = 50;
/// Deep pages: a query whose first page is full is followed to this page.
const LAST_PAGE: usize = 10;

pub(crate) fn run(
    seed: u64,
    ingest_events: usize,
    sizes: &[usize],
    lookups: usize,
    root: &Path,
    now_s: i64,
) -> anyhow::Result<()> {
    let bin = opentrail_binary()?;
    let pg = pg::Pg::start()?;
    if ingest_events > 0 {
        ingest(seed, ingest_events, &bin, root, now_s, pg.as_ref())?;
    }
    let r = lookup_suite(seed, sizes, lookups, &bin, root, now_s, pg.as_ref());
    if let Some(pg) = pg {
        pg.stop();
    }
    r
}

fn ingest(
    seed: u64,
    ingest_events: usize,
    bin: &Path,
    root: &Path,
    now_s: i64,
    pg: Option<&pg::Pg>,
) -> anyhow::Result<()> {
    println!("\n## Durable ingest (fsync before ack)\n");
    println!(
        "| batch | clients | events | OpenTrail events/s | OpenTrail call p50 / p99 ms | OpenTrail peak RSS | SQLite events/s | SQLite txn p50 / p99 ms | PostgreSQL events/s | PostgreSQL txn p50 / p99 ms | ratio to the faster peer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut offset = 1_000_000_000u64;
    for batch in [1usize, 100, 1000] {
        for clients in [1usize, 8, 32] {
            // Enough calls for stable percentiles, at most `ingest_events` events.
            let n = ingest_events.min(batch * 400.max(clients * 40));
            let batches = Arc::new(make_batches(seed, offset, n, batch, now_s));
            offset += n as u64;
            let dir = root.join(format!("ingest-ot-{batch}-{clients}"));
            let (server, _) = start(bin, &dir)?;
            let handles: Arc<Vec<OpenTrail>> =
                Arc::new((0..clients).map(|_| server.ot.handle()).collect());
            let ours = run_clients(Arc::clone(&batches), clients, move |c, _, body| {
                handles[c].ingest(body)
            })?;
            let rss = server.peak_rss_mb();
            server.stop()?;
            let _ = std::fs::remove_dir_all(&dir);

            let db = root.join(format!("ingest-sqlite-{batch}-{clients}.db"));
            drop(sqlite_open(&db)?);
            let conns: Arc<Vec<std::sync::Mutex<rusqlite::Connection>>> = Arc::new(
                (0..clients)
                    .map(|_| sqlite_open(&db).map(std::sync::Mutex::new))
                    .collect::<Result<_, _>>()?,
            );
            let peer = run_clients(Arc::clone(&batches), clients, move |c, events, _| {
                let mut c = conns[c].lock().map_err(|_| anyhow::anyhow!("lock"))?;
                sqlite_insert(&mut c, events)
            })?;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
            let postgres = match pg {
                Some(pg) => {
                    let table = format!("ingest_{batch}_{clients}");
                    pg::create_table(&mut pg.connect()?, &table)?;
                    let conns: Arc<Vec<std::sync::Mutex<postgres::Client>>> = Arc::new(
                        (0..clients)
                            .map(|_| pg.connect().map(std::sync::Mutex::new))
                            .collect::<Result<_, _>>()?,
                    );
                    let t2 = table.clone();
                    let r = run_clients(batches, clients, move |c, events, _| {
                        let mut c = conns[c].lock().map_err(|_| anyhow::anyhow!("lock"))?;
                        pg::insert(&mut c, &t2, events)
                    })?;
                    pg.connect()?
                        .batch_execute(&format!("DROP TABLE {table}"))?;
                    Some(r)
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
                "| {batch} | {clients} | {n} | {:.0} | {:.2} / {:.2} | {} | {:.0} | {:.2} / {:.2} | {pg_cells} | {:.2}× |",
                ours.events_per_s,
                ms(ours.p50),
                ms(ours.p99),
                rss_cell(rss),
                peer.events_per_s,
                ms(peer.p50),
                ms(peer.p99),
                ours.events_per_s / best_peer
            );
        }
    }
    Ok(())
}

/// One lookup: an attribute, its value and a time window (seconds, inclusive).
struct Query {
    attr: usize,
    value: String,
    start_s: i64,
    end_s: i64,
}

/// Queries for a store of `loaded` events: each attribute in turn, with a value of a stored
/// event drawn at random, in a window of 1 h, 6 h, 24 h or the whole store around its time.
fn queries(
    generator: &Generator,
    loaded: usize,
    count: usize,
    seed: u64,
    now_s: i64,
) -> Vec<Query> {
    let mut rng = Rng(seed ^ 0x00c0_ffee ^ loaded as u64);
    (0..count)
        .map(|q| {
            let attr = q % ATTRS.len();
            loop {
                let e = generator.event(rng.below(loaded as u64));
                let value = match attr {
                    0 => e.event_id.clone(),
                    1 => e.name.clone(),
                    2 => e.read_only.to_string(),
                    3 => e.user.clone(),
                    4 => e.resource_type.clone(),
                    5 => e.resource.clone(),
                    6 => e.source.clone(),
                    _ => e.key.clone(),
                };
                if value.is_empty() {
                    continue;
                }
                let width = [0, 86_400, 6 * 3600, 3600][(q / ATTRS.len()) % 4];
                let (start_s, end_s) = if width == 0 {
                    (now_s - 89 * 86_400, now_s + 60)
                } else {
                    let start = e.time_s - rng.below(width as u64) as i64;
                    (start, start + width)
                };
                break Query {
                    attr,
                    value,
                    start_s,
                    end_s,
                };
            }
        })
        .collect()
}

/// One engine's answer to a page: how many results, and where the next page starts.
type Paged = (usize, Option<String>);

/// What one engine measured at one store size.
#[derive(Default)]
struct Measured {
    /// Single client: first-page latencies per attribute.
    first: Vec<Vec<Duration>>,
    results: Vec<usize>,
    /// Single client: pages 2..=LAST_PAGE.
    deep: Vec<Duration>,
    /// Eight clients, first pages: requests per second.
    parallel_rate: f64,
    load: Option<Duration>,
    bytes: u64,
    /// Bytes by top-level part of the store (OpenTrail: log, index, ...).
    parts: Vec<(String, u64)>,
    rss_load: Option<f64>,
    rss_lookups: Option<f64>,
    visible: Vec<Duration>,
}

fn measure(
    queries: &[Query],
    mut lookup: impl FnMut(&Query, Option<&str>) -> anyhow::Result<Paged>,
) -> anyhow::Result<Measured> {
    let mut m = Measured {
        first: vec![Vec::new(); ATTRS.len()],
        results: vec![0; ATTRS.len()],
        ..Measured::default()
    };
    for q in queries {
        let t = Instant::now();
        let (n, mut next) = lookup(q, None)?;
        m.first[q.attr].push(t.elapsed());
        m.results[q.attr] += n;
        let mut page = 1;
        while let Some(token) = next.take() {
            page += 1;
            if page > LAST_PAGE {
                break;
            }
            let t = Instant::now();
            let (_, n) = lookup(q, Some(&token))?;
            m.deep.push(t.elapsed());
            next = n;
        }
    }
    Ok(m)
}

/// First pages of every query from `clients` threads, each with its own lookup function.
fn parallel<L>(queries: &Arc<Vec<Query>>, lookups: Vec<L>) -> anyhow::Result<f64>
where
    L: FnMut(&Query, Option<&str>) -> anyhow::Result<Paged> + Send + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let handles: Vec<_> = lookups
        .into_iter()
        .map(|mut lookup| {
            let (queries, next) = (Arc::clone(queries), Arc::clone(&next));
            std::thread::spawn(move || -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(q) = queries.get(i) else {
                        return Ok(());
                    };
                    lookup(q, None)?;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    Ok(queries.len() as f64 / t.elapsed().as_secs_f64())
}

fn ot_lookup(ot: &OpenTrail) -> impl FnMut(&Query, Option<&str>) -> anyhow::Result<Paged> + '_ {
    move |q, token| {
        let mut body = serde_json::json!({
            "LookupAttributes": [{"AttributeKey": ATTRS[q.attr].0, "AttributeValue": q.value}],
            "StartTime": q.start_s, "EndTime": q.end_s, "MaxResults": PAGE,
        });
        if let Some(t) = token {
            body["NextToken"] = t.into();
        }
        let v = ot.call("LookupEvents", &body)?;
        Ok((
            v["Events"].as_array().map_or(0, Vec::len),
            v["NextToken"].as_str().map(str::to_owned),
        ))
    }
}

fn sqlite_lookup(
    c: rusqlite::Connection,
) -> impl FnMut(&Query, Option<&str>) -> anyhow::Result<Paged> {
    move |q, token| {
        let col = ATTRS[q.attr].1;
        let (after_time, after_seq) = match token {
            Some(t) => parse_key(t)?,
            None => (i64::MAX, i64::MAX),
        };
        let mut st = c.prepare_cached(&format!(
            "SELECT seq, event_time, record FROM events WHERE {col} = ?1 AND event_time >= ?2 \
             AND event_time <= ?3 AND (event_time, seq) < (?4, ?5) \
             ORDER BY event_time DESC, seq DESC LIMIT {PAGE}"
        ))?;
        let rows: Vec<(i64, i64, String)> = st
            .query_map(
                params![q.value, q.start_s, q.end_s, after_time, after_seq],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?
            .collect::<Result<_, _>>()?;
        let next = (rows.len() == PAGE)
            .then(|| rows.last().map(|(seq, time, _)| format!("{time}:{seq}")))
            .flatten();
        Ok((rows.len(), next))
    }
}

/// A peer's keyset cursor: `time:seq`.
pub(crate) fn parse_key(t: &str) -> anyhow::Result<(i64, i64)> {
    let (time, seq) = t.split_once(':').context("cursor")?;
    Ok((time.parse()?, seq.parse()?))
}

fn engine_lookup(
    index: &opentrail_index::HistoryIndex,
) -> impl FnMut(&Query, Option<&str>) -> anyhow::Result<Paged> + '_ {
    let scope = opentrail_index::Scope {
        account: ACCOUNT.to_owned(),
        region: "us-east-1".to_owned(),
        category: opentrail_model::Category::Management,
    };
    move |q, token| {
        let attribute =
            opentrail_model::AttributeKey::parse(ATTRS[q.attr].0).context("attribute key")?;
        let token = token
            .map(|t| opentrail_index::PageToken::decode(t, 0))
            .transpose()
            .map_err(|e| anyhow::anyhow!("page token: {e:?}"))?;
        let page = index.lookup(&opentrail_index::Query {
            scope: scope.clone(),
            attributes: vec![(attribute, q.value.clone())],
            start_ms: q.start_s * 1000,
            end_ms: q.end_s * 1000 + 999,
            max_results: PAGE,
            token,
            params_hash: 0,
        })?;
        Ok((page.hits.len(), page.next.map(|t| t.encode())))
    }
}

/// Loads `[from, to)` of the stream into an engine, 100,000 events at a time.
fn load(
    generator: &Generator,
    from: usize,
    to: usize,
    mut put: impl FnMut(Arc<Vec<(Vec<Generated>, String)>>) -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let mut spent = Duration::ZERO;
    let mut at = from;
    while at < to {
        let n = 100_000.min(to - at);
        let batches = Arc::new(batches_of(generator, at as u64, n, 1000));
        let t = Instant::now();
        put(batches)?;
        spent += t.elapsed();
        at += n;
    }
    Ok(spent)
}

#[allow(clippy::too_many_arguments)]
fn lookup_suite(
    seed: u64,
    sizes: &[usize],
    lookups: usize,
    bin: &Path,
    root: &Path,
    now_s: i64,
    pg: Option<&pg::Pg>,
) -> anyhow::Result<()> {
    let max = sizes.iter().copied().max().unwrap_or(0);
    let generator = Generator::new(Config::new(seed, 0, max as u64, now_s));
    let qsets: Vec<Arc<Vec<Query>>> = sizes
        .iter()
        .map(|&n| Arc::new(queries(&generator, n, lookups, seed, now_s)))
        .collect();
    // engine name -> one Measured per size
    let mut all: Vec<(&str, Vec<Measured>)> = Vec::new();

    // OpenTrail: the child server for loading and HTTP lookups, then the index in process.
    let dir = root.join("lookup-ot");
    let mut http = Vec::new();
    let mut engine = Vec::new();
    let mut loaded = 0;
    for (k, &size) in sizes.iter().enumerate() {
        let (server, _) = start(bin, &dir)?;
        let handles: Arc<Vec<OpenTrail>> = Arc::new((0..8).map(|_| server.ot.handle()).collect());
        let spent = load(&generator, loaded, size, |batches| {
            let h = Arc::clone(&handles);
            run_clients(batches, 8, move |c, _, body| h[c].ingest(body)).map(|_| ())
        })?;
        let t = Instant::now();
        while server.ot.lag()? > 0 {
            if t.elapsed() > Duration::from_secs(3600) {
                bail!("the history index did not catch up in an hour");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Loading ends when the last acknowledged event is in the index.
        let catch_up = t.elapsed();
        let rss_load = server.peak_rss_mb();
        // The lookups are timed without the Insights counters or the log's packer still working
        // through the load beside them.
        server.ot.settle(Duration::from_secs(3600))?;
        loaded = size;
        server.reset_peak();
        let mut m = measure(&qsets[k], ot_lookup(&server.ot))?;
        let lookups: Vec<_> = (0..8)
            .map(|_| {
                let ot = server.ot.handle();
                move |q: &Query, t: Option<&str>| ot_lookup(&ot)(q, t)
            })
            .collect();
        m.parallel_rate = parallel(&qsets[k], lookups)?;
        m.rss_lookups = server.peak_rss_mb();
        m.visible = ack_to_visible(&server, seed, k)?;
        m.load = Some(spent + catch_up);
        m.rss_load = rss_load;
        server.stop()?;
        m.bytes = dir_size(&dir);
        m.parts = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    dir_size(&e.path()),
                )
            })
            .filter(|(_, b)| *b > 0)
            .collect();
        m.parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        http.push(m);

        let (log, _) =
            opentrail_log::EventLog::open(opentrail_log::LogConfig::new(dir.join("log")))?;
        let index = Arc::new(opentrail_index::HistoryIndex::open(
            &dir.join("index"),
            log.clone(),
        )?);
        let mut m = measure(&qsets[k], engine_lookup(&index))?;
        let lookups: Vec<_> = (0..8)
            .map(|_| {
                let index = Arc::clone(&index);
                move |q: &Query, t: Option<&str>| engine_lookup(&index)(q, t)
            })
            .collect();
        m.parallel_rate = parallel(&qsets[k], lookups)?;
        drop(index);
        log.close();
        engine.push(m);
    }
    let _ = std::fs::remove_dir_all(&dir);
    all.push((
        "OpenTrail over HTTP (SigV4, self-audit record fsynced)",
        http,
    ));
    all.push(("OpenTrail index in process", engine));

    // SQLite.
    let db_path = root.join("lookup-sqlite.db");
    let mut sqlite = Vec::new();
    let mut db = sqlite_open(&db_path)?;
    let mut loaded = 0;
    for (k, &size) in sizes.iter().enumerate() {
        let spent = load(&generator, loaded, size, |batches| {
            for (events, _) in batches.iter() {
                sqlite_insert(&mut db, events)?;
            }
            Ok(())
        })?;
        loaded = size;
        let bytes = dir_size(&db_path) + dir_size(&root.join("lookup-sqlite.db-wal"));
        let mut m = measure(&qsets[k], sqlite_lookup(sqlite_open(&db_path)?))?;
        let lookups = (0..8)
            .map(|_| sqlite_open(&db_path).map(sqlite_lookup))
            .collect::<Result<Vec<_>, _>>()?;
        m.parallel_rate = parallel(&qsets[k], lookups)?;
        m.load = Some(spent);
        m.bytes = bytes;
        sqlite.push(m);
    }
    drop(db);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
    }
    all.push(("SQLite in process", sqlite));

    // PostgreSQL.
    if let Some(pg) = pg {
        let mut measured = Vec::new();
        let mut c = pg.connect()?;
        pg::create_table(&mut c, "lookup_events")?;
        let mut loaded = 0;
        for (k, &size) in sizes.iter().enumerate() {
            let spent = load(&generator, loaded, size, |batches| {
                for (events, _) in batches.iter() {
                    pg::insert(&mut c, "lookup_events", events)?;
                }
                Ok(())
            })?;
            loaded = size;
            c.batch_execute("VACUUM ANALYZE lookup_events")?;
            let bytes = pg::table_bytes(&mut c, "lookup_events")?;
            let mut l = pg::Lookups::new(pg.connect()?, "lookup_events")?;
            let mut m = measure(&qsets[k], |q, t| {
                l.lookup(ATTRS[q.attr].1, &q.value, q.start_s, q.end_s, t)
            })?;
            let lookups = (0..8)
                .map(|_| {
                    pg::Lookups::new(pg.connect()?, "lookup_events").map(|mut l| {
                        move |q: &Query, t: Option<&str>| {
                            l.lookup(ATTRS[q.attr].1, &q.value, q.start_s, q.end_s, t)
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            m.parallel_rate = parallel(&qsets[k], lookups)?;
            m.load = Some(spent);
            m.bytes = bytes;
            measured.push(m);
        }
        c.batch_execute("DROP TABLE lookup_events")?;
        all.push(("PostgreSQL in process (Unix socket)", measured));
    }

    for (k, &size) in sizes.iter().enumerate() {
        report(size, lookups, &all, k);
    }
    Ok(())
}

/// Ack → visible: single events, each looked up by its id until LookupEvents returns it.
fn ack_to_visible(server: &Served, seed: u64, k: usize) -> anyhow::Result<Vec<Duration>> {
    let generator = Generator::new(Config::new(
        seed ^ 0xa11 ^ k as u64,
        0,
        200,
        jiff::Timestamp::now().as_second(),
    ));
    let mut visible = Vec::new();
    for g in generator {
        server.ot.ingest(&format!("{{\"Records\":[{}]}}", g.json))?;
        let acked = Instant::now();
        loop {
            if server.ot.lookup("EventId", &g.event_id)? > 0 {
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
    Ok(visible)
}

fn lat(mut d: Vec<Duration>) -> (f64, f64, f64) {
    d.sort_unstable();
    let rate = d.len() as f64 / d.iter().sum::<Duration>().as_secs_f64().max(1e-9);
    (ms(percentile(&d, 0.5)), ms(percentile(&d, 0.99)), rate)
}

fn report(size: usize, lookups: usize, all: &[(&str, Vec<Measured>)], k: usize) {
    println!("\n## LookupEvents on {size} stored events ({lookups} queries, pages of {PAGE})\n");
    println!(
        "| engine | load s | events/s loading | bytes/event | peak RSS loading | peak RSS lookups |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, ms_) in all {
        let m = &ms_[k];
        let load = m.load.map_or(0.0, |d| d.as_secs_f64());
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            if m.load.is_some() {
                format!("{load:.1}")
            } else {
                "–".into()
            },
            if m.load.is_some() {
                format!("{:.0}", size as f64 / load.max(1e-9))
            } else {
                "–".into()
            },
            if m.bytes > 0 {
                format!("{:.0}", m.bytes as f64 / size as f64)
            } else {
                "–".into()
            },
            if m.rss_load.is_some() {
                rss_cell(m.rss_load)
            } else {
                "–".into()
            },
            if m.rss_lookups.is_some() {
                rss_cell(m.rss_lookups)
            } else {
                "–".into()
            },
        );
    }
    let bytes = |label: &str| {
        all.iter()
            .find(|(n, _)| n.starts_with(label))
            .map(|(_, m)| m[k].bytes)
            .filter(|&b| b > 0)
    };
    if let (Some(ot), Some(pg)) = (bytes("OpenTrail over"), bytes("PostgreSQL")) {
        println!(
            "\nstorage: OpenTrail {:.0}% of PostgreSQL's bytes per event (target ≤ 25%)",
            100.0 * ot as f64 / pg as f64
        );
    }
    for (name, ms_) in all {
        let parts = &ms_[k].parts;
        if !parts.is_empty() {
            let cells: Vec<String> = parts
                .iter()
                .map(|(p, b)| format!("{p} {:.0}", *b as f64 / size as f64))
                .collect();
            println!("{name}, bytes/event by part: {}", cells.join(", "));
        }
    }
    print!("\nSingle client, first pages: p50 / p99 ms and lookups/s\n\n| attribute |");
    for (name, _) in all {
        print!(" {name} |");
    }
    println!(" mean results |");
    println!("|---|{}---|", "---|".repeat(all.len()));
    let mut rows: Vec<(String, Vec<Vec<Duration>>)> = ATTRS
        .iter()
        .enumerate()
        .map(|(a, (key, _))| {
            (
                (*key).to_owned(),
                all.iter().map(|(_, m)| m[k].first[a].clone()).collect(),
            )
        })
        .collect();
    rows.push((
        "all first pages".to_owned(),
        all.iter().map(|(_, m)| m[k].first.concat()).collect(),
    ));
    rows.push((
        format!("deep pages (2–{LAST_PAGE})"),
        all.iter().map(|(_, m)| m[k].deep.clone()).collect(),
    ));
    for (a, (label, per_engine)) in rows.into_iter().enumerate() {
        print!("| {label} |");
        for d in per_engine {
            let (p50, p99, rate) = lat(d);
            print!(" {p50:.2} / {p99:.2} · {rate:.0}/s |");
        }
        let results = all.first().map_or(0.0, |(_, m)| {
            let m = &m[k];
            match a {
                a if a < ATTRS.len() => m.results[a] as f64 / m.first[a].len().max(1) as f64,
                a if a == ATTRS.len() => {
                    m.results.iter().sum::<usize>() as f64 / lookups.max(1) as f64
                }
                _ => PAGE as f64,
            }
        });
        println!(" {results:.1} |");
    }
    print!("| 8 clients, all first pages (lookups/s) |");
    for (_, m) in all {
        print!(" {:.0}/s |", m[k].parallel_rate);
    }
    println!(" |");
    let find = |label: &str| {
        all.iter()
            .find(|(n, _)| n.starts_with(label))
            .map(|(_, m)| &m[k])
    };
    if let Some(ot) = find("OpenTrail over") {
        let v = &ot.visible;
        println!(
            "\nack → visible in LookupEvents ({} single events, polled by EventId back to back): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (target p99 ≤ 1000 ms)",
            v.len(),
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.99)),
            ms(percentile(v, 1.0))
        );
        let (_, p99, rate) = lat(ot.first.concat());
        let (_, deep99, _) = lat(ot.deep.clone());
        let peers: Vec<(f64, f64)> = ["SQLite", "PostgreSQL"]
            .iter()
            .filter_map(|p| find(p))
            .map(|m| (lat(m.first.concat()).2, m.parallel_rate))
            .collect();
        let best = peers.iter().map(|p| p.0).fold(0.0, f64::max);
        let best8 = peers.iter().map(|p| p.1).fold(0.0, f64::max);
        println!(
            "targets over HTTP: p99 first pages {p99:.2} ms, deep pages {deep99:.2} ms (≤ 10 ms); lookups/s vs the faster peer {:.2}× (1 client), {:.2}× (8 clients) (≥ 3×)",
            rate / best.max(1e-9),
            ot.parallel_rate / best8.max(1e-9),
        );
        if let Some(e) = find("OpenTrail index") {
            println!(
                "engine to engine: lookups/s vs the faster peer {:.2}× (1 client), {:.2}× (8 clients)",
                lat(e.first.concat()).2 / best.max(1e-9),
                e.parallel_rate / best8.max(1e-9),
            );
        }
    }
}

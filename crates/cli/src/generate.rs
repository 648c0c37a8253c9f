//! `opentrail gen`: realistic synthetic CloudTrail events on stdout, deterministic from a seed
//! (the generator the benchmarks use; see the opentrail-gen crate for what it draws from).

use std::io::Write;

use anyhow::Context;
use clap::Args;
use opentrail_gen::{Config, Generator};

#[derive(Args)]
pub struct GenArgs {
    /// Events to print.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Seed: the same seed and settings print the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of the first event (continue a stream where another run ended).
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Days of event times, ending at `--end`.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// The newest event time (RFC 3339) [default: now].
    #[arg(long)]
    end: Option<String>,
    #[arg(long, default_value = "111122223333")]
    account: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Records per output line: 0 prints one record per line (JSON lines); N prints
    /// `{"Records":[...]}` bodies of N records, ready for the ingest API.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Print the size, name, source, user and error spread to stderr at the end.
    #[arg(long)]
    stats: bool,
}

pub fn run(args: GenArgs) -> anyhow::Result<()> {
    let end_s = match &args.end {
        Some(t) => t
            .parse::<jiff::Timestamp>()
            .with_context(|| format!("--end {t:?} is not an RFC 3339 time"))?
            .as_second(),
        None => jiff::Timestamp::now().as_second(),
    };
    let cfg = Config {
        days: args.days,
        account: args.account.clone(),
        region: args.region.clone(),
        ..Config::new(args.seed, args.first, args.count, end_s)
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut sizes = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut sources = std::collections::HashSet::new();
    let mut users = std::collections::HashSet::new();
    let (mut errors, mut reads, mut in_batch) = (0u64, 0u64, 0usize);
    for e in Generator::new(cfg) {
        if args.batch == 0 {
            out.write_all(e.json.as_bytes())?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(if in_batch == 0 {
                b"{\"Records\":["
            } else {
                b","
            })?;
            out.write_all(e.json.as_bytes())?;
            in_batch += 1;
            if in_batch == args.batch {
                out.write_all(b"]}\n")?;
                in_batch = 0;
            }
        }
        if args.stats {
            sizes.push(e.json.len());
            names.insert(e.name);
            sources.insert(e.source);
            users.insert(e.user);
            errors += u64::from(e.error_code.is_some());
            reads += u64::from(e.read_only);
        }
    }
    if in_batch > 0 {
        out.write_all(b"]}\n")?;
    }
    out.flush()?;
    if args.stats && !sizes.is_empty() {
        sizes.sort_unstable();
        let n = sizes.len();
        let at = |q: f64| sizes[((n as f64 * q) as usize).min(n - 1)];
        eprintln!(
            "{n} events: size min {} / median {} / mean {} / p99 {} / max {} B; {} event names, {} sources, {} users; {:.1}% errors, {:.1}% read-only",
            sizes[0],
            at(0.5),
            sizes.iter().sum::<usize>() / n,
            at(0.99),
            sizes[n - 1],
            names.len(),
            sources.len(),
            users.len(),
            100.0 * errors as f64 / n as f64,
            100.0 * reads as f64 / n as f64,
        );
    }
    Ok(())
}

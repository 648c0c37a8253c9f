//! `opentrail logs list|get`: a trail's delivered log files for a time range, from the local
//! bucket store or an S3-compatible server (whatever the settings say the bucket is on).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use opentrail_delivery::Buckets;
use opentrail_delivery::layout::{FileKind, key_time_ms, region_prefix};
use opentrail_server::Settings;

/// Which files: a bucket's CloudTrail layout narrowed by account, region, kind and time.
#[derive(Args, Debug, Clone)]
pub struct Selection {
    /// The trail's bucket.
    #[arg(long)]
    bucket: String,
    /// The trail's S3 key prefix, if it has one.
    #[arg(long)]
    prefix: Option<String>,
    /// Account whose files to take [default: the configured account].
    #[arg(long)]
    account: Option<String>,
    /// Organization id, for an organization trail's files (`AWSLogs/o-.../`).
    #[arg(long)]
    org: Option<String>,
    /// Region whose files to take [default: every region].
    #[arg(long)]
    region: Option<String>,
    /// Insights files (`CloudTrail-Insight/`) instead of log files.
    #[arg(long)]
    insights: bool,
    /// Files delivered at or after this time (RFC 3339, e.g. 2026-11-21T10:00:00Z, or a date).
    #[arg(long)]
    start: Option<String>,
    /// Files delivered at or before this time.
    #[arg(long)]
    end: Option<String>,
}

fn parse_time(name: &str, s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        let z = d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .with_context(|| format!("--{name} {s}"))?;
        return Ok(z.timestamp().as_millisecond());
    }
    anyhow::bail!(
        "--{name} {s:?} is not a time like 2026-11-21T10:00:00Z or a date like 2026-11-21"
    )
}

/// One delivered file.
struct Found {
    key: String,
    size: u64,
}

async fn find(
    buckets: &Buckets,
    settings: &Settings,
    sel: &Selection,
) -> anyhow::Result<Vec<Found>> {
    let start = sel
        .start
        .as_deref()
        .map(|s| parse_time("start", s))
        .transpose()?;
    // A bare end date means the whole of that day.
    let end = match sel.end.as_deref() {
        Some(s) if s.len() == 10 => Some(parse_time("end", s)? + 86_400_000 - 1),
        Some(s) => Some(parse_time("end", s)?),
        None => None,
    };
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        anyhow::bail!("--start is after --end");
    }
    let account = sel.account.as_deref().unwrap_or(&settings.account_id);
    let kind = if sel.insights {
        FileKind::Insight
    } else {
        FileKind::Log
    };
    let prefix = match &sel.region {
        Some(region) => region_prefix(
            sel.prefix.as_deref(),
            sel.org.as_deref(),
            account,
            kind,
            region,
        ),
        None => {
            // Everything of this account and kind: the region folder is left open.
            let with_region = region_prefix(
                sel.prefix.as_deref(),
                sel.org.as_deref(),
                account,
                kind,
                "x",
            );
            with_region
                .strip_suffix("x/")
                .unwrap_or(&with_region)
                .to_owned()
        }
    };
    let listed = buckets
        .list(&sel.bucket, &prefix)
        .await
        .with_context(|| format!("listing s3://{}/{prefix}", sel.bucket))?;
    let mut found: Vec<Found> = listed
        .into_iter()
        .filter_map(|m| {
            let key = m.location.to_string();
            let t = key_time_ms(&key)?;
            let in_range = start.is_none_or(|s| t + 59_999 >= s) && end.is_none_or(|e| t <= e);
            in_range.then_some(Found { key, size: m.size })
        })
        .collect();
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(found)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn bucket_store(settings: &Settings) -> Buckets {
    let (default, overrides) = settings.bucket_targets();
    Buckets::new(default, overrides)
}

/// Prints the matching files, one `size key` line each.
pub fn list(settings: &Settings, sel: &Selection) -> anyhow::Result<()> {
    let buckets = bucket_store(settings);
    let found = runtime()?.block_on(find(&buckets, settings, sel))?;
    for f in &found {
        println!("{:>10} {}", f.size, f.key);
    }
    eprintln!("{} files", found.len());
    Ok(())
}

/// Downloads the matching files into `out`, keeping their keys as relative paths. Files stored
/// encrypted are written decrypted (their data keys unwrapped by the server at `endpoint`).
pub fn get(
    settings: &Settings,
    sel: &Selection,
    out: &Path,
    endpoint: Option<String>,
) -> anyhow::Result<()> {
    let decryptor = crate::decrypt::Decryptor::new(endpoint);
    let buckets = bucket_store(settings);
    let rt = runtime()?;
    let found = rt.block_on(find(&buckets, settings, sel))?;
    let total: u64 = found.iter().map(|f| f.size).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut written = 0u64;
    for f in &found {
        let (stored, meta) = rt
            .block_on(buckets.get_with_metadata(&sel.bucket, &f.key))
            .with_context(|| format!("fetching {}", f.key))?;
        let bytes = decryptor.plain(&f.key, &stored, &meta)?;
        let dest: PathBuf = out.join(&f.key);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(&dest, &bytes)
            .with_context(|| format!("cannot write {}", dest.display()))?;
        written += bytes.len() as u64;
        bar.set_message(f.key.rsplit('/').next().unwrap_or_default().to_owned());
        bar.inc(f.size);
    }
    bar.finish_and_clear();
    println!(
        "fetched {} files ({written} bytes) into {}",
        found.len(),
        out.display()
    );
    Ok(())
}

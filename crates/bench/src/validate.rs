//! Log file validation throughput: a trail with log file validation delivers a backlog of at
//! least the requested size into a bucket on s3s-fs (a real S3-compatible server), then the same
//! files are validated by `opentrail validate-logs`, by the AWS CLI's `cloudtrail validate-logs`
//! (both over S3), and hashed by `sha256sum` (the stored gzip bytes) and `gzip -dc | sha256sum`
//! (what a validator must hash: the uncompressed JSON), all in this run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::{ACCOUNT, OpenTrail, events};

/// Short names: s3s-fs keeps an object's metadata in a file named after the base64 of bucket
/// and key, which must fit in 255 bytes.
const BUCKET: &str = "bvb";
const TRAIL: &str = "bvt";
const S3_KEY: &str = crate::ROOT_ID;
const S3_SECRET: &str = crate::ROOT_SECRET;

fn tool(env: &str, fallbacks: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    fallbacks
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("set {env}: none of {fallbacks:?} exists"))
}

struct S3sFs(Child);

impl Drop for S3sFs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gz_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            gz_files(&p, out)?;
        } else if p.to_string_lossy().ends_with(".json.gz") {
            out.push(p);
        }
    }
    Ok(())
}

/// How long a shell pipeline takes over `files`: their names are written to `list`, and
/// `xargs` hands them to `pipeline` (output discarded).
fn time_over(list: &Path, files: &[PathBuf], pipeline: &str) -> anyhow::Result<Duration> {
    let names: Vec<String> = files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    std::fs::write(list, names.join("\n"))?;
    let (took, _) = timed(
        pipeline,
        Command::new("sh").arg("-c").arg(format!(
            "xargs -a '{}' -d '\\n' {pipeline} > /dev/null",
            list.display()
        )),
    )?;
    Ok(took)
}

fn timed(name: &str, cmd: &mut Command) -> anyhow::Result<(Duration, String)> {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {name}"))?;
    let took = t.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{name} failed ({}): {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((took, stdout))
}

pub(crate) fn run(seed: u64, target_json_mb: u64, root: &Path, now_s: i64) -> anyhow::Result<()> {
    println!("\n## Log file validation (at least {target_json_mb} MB of JSON delivered)\n");
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let s3s = tool(
        "OPENTRAIL_S3S_FS",
        &[home.join(".cache/opentrail-tools/bin/s3s-fs")],
    )?;
    let aws = tool(
        "OPENTRAIL_AWS",
        &[home.join(".cache/opentrail-venv/bin/aws")],
    )?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default();
    let opentrail = tool("OPENTRAIL_BIN", &[exe_dir.join("opentrail")])?;

    let dir = root.join("validate");
    let s3_root = dir.join("s3");
    std::fs::create_dir_all(s3_root.join(BUCKET))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _s3 = S3sFs(
        Command::new(&s3s)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&s3_root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", s3s.display()))?,
    );
    std::thread::sleep(Duration::from_millis(500));

    let settings = opentrail_server::Settings {
        data_dir: dir.join("data"),
        account_id: ACCOUNT.to_owned(),
        delivery_interval: Duration::from_secs(1),
        digest_interval: Duration::from_secs(30),
        s3_endpoint: Some(endpoint.clone()),
        s3_access_key_id: Some(S3_KEY.to_owned()),
        s3_secret_access_key: Some(S3_SECRET.to_owned()),
        ..opentrail_server::Settings::default()
    };
    let ot = OpenTrail::start_with(settings)?;
    let created = ot.call(
        "CreateTrail",
        &json!({"Name": TRAIL, "S3BucketName": BUCKET, "EnableLogFileValidation": true}),
    )?;
    let arn = created["TrailARN"].as_str().unwrap_or_default().to_owned();
    let start_s = jiff::Timestamp::now().as_second() - 60;
    ot.call("StartLogging", &json!({"Name": TRAIL}))?;

    let t = Instant::now();
    let mut sent_json = 0u64;
    let mut count = 0usize;
    while sent_json < target_json_mb * 1_000_000 {
        let chunk = events(seed ^ 0x7a11d, count as u64, 1000, now_s);
        let body = crate::records_body(&chunk);
        sent_json += body.len() as u64;
        count += chunk.len();
        ot.ingest(&body)?;
    }
    let deadline = Instant::now() + Duration::from_secs(3600);
    while ot.metric("opentrail_delivery_events_total")? < count as u64 {
        if Instant::now() > deadline {
            bail!("delivery did not finish");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop_ms = jiff::Timestamp::now().as_millisecond();
    ot.call("StopLogging", &json!({"Name": TRAIL}))?;
    loop {
        let st = ot.call("GetTrailStatus", &json!({"Name": TRAIL}))?;
        let t = st["LatestDigestDeliveryTime"].as_f64().unwrap_or(0.0);
        if (t * 1000.0) as i64 > stop_ms {
            break;
        }
        if Instant::now() > deadline {
            bail!("no last digest");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "{count} events ingested and delivered with digests in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let mut logs = Vec::new();
    gz_files(&s3_root.join(BUCKET).join("AWSLogs"), &mut logs)?;
    logs.retain(|p| !p.to_string_lossy().contains("CloudTrail-Digest"));
    let gz_bytes: u64 = logs
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let json_bytes = ot.metric("opentrail_delivery_json_bytes_total")?;
    let digests = ot.metric("opentrail_delivery_digests_total")?;
    println!(
        "{} log files: {:.1} MB gzip, {:.1} MB JSON; {digests} digests\n",
        logs.len(),
        gz_bytes as f64 / 1e6,
        json_bytes as f64 / 1e6
    );
    let start = jiff::Timestamp::from_second(start_s)?
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let end = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let want = format!("{0}/{0} log files valid", logs.len());

    let mut rows: Vec<(String, Duration)> = Vec::new();
    let (took, out) = timed(
        "opentrail validate-logs",
        Command::new(&opentrail)
            .args(["validate-logs", "--trail-arn", &arn, "--start-time", &start])
            .args(["--end-time", &end, "--endpoint-url", &ot.url])
            .args(["--s3-endpoint-url", &endpoint, "--no-progress"])
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET),
    )?;
    if !out.contains(&want) {
        bail!("opentrail validate-logs did not find every file valid:\n{out}");
    }
    rows.push(("`opentrail validate-logs` (S3)".into(), took));
    let (took, out) = timed(
        "aws cloudtrail validate-logs",
        Command::new(&aws)
            .args(["cloudtrail", "validate-logs", "--trail-arn", &arn])
            .args(["--start-time", &start, "--end-time", &end])
            .args(["--endpoint-url", &ot.url, "--region", "us-east-1"])
            .env("AWS_ENDPOINT_URL_S3", &endpoint)
            .env("AWS_ACCESS_KEY_ID", S3_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET),
    )?;
    if !out.contains(&want) {
        bail!("the AWS CLI did not find every file valid:\n{out}");
    }
    rows.push(("AWS CLI v1 `cloudtrail validate-logs` (S3)".into(), took));
    let list = dir.join("files.txt");
    rows.push((
        "`sha256sum` of the gzip files".into(),
        time_over(&list, &logs, "sha256sum")?,
    ));
    rows.push((
        "`cat files | gzip -dc | sha256sum`".into(),
        time_over(&list, &logs, "cat | gzip -dc | sha256sum")?,
    ));
    // A digest lists the SHA-256 of each file's JSON, so a validator hashes the JSON, not the
    // gzip: `sha256sum` over the same JSON, unpacked beforehand (not timed), is that work alone.
    let plain = dir.join("json");
    std::fs::create_dir_all(&plain)?;
    let mut unpacked = Vec::new();
    for (i, gz) in logs.iter().enumerate() {
        let to = plain.join(format!("{i}.json"));
        let json = opentrail_delivery::digest::gunzip_member(&std::fs::read(gz)?)
            .map_err(|e| anyhow::anyhow!("unpacking {}: {e:?}", gz.display()))?;
        std::fs::write(&to, json)?;
        unpacked.push(to);
    }
    rows.push((
        "`sha256sum` of the same JSON, unpacked beforehand".into(),
        time_over(&dir.join("json-files.txt"), &unpacked, "sha256sum")?,
    ));
    ot.stop()?;

    let ours = rows[0].1.as_secs_f64();
    println!("| validator | seconds | gzip MB/s | JSON MB/s | time vs opentrail |");
    println!("|---|---:|---:|---:|---:|");
    for (name, d) in &rows {
        let s = d.as_secs_f64();
        println!(
            "| {name} | {s:.2} | {:.1} | {:.1} | {:.2}× |",
            gz_bytes as f64 / 1e6 / s,
            json_bytes as f64 / 1e6 / s,
            s / ours
        );
    }
    Ok(())
}

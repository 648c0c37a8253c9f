//! The cost of access control: SigV4 verification and policy evaluation per request, in process
//! (beside the AWS SDK's signer and a bare SHA-256 of the same body), and LookupEvents over HTTP
//! with authentication on (an IAM user with OpenTrailReadOnlyAccess, so policies are evaluated)
//! versus off (`insecure_no_auth`), on the same stored events.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::Context as _;
use opentrail_auth::client::{Credentials, sign_headers};
use opentrail_auth::directory::{AccessKey, Directory, KeyStatus, User};
use opentrail_auth::policy::{self, Context};
use opentrail_auth::sigv4::{Request, Verifier};
use serde_json::json;

use crate::{ACCOUNT, OpenTrail, Rng, events, make_batches, ms, percentile};

const TARGET: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents";

/// A directory like a real deployment's: many users, ready-made and inline policies, groups.
fn directory(users: usize) -> Directory {
    let mut d = Directory::default();
    let inline = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["cloudtrail:Get*", "cloudtrail:List*", "cloudtrail:LookupEvents"], "Resource": "*",
             "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "127.0.0.0/8"]}}},
            {"Effect": "Deny", "Action": "cloudtrail:StopLogging", "NotResource": "arn:aws:cloudtrail:*:*:trail/${aws:username}-*"},
            {"Effect": "Allow", "Action": "opentrail:IngestEvents", "Resource": "arn:aws:opentrail::111122223333:events",
             "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}}
        ]
    })
    .to_string();
    for i in 0..users {
        let name = format!("user{i:05}");
        let mut u = User {
            name: name.clone(),
            user_id: format!("AIDABENCH{i:012}"),
            path: "/".to_owned(),
            created_ms: 0,
            access_keys: vec![AccessKey {
                id: format!("AKIABENCH{i:011}"),
                // The bench "seals" with the identity function: the snapshot's opener returns it.
                sealed_secret: format!("bench/secret/{i:028}"),
                status: KeyStatus::Active,
                created_ms: 0,
            }],
            attached: Default::default(),
            inline: Default::default(),
            groups: Default::default(),
        };
        u.attached
            .insert("arn:aws:iam::aws:policy/OpenTrailReadOnlyAccess".to_owned());
        u.inline.insert("scoped".to_owned(), inline.clone());
        d.users.insert(name, u);
    }
    d
}

struct Micro {
    label: &'static str,
    per_op: Duration,
}

fn time_it(
    label: &'static str,
    iters: u32,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Micro> {
    // Warm up, then take the best of three runs (the machine has two busy cores).
    for _ in 0..iters / 10 {
        f()?;
    }
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        best = best.min(t.elapsed() / iters);
    }
    Ok(Micro {
        label,
        per_op: best,
    })
}

fn micro() -> anyhow::Result<()> {
    println!("\n## Access control per request (in process)\n");
    let users = 1_000;
    let dir = directory(users);
    let snapshot = dir
        .snapshot(ACCOUNT, None, &|k| Ok(k.sealed_secret.clone()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let user = &dir.users["user00042"];
    let key = &user.access_keys[0];
    let creds = Credentials::new(key.id.clone(), key.sealed_secret.clone());
    let body = br#"{"LookupAttributes":[{"AttributeKey":"Username","AttributeValue":"alice"}],"MaxResults":50}"#;
    let url = "http://127.0.0.1:7433/";
    let now = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let now_ms = 1_795_000_000_000i64;
    let base = [
        ("host", "127.0.0.1:7433"),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", TARGET),
    ];
    let added = sign_headers(
        &creds,
        "us-east-1",
        "cloudtrail",
        "POST",
        url,
        &base,
        body,
        now,
    )?;
    let mut owned: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    owned.extend(added);
    owned.push((
        "user-agent".to_owned(),
        "aws-cli/1.46 botocore/1.43".to_owned(),
    ));
    owned.push(("content-length".to_owned(), body.len().to_string()));
    let headers: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = Request {
        method: "POST",
        path: "/",
        query: None,
        headers: &headers,
        body,
    };
    let verifier = Verifier::new();
    let principal = snapshot.principal(&key.id).context("principal")?;
    let context = || {
        Context::new("cloudtrail:LookupEvents", "*")
            .with("aws:SourceIp", "127.0.0.1")
            .with("aws:CurrentTime", "2026-11-18T10:13:20Z")
            .with("aws:EpochTime", "1795000000")
            .with("aws:SecureTransport", "false")
            .with("aws:PrincipalArn", principal.arn.clone())
            .with("aws:PrincipalAccount", ACCOUNT)
            .with("aws:PrincipalType", "User")
            .with("aws:userid", principal.principal_id.clone())
            .with("aws:RequestedRegion", "us-east-1")
            .with("aws:username", "user00042")
    };
    let iters = 20_000;
    let results = [
        time_it("SigV4 verify (signing key cached)", iters, || {
            verifier
                .verify(&req, &["cloudtrail"], now_ms, &snapshot)
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?,
        time_it(
            "SigV4 verify (no cache: key derived each time)",
            iters,
            || {
                Verifier::new()
                    .verify(&req, &["cloudtrail"], now_ms, &snapshot)
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("{e}"))
            },
        )?,
        time_it(
            "policy evaluation (2 policies, 4 statements, conditions)",
            iters,
            || {
                let d = policy::evaluate(principal.policies.iter().map(AsRef::as_ref), &context());
                anyhow::ensure!(d == policy::Decision::Allow, "not allowed: {d:?}");
                Ok(())
            },
        )?,
        time_it("verify + authorize (what a request pays)", iters, || {
            let v = verifier
                .verify(&req, &["cloudtrail"], now_ms, &snapshot)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let p = snapshot.principal(&v.access_key_id).context("principal")?;
            let d = policy::evaluate(p.policies.iter().map(AsRef::as_ref), &context());
            anyhow::ensure!(d == policy::Decision::Allow, "not allowed");
            Ok(())
        })?,
        time_it(
            "peer: AWS SDK signer signing the same request",
            iters,
            || {
                sign_headers(
                    &creds,
                    "us-east-1",
                    "cloudtrail",
                    "POST",
                    url,
                    &base,
                    body,
                    now,
                )
                .map(|_| ())
                .map_err(Into::into)
            },
        )?,
        time_it("peer: SHA-256 of the body alone", iters, || {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body);
            anyhow::ensure!(!d.as_ref().is_empty(), "digest");
            Ok(())
        })?,
    ];
    println!("{users} users in the directory, {}-byte body\n", body.len());
    println!("| step | µs per request |");
    println!("|---|---|");
    for r in &results {
        println!("| {} | {:.2} |", r.label, r.per_op.as_secs_f64() * 1e6);
    }
    let total = results[3].per_op.as_secs_f64();
    let sdk = results[4].per_op.as_secs_f64();
    println!(
        "\nverify + authorize costs {:.2}× what the SDK spends signing the request",
        total / sdk
    );
    Ok(())
}

struct Throughput {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn lookups(
    ot: &Arc<OpenTrail>,
    queries: &Arc<Vec<(String, String)>>,
    clients: usize,
) -> anyhow::Result<Throughput> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (ot, queries, next) = (Arc::clone(ot), Arc::clone(queries), Arc::clone(&next));
        handles.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<Duration>> {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((k, v)) = queries.get(i) else {
                        return Ok(lat);
                    };
                    let t = Instant::now();
                    ot.lookup(k, v)?;
                    lat.push(t.elapsed());
                }
            },
        ));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    let elapsed = started.elapsed();
    lat.sort_unstable();
    Ok(Throughput {
        rate: lat.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
    })
}

fn server(
    root: &Path,
    name: &str,
    auth: bool,
    seed: u64,
    stored: usize,
    now_s: i64,
) -> anyhow::Result<Arc<OpenTrail>> {
    let mut ot = OpenTrail::start_with(opentrail_server::Settings {
        data_dir: root.join(name),
        account_id: ACCOUNT.to_owned(),
        insecure_no_auth: !auth,
        ..opentrail_server::Settings::default()
    })?;
    let mut loaded = 0;
    while loaded < stored {
        let n = 50_000.min(stored - loaded);
        for (_, body) in make_batches(seed, loaded as u64, n, 1000, now_s) {
            ot.ingest(&body)?;
        }
        loaded += n;
    }
    while ot.lag()? > 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    if auth {
        // Look up as an IAM user, so every request also evaluates policies.
        ot.iam("CreateUser", &json!({"UserName": "bench-reader"}))?;
        ot.iam(
            "AttachUserPolicy",
            &json!({"UserName": "bench-reader", "PolicyName": "OpenTrailReadOnlyAccess"}),
        )?;
        let key = ot.iam("CreateAccessKey", &json!({"UserName": "bench-reader"}))?;
        ot.use_key(Credentials::new(
            key["AccessKey"]["AccessKeyId"].as_str().context("id")?,
            key["AccessKey"]["SecretAccessKey"]
                .as_str()
                .context("secret")?,
        ));
    }
    Ok(Arc::new(ot))
}

pub fn run(seed: u64, stored: usize, count: usize, root: &Path, now_s: i64) -> anyhow::Result<()> {
    micro()?;
    println!(
        "\n## LookupEvents with access control on vs off ({stored} stored events, {count} lookups)\n"
    );
    let on = server(root, "auth-on", true, seed, stored, now_s)?;
    let off = server(root, "auth-off", false, seed, stored, now_s)?;
    let probe = events(seed, 0, count, now_s);
    let mut rng = Rng(seed ^ 0xA5A5);
    let queries: Arc<Vec<(String, String)>> = Arc::new(
        probe
            .iter()
            .map(|e| match rng.below(3) {
                0 => ("EventName".to_owned(), e.name.clone()),
                // AWS service principals have no user name.
                1 if !e.user.is_empty() => ("Username".to_owned(), e.user.clone()),
                _ => ("EventId".to_owned(), e.event_id.clone()),
            })
            .collect(),
    );
    println!(
        "| clients | auth on req/s | on p50 / p99 ms | auth off req/s | off p50 / p99 ms | on / off |"
    );
    println!("|---|---|---|---|---|---|");
    for clients in [1, 8] {
        // Alternate to spread any drift of the machine over both.
        let a = lookups(&on, &queries, clients)?;
        let b = lookups(&off, &queries, clients)?;
        println!(
            "| {clients} | {:.0} | {:.2} / {:.2} | {:.0} | {:.2} / {:.2} | {:.3} |",
            a.rate,
            ms(a.p50),
            ms(a.p99),
            b.rate,
            ms(b.p50),
            ms(b.p99),
            a.rate / b.rate
        );
    }
    for s in [on, off] {
        Arc::try_unwrap(s)
            .map_err(|_| anyhow::anyhow!("server still shared"))?
            .stop()?;
    }
    Ok(())
}

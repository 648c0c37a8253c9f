//! Helpers for tests that run the real `opentrail` binary.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCOUNT: &str = "111122223333";
/// The root key the test servers are started with.
pub const ROOT_ID: &str = "AKIAOPENTRAILTESTROOT";
pub const ROOT_SECRET: &str = "test/root/secret/0123456789abcdefghijklmnopqrstu";

/// Signed headers for a request with the root key (region us-east-1).
pub fn signed(
    service: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<(String, String)> {
    opentrail_auth::client::sign_now(
        &opentrail_auth::client::Credentials::new(ROOT_ID, ROOT_SECRET),
        "us-east-1",
        service,
        method,
        url,
        headers,
        body,
    )
    .expect("sign")
}

/// POST with the root key's signature.
pub fn post(
    agent: &ureq::Agent,
    service: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut req = agent.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    for (k, v) in signed(service, "POST", url, headers, body) {
        req = req.header(k, v);
    }
    req.send(body)
}

/// GET with the root key's signature.
pub fn get(
    agent: &ureq::Agent,
    service: &str,
    url: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut req = agent.get(url);
    for (k, v) in signed(service, "GET", url, &[], b"") {
        req = req.header(k, v);
    }
    req.call()
}
pub const TARGET: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents";

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(data_dir: &Path, port: u16) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_opentrail"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("OPENTRAIL_ACCOUNT_ID", ACCOUNT)
            .env("OPENTRAIL_ROOT_ACCESS_KEY_ID", ROOT_ID)
            .env("OPENTRAIL_ROOT_SECRET_ACCESS_KEY", ROOT_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn opentrail");
        let url = format!("http://127.0.0.1:{port}");
        let server = Server { child, url };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let agent = agent();
        while Instant::now() < deadline {
            if let Ok(r) = agent.get(&format!("{}/health", self.url)).call()
                && r.status() == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not become healthy");
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// Waits until event history has applied everything in the log.
    pub fn wait_index_caught_up(&self) {
        let agent = agent();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let text = get(&agent, "opentrail", &format!("{}/metrics", self.url))
                .expect("metrics")
                .body_mut()
                .read_to_string()
                .expect("text");
            if text.lines().any(|l| l == "opentrail_index_lag 0") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("index did not catch up");
    }

    /// Every event id found by LookupEvents for `attrs` (paged to the end).
    pub fn lookup_all(&self, attrs: serde_json::Value) -> Vec<String> {
        let agent = agent();
        let mut token: Option<String> = None;
        let mut out = Vec::new();
        loop {
            let mut body = serde_json::json!({"LookupAttributes": attrs, "MaxResults": 50});
            if let Some(t) = &token {
                body["NextToken"] = serde_json::Value::String(t.clone());
            }
            let mut resp = post(
                &agent,
                "cloudtrail",
                &format!("{}/", self.url),
                &[
                    ("x-amz-target", TARGET),
                    ("content-type", "application/x-amz-json-1.1"),
                ],
                body.to_string().as_bytes(),
            )
            .expect("lookup");
            assert_eq!(resp.status(), 200);
            let v: serde_json::Value =
                serde_json::from_str(&resp.body_mut().read_to_string().expect("body"))
                    .expect("json");
            for e in v["Events"].as_array().expect("events") {
                out.push(e["EventId"].as_str().expect("id").to_owned());
            }
            match v.get("NextToken").and_then(|t| t.as_str()) {
                Some(t) => token = Some(t.to_owned()),
                None => return out,
            }
        }
    }

    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
    }
}

/// A tiny deterministic generator (xorshift64*), so a failing run can be replayed by its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn record(event_id: &str, source: &str, time: &str) -> serde_json::Value {
    serde_json::json!({
        "eventVersion": "1.11",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDACRASH", "arn": format!("arn:aws:iam::{ACCOUNT}:user/crash"), "accountId": ACCOUNT, "userName": "crash"},
        "eventTime": time,
        "eventSource": source,
        "eventName": "PutThing",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7",
        "requestParameters": {"payload": "x".repeat(600)},
        "responseElements": null,
        "eventID": event_id,
        "readOnly": false
    })
}

//! SigV4 verification against AWS's published test suite (shipped inside the `aws-sigv4` crate,
//! found through `cargo metadata`), against the AWS SDK's signer on generated requests, and on
//! every way a request can be wrong.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;
use crate::client::{Credentials, presign_url, sign_headers};

struct Keys(Vec<(String, String)>);

impl SecretSource for Keys {
    fn secret(&self, id: &str) -> Option<Secret> {
        self.0.iter().find(|(k, _)| k == id).map(|(_, s)| Secret {
            secret: Arc::from(s.as_str()),
            version: 1,
        })
    }
}

/// The directory of AWS's SigV4 test suite inside the `aws-sigv4` package (a dev-dependency,
/// so cargo has unpacked it in its registry): the version from `Cargo.lock`, the package under
/// `$CARGO_HOME/registry/src/*/`.
fn suite_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"aws-sigv4\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("aws-sigv4 in Cargo.lock");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = home.join("registry/src");
    for index in std::fs::read_dir(&registry).expect("registry/src") {
        let dir = index
            .expect("entry")
            .path()
            .join(format!("aws-sigv4-{version}/aws-signing-test-suite/v4"));
        if dir.is_dir() {
            return dir;
        }
    }
    panic!(
        "aws-sigv4-{version} not unpacked under {}",
        registry.display()
    );
}

/// A raw HTTP request of the suite: method, path, query, headers, body.
struct RawRequest {
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_raw(text: &str) -> RawRequest {
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h, b.as_bytes().to_vec()),
        None => (text, Vec::new()),
    };
    let mut lines = head.lines();
    let first = lines.next().expect("request line");
    let (method, rest) = first.split_once(' ').expect("method");
    let target = rest.strip_suffix(" HTTP/1.1").expect("HTTP/1.1");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            let last = headers.last_mut().expect("continued header");
            last.1.push(' ');
            last.1.push_str(line.trim());
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.to_owned(), v.to_owned()));
        }
    }
    RawRequest {
        method: method.to_owned(),
        path,
        query,
        headers,
        body,
    }
}

fn ms(iso: &str) -> i64 {
    iso.parse::<jiff::Timestamp>()
        .expect("time")
        .as_millisecond()
}

fn with_request<T>(raw: &RawRequest, f: impl FnOnce(&Request<'_>) -> T) -> T {
    let headers: Vec<(&str, &str)> = raw
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let req = Request {
        method: &raw.method,
        path: &raw.path,
        query: raw.query.as_deref(),
        headers: &headers,
        body: &raw.body,
    };
    f(&req)
}

#[test]
fn aws_test_suite_vectors_verify() {
    let dir = suite_dir();
    let mut checked = 0;
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("suite dir")
        .map(|e| e.expect("entry").path())
        .collect();
    cases.sort();
    for case in cases {
        let Ok(ctx_text) = std::fs::read_to_string(case.join("context.json")) else {
            continue;
        };
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        let ctx: serde_json::Value = serde_json::from_str(&ctx_text).expect("context");
        let id = ctx["credentials"]["access_key_id"].as_str().expect("id");
        let secret = ctx["credentials"]["secret_access_key"]
            .as_str()
            .expect("secret");
        let now = ms(ctx["timestamp"].as_str().expect("timestamp"));
        // Here the session token is added after signing (services that leave it out of the
        // signature); OpenTrail issues no temporary credentials, so there is nothing to check.
        if ctx["omit_session_token"] == true {
            continue;
        }
        let normalize = ctx["normalize"].as_bool().unwrap_or(true);
        let keys = Keys(vec![(id.to_owned(), secret.to_owned())]);
        for form in ["header", "query"] {
            let signed = std::fs::read_to_string(case.join(format!("{form}-signed-request.txt")))
                .expect("signed request");
            let expected_canonical =
                std::fs::read_to_string(case.join(format!("{form}-canonical-request.txt")))
                    .expect("canonical");
            let expected_sig = std::fs::read_to_string(case.join(format!("{form}-signature.txt")))
                .expect("signature");
            let raw = parse_raw(&signed);
            with_request(&raw, |req| {
                let claimed = parse(req).unwrap_or_else(|e| panic!("{name}/{form}: {e}"));
                let payload = expected_canonical.lines().last().expect("hash").to_owned();
                let canonical = canonical_request(
                    req,
                    &claimed.signed_headers,
                    &payload,
                    form == "query",
                    normalize,
                )
                .expect("canonical");
                assert_eq!(
                    canonical, expected_canonical,
                    "{name}/{form} canonical request"
                );
                let scope = format!(
                    "{}/{}/{}/aws4_request",
                    claimed.date, claimed.region, claimed.service
                );
                let sts = string_to_sign(&claimed.amz_date, &scope, &canonical);
                let expected_sts =
                    std::fs::read_to_string(case.join(format!("{form}-string-to-sign.txt")))
                        .expect("sts");
                assert_eq!(sts, expected_sts, "{name}/{form} string to sign");
                let key = signing_key(secret, &claimed.date, &claimed.region, &claimed.service);
                let sig = hex(hmac::sign(&key, sts.as_bytes()).as_ref());
                assert_eq!(sig, expected_sig.trim(), "{name}/{form} signature");
                assert_eq!(
                    claimed.signature,
                    expected_sig.trim(),
                    "{name}/{form} claimed"
                );
                if normalize {
                    // The whole verifier accepts it, and refuses it with one bit changed.
                    let v = Verifier::new()
                        .verify(req, &["service"], now, &keys)
                        .unwrap_or_else(|e| panic!("{name}/{form}: {e}"));
                    assert_eq!(v.access_key_id, id);
                    assert_eq!(v.region, "us-east-1");
                    assert_eq!(v.presigned, form == "query");
                    let wrong = Keys(vec![(id.to_owned(), format!("{secret}x"))]);
                    assert_eq!(
                        Verifier::new().verify(req, &["service"], now, &wrong),
                        Err(AuthError::mismatch()),
                        "{name}/{form} with a wrong secret"
                    );
                }
            });
            checked += 1;
        }
    }
    assert!(
        checked >= 60,
        "only {checked} vectors found in {}",
        dir.display()
    );
}

const ID: &str = "AKIAOPENTRAILTEST01";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY";
const NOW_S: u64 = 1_795_000_000;

fn keys() -> Keys {
    Keys(vec![(ID.to_owned(), SECRET.to_owned())])
}

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_S)
}

fn now_ms() -> i64 {
    i64::try_from(NOW_S).expect("fits") * 1000
}

/// A CloudTrail call signed by the AWS SDK's signer; returns its headers.
fn sdk_signed(
    path_query: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    at: SystemTime,
) -> Vec<(String, String)> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("host", "localhost:7433"),
        ("content-type", "application/x-amz-json-1.1"),
        (
            "x-amz-target",
            "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents",
        ),
    ];
    headers.extend_from_slice(extra);
    let url = format!("http://localhost:7433{path_query}");
    let added = sign_headers(
        &Credentials::new(ID, SECRET),
        "eu-west-1",
        "cloudtrail",
        "POST",
        &url,
        &headers,
        body,
        at,
    )
    .expect("sign");
    let mut all: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    all.extend(added);
    all
}

fn verify_with(
    path: &str,
    query: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
    at_ms: i64,
) -> Result<Verified, AuthError> {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    Verifier::new().verify(
        &Request {
            method: "POST",
            path,
            query,
            headers: &h,
            body,
        },
        &["cloudtrail"],
        at_ms,
        &keys(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Whatever the SDK signs (paths, queries, header values, bodies), the verifier accepts;
    /// and a changed body is refused.
    #[test]
    fn sdk_signed_requests_verify(
        segs in proptest::collection::vec("[a-zA-Z0-9._~ -]{0,8}", 0..4),
        params in proptest::collection::vec(("[a-zA-Z0-9_.-]{1,6}", "[a-zA-Z0-9 /+=_.-]{0,8}"), 0..4),
        header in "[ -~]{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut path = String::new();
        for s in &segs {
            path.push('/');
            uri_encode(s.as_bytes(), false, &mut path);
        }
        if path.is_empty() { path.push('/'); }
        let mut query = String::new();
        for (i, (k, v)) in params.iter().enumerate() {
            if i > 0 { query.push('&'); }
            uri_encode(k.as_bytes(), false, &mut query);
            query.push('=');
            uri_encode(v.as_bytes(), false, &mut query);
        }
        let q = (!query.is_empty()).then_some(query.as_str());
        let pq = match q { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let h = sdk_signed(&pq, &body, &[("x-custom", header.as_str())], now());
        let v = verify_with(&path, q, &h, &body, now_ms());
        prop_assert!(v.is_ok(), "{:?} for path {:?} query {:?}", v, path, q);
        let mut changed = body.clone();
        changed.push(b'x');
        prop_assert_eq!(verify_with(&path, q, &h, &changed, now_ms()), Err(AuthError::mismatch()));
    }
}

#[test]
fn refusals_say_what_is_wrong() {
    let body = br#"{"MaxResults":5}"#;
    let h = sdk_signed("/", body, &[], now());
    assert!(verify_with("/", None, &h, body, now_ms()).is_ok());

    // No signature at all.
    let bare = vec![("host".to_owned(), "localhost".to_owned())];
    assert_eq!(
        verify_with("/", None, &bare, body, now_ms()),
        Err(AuthError::Missing)
    );
    // Unknown key.
    let other = Keys(vec![]);
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let req = Request {
        method: "POST",
        path: "/",
        query: None,
        headers: &hs,
        body,
    };
    assert_eq!(
        Verifier::new().verify(&req, &["cloudtrail"], now_ms(), &other),
        Err(AuthError::InvalidClientTokenId)
    );
    // Wrong service in the scope.
    let e = Verifier::new()
        .verify(&req, &["opentrail"], now_ms(), &keys())
        .expect_err("service");
    assert!(e.to_string().contains("'opentrail'"), "{e}");
    // A header that was signed is changed.
    let mut tampered = h.clone();
    for (k, v) in &mut tampered {
        if k == "x-amz-target" {
            v.push('X');
        }
    }
    assert_eq!(
        verify_with("/", None, &tampered, body, now_ms()),
        Err(AuthError::mismatch())
    );
    // A header that is not signed may change.
    let mut extra = h.clone();
    extra.push(("user-agent".to_owned(), "anything".to_owned()));
    assert!(verify_with("/", None, &extra, body, now_ms()).is_ok());
    // Clock skew: 15 minutes either way is fine, 16 is not.
    let min = 60_000;
    assert!(verify_with("/", None, &h, body, now_ms() + 15 * min).is_ok());
    assert!(verify_with("/", None, &h, body, now_ms() - 15 * min).is_ok());
    let late = verify_with("/", None, &h, body, now_ms() + 16 * min).expect_err("expired");
    assert_eq!(late.code(), "SignatureDoesNotMatch");
    assert!(late.to_string().starts_with("Signature expired"), "{late}");
    let early = verify_with("/", None, &h, body, now_ms() - 16 * min).expect_err("future");
    assert!(
        early.to_string().starts_with("Signature not yet current"),
        "{early}"
    );
    // A wrong payload hash header.
    let mut sha = h.clone();
    sha.push(("x-amz-content-sha256".to_owned(), "0".repeat(64)));
    let e = verify_with("/", None, &sha, body, now_ms()).expect_err("sha");
    assert!(e.to_string().contains("x-amz-content-sha256"), "{e}");
    // Missing pieces of the Authorization header.
    let cut: Vec<(String, String)> = h
        .iter()
        .map(|(k, v)| {
            if k == "authorization" {
                (
                    k.clone(),
                    v.split(", Signature=")
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                )
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let e = verify_with("/", None, &cut, body, now_ms()).expect_err("incomplete");
    assert_eq!(e.code(), "IncompleteSignature");
    assert_eq!(e.status(), 400);
    assert!(e.to_string().contains("'Signature' parameter"), "{e}");
    // Host not signed.
    let nohost: Vec<(String, String)> = h
        .iter()
        .map(|(k, v)| {
            if k == "authorization" {
                (
                    k.clone(),
                    v.replace(
                        "SignedHeaders=content-type;host;",
                        "SignedHeaders=content-type;",
                    ),
                )
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let e = verify_with("/", None, &nohost, body, now_ms()).expect_err("host");
    assert!(e.to_string().contains("'Host'"), "{e}");
}

#[test]
fn presigned_urls_verify_until_they_expire() {
    let url = presign_url(
        &Credentials::new(ID, SECRET),
        "us-west-2",
        "cloudtrail",
        "GET",
        "http://localhost:7433/health/x?a=1",
        Duration::from_secs(300),
        now(),
    )
    .expect("presign");
    let rest = url.strip_prefix("http://localhost:7433").expect("prefix");
    let (path, query) = rest.split_once('?').expect("query");
    let headers = [("host", "localhost:7433")];
    let req = Request {
        method: "GET",
        path,
        query: Some(query),
        headers: &headers,
        body: b"",
    };
    let v = Verifier::new()
        .verify(&req, &["cloudtrail"], now_ms() + 299_000, &keys())
        .expect("valid");
    assert!(v.presigned);
    assert_eq!(v.region, "us-west-2");
    let e = Verifier::new()
        .verify(&req, &["cloudtrail"], now_ms() + 301_000, &keys())
        .expect_err("expired");
    assert!(e.to_string().starts_with("Request has expired"), "{e}");
    let tampered = query.replace("a=1", "a=2");
    let req2 = Request {
        query: Some(&tampered),
        ..req
    };
    assert_eq!(
        Verifier::new().verify(&req2, &["cloudtrail"], now_ms(), &keys()),
        Err(AuthError::mismatch())
    );
}

#[test]
fn signing_keys_are_cached_per_secret_version() {
    let body = b"{}";
    let h = sdk_signed("/", body, &[], now());
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let req = Request {
        method: "POST",
        path: "/",
        query: None,
        headers: &hs,
        body,
    };
    let v = Verifier::new();
    assert!(v.verify(&req, &["cloudtrail"], now_ms(), &keys()).is_ok());
    assert_eq!(v.cache.lock().expect("lock").len(), 1);
    // Same id, another secret (a new version): the cached key must not be used.
    struct Changed;
    impl SecretSource for Changed {
        fn secret(&self, _: &str) -> Option<Secret> {
            Some(Secret {
                secret: Arc::from("another secret entirely"),
                version: 2,
            })
        }
    }
    assert_eq!(
        v.verify(&req, &["cloudtrail"], now_ms(), &Changed),
        Err(AuthError::mismatch())
    );
    assert!(v.verify(&req, &["cloudtrail"], now_ms(), &keys()).is_ok());
}

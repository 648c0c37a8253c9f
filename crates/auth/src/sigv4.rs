//! AWS Signature Version 4 verification, for the header form (`Authorization: AWS4-HMAC-SHA256
//! ...`) and the presigned-query form (`X-Amz-Signature=...`).
//!
//! The server recomputes the signature over exactly what the client says it signed (the
//! `SignedHeaders` list, the query without `X-Amz-Signature`, the body's SHA-256) and compares
//! the two in constant time. Time checks (a 15-minute skew window, presigned expiry) and the
//! credential scope (date, service, terminator) are enforced here; whether the access key exists
//! and is active is the caller's [`SecretSource`].
//!
//! Derived signing keys (`AWS4` + secret → date → region → service → `aws4_request`) are cached
//! per access key and scope, so a steady client costs two SHA-256s and one HMAC per request.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use aws_lc_rs::{constant_time, digest, hmac};

/// The only algorithm SigV4 defines.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// Allowed difference between the request's time and the server's clock (AWS uses 15 minutes).
pub const MAX_SKEW_MS: i64 = 15 * 60 * 1000;
/// Longest validity a presigned request may ask for (7 days, as AWS allows).
pub const MAX_PRESIGN_EXPIRES_S: i64 = 7 * 24 * 3600;
/// Signing keys kept before the cache is emptied and starts over.
const CACHE_CAPACITY: usize = 4096;
/// Upper bound on the number of headers a request may claim to have signed.
const MAX_SIGNED_HEADERS: usize = 64;

/// The parts of an HTTP request that SigV4 covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path exactly as it appeared on the request line (still percent-encoded).
    pub path: &'a str,
    /// The query string without the leading `?`, if any.
    pub query: Option<&'a str>,
    /// Header names (any case) and values, in the order received; a name may repeat.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// Why a request's signature was not accepted. Each maps to the AWS error a client expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header and no presigned query.
    #[error("Missing Authentication Token")]
    Missing,
    /// The signature is malformed or incomplete (`IncompleteSignature`).
    #[error("{0}")]
    Incomplete(String),
    /// The access key is unknown or inactive (`InvalidClientTokenId`).
    #[error("The security token included in the request is invalid.")]
    InvalidClientTokenId,
    /// The signature does not match, or it has expired (`SignatureDoesNotMatch`).
    #[error("{0}")]
    SignatureDoesNotMatch(String),
}

impl AuthError {
    /// The error code clients see (`__type`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignature",
            AuthError::InvalidClientTokenId => "InvalidClientTokenId",
            AuthError::SignatureDoesNotMatch(_) => "SignatureDoesNotMatch",
        }
    }

    /// The HTTP status AWS answers with.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Incomplete(_) => 400,
            _ => 403,
        }
    }

    fn mismatch() -> Self {
        AuthError::SignatureDoesNotMatch(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
                .to_owned(),
        )
    }
}

/// A secret access key as the directory hands it out. `version` changes whenever the secret
/// behind an access key id could have changed, so cached signing keys are not reused across it.
#[derive(Clone)]
pub struct Secret {
    pub secret: Arc<str>,
    pub version: u64,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Where the verifier finds the secret of an access key id. `None` means unknown or inactive.
pub trait SecretSource {
    fn secret(&self, access_key_id: &str) -> Option<Secret>;
}

/// What a verified signature tells about the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    /// The credential scope's region: the region the request is addressed to.
    pub region: String,
    pub service: String,
    pub presigned: bool,
}

/// The signature a request carries, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// Presigned only: seconds the signature stays valid.
    pub expires_s: Option<i64>,
}

/// The access key id a request claims, if its signature can be parsed far enough to say. Used
/// to record who an unauthenticated call claimed to be.
pub fn claimed_access_key(req: &Request<'_>) -> Option<String> {
    parse(req).ok().map(|c| c.access_key_id)
}

/// Parses the signature of a request (header or presigned form) without checking it.
pub fn parse(req: &Request<'_>) -> Result<Claimed, AuthError> {
    let auth = header_values(req.headers, "authorization");
    let query_sig = req.query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("X-Amz-Signature"))
    });
    match (auth.first(), query_sig) {
        (Some(_), true) => Err(AuthError::Incomplete(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter or the \
             Authorization header should be given"
                .to_owned(),
        )),
        (Some(h), false) => {
            if auth.len() > 1 {
                return Err(AuthError::Incomplete(
                    "more than one Authorization header".to_owned(),
                ));
            }
            parse_header(h, req.headers)
        }
        (None, true) => parse_query(req.query.unwrap_or_default()),
        (None, false) => Err(AuthError::Missing),
    }
}

fn parse_header(value: &str, headers: &[(&str, &str)]) -> Result<Claimed, AuthError> {
    let value = value.trim();
    let Some(rest) = value.strip_prefix(ALGORITHM) else {
        let alg = value.split_whitespace().next().unwrap_or_default();
        return Err(AuthError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'",
            truncate(alg, 64)
        )));
    };
    if !rest.starts_with(' ') {
        return Err(AuthError::Incomplete(format!(
            "Authorization header must start with '{ALGORITHM} '"
        )));
    }
    let (mut credential, mut signed, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(AuthError::Incomplete(format!(
                "Authorization header has a malformed component '{}' (expected key=value)",
                truncate(part, 64)
            )));
        };
        match k.trim() {
            "Credential" => credential = Some(v.trim()),
            "SignedHeaders" => signed = Some(v.trim()),
            "Signature" => signature = Some(v.trim()),
            _ => {}
        }
    }
    let mut missing = Vec::new();
    if credential.is_none() {
        missing.push("Authorization header requires 'Credential' parameter.");
    }
    if signed.is_none() {
        missing.push("Authorization header requires 'SignedHeaders' parameter.");
    }
    if signature.is_none() {
        missing.push("Authorization header requires 'Signature' parameter.");
    }
    let amz_date = header_values(headers, "x-amz-date").first().copied();
    if amz_date.is_none() {
        missing.push(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        );
    }
    if !missing.is_empty() {
        return Err(AuthError::Incomplete(format!(
            "{} Authorization={}",
            missing.join(" "),
            truncate(value, 256)
        )));
    }
    let (access_key_id, date, region, service) = parse_scope(credential.unwrap_or_default())?;
    Ok(Claimed {
        access_key_id,
        date,
        region,
        service,
        amz_date: amz_date.unwrap_or_default().trim().to_owned(),
        signed_headers: parse_signed_headers(signed.unwrap_or_default())?,
        signature: signature.unwrap_or_default().to_owned(),
        expires_s: None,
    })
}

fn parse_query(query: &str) -> Result<Claimed, AuthError> {
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut missing = Vec::new();
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-SignedHeaders",
        "X-Amz-Date",
        "X-Amz-Expires",
    ] {
        if get(name).is_none() {
            missing.push(format!("'{name}'"));
        }
    }
    if !missing.is_empty() {
        return Err(AuthError::Incomplete(format!(
            "AWS query-string parameters must include {}. Re-examine the query-string parameters.",
            missing.join(", ")
        )));
    }
    let alg = get("X-Amz-Algorithm").unwrap_or_default();
    if alg != ALGORITHM {
        return Err(AuthError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{}'",
            truncate(alg, 64)
        )));
    }
    let expires = get("X-Amz-Expires").unwrap_or_default();
    let expires_s = expires
        .parse::<i64>()
        .ok()
        .filter(|e| (1..=MAX_PRESIGN_EXPIRES_S).contains(e))
        .ok_or_else(|| {
            AuthError::Incomplete(format!(
                "X-Amz-Expires must be a whole number of seconds from 1 to {MAX_PRESIGN_EXPIRES_S}, not '{}'",
                truncate(expires, 32)
            ))
        })?;
    let (access_key_id, date, region, service) =
        parse_scope(get("X-Amz-Credential").unwrap_or_default())?;
    Ok(Claimed {
        access_key_id,
        date,
        region,
        service,
        amz_date: get("X-Amz-Date").unwrap_or_default().to_owned(),
        signed_headers: parse_signed_headers(get("X-Amz-SignedHeaders").unwrap_or_default())?,
        signature: get("X-Amz-Signature").unwrap_or_default().to_owned(),
        expires_s: Some(expires_s),
    })
}

fn parse_scope(credential: &str) -> Result<(String, String, String, String), AuthError> {
    let parts: Vec<&str> = credential.split('/').collect();
    let bad = || {
        AuthError::Incomplete(format!(
            "Credential '{}' is not of the form <access key id>/<YYYYMMDD>/<region>/<service>/aws4_request",
            truncate(credential, 200)
        ))
    };
    let [key, date, region, service, terminator] = parts.as_slice() else {
        return Err(bad());
    };
    if key.is_empty()
        || key.len() > 128
        || !key.bytes().all(|b| b.is_ascii_alphanumeric())
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || region.is_empty()
        || service.is_empty()
    {
        return Err(bad());
    }
    if *terminator != "aws4_request" {
        return Err(AuthError::Incomplete(format!(
            "Credential should be scoped with a valid terminator: 'aws4_request', not '{}'.",
            truncate(terminator, 64)
        )));
    }
    Ok((
        (*key).to_owned(),
        (*date).to_owned(),
        (*region).to_owned(),
        (*service).to_owned(),
    ))
}

fn parse_signed_headers(list: &str) -> Result<Vec<String>, AuthError> {
    let names: Vec<String> = list.split(';').map(str::to_owned).collect();
    if names.iter().any(|n| n.is_empty()) || names.len() > MAX_SIGNED_HEADERS {
        return Err(AuthError::Incomplete(format!(
            "SignedHeaders '{}' is not a ';'-separated list of at most {MAX_SIGNED_HEADERS} header names",
            truncate(list, 200)
        )));
    }
    if names
        .iter()
        .any(|n| n.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(AuthError::Incomplete(
            "SignedHeaders must list lowercase header names".to_owned(),
        ));
    }
    if !names.iter().any(|n| n == "host") {
        return Err(AuthError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".to_owned(),
        ));
    }
    Ok(names)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn header_values<'a>(headers: &[(&'a str, &'a str)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v)
        .collect()
}

/// `YYYYMMDDTHHMMSSZ` → milliseconds since the epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    iso.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn format_amz_date(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.strftime("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// RFC 3986 unreserved characters pass; everything else is `%XX` (uppercase). `/` passes when
/// `keep_slash`.
pub(crate) fn uri_encode(input: &[u8], keep_slash: bool, out: &mut String) {
    for &b in input {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hi = char::from(bytes[i + 1]).to_digit(16);
            let lo = char::from(bytes[i + 2]).to_digit(16);
            if let (Some(h), Some(l)) = (hi, lo) {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// RFC 3986 §5.2.4 dot-segment removal plus collapsing of empty segments, as AWS normalizes the
/// paths of every service but S3.
fn normalize_path(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    out.push_str(&segments.join("/"));
    let last = path.rsplit('/').next().unwrap_or_default();
    if matches!(last, "" | "." | "..") && !segments.is_empty() {
        out.push('/');
    }
    out
}

fn canonical_query(query: Option<&str>, drop_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            if drop_signature && k == "X-Amz-Signature" {
                return None;
            }
            let mut ek = String::new();
            uri_encode(&percent_decode_bytes(k), false, &mut ek);
            let mut ev = String::new();
            uri_encode(&percent_decode_bytes(v), false, &mut ev);
            Some((ek, ev))
        })
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Trims a header value and folds each run of whitespace (also line folds) into one space.
fn canonical_header_value(v: &str, out: &mut String) {
    let mut first = true;
    for word in v.split_ascii_whitespace() {
        if !first {
            out.push(' ');
        }
        out.push_str(word);
        first = false;
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The canonical request of `req` for the headers in `signed` and the given payload hash.
/// `normalize` is true for every service but S3.
pub fn canonical_request(
    req: &Request<'_>,
    signed: &[String],
    payload_hash: &str,
    presigned: bool,
    normalize: bool,
) -> Result<String, AuthError> {
    let mut out = String::with_capacity(256 + req.path.len());
    out.push_str(req.method);
    out.push('\n');
    let path = if req.path.is_empty() { "/" } else { req.path };
    if normalize {
        uri_encode(normalize_path(path).as_bytes(), true, &mut out);
    } else {
        uri_encode(path.as_bytes(), true, &mut out);
    }
    out.push('\n');
    out.push_str(&canonical_query(req.query, presigned));
    out.push('\n');
    for name in signed {
        let values = header_values(req.headers, name);
        if values.is_empty() {
            return Err(AuthError::SignatureDoesNotMatch(format!(
                "The request signature we calculated does not match the signature you provided: \
                 the signed header '{}' is not in the request.",
                truncate(name, 64)
            )));
        }
        out.push_str(name);
        out.push(':');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            canonical_header_value(v, &mut out);
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// The string to sign for a canonical request.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    let hash = digest::digest(&digest::SHA256, canonical_request.as_bytes());
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex(hash.as_ref()))
}

/// The derived signing key for a secret and scope.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> hmac::Key {
    let mac = |key: &[u8], data: &str| {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
    };
    let k_date = mac(format!("AWS4{secret}").as_bytes(), date);
    let k_region = mac(k_date.as_ref(), region);
    let k_service = mac(k_region.as_ref(), service);
    let k_signing = mac(k_service.as_ref(), "aws4_request");
    hmac::Key::new(hmac::HMAC_SHA256, k_signing.as_ref())
}

#[derive(Hash, PartialEq, Eq)]
struct CacheKey {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
}

/// Verifies SigV4 signatures; holds the signing-key cache. Cheap to share.
#[derive(Default)]
pub struct Verifier {
    cache: Mutex<HashMap<CacheKey, (u64, hmac::Key)>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    fn key_for(&self, c: &Claimed, secret: &Secret) -> hmac::Key {
        let ck = CacheKey {
            access_key_id: c.access_key_id.clone(),
            date: c.date.clone(),
            region: c.region.clone(),
            service: c.service.clone(),
        };
        if let Ok(cache) = self.cache.lock()
            && let Some((version, key)) = cache.get(&ck)
            && *version == secret.version
        {
            return key.clone();
        }
        let key = signing_key(&secret.secret, &c.date, &c.region, &c.service);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(ck, (secret.version, key.clone()));
        }
        key
    }

    /// Checks the signature of `req` for one of `services` at `now_ms`.
    pub fn verify(
        &self,
        req: &Request<'_>,
        services: &[&str],
        now_ms: i64,
        secrets: &dyn SecretSource,
    ) -> Result<Verified, AuthError> {
        let claimed = parse(req)?;
        if !services.contains(&claimed.service.as_str()) {
            return Err(AuthError::SignatureDoesNotMatch(format!(
                "Credential should be scoped to correct service: '{}'.",
                services.first().copied().unwrap_or_default()
            )));
        }
        let Some(time_ms) = parse_amz_date(&claimed.amz_date) else {
            return Err(AuthError::Incomplete(format!(
                "X-Amz-Date '{}' is not a date of the form YYYYMMDD'T'HHMMSS'Z'",
                truncate(&claimed.amz_date, 32)
            )));
        };
        if claimed.amz_date[..8] != claimed.date {
            return Err(AuthError::SignatureDoesNotMatch(format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{}'.",
                claimed.date,
                &claimed.amz_date[..8],
                claimed.amz_date
            )));
        }
        match claimed.expires_s {
            None => {
                if time_ms < now_ms - MAX_SKEW_MS {
                    return Err(AuthError::SignatureDoesNotMatch(format!(
                        "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                        claimed.amz_date,
                        format_amz_date(now_ms - MAX_SKEW_MS),
                        format_amz_date(now_ms)
                    )));
                }
                if time_ms > now_ms + MAX_SKEW_MS {
                    return Err(AuthError::SignatureDoesNotMatch(format!(
                        "Signature not yet current: {} is still later than {} ({} + 15 min.)",
                        claimed.amz_date,
                        format_amz_date(now_ms + MAX_SKEW_MS),
                        format_amz_date(now_ms)
                    )));
                }
            }
            Some(expires_s) => {
                if time_ms > now_ms + MAX_SKEW_MS {
                    return Err(AuthError::SignatureDoesNotMatch(format!(
                        "Signature not yet current: {} is still later than {} ({} + 15 min.)",
                        claimed.amz_date,
                        format_amz_date(now_ms + MAX_SKEW_MS),
                        format_amz_date(now_ms)
                    )));
                }
                if now_ms > time_ms + expires_s * 1000 {
                    return Err(AuthError::SignatureDoesNotMatch(format!(
                        "Request has expired: signed at {} for {expires_s} seconds, now {}",
                        claimed.amz_date,
                        format_amz_date(now_ms)
                    )));
                }
            }
        }
        let body_hash = hex(digest::digest(&digest::SHA256, req.body).as_ref());
        let sent_hash = header_values(req.headers, "x-amz-content-sha256");
        let payload_hash = match sent_hash.first() {
            Some(&sent) => {
                let sent = sent.trim();
                if sent != "UNSIGNED-PAYLOAD" && !sent.eq_ignore_ascii_case(&body_hash) {
                    return Err(AuthError::SignatureDoesNotMatch(
                        "The provided 'x-amz-content-sha256' header does not match what was computed."
                            .to_owned(),
                    ));
                }
                sent.to_owned()
            }
            None => body_hash,
        };
        let Some(secret) = secrets.secret(&claimed.access_key_id) else {
            return Err(AuthError::InvalidClientTokenId);
        };
        let presigned = claimed.expires_s.is_some();
        let canonical =
            canonical_request(req, &claimed.signed_headers, &payload_hash, presigned, true)?;
        let scope = format!(
            "{}/{}/{}/aws4_request",
            claimed.date, claimed.region, claimed.service
        );
        let sts = string_to_sign(&claimed.amz_date, &scope, &canonical);
        let key = self.key_for(&claimed, &secret);
        let expected = hex(hmac::sign(&key, sts.as_bytes()).as_ref());
        if constant_time::verify_slices_are_equal(
            expected.as_bytes(),
            claimed.signature.to_ascii_lowercase().as_bytes(),
        )
        .is_err()
        {
            return Err(AuthError::mismatch());
        }
        Ok(Verified {
            access_key_id: claimed.access_key_id,
            region: claimed.region,
            service: claimed.service,
            presigned,
        })
    }
}

#[cfg(test)]
mod tests;

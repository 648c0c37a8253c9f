//! Signing requests for OpenTrail's own clients (the CLI, the bench, tests), with the AWS SDK's
//! SigV4 signer. The server verifies with its own code ([`crate::sigv4`]), so every signed call
//! our clients make also checks the two implementations against each other.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as SdkCredentials;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

/// A long-term access key.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> Self {
        Self {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
        }
    }

    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, when both are set.
    pub fn from_env() -> Option<Self> {
        let id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        (!id.is_empty() && !secret.is_empty()).then(|| Self::new(id, secret))
    }

    fn identity(&self) -> aws_smithy_runtime_api::client::identity::Identity {
        SdkCredentials::from_keys(&self.access_key_id, &self.secret_access_key, None).into()
    }
}

/// Signs with SigV4 for `region` and `service`. `url` is the whole request URL; `headers` are
/// the ones the request will carry besides those returned. Returns the headers to add
/// (`authorization`, `x-amz-date`).
#[allow(clippy::too_many_arguments)]
pub fn sign_headers(
    creds: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
) -> Result<Vec<(String, String)>, SignError> {
    signed(
        creds,
        region,
        service,
        method,
        url,
        headers,
        body,
        now,
        SigningSettings::default(),
    )
    .map(|(headers, _)| headers)
}

/// A presigned URL for `url`, valid for `expires`.
pub fn presign_url(
    creds: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    expires: Duration,
    now: SystemTime,
) -> Result<String, SignError> {
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    let (_, params) = signed(creds, region, service, method, url, &[], b"", now, settings)?;
    let mut out = url.to_owned();
    for (i, (k, v)) in params.iter().enumerate() {
        let sep = if i == 0 && !url.contains('?') {
            '?'
        } else {
            '&'
        };
        out.push(sep);
        out.push_str(k);
        out.push('=');
        let mut enc = String::new();
        crate::sigv4::uri_encode(v.as_bytes(), false, &mut enc);
        out.push_str(&enc);
    }
    Ok(out)
}

type Pairs = Vec<(String, String)>;

#[allow(clippy::too_many_arguments)]
fn signed(
    creds: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
    settings: SigningSettings,
) -> Result<(Pairs, Pairs), SignError> {
    let err = |e: &dyn std::fmt::Display| SignError::Signing(e.to_string());
    let identity = creds.identity();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| err(&e))?
        .into();
    let request = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| err(&e))?;
    let (instructions, _signature) = sign(request, &params).map_err(|e| err(&e))?.into_parts();
    let hdrs = instructions
        .headers()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let query = instructions
        .params()
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_string()))
        .collect();
    Ok((hdrs, query))
}

/// The `Host` header an HTTP client sends for `url` (`host[:port]`).
pub fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// Signs a request to `url` at the current time. `headers` are the ones the request carries
/// besides `Host` (added from the URL for signing; HTTP clients send it themselves). Returns
/// the headers to add: `x-amz-date` and `authorization`.
pub fn sign_now(
    creds: &Credentials,
    region: &str,
    service: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, SignError> {
    let host = host_of(url).ok_or_else(|| SignError::Signing(format!("no host in {url}")))?;
    let mut all: Vec<(&str, &str)> = vec![("host", host)];
    all.extend_from_slice(headers);
    sign_headers(
        creds,
        region,
        service,
        method,
        url,
        &all,
        body,
        SystemTime::now(),
    )
}

//! A signed JSON-API client for OpenTrail's server: credentials from `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`, requests signed with SigV4 for the call's service and region.

use anyhow::Context as _;
use clap::Args;
use opentrail_auth::client::{Credentials, sign_now};
use serde_json::Value;

/// The server answered a request with an error status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub status: u16,
    pub message: String,
}

pub struct ApiClient {
    agent: ureq::Agent,
    url: String,
    region: String,
    creds: Credentials,
}

impl ApiClient {
    /// A client for the server at `endpoint`, signing for `region`.
    pub fn new(agent: ureq::Agent, endpoint: &str, region: &str) -> anyhow::Result<Self> {
        let creds = Credentials::from_env().context(
            "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (the root key is in \
             <data-dir>/root-credentials.json unless the server was given one)",
        )?;
        let mut url = endpoint.trim_end_matches('/').to_owned();
        url.push('/');
        Ok(Self {
            agent,
            url,
            region: region.to_owned(),
            creds,
        })
    }

    /// `POST /` with `X-Amz-Target: <target>`, signed for `service`; the answer's JSON, or an
    /// error that names the exception and its message.
    pub fn call(&self, service: &str, target: &str, body: &Value) -> anyhow::Result<Value> {
        let op = target.rsplit('.').next().unwrap_or(target);
        let bytes = serde_json::to_vec(body)?;
        let headers = [
            ("x-amz-target", target),
            ("content-type", "application/x-amz-json-1.1"),
        ];
        let signed = sign_now(
            &self.creds,
            &self.region,
            service,
            "POST",
            &self.url,
            &headers,
            &bytes,
        )?;
        let mut req = self.agent.post(&self.url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        for (k, v) in &signed {
            req = req.header(k, v);
        }
        let mut resp = req
            .send(bytes.as_slice())
            .with_context(|| format!("calling {op} at {}", self.url))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string()?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{op}: the answer is not JSON: {text:.200}"))?;
        if !status.is_success() {
            let kind = v["__type"].as_str().unwrap_or("error");
            anyhow::bail!(
                "{op} failed ({}): {}",
                kind.rsplit('#').next().unwrap_or(kind),
                v["Message"]
                    .as_str()
                    .or(v["message"].as_str())
                    .unwrap_or(&text)
            );
        }
        Ok(v)
    }

    /// `GET <path and query>` signed for `service`, with `extra` headers (not signed), for a
    /// streamed answer: the response as it starts, or an error naming the exception.
    pub fn get_stream(
        &self,
        service: &str,
        path_and_query: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        let url = format!("{}{}", self.url, path_and_query.trim_start_matches('/'));
        let signed = sign_now(&self.creds, &self.region, service, "GET", &url, &[], b"")?;
        let mut req = self.agent.get(&url);
        for (k, v) in signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
        {
            req = req.header(k, v);
        }
        let mut resp = req.call().with_context(|| format!("connecting to {url}"))?;
        if !resp.status().is_success() {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let kind = v["__type"].as_str().unwrap_or("error");
            return Err(Refused {
                status: resp.status().as_u16(),
                message: format!(
                    "{} ({}): {}",
                    resp.status(),
                    kind.rsplit('#').next().unwrap_or(kind),
                    v["Message"].as_str().unwrap_or(&text)
                ),
            }
            .into());
        }
        Ok(resp)
    }
}

/// Where a signed command goes: `--endpoint-url` and `--region`, with the AWS CLI's
/// environment fallbacks.
#[derive(Args, Debug, Default)]
pub struct Connection {
    /// The OpenTrail server [default: $AWS_ENDPOINT_URL, else http://127.0.0.1:7433].
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// Region to sign for [default: $AWS_REGION, $AWS_DEFAULT_REGION, us-east-1].
    #[arg(long, global = true)]
    region: Option<String>,
}

impl Connection {
    /// A client signing with the credentials in the environment.
    pub fn client(&self) -> anyhow::Result<ApiClient> {
        self.client_with(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(std::time::Duration::from_secs(30)))
                .build()
                .into(),
        )
    }

    /// A client for answers that stream for as long as they like (only connecting is timed).
    pub fn streaming_client(&self) -> anyhow::Result<ApiClient> {
        self.client_with(
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_connect(Some(std::time::Duration::from_secs(10)))
                .build()
                .into(),
        )
    }

    fn client_with(&self, agent: ureq::Agent) -> anyhow::Result<ApiClient> {
        let endpoint = self
            .endpoint_url
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:7433".to_owned());
        let region = self
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        ApiClient::new(agent, &endpoint, &region)
    }
}

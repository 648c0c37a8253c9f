//! HTTP NDJSON batches: each batch is one `POST` of records, one per line, exactly as stored.
//! A 2xx answer acknowledges the batch; anything else (a redirect included) is a failure and the
//! batch is sent again after a backoff. Headers say what the batch holds, so a receiver can
//! deduplicate a batch repeated after a crash: `X-OpenTrail-Trail`, `X-OpenTrail-Log-Group`,
//! `X-OpenTrail-First-Seq`, `X-OpenTrail-Last-Seq` (log sequence numbers of its first and last
//! record).

use super::groups::HttpConfig;

/// An HTTP NDJSON receiver.
pub struct HttpSink {
    config: HttpConfig,
    client: reqwest::Client,
}

impl HttpSink {
    pub fn new(config: HttpConfig) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { config, client })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// POSTs one batch.
    pub async fn send(
        &self,
        trail_arn: &str,
        group_arn: &str,
        first_seq: u64,
        last_seq: u64,
        body: Vec<u8>,
    ) -> Result<(), String> {
        let mut req = self
            .client
            .post(&self.config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .header("X-OpenTrail-Trail", trail_arn)
            .header("X-OpenTrail-Log-Group", group_arn)
            .header("X-OpenTrail-First-Seq", first_seq.to_string())
            .header("X-OpenTrail-Last-Seq", last_seq.to_string());
        if let Some(a) = &self.config.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        } else if let Ok(url) = reqwest::Url::parse(&self.config.url)
            && !url.username().is_empty()
        {
            // Credentials in the URL become basic authentication.
            req = req.basic_auth(url.username(), url.password());
        }
        let resp = req
            .body(body)
            .send()
            .await
            .map_err(|e| format!("POST to the collector: {}", without_url(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let excerpt: String = text.chars().take(200).collect();
        Err(format!("the collector answered {status}: {excerpt}"))
    }
}

/// reqwest's errors name the URL, which may hold credentials.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "the collector URL");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

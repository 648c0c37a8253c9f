//! Reading trail files that were stored encrypted: the data key in an object's metadata is
//! unwrapped by the server's KMS `Decrypt`, signed with the caller's credentials (so only a
//! principal allowed `kms:Decrypt` on the trail's key can read them), then the object is
//! decrypted here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use opentrail_delivery::kms::envelope;
use serde_json::json;

use crate::client::ApiClient;

/// Where the key service is, and the clients made so far (one per region: a key answers in its
/// own region).
pub struct Decryptor {
    endpoint: String,
    clients: Mutex<HashMap<String, Arc<ApiClient>>>,
}

impl Decryptor {
    /// `endpoint`: the server [default: $AWS_ENDPOINT_URL, else http://127.0.0.1:7433].
    pub fn new(endpoint: Option<String>) -> Self {
        let endpoint = endpoint
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
            .unwrap_or_else(|| "http://127.0.0.1:7433".to_owned());
        Self {
            endpoint,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, region: &str) -> anyhow::Result<Arc<ApiClient>> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| anyhow::anyhow!("decryptor lock poisoned"))?;
        if let Some(c) = clients.get(region) {
            return Ok(Arc::clone(c));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        let c = Arc::new(ApiClient::new(agent, &self.endpoint, region)?);
        clients.insert(region.to_owned(), Arc::clone(&c));
        Ok(c)
    }

    /// The object's plain bytes: `body` as it is when the metadata names no envelope, else
    /// decrypted through the server (a blocking HTTP call).
    pub fn plain(
        &self,
        key: &str,
        body: &[u8],
        meta: &BTreeMap<String, String>,
    ) -> anyhow::Result<Vec<u8>> {
        let Some(sealed) = envelope::parse(meta).with_context(|| key.to_owned())? else {
            return Ok(body.to_vec());
        };
        let region = sealed
            .key_arn
            .as_deref()
            .and_then(|arn| arn.split(':').nth(3))
            .filter(|r| !r.is_empty())
            .with_context(|| format!("{key} is encrypted but its metadata names no key ARN"))?
            .to_owned();
        let answer = self
            .client(&region)?
            .call(
                "kms",
                "TrentService.Decrypt",
                &json!({
                    "CiphertextBlob": B64.encode(&sealed.wrapped),
                    "EncryptionContext": sealed.context,
                }),
            )
            .with_context(|| {
                format!(
                    "{key} is encrypted with {}; unwrapping its data key",
                    sealed.key_arn.as_deref().unwrap_or("a KMS key")
                )
            })?;
        let data_key = answer["Plaintext"]
            .as_str()
            .and_then(|p| B64.decode(p).ok())
            .with_context(|| format!("{key}: Decrypt answered without a plaintext"))?;
        envelope::open(&data_key, &sealed.nonce, body).with_context(|| format!("decrypting {key}"))
    }
}

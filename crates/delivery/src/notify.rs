//! Delivery notifications: CloudTrail's `{"s3Bucket": ..., "s3ObjectKey": [...]}` message in an
//! SNS-style envelope, POSTed to the HTTP(S) subscribers of the trail's topic, signed with the
//! topic's secret.
//!
//! Receivers verify `X-OpenTrail-Signature: sha256=<hex>`, the HMAC-SHA256 of the exact request
//! body under the topic's secret.

use std::collections::HashMap;
use std::time::Duration;

use aws_lc_rs::hmac;
use opentrail_catalog::Notification;
use serde::Serialize;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-OpenTrail-Signature";

/// A topic declared in the configuration, with its HTTP(S) subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub secret: String,
    pub endpoints: Vec<String>,
}

/// Topics by name.
#[derive(Debug, Clone, Default)]
pub struct Topics {
    by_name: HashMap<String, Topic>,
}

impl Topics {
    pub fn new(topics: impl IntoIterator<Item = Topic>) -> Self {
        Self {
            by_name: topics.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }

    /// Every topic.
    pub fn all(&self) -> impl Iterator<Item = &Topic> {
        self.by_name.values()
    }

    /// The topic an SNS topic ARN (or bare name) refers to.
    pub fn get(&self, arn_or_name: &str) -> Option<&Topic> {
        let name = arn_or_name.rsplit(':').next().unwrap_or(arn_or_name);
        self.by_name.get(name)
    }
}

#[derive(Serialize)]
struct CloudTrailMessage<'a> {
    #[serde(rename = "s3Bucket")]
    s3_bucket: &'a str,
    #[serde(rename = "s3ObjectKey")]
    s3_object_key: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Envelope<'a> {
    #[serde(rename = "Type")]
    kind: &'a str,
    message_id: &'a str,
    topic_arn: &'a str,
    subject: &'a str,
    message: &'a str,
    timestamp: &'a str,
}

/// SNS's notification envelope around `message` (what webhook subscribers receive), stamped
/// with `time_ms`.
pub fn envelope(
    message_id: &str,
    topic_arn: &str,
    subject: &str,
    message: &str,
    time_ms: i64,
) -> Result<String, serde_json::Error> {
    let timestamp = jiff::Timestamp::from_millisecond(time_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    serde_json::to_string(&Envelope {
        kind: "Notification",
        message_id,
        topic_arn,
        subject,
        message,
        timestamp: &timestamp,
    })
}

/// The notifications announcing `keys` in `bucket`: one per subscriber of the topic.
pub fn announce(
    topic: &Topic,
    topic_arn: &str,
    bucket: &str,
    keys: &[String],
    now_ms: i64,
) -> Result<Vec<Notification>, serde_json::Error> {
    let message = serde_json::to_string(&CloudTrailMessage {
        s3_bucket: bucket,
        s3_object_key: keys,
    })?;
    let message_id = uuid::Uuid::new_v4().to_string();
    let envelope = envelope(
        &message_id,
        topic_arn,
        "[AWS Notification Message]",
        &message,
        now_ms,
    )?;
    Ok(topic
        .endpoints
        .iter()
        .map(|e| Notification {
            topic_arn: topic_arn.to_owned(),
            endpoint: e.clone(),
            message: envelope.clone(),
        })
        .collect())
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    format!("sha256={}", crate::digest::hex(tag.as_ref()))
}

/// Posts notifications.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { client })
    }

    /// Posts one envelope; Ok when the subscriber answered 2xx.
    pub async fn post(&self, topic: &Topic, endpoint: &str, envelope: &str) -> Result<(), String> {
        let parsed: serde_json::Value = serde_json::from_str(envelope).unwrap_or_default();
        let member = |name: &str| {
            parsed
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        let resp = self
            .client
            .post(endpoint)
            .header("Content-Type", "text/plain; charset=UTF-8")
            .header("x-amz-sns-message-type", "Notification")
            .header("x-amz-sns-message-id", member("MessageId"))
            .header("x-amz-sns-topic-arn", member("TopicArn"))
            .header(
                SIGNATURE_HEADER,
                signature(&topic.secret, envelope.as_bytes()),
            )
            .body(envelope.to_owned())
            .send()
            .await
            .map_err(|e| format!("posting to {endpoint}: {e}"))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("{endpoint} answered {}", resp.status()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_carries_cloudtrails_message_and_signature_verifies() {
        let topic = Topic {
            name: "t".into(),
            secret: "s3cret".into(),
            endpoints: vec!["http://a/".into(), "http://b/".into()],
        };
        let arn = "arn:aws:sns:us-east-1:111122223333:t";
        let keys = vec!["AWSLogs/1/k1.json.gz".to_owned()];
        let n = announce(&topic, arn, "bucket", &keys, 1_438_395_037_123).expect("announce");
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[0].message, n[1].message,
            "one message, several subscribers"
        );
        let env: serde_json::Value = serde_json::from_str(&n[0].message).expect("json");
        assert_eq!(env["Type"], "Notification");
        assert_eq!(env["TopicArn"], arn);
        assert_eq!(env["Timestamp"], "2015-08-01T02:10:37.123Z");
        let msg: serde_json::Value =
            serde_json::from_str(env["Message"].as_str().expect("string")).expect("json");
        assert_eq!(
            msg,
            serde_json::json!({"s3Bucket": "bucket", "s3ObjectKey": ["AWSLogs/1/k1.json.gz"]})
        );
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(Topics::new([topic]).get(arn).is_some());
    }
}

//! The eight LookupEvents attributes and the other members event history needs, read from a
//! stored record without building the whole typed record.

use std::borrow::Cow;

use serde::Deserialize;

use crate::ingest::Category;
use crate::time::parse_event_time;

/// The lookup attribute keys, as CloudTrail spells them (case-sensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttributeKey {
    EventId,
    EventName,
    ReadOnly,
    Username,
    ResourceType,
    ResourceName,
    EventSource,
    AccessKeyId,
}

impl AttributeKey {
    pub const ALL: [AttributeKey; 8] = [
        Self::EventId,
        Self::EventName,
        Self::ReadOnly,
        Self::Username,
        Self::ResourceType,
        Self::ResourceName,
        Self::EventSource,
        Self::AccessKeyId,
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::EventId => "EventId",
            Self::EventName => "EventName",
            Self::ReadOnly => "ReadOnly",
            Self::Username => "Username",
            Self::ResourceType => "ResourceType",
            Self::ResourceName => "ResourceName",
            Self::EventSource => "EventSource",
            Self::AccessKeyId => "AccessKeyId",
        }
    }

    /// A stable one-byte code, used in index keys. Never renumber.
    pub fn code(self) -> u8 {
        match self {
            Self::EventId => 1,
            Self::EventName => 2,
            Self::ReadOnly => 3,
            Self::Username => 4,
            Self::ResourceType => 5,
            Self::ResourceName => 6,
            Self::EventSource => 7,
            Self::AccessKeyId => 8,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity<'a> {
    #[serde(default, borrow, rename = "type")]
    identity_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arn: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    access_key_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    user_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Res<'a> {
    #[serde(default, borrow, rename = "ARN")]
    arn: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "type")]
    resource_type: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Insight<'a> {
    #[serde(default, borrow)]
    event_source: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_name: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Slim<'a> {
    #[serde(default, borrow)]
    user_identity: Option<Identity<'a>>,
    #[serde(default, borrow)]
    event_time: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_source: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    aws_region: Option<Cow<'a, str>>,
    #[serde(default, borrow, rename = "eventID")]
    event_id: Option<Cow<'a, str>>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default, borrow)]
    resources: Option<Vec<Res<'a>>>,
    #[serde(default, borrow)]
    recipient_account_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    event_category: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    insight_details: Option<Insight<'a>>,
}

/// One `Resources` entry of a LookupEvents result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResource {
    pub resource_type: Option<String>,
    pub resource_name: Option<String>,
}

/// What event history knows of a stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupKeys {
    pub account: String,
    pub region: String,
    pub category: Category,
    pub time_ms: i64,
    pub event_id: String,
    pub event_name: Option<String>,
    pub event_source: Option<String>,
    pub read_only: Option<bool>,
    pub username: Option<String>,
    pub access_key_id: Option<String>,
    pub resources: Vec<LookupResource>,
}

/// Why a stored record could not be read for event history.
#[derive(Debug, thiserror::Error)]
pub enum LookupKeysError {
    #[error("stored record is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored record lacks {0}")]
    Missing(&'static str),
    #[error("stored record has a bad {0}")]
    Bad(&'static str),
}

/// The short name of a resource ARN: the part after the last `/`, or else after the last `:`.
pub fn short_resource_name(arn: &str) -> &str {
    match arn.rfind('/') {
        Some(i) => &arn[i + 1..],
        None => arn.rfind(':').map_or(arn, |i| &arn[i + 1..]),
    }
}

fn username(identity: &Identity<'_>) -> Option<String> {
    if let Some(name) = &identity.user_name {
        return Some(name.to_string());
    }
    match identity.identity_type.as_deref() {
        Some("Root") => Some("root".to_owned()),
        Some("AssumedRole" | "FederatedUser") => identity
            .arn
            .as_deref()
            .map(|a| short_resource_name(a).to_owned()),
        _ => None,
    }
}

impl LookupKeys {
    /// Reads the lookup members of a stored (validated, completed) record.
    pub fn from_json(json: &[u8]) -> Result<Self, LookupKeysError> {
        let slim: Slim<'_> = serde_json::from_slice(json)?;
        let category = slim
            .event_category
            .as_deref()
            .and_then(Category::parse)
            .ok_or(LookupKeysError::Bad("eventCategory"))?;
        let time = slim
            .event_time
            .ok_or(LookupKeysError::Missing("eventTime"))?;
        let time_ms = parse_event_time(&time).map_err(|_| LookupKeysError::Bad("eventTime"))?;
        let (event_source, event_name) = match (&slim.insight_details, category) {
            (Some(i), Category::Insight) => (
                i.event_source.as_deref().map(str::to_owned),
                i.event_name.as_deref().map(str::to_owned),
            ),
            _ => (
                slim.event_source.map(Cow::into_owned),
                slim.event_name.map(Cow::into_owned),
            ),
        };
        let identity = slim.user_identity.as_ref();
        let resources = slim
            .resources
            .unwrap_or_default()
            .into_iter()
            .map(|r| LookupResource {
                resource_type: r.resource_type.map(Cow::into_owned),
                resource_name: r.arn.map(Cow::into_owned),
            })
            .collect();
        Ok(Self {
            account: slim
                .recipient_account_id
                .ok_or(LookupKeysError::Missing("recipientAccountId"))?
                .into_owned(),
            region: slim
                .aws_region
                .ok_or(LookupKeysError::Missing("awsRegion"))?
                .into_owned(),
            category,
            time_ms,
            event_id: slim
                .event_id
                .ok_or(LookupKeysError::Missing("eventID"))?
                .into_owned(),
            event_name,
            event_source,
            read_only: slim.read_only,
            username: identity.and_then(username),
            access_key_id: identity
                .and_then(|i| i.access_key_id.as_deref())
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
            resources,
        })
    }

    /// Every (attribute, value) pair this record can be found by, without repeats.
    pub fn attribute_values(&self) -> Vec<(AttributeKey, String)> {
        let mut out: Vec<(AttributeKey, String)> = Vec::with_capacity(8 + 3 * self.resources.len());
        out.push((AttributeKey::EventId, self.event_id.clone()));
        let singles = [
            (AttributeKey::EventName, &self.event_name),
            (AttributeKey::EventSource, &self.event_source),
            (AttributeKey::Username, &self.username),
            (AttributeKey::AccessKeyId, &self.access_key_id),
        ];
        for (key, value) in singles {
            if let Some(v) = value {
                out.push((key, v.clone()));
            }
        }
        if let Some(ro) = self.read_only {
            out.push((AttributeKey::ReadOnly, ro.to_string()));
        }
        for r in &self.resources {
            if let Some(t) = &r.resource_type {
                out.push((AttributeKey::ResourceType, t.clone()));
            }
            if let Some(n) = &r.resource_name {
                out.push((AttributeKey::ResourceName, n.clone()));
                out.push((
                    AttributeKey::ResourceName,
                    short_resource_name(n).to_owned(),
                ));
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lookup_members() {
        let json = br#"{"eventVersion":"1.11","userIdentity":{"type":"AssumedRole","arn":"arn:aws:sts::111122223333:assumed-role/Admin/jane","accessKeyId":"ASIAX"},
          "eventTime":"2026-01-02T03:04:05Z","eventSource":"iam.amazonaws.com","eventName":"CreateUser","awsRegion":"us-east-1",
          "eventID":"e-1","readOnly":false,"resources":[{"ARN":"arn:aws:iam::111122223333:user/bob","type":"AWS::IAM::User"},{"ARN":"arn:aws:iam::111122223333:user/bob","type":"AWS::IAM::User"}],
          "recipientAccountId":"111122223333","eventCategory":"Management"}"#;
        let keys = LookupKeys::from_json(json).expect("keys");
        assert_eq!(keys.username.as_deref(), Some("jane"));
        assert_eq!(keys.access_key_id.as_deref(), Some("ASIAX"));
        let attrs = keys.attribute_values();
        assert!(attrs.contains(&(AttributeKey::ResourceName, "bob".into())));
        assert!(attrs.contains(&(
            AttributeKey::ResourceName,
            "arn:aws:iam::111122223333:user/bob".into()
        )));
        assert!(attrs.contains(&(AttributeKey::ReadOnly, "false".into())));
        assert_eq!(
            attrs
                .iter()
                .filter(|(k, _)| *k == AttributeKey::ResourceType)
                .count(),
            1
        );
    }

    #[test]
    fn usernames() {
        let root = br#"{"userIdentity":{"type":"Root"},"eventTime":"2026-01-02T03:04:05Z","awsRegion":"us-east-1","eventID":"x","recipientAccountId":"111122223333","eventCategory":"Management"}"#;
        assert_eq!(
            LookupKeys::from_json(root)
                .expect("keys")
                .username
                .as_deref(),
            Some("root")
        );
        assert_eq!(short_resource_name("arn:aws:s3:::my-bucket"), "my-bucket");
        assert_eq!(short_resource_name("i-123"), "i-123");
    }
}

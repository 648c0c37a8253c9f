//! The CloudTrail record (eventVersion 1.11) as typed Rust.
//!
//! Free-form members (`requestParameters`, `responseElements`, `additionalEventData`,
//! `serviceEventDetails`, `edgeDeviceDetails`) are kept as raw JSON so they round-trip byte for
//! byte. Members this version does not know are kept in `extra` (insertion order preserved) on
//! every object that CloudTrail may grow, so a record written by a newer producer survives
//! OpenTrail unchanged in meaning. A member that was sent as `null` stays `null`; an absent member
//! stays absent.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use serde_with::skip_serializing_none;

/// Current CloudTrail record format version.
pub const EVENT_VERSION: &str = "1.11";

/// Deserializes a present member as `Some`, even when it is JSON `null`; an absent member falls
/// back to `None` through the container's `#[serde(default)]`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// One CloudTrail record: a management, data, network-activity or Insights event.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub event_version: Option<String>,
    pub user_identity: Option<UserIdentity>,
    pub event_time: Option<String>,
    pub event_source: Option<String>,
    pub event_name: Option<String>,
    pub aws_region: Option<String>,
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: Option<String>,
    pub user_agent: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    #[serde(deserialize_with = "present")]
    pub request_parameters: Option<Box<RawValue>>,
    #[serde(deserialize_with = "present")]
    pub response_elements: Option<Box<RawValue>>,
    #[serde(deserialize_with = "present")]
    pub additional_event_data: Option<Box<RawValue>>,
    #[serde(rename = "requestID")]
    pub request_id: Option<String>,
    #[serde(rename = "eventID")]
    pub event_id: Option<String>,
    pub read_only: Option<bool>,
    pub resources: Option<Vec<Resource>>,
    pub event_type: Option<String>,
    pub api_version: Option<String>,
    pub management_event: Option<bool>,
    pub recipient_account_id: Option<String>,
    #[serde(deserialize_with = "present")]
    pub service_event_details: Option<Box<RawValue>>,
    #[serde(rename = "sharedEventID")]
    pub shared_event_id: Option<String>,
    pub vpc_endpoint_id: Option<String>,
    pub vpc_endpoint_account_id: Option<String>,
    pub event_category: Option<String>,
    pub addendum: Option<Addendum>,
    /// A string, `"true"`, as CloudTrail emits it (only present when true).
    pub session_credential_from_console: Option<String>,
    #[serde(deserialize_with = "present")]
    pub edge_device_details: Option<Box<RawValue>>,
    pub tls_details: Option<TlsDetails>,
    pub insight_details: Option<InsightDetails>,
    /// Members this version does not model, in the order they were sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `userIdentity`: who made the call.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    #[serde(rename = "type")]
    pub identity_type: Option<String>,
    pub principal_id: Option<String>,
    pub arn: Option<String>,
    pub account_id: Option<String>,
    pub access_key_id: Option<String>,
    pub user_name: Option<String>,
    pub invoked_by: Option<String>,
    pub identity_provider: Option<String>,
    pub session_context: Option<SessionContext>,
    #[serde(deserialize_with = "present")]
    pub on_behalf_of: Option<Box<RawValue>>,
    #[serde(deserialize_with = "present")]
    pub in_scope_of: Option<Box<RawValue>>,
    pub credential_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `userIdentity.sessionContext`, for temporary credentials.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    pub session_issuer: Option<SessionIssuer>,
    #[serde(deserialize_with = "present")]
    pub web_id_federation_data: Option<Box<RawValue>>,
    pub attributes: Option<SessionAttributes>,
    pub source_identity: Option<String>,
    pub ec2_role_delivery: Option<String>,
    pub assumed_root: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `sessionContext.sessionIssuer`. AWS emits `{}` for console sessions of IAM users, so every
/// member is optional.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct SessionIssuer {
    #[serde(rename = "type")]
    pub issuer_type: Option<String>,
    pub principal_id: Option<String>,
    pub arn: Option<String>,
    pub account_id: Option<String>,
    pub user_name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `sessionContext.attributes`; both members are strings (`"true"`/`"false"`, ISO-8601).
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct SessionAttributes {
    pub creation_date: Option<String>,
    pub mfa_authenticated: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `resources`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Resource {
    #[serde(rename = "ARN")]
    pub arn: Option<String>,
    #[serde(rename = "accountId")]
    pub account_id: Option<String>,
    #[serde(rename = "type")]
    pub resource_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `addendum`, for late or corrected events.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct Addendum {
    pub reason: Option<String>,
    pub updated_fields: Option<String>,
    #[serde(rename = "originalRequestID")]
    pub original_request_id: Option<String>,
    #[serde(rename = "originalEventID")]
    pub original_event_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `tlsDetails`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct TlsDetails {
    pub tls_version: Option<String>,
    pub cipher_suite: Option<String>,
    pub client_provided_host_header: Option<String>,
    pub key_exchange: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `insightDetails` of an Insights event.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct InsightDetails {
    pub state: Option<String>,
    pub event_source: Option<String>,
    pub event_name: Option<String>,
    pub insight_type: Option<String>,
    pub error_code: Option<String>,
    pub source_event_category: Option<String>,
    pub insight_source: Option<String>,
    pub insight_context: Option<InsightContext>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `insightDetails.insightContext`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct InsightContext {
    pub statistics: Option<InsightStatistics>,
    pub attributions: Option<Vec<Attribution>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `insightContext.statistics`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[serde(rename_all = "camelCase")]
pub struct InsightStatistics {
    pub baseline: Option<Average>,
    pub insight: Option<Average>,
    pub insight_duration: Option<Number>,
    pub baseline_duration: Option<Number>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{ "average": n }`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Average {
    pub average: Option<Number>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `insightContext.attributions`.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Attribution {
    pub attribute: Option<String>,
    pub insight: Option<Vec<AttributionValue>>,
    pub baseline: Option<Vec<AttributionValue>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{ "value": "...", "average": n }` inside an attribution.
#[skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AttributionValue {
    pub value: Option<String>,
    pub average: Option<Number>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Record {
    /// Serializes the record as compact JSON, the form stored in the log and in log files.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

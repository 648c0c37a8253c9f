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

/// Current CloudTrail record format version.
pub const EVENT_VERSION: &str = "1.11";

/// Deserializes a present member as `Some`, even when it is JSON `null`; an absent member falls
/// back to `None` through `#[serde(default)]`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// One CloudTrail record: a management, data, network-activity or Insights event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_identity: Option<UserIdentity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_region: Option<String>,
    #[serde(
        default,
        rename = "sourceIPAddress",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_parameters: Option<Box<RawValue>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_elements: Option<Box<RawValue>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub additional_event_data: Option<Box<RawValue>>,
    #[serde(default, rename = "requestID", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, rename = "eventID", skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Vec<Resource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_event: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_account_id: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_event_details: Option<Box<RawValue>>,
    #[serde(
        default,
        rename = "sharedEventID",
        skip_serializing_if = "Option::is_none"
    )]
    pub shared_event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_endpoint_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_endpoint_account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addendum: Option<Addendum>,
    /// A string, `"true"`, as CloudTrail emits it (only present when true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_credential_from_console: Option<String>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub edge_device_details: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_details: Option<TlsDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight_details: Option<InsightDetails>,
    /// Members this version does not model, in the order they were sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `userIdentity`: who made the call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub identity_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_context: Option<SessionContext>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub on_behalf_of: Option<Box<RawValue>>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub in_scope_of: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `userIdentity.sessionContext`, for temporary credentials.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_issuer: Option<SessionIssuer>,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub web_id_federation_data: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<SessionAttributes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2_role_delivery: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed_root: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `sessionContext.sessionIssuer`. AWS emits `{}` for console sessions of IAM users, so every
/// member is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionIssuer {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub issuer_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_name: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `sessionContext.attributes`; both members are strings (`"true"`/`"false"`, ISO-8601).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAttributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_authenticated: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `resources`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Resource {
    #[serde(default, rename = "ARN", skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    #[serde(default, rename = "accountId", skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `addendum`, for late or corrected events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Addendum {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_fields: Option<String>,
    #[serde(
        default,
        rename = "originalRequestID",
        skip_serializing_if = "Option::is_none"
    )]
    pub original_request_id: Option<String>,
    #[serde(
        default,
        rename = "originalEventID",
        skip_serializing_if = "Option::is_none"
    )]
    pub original_event_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `tlsDetails`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher_suite: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_provided_host_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_exchange: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `insightDetails` of an Insights event.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_event_category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight_context: Option<InsightContext>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `insightDetails.insightContext`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<InsightStatistics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributions: Option<Vec<Attribution>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `insightContext.statistics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsightStatistics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Average>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight: Option<Average>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight_duration: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_duration: Option<Number>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{ "average": n }`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Average {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average: Option<Number>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One entry of `insightContext.attributions`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Attribution {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribute: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight: Option<Vec<AttributionValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Vec<AttributionValue>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{ "value": "...", "average": n }` inside an attribution.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttributionValue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
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

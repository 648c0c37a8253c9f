//! Trail operations' request and response shapes (reference §2.2–2.10, §2.14, §2.15, §7).

use serde::{Deserialize, Serialize};

use crate::lookup::EpochMillis;

/// `{Key, Value?}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// CreateTrail input; UpdateTrail has the same members (all but `Name` optional, no tags).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrailSettings {
    pub name: String,
    #[serde(default)]
    pub s3_bucket_name: Option<String>,
    #[serde(default)]
    pub s3_key_prefix: Option<String>,
    #[serde(default)]
    pub sns_topic_name: Option<String>,
    #[serde(default)]
    pub include_global_service_events: Option<bool>,
    #[serde(default)]
    pub is_multi_region_trail: Option<bool>,
    #[serde(default)]
    pub enable_log_file_validation: Option<bool>,
    #[serde(default)]
    pub cloud_watch_logs_log_group_arn: Option<String>,
    #[serde(default)]
    pub cloud_watch_logs_role_arn: Option<String>,
    #[serde(default)]
    pub kms_key_id: Option<String>,
    #[serde(default)]
    pub is_organization_trail: Option<bool>,
    #[serde(default)]
    pub tags_list: Option<Vec<Tag>>,
}

/// `{Name}`: DeleteTrail, GetTrail, GetTrailStatus, StartLogging, StopLogging.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameRequest {
    pub name: String,
}

/// DescribeTrails input (lowerCamel members, as in the model).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeTrailsRequest {
    #[serde(default)]
    pub trail_name_list: Option<Vec<String>>,
    #[serde(default)]
    pub include_shadow_trails: Option<bool>,
}

/// ListTrails input.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTrailsRequest {
    #[serde(default)]
    pub next_token: Option<String>,
}

/// The `Trail` object. Members that are not configured are left out.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrailInfo {
    pub name: String,
    pub s3_bucket_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3_key_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sns_topic_name: Option<String>,
    #[serde(rename = "SnsTopicARN", skip_serializing_if = "Option::is_none")]
    pub sns_topic_arn: Option<String>,
    pub include_global_service_events: bool,
    pub is_multi_region_trail: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub home_region: Option<String>,
    #[serde(rename = "TrailARN")]
    pub trail_arn: String,
    pub log_file_validation_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_watch_logs_log_group_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_watch_logs_role_arn: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_custom_event_selectors: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub has_insight_selectors: Option<bool>,
    pub is_organization_trail: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeTrailsResponse {
    pub trail_list: Vec<TrailInfo>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetTrailResponse {
    pub trail: TrailInfo,
}

/// One entry of ListTrails.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrailSummary {
    #[serde(rename = "TrailARN")]
    pub trail_arn: String,
    pub name: String,
    pub home_region: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTrailsResponse {
    pub trails: Vec<TrailSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// GetTrailStatus output. Timestamps are epoch seconds; the deprecated members are ISO strings.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrailStatus {
    pub is_logging: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_logging_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_logging_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_logging_started: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_logging_stopped: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_delivery_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_notification_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_delivery_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_notification_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_delivery_attempt_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_notification_attempt_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_delivery_attempt_succeeded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_notification_attempt_succeeded: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_digest_delivery_time: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_digest_delivery_error: Option<String>,
    #[serde(
        rename = "LatestCloudWatchLogsDeliveryTime",
        skip_serializing_if = "Option::is_none"
    )]
    pub latest_cloud_watch_logs_delivery_time: Option<f64>,
    #[serde(
        rename = "LatestCloudWatchLogsDeliveryError",
        skip_serializing_if = "Option::is_none"
    )]
    pub latest_cloud_watch_logs_delivery_error: Option<String>,
}

/// AddTags / RemoveTags input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagsRequest {
    pub resource_id: String,
    #[serde(default)]
    pub tags_list: Vec<Tag>,
}

/// ListTags input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsRequest {
    pub resource_id_list: Vec<String>,
    #[serde(default)]
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceTag {
    pub resource_id: String,
    pub tags_list: Vec<Tag>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsResponse {
    pub resource_tag_list: Vec<ResourceTag>,
}

/// ListPublicKeys input.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListPublicKeysRequest {
    #[serde(default)]
    pub start_time: Option<EpochMillis>,
    #[serde(default)]
    pub end_time: Option<EpochMillis>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// A public key of the digest signing keys.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublicKey {
    /// Base64 of the DER PKCS#1 RSAPublicKey.
    pub value: String,
    pub validity_start_time: f64,
    pub validity_end_time: f64,
    pub fingerprint: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListPublicKeysResponse {
    pub public_key_list: Vec<PublicKey>,
}

/// PutEventSelectors input: basic or advanced selectors, not both.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutEventSelectorsRequest {
    pub trail_name: String,
    #[serde(default)]
    pub event_selectors: Option<Vec<opentrail_model::selectors::EventSelector>>,
    #[serde(default)]
    pub advanced_event_selectors: Option<Vec<opentrail_model::selectors::AdvancedEventSelector>>,
}

/// GetEventSelectors input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TrailNameRequest {
    #[serde(default)]
    pub trail_name: Option<String>,
    #[serde(default)]
    pub event_data_store: Option<String>,
}

/// Put/GetEventSelectors output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventSelectorsResponse {
    #[serde(rename = "TrailARN")]
    pub trail_arn: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_selectors: Option<Vec<opentrail_model::selectors::EventSelector>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advanced_event_selectors: Option<Vec<opentrail_model::selectors::AdvancedEventSelector>>,
}

/// `{InsightType?, EventCategories?}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InsightSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insight_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_categories: Option<Vec<String>>,
}

/// PutInsightSelectors input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutInsightSelectorsRequest {
    #[serde(default)]
    pub trail_name: Option<String>,
    #[serde(default)]
    pub event_data_store: Option<String>,
    #[serde(default)]
    pub insights_destination: Option<String>,
    pub insight_selectors: Vec<InsightSelector>,
}

/// Put/GetInsightSelectors output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InsightSelectorsResponse {
    #[serde(rename = "TrailARN")]
    pub trail_arn: String,
    pub insight_selectors: Vec<InsightSelector>,
}

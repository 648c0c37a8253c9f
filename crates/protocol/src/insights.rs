//! ListInsightsMetricData request and response shapes.

use serde::{Deserialize, Serialize};

use crate::lookup::EpochMillis;

/// ListInsightsMetricData input.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListInsightsMetricDataRequest {
    #[serde(default)]
    pub trail_name: Option<String>,
    #[serde(default)]
    pub event_source: Option<String>,
    #[serde(default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub insight_type: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub start_time: Option<EpochMillis>,
    #[serde(default)]
    pub end_time: Option<EpochMillis>,
    #[serde(default)]
    pub period: Option<i64>,
    #[serde(default)]
    pub data_type: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// ListInsightsMetricData output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListInsightsMetricDataResponse {
    #[serde(rename = "TrailARN", skip_serializing_if = "Option::is_none")]
    pub trail_arn: Option<String>,
    pub event_source: String,
    pub event_name: String,
    pub insight_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Epoch seconds of each period's start.
    pub timestamps: Vec<f64>,
    pub values: Vec<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

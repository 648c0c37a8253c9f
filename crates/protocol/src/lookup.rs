//! LookupEvents request and response shapes (reference §2.11).

use serde::{Deserialize, Deserializer, Serialize};

/// A timestamp member: epoch seconds (integer or fractional) on the wire; an ISO-8601 string is
/// tolerated. Held as milliseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochMillis(pub i64);

impl<'de> Deserialize<'de> for EpochMillis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Wire {
            Number(f64),
            Text(String),
        }
        match Wire::deserialize(d)? {
            Wire::Number(n) if n.is_finite() && n.abs() < 1e13 => {
                Ok(EpochMillis((n * 1000.0).round() as i64))
            }
            Wire::Number(n) => Err(serde::de::Error::custom(format!(
                "timestamp {n} is out of range"
            ))),
            Wire::Text(s) => match s.parse::<f64>() {
                Ok(n) if n.is_finite() && n.abs() < 1e13 => {
                    Ok(EpochMillis((n * 1000.0).round() as i64))
                }
                _ => s
                    .parse::<jiff::Timestamp>()
                    .map(|t| EpochMillis(t.as_millisecond()))
                    .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a timestamp"))),
            },
        }
    }
}

/// `{AttributeKey, AttributeValue}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LookupAttribute {
    pub attribute_key: String,
    pub attribute_value: String,
}

/// LookupEvents input.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LookupEventsRequest {
    #[serde(default)]
    pub lookup_attributes: Option<Vec<LookupAttribute>>,
    #[serde(default)]
    pub start_time: Option<EpochMillis>,
    #[serde(default)]
    pub end_time: Option<EpochMillis>,
    #[serde(default)]
    pub event_category: Option<String>,
    #[serde(default)]
    pub max_results: Option<i64>,
    #[serde(default)]
    pub next_token: Option<String>,
}

/// `{ResourceType, ResourceName}` of a result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Resource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
}

/// One result of LookupEvents.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// Epoch seconds.
    pub event_time: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    pub resources: Vec<Resource>,
    pub cloud_trail_event: String,
}

/// LookupEvents output.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct LookupEventsResponse {
    pub events: Vec<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_form() {
        let parse = |s: &str| serde_json::from_str::<EpochMillis>(s).map(|t| t.0);
        assert_eq!(parse("1700000000").expect("int"), 1_700_000_000_000);
        assert_eq!(parse("1700000000.25").expect("float"), 1_700_000_000_250);
        assert_eq!(
            parse("\"2023-11-14T22:13:20Z\"").expect("iso"),
            1_700_000_000_000
        );
        assert_eq!(
            parse("\"2023-11-14T23:13:20.5+01:00\"").expect("offset"),
            1_700_000_000_500
        );
        assert!(parse("\"yesterday\"").is_err());
        assert!(parse("1e300").is_err());
    }
}

//! CloudTrail records as EventBridge events: the envelope rules are matched against and that
//! subscribers receive.
//!
//! ```json
//! {"version": "0", "id": "<uuid>", "detail-type": "AWS API Call via CloudTrail",
//!  "source": "aws.<service>", "account": "<recipientAccountId>", "time": "<eventTime>",
//!  "region": "<awsRegion>", "resources": [], "detail": <the record>}
//! ```

use serde_json::{Map, Value};

/// Namespace of the envelope ids (a UUIDv5 of the record's eventID), so a replayed record gets
/// the same id.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5f0c_6e1b_3d2a_4c8e_9a71_2b4d_6e8f_0a13);

/// The `detail-type` EventBridge gives a CloudTrail record, by its `eventType`.
pub fn detail_type(record: &Value) -> &'static str {
    match record.get("eventType").and_then(Value::as_str) {
        Some("AwsConsoleSignIn") => "AWS Console Sign In via CloudTrail",
        Some("AwsServiceEvent") => "AWS Service Event via CloudTrail",
        Some("AwsCloudTrailInsight") => "AWS Insight via CloudTrail",
        _ => "AWS API Call via CloudTrail",
    }
}

/// The `source`: `aws.` and the first label of `eventSource` (`iam.amazonaws.com` → `aws.iam`);
/// Insights come from `aws.cloudtrail`.
pub fn source(record: &Value) -> String {
    if record.get("eventType").and_then(Value::as_str) == Some("AwsCloudTrailInsight") {
        return "aws.cloudtrail".to_owned();
    }
    let service = record
        .get("eventSource")
        .and_then(Value::as_str)
        .and_then(|s| s.split('.').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown");
    format!("aws.{service}")
}

/// Whether only `ENABLED_WITH_ALL_CLOUDTRAIL_MANAGEMENT_EVENTS` rules see the record: a
/// read-only management call.
pub fn is_read_only_management(record: &Value) -> bool {
    record.get("readOnly").and_then(Value::as_bool) == Some(true)
        && record
            .get("eventCategory")
            .and_then(Value::as_str)
            .is_none_or(|c| c == "Management")
}

/// The envelope of `record` (taken by value: it becomes `detail`). `default_account` stands in
/// for a record without `recipientAccountId`.
pub fn envelope(record: Value, default_account: &str) -> Value {
    let text = |k: &str| record.get(k).and_then(Value::as_str).map(str::to_owned);
    let id = text("eventID").map_or_else(uuid::Uuid::new_v4, |e| {
        uuid::Uuid::new_v5(&ID_NAMESPACE, e.as_bytes())
    });
    let mut m = Map::new();
    m.insert("version".into(), Value::from("0"));
    m.insert("id".into(), Value::from(id.to_string()));
    m.insert("detail-type".into(), Value::from(detail_type(&record)));
    m.insert("source".into(), Value::from(source(&record)));
    m.insert(
        "account".into(),
        Value::from(text("recipientAccountId").unwrap_or_else(|| default_account.to_owned())),
    );
    m.insert(
        "time".into(),
        Value::from(text("eventTime").unwrap_or_default()),
    );
    m.insert(
        "region".into(),
        Value::from(text("awsRegion").unwrap_or_default()),
    );
    m.insert("resources".into(), Value::Array(Vec::new()));
    m.insert("detail".into(), record);
    Value::Object(m)
}

/// Checks an event given to `TestEventPattern` has EventBridge's required envelope members.
pub fn check_test_event(event: &Value) -> Result<(), String> {
    let Some(obj) = event.as_object() else {
        return Err("Parameter Event is not valid: it must be a JSON object".into());
    };
    for k in ["id", "account", "source", "time", "region", "detail-type"] {
        if !obj.get(k).is_some_and(Value::is_string) {
            return Err(format!(
                "Parameter Event is not valid: it needs the string member {k:?}"
            ));
        }
    }
    if !obj.get("resources").is_some_and(Value::is_array) {
        return Err("Parameter Event is not valid: it needs the array member \"resources\"".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn envelope_of_a_record() {
        let record = json!({
            "eventVersion": "1.11", "eventID": "e1", "eventTime": "2026-11-21T10:00:00Z",
            "eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging",
            "awsRegion": "eu-west-1", "eventType": "AwsApiCall", "readOnly": false,
            "recipientAccountId": "111122223333"
        });
        let e = envelope(record.clone(), "999999999999");
        assert_eq!(e["detail-type"], "AWS API Call via CloudTrail");
        assert_eq!(e["source"], "aws.cloudtrail");
        assert_eq!(e["account"], "111122223333");
        assert_eq!(e["region"], "eu-west-1");
        assert_eq!(e["time"], "2026-11-21T10:00:00Z");
        assert_eq!(e["resources"], json!([]));
        assert_eq!(e["detail"], record);
        assert_eq!(e["id"], envelope(record, "9")["id"], "stable per eventID");
        assert!(check_test_event(&e).is_ok());

        let signin =
            json!({"eventType": "AwsConsoleSignIn", "eventSource": "signin.amazonaws.com"});
        let e = envelope(signin, "999999999999");
        assert_eq!(e["detail-type"], "AWS Console Sign In via CloudTrail");
        assert_eq!(e["source"], "aws.signin");
        assert_eq!(e["account"], "999999999999");
        let insight =
            json!({"eventType": "AwsCloudTrailInsight", "eventSource": "iam.amazonaws.com"});
        assert_eq!(source(&insight), "aws.cloudtrail");
        assert_eq!(detail_type(&insight), "AWS Insight via CloudTrail");

        assert!(is_read_only_management(&json!({"readOnly": true})));
        assert!(!is_read_only_management(
            &json!({"readOnly": true, "eventCategory": "Data"})
        ));
        assert!(!is_read_only_management(&json!({"readOnly": false})));
        assert!(check_test_event(&json!({"id": "1"})).is_err());
    }
}

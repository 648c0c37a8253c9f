//! Ingest validation: turns a request body (`{"Records":[...]}` or NDJSON) into complete,
//! checked records, or one error that names the record index, the field and the reason.
//!
//! The whole call is judged before anything is stored, so a rejected call stores nothing.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::value::RawValue;

use crate::record::{EVENT_VERSION, Record};
use crate::time::{TimeError, parse_event_time};

/// Limits on one ingest call.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    pub max_records: usize,
    pub max_body_bytes: usize,
    pub max_record_bytes: usize,
    /// How far in the future an `eventTime` may lie, in milliseconds.
    pub max_future_ms: i64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self {
            max_records: 1_000,
            max_body_bytes: 5 * 1024 * 1024,
            max_record_bytes: 256 * 1024,
            max_future_ms: 24 * 3_600_000,
        }
    }
}

/// What the server knows when it judges a call.
#[derive(Debug, Clone)]
pub struct IngestContext {
    pub default_account: String,
    pub now_ms: i64,
    pub limits: IngestLimits,
}

/// Why a call was refused; the names follow cloudtrail-data's per-event error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    FieldNotFound,
    InvalidData,
    FieldTooLong,
    RecordTooLarge,
    TooManyRecords,
    RequestTooLarge,
    InvalidJson,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::FieldNotFound => "FieldNotFound",
            Reason::InvalidData => "InvalidData",
            Reason::FieldTooLong => "FieldTooLong",
            Reason::RecordTooLarge => "RecordTooLarge",
            Reason::TooManyRecords => "TooManyRecords",
            Reason::RequestTooLarge => "RequestTooLarge",
            Reason::InvalidJson => "InvalidJson",
        }
    }
}

/// A refused ingest call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct IngestError {
    pub reason: Reason,
    pub index: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl IngestError {
    fn whole(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            index: None,
            field: None,
            message: message.into(),
        }
    }

    fn at(index: usize, field: Option<&str>, reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            index: Some(index),
            field: field.map(str::to_owned),
            message: message.into(),
        }
    }

    fn describe(&self) -> String {
        match (self.index, &self.field) {
            (Some(i), Some(f)) => format!("record {i}: {f}: {}", self.message),
            (Some(i), None) => format!("record {i}: {}", self.message),
            (None, _) => self.message.clone(),
        }
    }
}

/// The event categories CloudTrail knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    Management,
    Data,
    NetworkActivity,
    Insight,
}

impl Category {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "Management" => Some(Self::Management),
            "Data" => Some(Self::Data),
            "NetworkActivity" => Some(Self::NetworkActivity),
            "Insight" => Some(Self::Insight),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Management => "Management",
            Self::Data => "Data",
            Self::NetworkActivity => "NetworkActivity",
            Self::Insight => "Insight",
        }
    }
}

const EVENT_TYPES: [&str; 6] = [
    "AwsApiCall",
    "AwsServiceEvent",
    "AwsConsoleAction",
    "AwsConsoleSignIn",
    "AwsVpceEvents",
    "AwsCloudTrailInsight",
];

/// Longest accepted value of the short string members (CloudTrail's 1 KB field cap).
const MAX_SHORT_FIELD: usize = 1024;

/// A checked, completed record ready for the log.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub event_id: String,
    pub time_ms: i64,
    pub json: Vec<u8>,
    /// The account the event belongs to (`recipientAccountId`, defaulted).
    pub account: String,
}

/// The CloudTrail file envelope, read in one pass; other members are ignored.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Records", borrow, default)]
    records: Option<Vec<&'a RawValue>>,
}

/// Splits a body into raw records: the CloudTrail file envelope or NDJSON.
fn split_body(body: &[u8]) -> Result<Vec<&RawValue>, IngestError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| IngestError::whole(Reason::InvalidJson, format!("body is not UTF-8: {e}")))?;
    let trimmed = text.trim_start();
    if trimmed.trim_end().is_empty() {
        return Err(IngestError::whole(
            Reason::InvalidData,
            "the body holds no records",
        ));
    }
    if !trimmed.starts_with('{') {
        return Err(IngestError::whole(
            Reason::InvalidData,
            "body must be {\"Records\":[...]} or newline-delimited JSON objects",
        ));
    }
    // The common case: one JSON object, the envelope, parsed in a single pass.
    match serde_json::from_str::<Envelope<'_>>(text) {
        Ok(Envelope {
            records: Some(list),
        }) => return Ok(list),
        Ok(Envelope { records: None }) => {
            // One JSON object without Records: a single record.
            return serde_json::from_str::<&RawValue>(text)
                .map(|r| vec![r])
                .map_err(|e| IngestError::whole(Reason::InvalidJson, e.to_string()));
        }
        Err(_) => {}
    }
    // Not one object: either an envelope whose Records is not an array, or NDJSON.
    if let Ok(members) = serde_json::from_str::<HashMap<Cow<'_, str>, &RawValue>>(text)
        && members.contains_key("Records")
    {
        return Err(IngestError::whole(
            Reason::InvalidData,
            "Records must be an array of records",
        ));
    }
    let mut out = Vec::new();
    for line in text.split('\n') {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let index = out.len();
        let raw = serde_json::from_str::<&RawValue>(line).map_err(|e| {
            IngestError::at(
                index,
                None,
                Reason::InvalidJson,
                format!("not valid JSON: {e}"),
            )
        })?;
        out.push(raw);
    }
    Ok(out)
}

/// Judges a whole ingest call. Either every record is accepted (and completed), or nothing is.
pub fn accept_body(body: &[u8], ctx: &IngestContext) -> Result<Vec<Accepted>, IngestError> {
    let limits = ctx.limits;
    if body.len() > limits.max_body_bytes {
        return Err(IngestError::whole(
            Reason::RequestTooLarge,
            format!(
                "body is {} bytes; the limit is {}",
                body.len(),
                limits.max_body_bytes
            ),
        ));
    }
    let raws = split_body(body)?;
    if raws.is_empty() {
        return Err(IngestError::whole(
            Reason::InvalidData,
            "the body holds no records",
        ));
    }
    if raws.len() > limits.max_records {
        return Err(IngestError::whole(
            Reason::TooManyRecords,
            format!(
                "{} records in one call; the limit is {}",
                raws.len(),
                limits.max_records
            ),
        ));
    }
    raws.iter()
        .enumerate()
        .map(|(i, raw)| accept_record(i, raw.get(), ctx))
        .collect()
}

fn check_len(index: usize, field: &str, value: Option<&String>) -> Result<(), IngestError> {
    match value {
        Some(v) if v.len() > MAX_SHORT_FIELD => Err(IngestError::at(
            index,
            Some(field),
            Reason::FieldTooLong,
            format!("{} bytes; the limit is {MAX_SHORT_FIELD}", v.len()),
        )),
        _ => Ok(()),
    }
}

fn require<'a>(
    index: usize,
    field: &str,
    value: Option<&'a String>,
) -> Result<&'a str, IngestError> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(IngestError::at(
            index,
            Some(field),
            Reason::InvalidData,
            "must not be empty",
        )),
        None => Err(IngestError::at(
            index,
            Some(field),
            Reason::FieldNotFound,
            "is required",
        )),
    }
}

/// A region name as used in keys and paths: `us-east-1`, `us-gov-west-1`.
pub fn is_valid_region(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.ends_with('-')
}

/// A 12-digit AWS account id.
pub fn is_valid_account(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|c| c.is_ascii_digit())
}

fn accept_record(index: usize, raw: &str, ctx: &IngestContext) -> Result<Accepted, IngestError> {
    let max = ctx.limits.max_record_bytes;
    if raw.len() > max {
        return Err(IngestError::at(
            index,
            None,
            Reason::RecordTooLarge,
            format!("record is {} bytes; the limit is {max}", raw.len()),
        ));
    }
    if !raw.trim_start().starts_with('{') {
        return Err(IngestError::at(
            index,
            None,
            Reason::InvalidData,
            "a record must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    let mut record: Record = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = (path != ".").then_some(path);
        IngestError::at(
            index,
            field.as_deref(),
            Reason::InvalidData,
            e.into_inner().to_string(),
        )
    })?;

    let category = match record.event_category.as_deref() {
        None if record.event_type.as_deref() == Some("AwsCloudTrailInsight") => Category::Insight,
        None => Category::Management,
        Some(c) => Category::parse(c).ok_or_else(|| {
            IngestError::at(
                index,
                Some("eventCategory"),
                Reason::InvalidData,
                format!("{c:?} is not one of Management, Data, NetworkActivity, Insight"),
            )
        })?,
    };
    if let Some(t) = record.event_type.as_deref() {
        if !EVENT_TYPES.contains(&t) {
            return Err(IngestError::at(
                index,
                Some("eventType"),
                Reason::InvalidData,
                format!("{t:?} is not one of {}", EVENT_TYPES.join(", ")),
            ));
        }
        if (t == "AwsCloudTrailInsight") != (category == Category::Insight) {
            return Err(IngestError::at(
                index,
                Some("eventType"),
                Reason::InvalidData,
                "eventType AwsCloudTrailInsight goes with eventCategory Insight and only with it",
            ));
        }
    }

    let time = require(index, "eventTime", record.event_time.as_ref())?;
    let time_ms = parse_event_time(time).map_err(|e| {
        let reason = match e {
            TimeError::Format(_) | TimeError::Range(_) => Reason::InvalidData,
        };
        IngestError::at(index, Some("eventTime"), reason, e.to_string())
    })?;
    if time_ms > ctx.now_ms + ctx.limits.max_future_ms {
        return Err(IngestError::at(
            index,
            Some("eventTime"),
            Reason::InvalidData,
            "is more than 24 hours in the future",
        ));
    }
    let region = require(index, "awsRegion", record.aws_region.as_ref())?;
    if !is_valid_region(region) {
        return Err(IngestError::at(
            index,
            Some("awsRegion"),
            Reason::InvalidData,
            format!("{region:?} is not a region name (lowercase letters, digits and '-')"),
        ));
    }
    if category == Category::Insight {
        if record.insight_details.is_none() {
            return Err(IngestError::at(
                index,
                Some("insightDetails"),
                Reason::FieldNotFound,
                "is required for Insights events",
            ));
        }
    } else {
        require(index, "eventSource", record.event_source.as_ref())?;
        require(index, "eventName", record.event_name.as_ref())?;
        if record.user_identity.is_none() {
            return Err(IngestError::at(
                index,
                Some("userIdentity"),
                Reason::FieldNotFound,
                "is required",
            ));
        }
    }
    for (field, value) in [
        ("eventSource", record.event_source.as_ref()),
        ("eventName", record.event_name.as_ref()),
        ("errorCode", record.error_code.as_ref()),
        ("errorMessage", record.error_message.as_ref()),
        ("userAgent", record.user_agent.as_ref()),
        ("requestID", record.request_id.as_ref()),
        ("sourceIPAddress", record.source_ip_address.as_ref()),
        ("eventID", record.event_id.as_ref()),
    ] {
        check_len(index, field, value)?;
    }
    if let Some(id) = record.event_id.as_deref()
        && (id.is_empty() || id.len() > 128 || id.chars().any(char::is_control))
    {
        return Err(IngestError::at(
            index,
            Some("eventID"),
            Reason::InvalidData,
            "must be 1 to 128 printable characters",
        ));
    }
    if let Some(acct) = record.recipient_account_id.as_deref()
        && !is_valid_account(acct)
    {
        return Err(IngestError::at(
            index,
            Some("recipientAccountId"),
            Reason::InvalidData,
            "must be 12 digits",
        ));
    }
    if let Some(me) = record.management_event
        && me != (category == Category::Management)
    {
        return Err(IngestError::at(
            index,
            Some("managementEvent"),
            Reason::InvalidData,
            format!("{me} contradicts eventCategory {}", category.as_str()),
        ));
    }

    // Fill in what the caller may omit.
    let event_id = record
        .event_id
        .get_or_insert_with(|| uuid::Uuid::new_v4().to_string())
        .clone();
    record
        .event_version
        .get_or_insert_with(|| EVENT_VERSION.to_owned());
    let account = record
        .recipient_account_id
        .get_or_insert_with(|| ctx.default_account.clone())
        .clone();
    record
        .event_category
        .get_or_insert_with(|| category.as_str().to_owned());
    if category == Category::Insight {
        record
            .event_type
            .get_or_insert_with(|| "AwsCloudTrailInsight".to_owned());
    } else {
        record
            .event_type
            .get_or_insert_with(|| "AwsApiCall".to_owned());
        record
            .management_event
            .get_or_insert(category == Category::Management);
    }

    let json = record.to_json().map_err(|e| {
        IngestError::at(
            index,
            None,
            Reason::InvalidData,
            format!("cannot be re-encoded: {e}"),
        )
    })?;
    if json.len() > max {
        return Err(IngestError::at(
            index,
            None,
            Reason::RecordTooLarge,
            format!(
                "record is {} bytes once completed; the limit is {max}",
                json.len()
            ),
        ));
    }
    Ok(Accepted {
        event_id,
        time_ms,
        json,
        account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ctx() -> IngestContext {
        IngestContext {
            default_account: "111122223333".into(),
            now_ms: 1_800_000_000_000,
            limits: IngestLimits::default(),
        }
    }

    fn good() -> Value {
        json!({
            "eventVersion": "1.11",
            "userIdentity": {"type": "IAMUser", "userName": "alice", "futureMember": {"x": [1, 2.5, true]}},
            "eventTime": "2026-01-02T03:04:05Z",
            "eventSource": "ec2.amazonaws.com",
            "eventName": "RunInstances",
            "awsRegion": "us-east-1",
            "requestParameters": null,
            "responseElements": {"b": 1, "a": [null, "x"]},
            "readOnly": false,
            "someNewTopLevel": {"z": 1, "y": 2}
        })
    }

    fn body(records: &[Value]) -> Vec<u8> {
        serde_json::to_vec(&json!({ "Records": records })).expect("json")
    }

    #[test]
    fn accepts_and_fills() {
        let out = accept_body(&body(&[good()]), &ctx()).expect("accepted");
        assert_eq!(out.len(), 1);
        let stored: Value = serde_json::from_slice(&out[0].json).expect("json");
        assert_eq!(stored["eventType"], "AwsApiCall");
        assert_eq!(stored["eventCategory"], "Management");
        assert_eq!(stored["managementEvent"], true);
        assert_eq!(stored["recipientAccountId"], "111122223333");
        assert_eq!(stored["eventID"], out[0].event_id.as_str());
        // Everything that was sent is still there, unchanged in meaning.
        for (k, v) in good().as_object().expect("object") {
            assert_eq!(&stored[k], v, "{k}");
        }
        assert!(
            stored
                .as_object()
                .expect("object")
                .contains_key("requestParameters")
        );
    }

    #[test]
    fn keeps_member_order_and_raw_values() {
        let raw = br#"{"eventTime":"2026-01-02T03:04:05Z","eventSource":"s","eventName":"n","awsRegion":"us-east-1","userIdentity":{"type":"Root"},"requestParameters":{"z":1.50,"a":{"c":2,"b":3}},"zzz":1,"aaa":2}"#;
        let out = accept_body(raw, &ctx()).expect("accepted");
        let text = std::str::from_utf8(&out[0].json).expect("utf8");
        assert!(
            text.contains(r#""requestParameters":{"z":1.50,"a":{"c":2,"b":3}}"#),
            "{text}"
        );
        assert!(text.find("\"zzz\"") < text.find("\"aaa\""), "{text}");
    }

    #[test]
    fn ndjson_and_single_objects() {
        let one = serde_json::to_string(&good()).expect("json");
        let nd = format!("{one}\n\n{one}\n");
        assert_eq!(accept_body(nd.as_bytes(), &ctx()).expect("ndjson").len(), 2);
        assert_eq!(
            accept_body(one.as_bytes(), &ctx()).expect("single").len(),
            1
        );
    }

    fn refused(records: Vec<Value>) -> IngestError {
        accept_body(&body(&records), &ctx()).expect_err("must be refused")
    }

    #[test]
    fn names_index_field_and_reason() {
        for field in [
            "eventTime",
            "eventSource",
            "eventName",
            "awsRegion",
            "userIdentity",
        ] {
            let mut bad = good();
            bad.as_object_mut().expect("object").remove(field);
            let e = refused(vec![good(), bad]);
            assert_eq!(
                (e.index, e.field.as_deref(), e.reason),
                (Some(1), Some(field), Reason::FieldNotFound)
            );
        }
        let cases = [
            ("eventTime", json!("2026-01-02 03:04:05")),
            ("eventTime", json!("2026-13-01T00:00:00Z")),
            ("eventTime", json!(12)),
            ("readOnly", json!("true")),
            ("userIdentity", json!("root")),
            ("resources", json!({"ARN": "x"})),
            ("eventName", json!(5)),
            ("eventCategory", json!("Other")),
            ("awsRegion", json!("US_EAST")),
            ("recipientAccountId", json!("12")),
        ];
        for (field, value) in cases {
            let mut bad = good();
            bad[field] = value.clone();
            let e = refused(vec![bad]);
            assert_eq!(
                (e.index, e.field.as_deref(), e.reason),
                (Some(0), Some(field), Reason::InvalidData),
                "{field} = {value}"
            );
        }
        let mut nested = good();
        nested["userIdentity"]["type"] = json!(3);
        assert_eq!(
            refused(vec![nested]).field.as_deref(),
            Some("userIdentity.type")
        );
        let e = refused(vec![good(), json!(7)]);
        assert_eq!((e.index, e.reason), (Some(1), Reason::InvalidData));
    }

    #[test]
    fn enforces_sizes_and_counts() {
        let mut big = good();
        big["requestParameters"] = json!({"blob": "x".repeat(300 * 1024)});
        assert_eq!(refused(vec![big]).reason, Reason::RecordTooLarge);
        let many = vec![good(); 1001];
        assert_eq!(refused(many).reason, Reason::TooManyRecords);
        let mut long = good();
        long["eventName"] = json!("n".repeat(1025));
        assert_eq!(refused(vec![long]).reason, Reason::FieldTooLong);
        let huge = vec![0x20u8; 5 * 1024 * 1024 + 1];
        assert_eq!(
            accept_body(&huge, &ctx()).expect_err("too large").reason,
            Reason::RequestTooLarge
        );
        assert_eq!(refused(vec![]).reason, Reason::InvalidData);
    }

    #[test]
    fn bad_json_is_named() {
        let one = serde_json::to_string(&good()).expect("json");
        let nd = format!("{one}\n{one}\n{{\"eventTime\": \n{one}");
        let e = accept_body(nd.as_bytes(), &ctx()).expect_err("bad line");
        assert_eq!((e.index, e.reason), (Some(2), Reason::InvalidJson));
        let e = accept_body(b"{\"Records\": 5}", &ctx()).expect_err("bad envelope");
        assert_eq!(e.reason, Reason::InvalidData);
    }

    #[test]
    fn insights_records() {
        let insight = json!({
            "eventTime": "2026-01-02T03:04:05Z", "awsRegion": "us-east-1",
            "eventType": "AwsCloudTrailInsight", "eventCategory": "Insight",
            "insightDetails": {"state": "Start", "eventSource": "ec2.amazonaws.com", "eventName": "RunInstances",
              "insightType": "ApiCallRateInsight",
              "insightContext": {"statistics": {"baseline": {"average": 0.5}, "insight": {"average": 9.0}, "insightDuration": 1}}}
        });
        let out =
            accept_body(&body(std::slice::from_ref(&insight)), &ctx()).expect("insight accepted");
        let stored: Value = serde_json::from_slice(&out[0].json).expect("json");
        assert_eq!(stored["insightDetails"], insight["insightDetails"]);
        assert!(stored.get("managementEvent").is_none());
        let mut bad = insight;
        bad.as_object_mut()
            .expect("object")
            .remove("insightDetails");
        assert_eq!(refused(vec![bad]).field.as_deref(), Some("insightDetails"));
    }

    #[test]
    fn future_times_are_refused() {
        let mut bad = good();
        bad["eventTime"] = json!("2030-01-01T00:00:00Z");
        assert_eq!(refused(vec![bad]).field.as_deref(), Some("eventTime"));
    }
}

//! Self-audit: every CloudTrail API call made to OpenTrail becomes a CloudTrail record
//! (eventSource `cloudtrail.amazonaws.com`), durable before the call is answered.

use opentrail_auth::PrincipalKind;
use opentrail_log::NewRecord;
use opentrail_model::record::{Record, UserIdentity};
use opentrail_model::time::format_event_time;
use opentrail_protocol::{ApiError, Exception};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::App;
use crate::api::CallContext;

/// CloudTrail leaves out request parameters and response elements larger than this.
const MAX_ELEMENTS_BYTES: usize = 100 * 1024;
/// CloudTrail truncates these members at 1 KB.
const MAX_SHORT: usize = 1024;

pub(crate) enum Outcome<'a> {
    Success { response: &'a [u8] },
    Failure { error: &'a ApiError },
}

/// Why a self-audit record could not be stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditError {
    #[error("encoding the record: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("appending the record: {0}")]
    Log(#[from] opentrail_log::LogError),
}

/// `LookupAttributes` → `lookupAttributes`, recursively, as CloudTrail writes request parameters.
/// Secret access keys never reach a record.
fn lower_camel(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                let mut chars = k.chars();
                let key: String = match chars.next() {
                    Some(c) => c.to_lowercase().chain(chars).collect(),
                    None => k,
                };
                if key == "secretAccessKey" {
                    continue;
                }
                out.insert(key, lower_camel(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(lower_camel).collect()),
        other => other,
    }
}

/// The JSON of a request or response body as CloudTrail records it; `null` when there is none,
/// it is not an object, or it is too large.
fn elements(body: &[u8]) -> Result<Box<RawValue>, serde_json::Error> {
    let value = match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => lower_camel(v),
        _ => Value::Null,
    };
    let text = serde_json::to_string(&value)?;
    if text.len() > MAX_ELEMENTS_BYTES {
        return RawValue::from_string("null".to_owned());
    }
    RawValue::from_string(text)
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_SHORT {
        return s.to_owned();
    }
    let mut end = MAX_SHORT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// Builds the record of one call.
pub(crate) fn build(
    ctx: &CallContext,
    event_name: &str,
    read_only: bool,
    request: &[u8],
    outcome: &Outcome<'_>,
) -> Result<Record, serde_json::Error> {
    let identity = match &ctx.principal {
        Some(p) => UserIdentity {
            identity_type: Some(
                match p.kind {
                    PrincipalKind::Root => "Root",
                    PrincipalKind::User => "IAMUser",
                }
                .to_owned(),
            ),
            principal_id: Some(p.principal_id.clone()),
            arn: Some(p.arn.clone()),
            account_id: Some(p.account_id.clone()),
            access_key_id: ctx.access_key_id.clone(),
            user_name: p.user_name.clone(),
            ..UserIdentity::default()
        },
        // Not authenticated: only the key it claimed to sign with is known.
        None => UserIdentity {
            identity_type: Some("Unknown".to_owned()),
            access_key_id: ctx.access_key_id.clone(),
            ..UserIdentity::default()
        },
    };
    let (error_code, error_message, response) = match outcome {
        Outcome::Success { response } if !read_only => (None, None, elements(response)?),
        Outcome::Success { .. } => (None, None, RawValue::from_string("null".to_owned())?),
        Outcome::Failure { error } => (
            // CloudTrail records a refused call as AccessDenied.
            Some(match error.exception {
                Exception::AccessDeniedException => "AccessDenied".to_owned(),
                other => other.name().to_owned(),
            }),
            Some(truncate(&error.message)),
            RawValue::from_string("null".to_owned())?,
        ),
    };
    Ok(Record {
        event_version: Some(opentrail_model::EVENT_VERSION.to_owned()),
        user_identity: Some(identity),
        event_time: Some(format_event_time(ctx.now_ms)),
        event_source: Some(ctx.event_source.to_owned()),
        event_name: Some(event_name.to_owned()),
        aws_region: Some(ctx.region.clone()),
        source_ip_address: Some(ctx.source_ip.clone()),
        user_agent: ctx.user_agent.as_deref().map(truncate),
        error_code,
        error_message,
        request_parameters: Some(elements(request)?),
        response_elements: Some(response),
        request_id: Some(ctx.request_id.clone()),
        event_id: Some(uuid::Uuid::new_v4().to_string()),
        read_only: Some(read_only),
        event_type: Some("AwsApiCall".to_owned()),
        management_event: Some(true),
        recipient_account_id: Some(ctx.account.clone()),
        event_category: Some("Management".to_owned()),
        resources: (!ctx.resources.is_empty()).then(|| ctx.resources.clone()),
        session_credential_from_console: ctx.console.then(|| "true".to_owned()),
        ..Record::default()
    })
}

/// Builds and appends the record of one call. A call that changes something is answered only
/// after its record is durable; a read-only call's record is queued for the next group commit
/// before the answer is sent (durable within milliseconds, without making every lookup wait for
/// a disk sync). Returns the record's sequence number when it waited for it.
pub(crate) async fn record(
    app: &App,
    ctx: &CallContext,
    event_name: &str,
    read_only: bool,
    request: &[u8],
    outcome: Outcome<'_>,
) -> Result<Option<u64>, AuditError> {
    let record = build(ctx, event_name, read_only, request, &outcome)?;
    append(app, ctx.now_ms, &record, !read_only).await
}

/// Appends one record dated `now_ms`; when `wait`, returns only once it is durable, with its
/// sequence number.
pub(crate) async fn append(
    app: &App,
    now_ms: i64,
    record: &Record,
    wait: bool,
) -> Result<Option<u64>, AuditError> {
    let json = record.to_json()?;
    // Event time has second precision, as CloudTrail writes it.
    let time_ms = now_ms - now_ms.rem_euclid(1000);
    let pending = app.log.submit(vec![NewRecord { time_ms, json }])?;
    if !wait {
        return Ok(None);
    }
    let appended = pending
        .await
        .map_err(|_| opentrail_log::LogError::Closed)??;
    Ok(Some(appended.first_seq))
}

/// The record of a console sign-in, as CloudTrail writes `ConsoleLogin` (eventSource
/// `signin.amazonaws.com`, eventType `AwsConsoleSignIn`): success or failure is in
/// `responseElements`, a failure says `Failed authentication`.
pub(crate) fn console_login(
    ctx: &CallContext,
    success: bool,
    login_to: &str,
) -> Result<Record, serde_json::Error> {
    let mut record = build(
        ctx,
        "ConsoleLogin",
        false,
        b"",
        &Outcome::Success { response: b"" },
    )?;
    let outcome = if success { "Success" } else { "Failure" };
    record.event_type = Some("AwsConsoleSignIn".to_owned());
    record.request_parameters = Some(RawValue::from_string("null".to_owned())?);
    record.response_elements = Some(RawValue::from_string(serde_json::to_string(
        &serde_json::json!({ "ConsoleLogin": outcome }),
    )?)?);
    record.additional_event_data = Some(RawValue::from_string(serde_json::to_string(
        &serde_json::json!({ "LoginTo": login_to, "MobileVersion": "No", "MFAUsed": "No" }),
    )?)?);
    if !success {
        record.error_message = Some("Failed authentication".to_owned());
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CallContext {
        CallContext {
            account: "111122223333".into(),
            region: "eu-west-1".into(),
            source_ip: "127.0.0.1".into(),
            user_agent: Some("aws-cli/1.40".into()),
            access_key_id: Some("AKIAEXAMPLE".into()),
            principal: Some(std::sync::Arc::new(opentrail_auth::Principal::root(
                "111122223333",
            ))),
            event_source: "cloudtrail.amazonaws.com",
            request_id: "req-1".into(),
            now_ms: 1_767_323_045_123,
            stopped_trail: std::sync::OnceLock::new(),
            resources: Vec::new(),
            console: false,
        }
    }

    #[test]
    fn records_read_calls_and_failures() {
        let req = br#"{"LookupAttributes":[{"AttributeKey":"EventName","AttributeValue":"X"}],"MaxResults":51}"#;
        let err = ApiError::new(
            Exception::InvalidMaxResultsException,
            "MaxResults must be 1 to 50",
        );
        let rec = build(
            &ctx(),
            "LookupEvents",
            true,
            req,
            &Outcome::Failure { error: &err },
        )
        .expect("build");
        let v: Value = serde_json::from_slice(&rec.to_json().expect("json")).expect("json");
        assert_eq!(v["eventSource"], "cloudtrail.amazonaws.com");
        assert_eq!(v["eventTime"], "2026-01-02T03:04:05Z");
        assert_eq!(v["readOnly"], true);
        assert_eq!(v["errorCode"], "InvalidMaxResultsException");
        assert_eq!(
            v["requestParameters"]["lookupAttributes"][0]["attributeKey"],
            "EventName"
        );
        assert_eq!(v["requestParameters"]["maxResults"], 51);
        assert!(v["responseElements"].is_null());
        assert_eq!(v["userIdentity"]["arn"], "arn:aws:iam::111122223333:root");
        assert_eq!(v["requestID"], "req-1");
        assert_eq!(v["awsRegion"], "eu-west-1");
    }

    #[test]
    fn writes_keep_their_response() {
        let rec = build(
            &ctx(),
            "StartLogging",
            false,
            br#"{"Name":"t"}"#,
            &Outcome::Success {
                response: br#"{"Ok":true}"#,
            },
        )
        .expect("build");
        let v: Value = serde_json::from_slice(&rec.to_json().expect("json")).expect("json");
        assert_eq!(v["requestParameters"], serde_json::json!({"name": "t"}));
        assert_eq!(v["responseElements"], serde_json::json!({"ok": true}));
        assert_eq!(v["readOnly"], false);
    }
}

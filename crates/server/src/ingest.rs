//! `POST /v1/events`: OpenTrail's native ingest. Takes `{"Records":[...]}` or NDJSON, judges the
//! whole call (nothing is stored if any record is refused), appends the records to the event log
//! and answers only after they are durable.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use opentrail_log::NewRecord;
use opentrail_model::{IngestContext, IngestError, IngestLimits, Reason, accept_body};
use serde::Serialize;

use crate::App;
use crate::http::{BodyError, json_response, read_body};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Stored {
    event_ids: Vec<String>,
}

#[derive(Serialize)]
struct Refused<'a> {
    #[serde(rename = "__type")]
    kind: &'static str,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "Reason")]
    reason: &'static str,
    #[serde(rename = "RecordIndex", skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(rename = "Field", skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

fn refused(e: &IngestError) -> Response {
    let body = Refused {
        kind: "InvalidParameterException",
        message: e.to_string(),
        reason: e.reason.as_str(),
        index: e.index,
        field: e.field.as_deref(),
    };
    json_response(
        StatusCode::BAD_REQUEST,
        "application/json",
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

fn unavailable(message: &str) -> Response {
    let body = serde_json::json!({"__type": "ServiceUnavailable", "Message": message});
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        body.to_string().into_bytes(),
    )
}

pub(crate) async fn handle(State(app): State<Arc<App>>, request: Request) -> Response {
    let limits = IngestLimits::default();
    let body = match read_body(request.into_body(), limits.max_body_bytes).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            return refused(&IngestError {
                reason: Reason::RequestTooLarge,
                index: None,
                field: None,
                message: format!("body is larger than {} bytes", limits.max_body_bytes),
            });
        }
        Err(BodyError::Broken(m)) => {
            return refused(&IngestError {
                reason: Reason::InvalidJson,
                index: None,
                field: None,
                message: m,
            });
        }
    };
    let ctx = IngestContext {
        default_account: app.settings.account_id.clone(),
        now_ms: App::now_ms(),
        limits,
    };
    let judged = tokio::task::spawn_blocking(move || accept_body(&body, &ctx)).await;
    let accepted = match judged {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return refused(&e),
        Err(e) => return unavailable(&format!("ingest validation failed: {e}")),
    };
    let mut ids = Vec::with_capacity(accepted.len());
    let mut records = Vec::with_capacity(accepted.len());
    for a in accepted {
        ids.push(a.event_id);
        records.push(NewRecord {
            time_ms: a.time_ms,
            json: a.json,
        });
    }
    match app.log.append(records).await {
        Ok(_) => {
            let body = serde_json::to_vec(&Stored { event_ids: ids }).unwrap_or_default();
            json_response(StatusCode::OK, "application/json", body)
        }
        Err(e) => {
            tracing::error!(error = %e, "ingest append failed");
            unavailable(&format!("events were not stored: {e}"))
        }
    }
}

//! `POST /v1/events`: OpenTrail's native ingest. Takes `{"Records":[...]}` or NDJSON, judges the
//! whole call (nothing is stored if any record is refused), appends the records to the event log
//! and answers only after they are durable.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use opentrail_log::NewRecord;
use opentrail_model::{IngestContext, IngestError, IngestLimits, Reason, accept_body};
use opentrail_protocol::ApiError;
use serde::Serialize;

use crate::App;
use crate::api::CallContext;
use crate::audit::{self, Outcome};
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

/// The resource ingest of events for `account` is authorized on.
pub(crate) fn events_arn(account: &str) -> String {
    format!("arn:aws:opentrail::{account}:events")
}

fn auth_refused(e: &ApiError) -> Response {
    let body = serde_json::json!({"__type": e.exception.name(), "Message": e.message});
    json_response(
        StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN),
        "application/json",
        body.to_string().into_bytes(),
    )
}

/// Records a refused ingest call (authentication or authorization) as a self-audit event; the
/// body is not copied into it.
async fn record_refusal(app: &App, ctx: &CallContext, e: &ApiError) -> Response {
    if let Err(err) = audit::record(
        app,
        ctx,
        "IngestEvents",
        false,
        b"",
        Outcome::Failure { error: e },
    )
    .await
    {
        tracing::error!(error = %err, "self-audit record of a refused ingest could not be stored");
        return unavailable("the call could not be recorded; try again");
    }
    auth_refused(e)
}

pub(crate) async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let limits = IngestLimits::default();
    let (parts, body) = request.into_parts();
    let mut call = CallContext::new(&app, &parts.headers, peer, "opentrail.amazonaws.com");
    let body = match read_body(body, limits.max_body_bytes).await {
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
    let caller = match call.authenticate(&app, &parts, &body, &["opentrail"]) {
        Ok(c) => c,
        Err(e) => return record_refusal(&app, &call, &e).await,
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
    let accounts: BTreeSet<&str> = accepted.iter().map(|a| a.account.as_str()).collect();
    for account in accounts {
        if let Err(e) = app.access.authorize(
            &caller,
            "opentrail:IngestEvents",
            &events_arn(account),
            &call.source_ip,
            &call.region,
            call.now_ms,
        ) {
            return record_refusal(&app, &call, &e).await;
        }
    }
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

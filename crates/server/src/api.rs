//! `POST /`: the CloudTrail API (AWS JSON 1.1). One dispatch on the operation enum; every call,
//! successful or not, is recorded as a self-audit event before its answer is sent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use opentrail_protocol::{
    ApiError, CONTENT_TYPE, Exception, Operation, parse_request, parse_target,
};

use crate::App;
use crate::audit::{self, Outcome};
use crate::http::{BodyError, json_response, read_body};
use crate::{lookup, trails};

/// Largest CloudTrail API request body accepted.
const MAX_API_BODY: usize = 1024 * 1024;

/// Who is calling, from where, in which scope.
#[derive(Debug, Clone)]
pub(crate) struct CallContext {
    pub account: String,
    pub region: String,
    pub source_ip: String,
    pub user_agent: Option<String>,
    pub access_key_id: Option<String>,
    pub request_id: String,
    pub now_ms: i64,
    /// Set by StopLogging: the trail whose logging span closes after this call's record.
    pub stopped_trail: std::sync::OnceLock<String>,
}

/// The SigV4 credential (`AKID/date/region/service/aws4_request`) of a request, from the
/// Authorization header or a presigned query. Signatures are not verified yet (access control is
/// its own piece of work); until then the scope only picks the region.
fn credential(headers: &HeaderMap, query: Option<&str>) -> Option<(String, String)> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| auth.split("Credential=").nth(1))
        .map(|rest| rest.split([',', ' ']).next().unwrap_or_default().to_owned());
    let from_query = || {
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("X-Amz-Credential="))
            .map(|v| v.replace("%2F", "/"))
    };
    let cred = from_header.or_else(from_query)?;
    let mut parts = cred.split('/');
    let key = parts.next()?.to_owned();
    let _date = parts.next()?;
    let region = parts.next()?.to_owned();
    Some((key, region))
}

fn context(app: &App, headers: &HeaderMap, query: Option<&str>, peer: SocketAddr) -> CallContext {
    let cred = credential(headers, query);
    let region = cred
        .as_ref()
        .map(|(_, r)| r.clone())
        .filter(|r| opentrail_model::ingest::is_valid_region(r))
        .unwrap_or_else(|| app.settings.region.clone());
    CallContext {
        account: app.settings.account_id.clone(),
        region,
        source_ip: peer.ip().to_string(),
        user_agent: headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        access_key_id: cred.map(|(k, _)| k).filter(|k| !k.is_empty()),
        request_id: uuid::Uuid::new_v4().to_string(),
        now_ms: App::now_ms(),
        stopped_trail: std::sync::OnceLock::new(),
    }
}

fn reply(ctx: &CallContext, status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = json_response(status, CONTENT_TYPE, body);
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

fn error_reply(ctx: &CallContext, e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    reply(ctx, status, e.body())
}

fn json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::new(Exception::InternalFailure, e.to_string()))
}

/// Runs one operation on its typed request.
async fn dispatch(
    app: &Arc<App>,
    ctx: &CallContext,
    op: Operation,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let empty = |()| b"{}".to_vec();
    match op {
        Operation::LookupEvents => {
            json(&lookup::lookup_events(app, ctx, parse_request(body)?).await?)
        }
        Operation::CreateTrail => {
            json(&trails::create_trail(app, ctx, parse_request(body)?).await?)
        }
        Operation::UpdateTrail => {
            json(&trails::update_trail(app, ctx, parse_request(body)?).await?)
        }
        Operation::DeleteTrail => trails::delete_trail(app, ctx, parse_request(body)?)
            .await
            .map(empty),
        Operation::GetTrail => json(&trails::get_trail(app, ctx, parse_request(body)?).await?),
        Operation::DescribeTrails => {
            json(&trails::describe_trails(app, ctx, parse_request(body)?).await?)
        }
        Operation::ListTrails => {
            let _: opentrail_protocol::trails::ListTrailsRequest = parse_request(body)?;
            json(&trails::list_trails(app, ctx).await?)
        }
        Operation::GetTrailStatus => {
            json(&trails::get_trail_status(app, ctx, parse_request(body)?).await?)
        }
        Operation::StartLogging => trails::set_logging(app, ctx, parse_request(body)?, true)
            .await
            .map(empty),
        Operation::StopLogging => trails::set_logging(app, ctx, parse_request(body)?, false)
            .await
            .map(empty),
        Operation::AddTags => trails::add_tags(app, ctx, parse_request(body)?)
            .await
            .map(empty),
        Operation::RemoveTags => trails::remove_tags(app, ctx, parse_request(body)?)
            .await
            .map(empty),
        Operation::ListTags => json(&trails::list_tags(app, ctx, parse_request(body)?).await?),
        Operation::ListPublicKeys => {
            json(&trails::list_public_keys(app, ctx, parse_request(body)?).await?)
        }
        Operation::PutEventSelectors => {
            json(&trails::put_event_selectors(app, ctx, parse_request(body)?).await?)
        }
        Operation::GetEventSelectors => {
            json(&trails::get_event_selectors(app, ctx, parse_request(body)?).await?)
        }
        Operation::PutInsightSelectors => {
            json(&trails::put_insight_selectors(app, ctx, parse_request(body)?).await?)
        }
        Operation::GetInsightSelectors => {
            json(&trails::get_insight_selectors(app, ctx, parse_request(body)?).await?)
        }
        other => Err(ApiError::new(
            Exception::UnsupportedOperationException,
            format!(
                "{} is not implemented by this OpenTrail server yet",
                other.name()
            ),
        )),
    }
}

pub(crate) async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let ctx = context(&app, &parts.headers, parts.uri.query(), peer);
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let op = parse_target(target.as_deref());
    let (body, result) = match (read_body(body, MAX_API_BODY).await, &op) {
        (Err(BodyError::TooLarge), _) => (
            Vec::new(),
            Err(ApiError::new(
                Exception::SerializationException,
                format!("request body is larger than {MAX_API_BODY} bytes"),
            )),
        ),
        (Err(BodyError::Broken(m)), _) => (
            Vec::new(),
            Err(ApiError::new(
                Exception::SerializationException,
                format!("request body could not be read: {m}"),
            )),
        ),
        (Ok(_), Err(e)) => (Vec::new(), Err(e.clone())),
        (Ok(b), Ok(op)) => {
            let r = dispatch(&app, &ctx, *op, &b).await;
            (b, r)
        }
    };
    let event_name = match (&op, &target) {
        (Ok(op), _) => op.name().to_owned(),
        (Err(_), Some(t)) => t
            .rsplit('.')
            .next()
            .unwrap_or(t)
            .chars()
            .take(128)
            .collect(),
        (Err(_), None) => "UnknownOperation".to_owned(),
    };
    let read_only = op.as_ref().map(|o| o.is_read_only()).unwrap_or(false);
    let outcome = match &result {
        Ok(resp) => Outcome::Success { response: resp },
        Err(e) => Outcome::Failure { error: e },
    };
    match audit::record(&app, &ctx, &event_name, read_only, &body, outcome).await {
        Ok(seq) => {
            if let (Some(seq), Some(arn)) = (seq, ctx.stopped_trail.get()) {
                trails::seal_stop(&app, arn.clone(), seq).await;
            }
        }
        Err(e) => {
            // An audit trail that cannot record its own API calls must not answer them.
            tracing::error!(error = %e, operation = %event_name, "self-audit record could not be stored");
            return error_reply(
                &ctx,
                &ApiError::new(
                    Exception::ServiceUnavailable,
                    "the call could not be recorded; try again",
                ),
            );
        }
    }
    match result {
        Ok(resp) => reply(&ctx, StatusCode::OK, resp),
        Err(e) => error_reply(&ctx, &e),
    }
}

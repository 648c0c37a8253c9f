//! `POST /`: the CloudTrail API (AWS JSON 1.1). One dispatch on the operation enum; every call,
//! successful or not, is recorded as a self-audit event before its answer is sent.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use opentrail_protocol::{
    ApiError, CONTENT_TYPE, Exception, Operation, parse_request, parse_target,
};

use crate::App;
use crate::access::{Access, Caller};
use crate::audit::{self, Outcome};
use crate::http::{BodyError, json_response, read_body};
use crate::{lookup, trails};

/// Largest CloudTrail API request body accepted.
const MAX_API_BODY: usize = 1024 * 1024;

/// Who is calling, from where, in which scope.
#[derive(Debug, Clone)]
pub(crate) struct CallContext {
    pub account: String,
    /// The region the call addresses: its SigV4 credential scope's.
    pub region: String,
    pub source_ip: String,
    pub user_agent: Option<String>,
    /// The key that signed the call (or, for a call that failed to authenticate, the key it
    /// claimed).
    pub access_key_id: Option<String>,
    /// The authenticated caller; `None` when authentication failed.
    pub principal: Option<Arc<opentrail_auth::Principal>>,
    /// `eventSource` of the call's self-audit record.
    pub event_source: &'static str,
    pub request_id: String,
    pub now_ms: i64,
    /// Set by StopLogging: the trail whose logging span closes after this call's record.
    pub stopped_trail: std::sync::OnceLock<String>,
    /// The record's `resources` (the KMS key a key-service call used).
    pub resources: Vec<opentrail_model::record::Resource>,
    /// The call came from a console session (recorded as `sessionCredentialFromConsole`).
    pub console: bool,
}

impl CallContext {
    /// A context for a call from `peer`, before authentication.
    pub(crate) fn new(
        app: &App,
        headers: &HeaderMap,
        peer: SocketAddr,
        source: &'static str,
    ) -> Self {
        CallContext {
            account: app.settings.account_id.clone(),
            region: app.settings.region.clone(),
            source_ip: peer.ip().to_string(),
            user_agent: headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            access_key_id: None,
            principal: None,
            event_source: source,
            request_id: uuid::Uuid::new_v4().to_string(),
            now_ms: App::now_ms(),
            stopped_trail: std::sync::OnceLock::new(),
            resources: Vec::new(),
            console: false,
        }
    }

    /// Authenticates the call for `services`: on success the caller and the credential
    /// scope's region are taken into the context; on failure the claimed key is kept for the
    /// record.
    pub(crate) fn authenticate(
        &mut self,
        app: &App,
        parts: &Parts,
        body: &[u8],
        services: &[&str],
    ) -> Result<Caller, ApiError> {
        match app.access.authenticate(parts, body, services, self.now_ms) {
            Ok((caller, region)) => {
                if let Some(r) = region.filter(|r| opentrail_model::ingest::is_valid_region(r)) {
                    self.region = r;
                }
                self.principal = Some(Arc::clone(&caller.principal));
                self.access_key_id = caller.access_key_id.clone();
                Ok(caller)
            }
            Err(e) => {
                self.access_key_id = Access::claimed_key(parts);
                Err(e)
            }
        }
    }
}

/// The trail ARN a call names by `member` (a name or an ARN), for authorization.
fn trail_resource(ctx: &CallContext, body: &serde_json::Value, member: &str) -> String {
    match body.get(member).and_then(serde_json::Value::as_str) {
        Some(arn) if arn.starts_with("arn:") => arn.to_owned(),
        Some(name) => format!(
            "arn:aws:cloudtrail:{}:{}:trail/{name}",
            ctx.region, ctx.account
        ),
        None => "*".to_owned(),
    }
}

/// The resources an operation is authorized on: the trail it names, or `*`.
fn resources(ctx: &CallContext, op: Operation, body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match op {
        Operation::CreateTrail
        | Operation::UpdateTrail
        | Operation::DeleteTrail
        | Operation::GetTrail
        | Operation::GetTrailStatus
        | Operation::StartLogging
        | Operation::StopLogging => vec![trail_resource(ctx, &v, "Name")],
        Operation::PutEventSelectors
        | Operation::GetEventSelectors
        | Operation::PutInsightSelectors
        | Operation::GetInsightSelectors => vec![trail_resource(ctx, &v, "TrailName")],
        Operation::AddTags | Operation::RemoveTags => {
            vec![trail_resource(ctx, &v, "ResourceId")]
        }
        Operation::ListTags => {
            let ids: Vec<String> = v
                .get("ResourceIdList")
                .and_then(serde_json::Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(serde_json::Value::as_str)
                        .map(|id| trail_resource(ctx, &serde_json::json!({ "Id": id }), "Id"))
                        .collect()
                })
                .unwrap_or_default();
            if ids.is_empty() {
                vec!["*".to_owned()]
            } else {
                ids
            }
        }
        _ => vec!["*".to_owned()],
    }
}

fn authorize(
    app: &App,
    ctx: &CallContext,
    caller: &Caller,
    op: Operation,
    body: &[u8],
) -> Result<(), ApiError> {
    // ListInsightsMetricData is authorized as LookupEvents, as CloudTrail does.
    let action = match op {
        Operation::ListInsightsMetricData => "cloudtrail:LookupEvents".to_owned(),
        _ => format!("cloudtrail:{}", op.name()),
    };
    for resource in resources(ctx, op, body) {
        app.access.authorize(
            caller,
            &action,
            &resource,
            &ctx.source_ip,
            &ctx.region,
            ctx.now_ms,
        )?;
    }
    Ok(())
}

pub(crate) fn reply(ctx: &CallContext, status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = json_response(status, CONTENT_TYPE, body);
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

pub(crate) fn error_reply(ctx: &CallContext, e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    reply(ctx, status, e.body())
}

/// A call's body, at most `max` bytes; a body too large or broken is a `SerializationException`.
pub(crate) async fn read_call_body(
    body: axum::body::Body,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    read_body(body, max).await.map_err(|e| match e {
        BodyError::TooLarge => ApiError::new(
            Exception::SerializationException,
            format!("request body is larger than {max} bytes"),
        ),
        BodyError::Broken(m) => ApiError::new(
            Exception::SerializationException,
            format!("request body could not be read: {m}"),
        ),
    })
}

/// A JSON request body (an empty one is `{}`); anything else is a `SerializationException`.
pub(crate) fn json_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            Exception::SerializationException,
            format!("the request body is not JSON: {e}"),
        )
    })
}

/// Records a call's self-audit record (`request` as its requestParameters) and gives its
/// sequence number when it waited for it. When the record cannot be stored, the answer the
/// caller gets instead: an audit trail that cannot record its own API calls must not answer
/// them.
pub(crate) async fn record_call(
    app: &App,
    ctx: &CallContext,
    event_name: &str,
    read_only: bool,
    request: &[u8],
    result: &Result<Vec<u8>, ApiError>,
) -> Result<Option<u64>, Response> {
    let outcome = match result {
        Ok(resp) => Outcome::Success { response: resp },
        Err(e) => Outcome::Failure { error: e },
    };
    audit::record(app, ctx, event_name, read_only, request, outcome)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, operation = %event_name, "self-audit record could not be stored");
            error_reply(
                ctx,
                &ApiError::new(
                    Exception::ServiceUnavailable,
                    "the call could not be recorded; try again",
                ),
            )
        })
}

/// The answer to a call: its JSON, or its error.
pub(crate) fn answer(ctx: &CallContext, result: Result<Vec<u8>, ApiError>) -> Response {
    match result {
        Ok(resp) => reply(ctx, StatusCode::OK, resp),
        Err(e) => error_reply(ctx, &e),
    }
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
        Operation::ListInsightsMetricData => {
            json(&crate::insights::list_insights_metric_data(app, ctx, parse_request(body)?).await?)
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
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(action) = target
        .as_deref()
        .and_then(|t| t.strip_prefix(crate::iam_api::TARGET_PREFIX))
    {
        return crate::iam_api::handle(app, peer, parts, body, action.to_owned()).await;
    }
    if let Some(op) = target
        .as_deref()
        .and_then(|t| t.strip_prefix(crate::alerts_api::EVENTS_PREFIX))
    {
        return crate::alerts_api::handle_events(app, peer, parts, body, op.to_owned()).await;
    }
    if let Some(op) = target
        .as_deref()
        .and_then(|t| t.strip_prefix(crate::alerts_api::TOPICS_PREFIX))
    {
        return crate::alerts_api::handle_topics(app, peer, parts, body, op.to_owned()).await;
    }
    if let Some(op) = target
        .as_deref()
        .and_then(|t| t.strip_prefix(crate::kms_api::TARGET_PREFIX))
    {
        return crate::kms_api::handle(app, peer, parts, body, op.to_owned()).await;
    }
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "cloudtrail.amazonaws.com");
    let op = parse_target(target.as_deref());
    let (body, caller) = match read_call_body(body, MAX_API_BODY).await {
        Err(e) => (Vec::new(), Err(e)),
        Ok(b) => {
            let caller = ctx.authenticate(&app, &parts, &b, &["cloudtrail"]);
            (b, caller)
        }
    };
    run_call(&app, &ctx, caller, op, target.as_deref(), &body).await
}

/// Authorizes and runs one CloudTrail operation for `caller` (or its failure to authenticate),
/// records the call and answers it. The signed API and the console both end here.
pub(crate) async fn run_call(
    app: &Arc<App>,
    ctx: &CallContext,
    caller: Result<Caller, ApiError>,
    op: Result<Operation, ApiError>,
    target: Option<&str>,
    body: &[u8],
) -> Response {
    let result = match (caller, &op) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.clone()),
        (Ok(caller), Ok(op)) => match authorize(app, ctx, &caller, *op, body) {
            Err(e) => Err(e),
            Ok(()) => dispatch(app, ctx, *op, body).await,
        },
    };
    let event_name = match (&op, target) {
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
    match record_call(app, ctx, &event_name, read_only, body, &result).await {
        Ok(Some(seq)) => {
            if let Some(arn) = ctx.stopped_trail.get() {
                trails::seal_stop(app, arn.clone(), seq).await;
            }
        }
        Ok(None) => {}
        Err(refused) => return refused,
    }
    answer(ctx, result)
}

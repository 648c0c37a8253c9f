//! The admin API for principals and policies: `POST /` with `X-Amz-Target:
//! OpenTrailIAM.<Action>` (IAM's action names and members, JSON bodies), signed for service
//! `iam`. Every call is recorded as a self-audit event with eventSource `iam.amazonaws.com`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::request::Parts;
use axum::response::Response;
use opentrail_auth::iam;
use opentrail_protocol::{ApiError, Exception};

use crate::App;
use crate::api::{CallContext, answer, read_call_body, record_call};

/// `X-Amz-Target` prefix of the admin API.
pub(crate) const TARGET_PREFIX: &str = "OpenTrailIAM.";
/// Largest admin request body (a policy document is at most a few KB).
const MAX_BODY: usize = 64 * 1024;

async fn run(
    app: &App,
    ctx: &mut CallContext,
    parts: &Parts,
    body: &[u8],
    action: &str,
    read_only: Option<bool>,
) -> Result<Vec<u8>, ApiError> {
    let caller = ctx.authenticate(app, parts, body, &["iam"])?;
    let Some(read_only) = read_only else {
        return Err(ApiError::new(
            Exception::InvalidAction,
            format!("The action {action} is not valid for this endpoint."),
        ));
    };
    let value = crate::api::json_body(body)?;
    let resource = app.access.iam_resource(action, &value).await;
    app.access.authorize(
        &caller,
        &format!("iam:{action}"),
        &resource,
        &ctx.source_ip,
        &ctx.region,
        ctx.now_ms,
    )?;
    let out = app
        .access
        .iam_call(&app.catalog, &caller, action, read_only, &value, ctx.now_ms)
        .await?;
    serde_json::to_vec(&out).map_err(|e| ApiError::new(Exception::InternalFailure, e.to_string()))
}

pub(crate) async fn handle(
    app: Arc<App>,
    peer: SocketAddr,
    parts: Parts,
    body: Body,
    action: String,
) -> Response {
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "iam.amazonaws.com");
    let read_only = iam::lookup_action(&action);
    let (body, result) = match read_call_body(body, MAX_BODY).await {
        Err(e) => (Vec::new(), Err(e)),
        Ok(b) => {
            let r = run(&app, &mut ctx, &parts, &b, &action, read_only).await;
            (b, r)
        }
    };
    let event_name: String = action
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(128)
        .collect();
    if let Err(refused) = record_call(
        &app,
        &ctx,
        &event_name,
        read_only.unwrap_or(false),
        &body,
        &result,
    )
    .await
    {
        return refused;
    }
    answer(&ctx, result)
}

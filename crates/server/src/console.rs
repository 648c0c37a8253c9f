//! The web console's server side: its assets (embedded in the binary), sign-in sessions, the
//! CloudTrail calls its pages make (run as the signed-in principal, authorized by that
//! principal's policies and recorded like any other call), and streamed downloads.
//!
//! A session is a random token in an HttpOnly, SameSite=Strict cookie, held in memory (a
//! restart signs everyone out). Every call that changes something must also carry the
//! session's CSRF token in `X-OpenTrail-Csrf`, and a request whose `Origin` names another
//! host is refused.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use opentrail_protocol::lookup::{Event, LookupEventsRequest};
use opentrail_protocol::{ApiError, Exception, TARGET_PREFIX, parse_request, parse_target};
use serde::Deserialize;

use crate::App;
use crate::access::Caller;
use crate::api::{self, CallContext, error_reply, read_call_body, record_call};
use crate::audit;

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const APP_CSS: &str = include_str!("../console/app.css");
const ICON_SVG: &str = include_str!("../console/icon.svg");

const COOKIE: &str = "opentrail_session";
const CSRF_HEADER: &str = "x-opentrail-csrf";
/// Sessions held at once; the oldest is dropped to make room.
const MAX_SESSIONS: usize = 10_000;
/// Largest sign-in body.
const MAX_SIGN_IN_BODY: usize = 4096;
/// Largest console call body (as the signed API's).
const MAX_CALL_BODY: usize = 1024 * 1024;
/// Most events one download holds.
const MAX_DOWNLOAD_EVENTS: usize = 1_000_000;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    /// The key signed in with; `None` only when authentication is disabled.
    access_key_id: Option<String>,
    csrf: String,
    created_ms: i64,
    expires_ms: i64,
}

/// The live sessions, by the SHA-256 of their token (the token itself is kept nowhere).
#[derive(Default)]
pub(crate) struct Sessions {
    inner: Mutex<HashMap<Vec<u8>, Session>>,
}

fn token_key(token: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

fn random_token() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| {
        ApiError::new(
            Exception::InternalFailure,
            "no randomness available for a session",
        )
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Sessions {
    fn create(
        &self,
        access_key_id: Option<String>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Result<(String, Session), ApiError> {
        let token = random_token()?;
        let session = Session {
            access_key_id,
            csrf: random_token()?,
            created_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
        };
        let mut map = self
            .inner
            .lock()
            .map_err(|_| ApiError::new(Exception::InternalFailure, "session table unavailable"))?;
        map.retain(|_, s| s.expires_ms > now_ms);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created_ms)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token_key(&token), session.clone());
        Ok((token, session))
    }

    fn get(&self, token: &str, now_ms: i64) -> Option<Session> {
        let mut map = self.inner.lock().ok()?;
        let key = token_key(token);
        match map.get(&key) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    fn remove(&self, token: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&token_key(token));
        }
    }
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// False when the request's `Origin` names a host other than the one it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    host == Some(origin_host)
}

fn secure_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure_headers(&mut resp);
    resp
}

/// `GET /console`: to the console's page.
pub(crate) async fn redirect() -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console/"));
    resp
}

/// `GET /console/`: the page every view is drawn in.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/assets/{name}`.
pub(crate) async fn assets(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "app.css" => asset("text/css; charset=utf-8", APP_CSS),
        "icon.svg" => asset("image/svg+xml", ICON_SVG),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn json_reply(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut resp = crate::http::json_response(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    );
    secure_headers(&mut resp);
    resp
}

fn not_signed_in(ctx: &CallContext) -> Response {
    error_reply(
        ctx,
        &ApiError::new(
            Exception::MissingAuthenticationTokenException,
            "not signed in, or the session has ended; sign in again",
        ),
    )
}

/// Actions whose buttons the console shows enabled only when the caller's policies allow them
/// (on every trail: a policy scoped to some trails still gets its answer from the server).
const UI_ACTIONS: &[&str] = &[
    "LookupEvents",
    "DescribeTrails",
    "GetTrailStatus",
    "CreateTrail",
    "UpdateTrail",
    "DeleteTrail",
    "StartLogging",
    "StopLogging",
    "AddTags",
    "RemoveTags",
    "PutEventSelectors",
    "PutInsightSelectors",
];

fn session_json(
    app: &App,
    ctx: &CallContext,
    caller: &Caller,
    session: &Session,
) -> serde_json::Value {
    let p = &caller.principal;
    let permissions: serde_json::Map<String, serde_json::Value> = UI_ACTIONS
        .iter()
        .map(|a| {
            let allowed = app
                .access
                .authorize(
                    caller,
                    &format!("cloudtrail:{a}"),
                    "*",
                    &ctx.source_ip,
                    &ctx.region,
                    ctx.now_ms,
                )
                .is_ok();
            ((*a).to_owned(), serde_json::Value::Bool(allowed))
        })
        .collect();
    serde_json::json!({
        "User": {
            "Arn": p.arn,
            "UserName": p.user_name,
            "Type": match p.kind {
                opentrail_auth::PrincipalKind::Root => "Root",
                opentrail_auth::PrincipalKind::User => "IAMUser",
            },
            "AccountId": p.account_id,
            "AccessKeyId": caller.access_key_id,
        },
        "Region": app.settings.region,
        "AccountId": app.settings.account_id,
        "CsrfToken": session.csrf,
        "Expires": session.expires_ms,
        "Permissions": permissions,
        "SnsTopics": app.settings.sns_topics,
        "LogGroups": app.streamer.groups().iter().map(|(arn, _)| arn).collect::<Vec<_>>(),
        "DeliveryIntervalSeconds": app.settings.delivery_interval.as_secs(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SignInRequest {
    access_key_id: String,
    secret_access_key: String,
}

/// `POST /console/api/signin` `{AccessKeyId, SecretAccessKey}`: checks the key and starts a
/// session. Every attempt is recorded as a `ConsoleLogin` event.
pub(crate) async fn sign_in(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "signin.amazonaws.com");
    if !same_origin(&parts.headers) {
        return error_reply(
            &ctx,
            &ApiError::new(
                Exception::AccessDeniedException,
                "sign-in from another site is refused",
            ),
        );
    }
    let parsed = read_call_body(body, MAX_SIGN_IN_BODY)
        .await
        .and_then(|b| parse_request::<SignInRequest>(&b));
    let req = match parsed {
        Ok(r) if !r.access_key_id.is_empty() && r.access_key_id.len() <= 128 => r,
        Ok(_) => {
            return error_reply(
                &ctx,
                &ApiError::new(
                    Exception::ValidationException,
                    "AccessKeyId must be 1 to 128 characters",
                ),
            );
        }
        Err(e) => return error_reply(&ctx, &e),
    };
    let login_to = format!(
        "http://{}/console/",
        parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("localhost")
    );
    let outcome = app
        .access
        .sign_in(&req.access_key_id, &req.secret_access_key);
    ctx.access_key_id = Some(req.access_key_id.clone());
    let caller = match outcome {
        Ok(caller) => {
            ctx.principal = Some(Arc::clone(&caller.principal));
            ctx.access_key_id = caller.access_key_id.clone();
            Some(caller)
        }
        Err(principal) => {
            ctx.principal = principal;
            None
        }
    };
    let stored = match audit::console_login(&ctx, caller.is_some(), &login_to) {
        Ok(record) => audit::append(&app, ctx.now_ms, &record, true)
            .await
            .map(|_| ()),
        Err(e) => Err(audit::AuditError::Encode(e)),
    };
    if let Err(e) = stored {
        tracing::error!(error = %e, "the ConsoleLogin record could not be stored");
        return error_reply(
            &ctx,
            &ApiError::new(
                Exception::ServiceUnavailable,
                "the sign-in could not be recorded; try again",
            ),
        );
    }
    let Some(caller) = caller else {
        return error_reply(
            &ctx,
            &ApiError::new(
                Exception::InvalidClientTokenId,
                "the access key ID or the secret access key is not correct, or the key is inactive",
            ),
        );
    };
    let ttl_ms = i64::try_from(app.settings.console_session_ttl.as_millis()).unwrap_or(i64::MAX);
    let (token, session) =
        match app
            .console
            .create(caller.access_key_id.clone(), ctx.now_ms, ttl_ms)
        {
            Ok(s) => s,
            Err(e) => return error_reply(&ctx, &e),
        };
    let mut resp = json_reply(StatusCode::OK, &session_json(&app, &ctx, &caller, &session));
    let secure = parts
        .headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        == Some("https");
    let cookie = format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl_ms / 1000,
        if secure { "; Secure" } else { "" }
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Why a console request is not run.
enum Refusal {
    /// No session, an ended one, or its key is no longer active.
    NotSignedIn,
    /// A write without the session's CSRF token, or from another site.
    Csrf,
}

impl Refusal {
    fn reply(&self, ctx: &CallContext) -> Response {
        match self {
            Refusal::NotSignedIn => not_signed_in(ctx),
            Refusal::Csrf => error_reply(ctx, &csrf_error()),
        }
    }
}

fn csrf_error() -> ApiError {
    ApiError::new(
        Exception::AccessDeniedException,
        "the request's CSRF token is missing or wrong; reload the console",
    )
}

/// The session a request carries and its caller. When `write` is set the CSRF token must
/// match too. The context takes the caller as soon as the session is known.
fn signed_in(
    app: &App,
    ctx: &mut CallContext,
    parts: &Parts,
    write: bool,
) -> Result<(String, Session, Caller), Refusal> {
    let token = session_token(&parts.headers).ok_or(Refusal::NotSignedIn)?;
    let session = app
        .console
        .get(&token, ctx.now_ms)
        .ok_or(Refusal::NotSignedIn)?;
    let caller = app
        .access
        .session_caller(session.access_key_id.as_deref())
        .ok_or(Refusal::NotSignedIn)?;
    ctx.principal = Some(Arc::clone(&caller.principal));
    ctx.access_key_id = caller.access_key_id.clone();
    ctx.console = true;
    if write {
        let given = parts
            .headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let matches = token_key(given) == token_key(&session.csrf);
        if !matches || !same_origin(&parts.headers) {
            return Err(Refusal::Csrf);
        }
    }
    Ok((token, session, caller))
}

/// `GET /console/api/session`: who is signed in, with what permissions.
pub(crate) async fn session(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "signin.amazonaws.com");
    match signed_in(&app, &mut ctx, &parts, false) {
        Ok((_, session, caller)) => {
            json_reply(StatusCode::OK, &session_json(&app, &ctx, &caller, &session))
        }
        Err(refusal) => refusal.reply(&ctx),
    }
}

/// `POST /console/api/signout`: ends the session.
pub(crate) async fn sign_out(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "signin.amazonaws.com");
    match signed_in(&app, &mut ctx, &parts, true) {
        Ok((token, _, _)) => {
            app.console.remove(&token);
            let mut resp = json_reply(StatusCode::OK, &serde_json::json!({}));
            resp.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "opentrail_session=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
                ),
            );
            resp
        }
        Err(refusal) => refusal.reply(&ctx),
    }
}

/// `POST /console/api/call/{Operation}`: one CloudTrail operation with its JSON request, run
/// as the signed-in principal; answered exactly as the signed API answers it.
pub(crate) async fn call(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(operation): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "cloudtrail.amazonaws.com");
    let target = format!("{TARGET_PREFIX}.{operation}");
    let op = parse_target(Some(&target));
    let caller = match signed_in(&app, &mut ctx, &parts, true) {
        Ok((_, _, caller)) => Ok(caller),
        // The session is good but the CSRF check failed: the refusal is recorded.
        Err(Refusal::Csrf) => Err(csrf_error()),
        Err(refusal) => return refusal.reply(&ctx),
    };
    let (body, caller) = match read_call_body(body, MAX_CALL_BODY).await {
        Ok(b) => (b, caller),
        Err(e) => (Vec::new(), Err(e)),
    };
    if operation.contains('.') {
        // Rules (`events.<Operation>`) and topics (`sns.<Action>`).
        let resp = crate::alerts_api::console_call(&app, &mut ctx, caller, &operation, &body).await;
        let mut resp = resp.unwrap_or_else(|| {
            api::error_reply(
                &ctx,
                &ApiError::new(
                    Exception::UnknownOperationException,
                    format!("{operation} is not an operation the console can call"),
                ),
            )
        });
        secure_headers(&mut resp);
        return resp;
    }
    let mut resp = api::run_call(&app, &ctx, caller, op, Some(&target), &body).await;
    secure_headers(&mut resp);
    resp
}

#[derive(Deserialize)]
pub(crate) struct DownloadParams {
    /// `csv` or `json`.
    format: String,
    /// A LookupEvents request (without paging) as JSON.
    #[serde(default)]
    q: Option<String>,
}

/// Neutralises a CSV cell a spreadsheet would run as a formula, then quotes it if needed.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

const CSV_HEADER: &str = "Event ID,Event time,User name,Event name,Event source,Resource type,Resource name,AWS access key,AWS region,Error code,Source IP address,Read-only\r\n";

fn csv_row(e: &Event) -> String {
    let record: serde_json::Value = serde_json::from_str(&e.cloud_trail_event).unwrap_or_default();
    let text = |k: &str| {
        record
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned()
    };
    let join = |f: &dyn Fn(&opentrail_protocol::lookup::Resource) -> Option<String>| {
        e.resources
            .iter()
            .filter_map(f)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let time_ms = (e.event_time * 1000.0).round() as i64;
    let cells = [
        e.event_id.clone(),
        opentrail_model::time::format_event_time(time_ms),
        e.username.clone().unwrap_or_default(),
        e.event_name.clone().unwrap_or_default(),
        e.event_source.clone().unwrap_or_default(),
        join(&|r| r.resource_type.clone()),
        join(&|r| r.resource_name.clone()),
        e.access_key_id.clone().unwrap_or_default(),
        text("awsRegion"),
        text("errorCode"),
        text("sourceIPAddress"),
        e.read_only.clone().unwrap_or_default(),
    ];
    let mut line = cells
        .iter()
        .map(|c| csv_cell(c))
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// `GET /console/api/download?format=csv|json&q={LookupEvents request}`: every event the
/// filter matches, newest first, streamed page by page. Authorized and recorded as one
/// LookupEvents call.
pub(crate) async fn download(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<DownloadParams>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "cloudtrail.amazonaws.com");
    let caller = match signed_in(&app, &mut ctx, &parts, false) {
        Ok((_, _, caller)) => caller,
        Err(refusal) => return refusal.reply(&ctx),
    };
    let query = params.q.unwrap_or_else(|| "{}".to_owned());
    let checked = match params.format.as_str() {
        "csv" | "json" => parse_request::<LookupEventsRequest>(query.as_bytes()),
        other => Err(ApiError::new(
            Exception::ValidationException,
            format!("format {other:?} is not csv or json"),
        )),
    }
    .and_then(|req| {
        app.access
            .authorize(
                &caller,
                "cloudtrail:LookupEvents",
                "*",
                &ctx.source_ip,
                &ctx.region,
                ctx.now_ms,
            )
            .map(|()| req)
    });
    let result = checked
        .as_ref()
        .map(|_| b"{}".to_vec())
        .map_err(Clone::clone);
    if let Err(r) = record_call(&app, &ctx, "LookupEvents", true, query.as_bytes(), &result).await {
        return r;
    }
    let req = match checked {
        Ok(req) => req,
        Err(e) => return error_reply(&ctx, &e),
    };
    let csv = params.format == "csv";
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    tokio::spawn(stream_events(app, ctx, req, csv, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let (content_type, name) = if csv {
        (
            "text/csv; charset=utf-8",
            format!("event-history-{stamp}.csv"),
        )
    } else {
        ("application/json", format!("event-history-{stamp}.json"))
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    secure_headers(&mut resp);
    resp
}

/// Pages through the filter's events, sending each page's text; stops early when the reader
/// goes away. A failure half way ends the body short (the client sees a truncated download
/// rather than a well-formed partial one: no closing bracket or a cut CSV).
async fn stream_events(
    app: Arc<App>,
    ctx: CallContext,
    query: LookupEventsRequest,
    csv: bool,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
) {
    let head = if csv { CSV_HEADER } else { "{\"Records\":[" };
    if tx
        .send(bytes::Bytes::from_static(head.as_bytes()))
        .await
        .is_err()
    {
        return;
    }
    let mut next_token: Option<String> = None;
    let mut sent = 0usize;
    loop {
        let mut req = query.clone();
        req.max_results = Some(50);
        req.next_token = next_token.take();
        let page = match crate::lookup::lookup_events(&app, &ctx, req).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e.message, "download stopped by a failed lookup");
                return;
            }
        };
        let mut chunk = String::new();
        for e in &page.events {
            if sent >= MAX_DOWNLOAD_EVENTS {
                break;
            }
            if csv {
                chunk.push_str(&csv_row(e));
            } else {
                if sent > 0 {
                    chunk.push(',');
                }
                chunk.push_str(&e.cloud_trail_event);
            }
            sent += 1;
        }
        if tx.send(bytes::Bytes::from(chunk)).await.is_err() {
            return;
        }
        match page.next_token {
            Some(t) if sent < MAX_DOWNLOAD_EVENTS => next_token = Some(t),
            _ => break,
        }
    }
    if !csv {
        let _ = tx.send(bytes::Bytes::from_static(b"]}")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_neutralised_and_quoted() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("=SUM(A1)"), "'=SUM(A1)");
        assert_eq!(csv_cell("+1"), "'+1");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("@x"), "'@x");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("=a,\"b\""), "\"'=a,\"\"b\"\"\"");
    }

    #[test]
    fn cookies_and_origins() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; opentrail_session=tok; b=2"),
        );
        assert_eq!(session_token(&h).as_deref(), Some("tok"));
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7433"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7433"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
    }

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let (token, session) = s
            .create(Some("AKIA1".into()), 1_000, 60_000)
            .expect("create");
        assert_eq!(
            s.get(&token, 2_000).map(|x| x.csrf),
            Some(session.csrf.clone())
        );
        assert!(s.get("other", 2_000).is_none());
        assert!(s.get(&token, 61_000).is_none(), "expired");
        let (token, _) = s.create(None, 1_000, 60_000).expect("create");
        s.remove(&token);
        assert!(s.get(&token, 2_000).is_none(), "signed out");
    }
}

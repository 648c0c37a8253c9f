//! Live tail: `GET /v1/tail`, a Server-Sent Events stream of events as they are recorded.
//!
//! - Authenticated with SigV4 (service `opentrail`, like the other `/v1/` endpoints, or
//!   `cloudtrail`) and authorized as
//!   `cloudtrail:StartLiveTail`; each stream opened (or refused) is recorded as a
//!   `StartLiveTail` event.
//! - Filters, all optional and ANDed: any of the eight lookup attributes as query parameters
//!   (`EventName=StopLogging&Username=alice`), and `EventPattern=<EventBridge pattern>` matched
//!   against the event's EventBridge envelope.
//! - Each event is `id: <log sequence number>`, `event: record`, `data: <the record's JSON>`.
//!   A client resumes after the last id it saw with the `Last-Event-ID` header (as browsers'
//!   EventSource do) or `after=<id>`; without either the stream starts at the log's end. If
//!   retention removed records a resumed stream asked for, an `event: gap` says which.
//! - A comment line every 15 seconds keeps idle connections open; the stream ends when the
//!   server shuts down (the client then resumes from its last id).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use opentrail_alerts::pattern::Pattern;
use opentrail_model::lookup::{AttributeKey, LookupKeys};
use opentrail_protocol::{ApiError, Exception};
use tokio::sync::{Semaphore, mpsc};

use crate::App;
use crate::api::{CallContext, error_reply};
use crate::audit::{self, Outcome};

const HEARTBEAT: Duration = Duration::from_secs(15);
/// Records read from the log per blocking read.
const READ_CHUNK: usize = 512;
/// Streams open at once, server-wide.
pub(crate) const MAX_TAILS: usize = 64;

/// The live tails' shared limits.
pub(crate) struct Tails {
    slots: Arc<Semaphore>,
}

impl Default for Tails {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_TAILS)),
        }
    }
}

/// What a stream keeps.
struct Filter {
    attributes: Vec<(AttributeKey, String)>,
    pattern: Option<Pattern>,
}

impl Filter {
    fn matches(&self, json: &[u8], account: &str) -> bool {
        if !self.attributes.is_empty() {
            let Ok(keys) = LookupKeys::from_json(json) else {
                return false;
            };
            let have = keys.attribute_values();
            if !self.attributes.iter().all(|a| have.contains(a)) {
                return false;
            }
        }
        match &self.pattern {
            None => true,
            Some(p) => serde_json::from_slice(json)
                .map(|v| p.matches(&opentrail_alerts::event::envelope(v, account)))
                .unwrap_or(false),
        }
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(Exception::InvalidParameterException, message)
}

/// Parses the query: filters and the resume point.
fn parse(
    params: &[(String, String)],
    last_event_id: Option<&str>,
) -> Result<(Filter, Option<u64>, serde_json::Value), ApiError> {
    let mut attributes = Vec::new();
    let mut pattern = None;
    let mut after = None;
    let mut shown = serde_json::Map::new();
    for (k, v) in params {
        match k.as_str() {
            "EventPattern" => {
                if pattern.is_some() {
                    return Err(bad("EventPattern may be given once"));
                }
                pattern = Some(Pattern::parse(v).map_err(|e| {
                    ApiError::new(
                        Exception::InvalidEventPatternException,
                        format!("EventPattern: {e}"),
                    )
                })?);
                shown.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            "after" => {
                after = Some(v.parse::<u64>().map_err(|_| {
                    bad(format!(
                        "after={v:?} is not an event id (a sequence number)"
                    ))
                })?);
            }
            other => {
                let key = AttributeKey::parse(other).ok_or_else(|| {
                    bad(format!(
                        "{other:?} is not a filter: use EventPattern, after, or a lookup attribute (EventId, EventName, ReadOnly, Username, ResourceType, ResourceName, EventSource, AccessKeyId)"
                    ))
                })?;
                if v.is_empty() || v.len() > 2000 {
                    return Err(bad(format!("{other} must be 1 to 2000 characters")));
                }
                if attributes.len() >= 8 {
                    return Err(bad("at most 8 lookup attributes may be given"));
                }
                attributes.push((key, v.clone()));
                shown.insert(other.to_owned(), serde_json::Value::String(v.clone()));
            }
        }
    }
    if let Some(id) = last_event_id {
        // The header wins: it is what the client saw last, over what it first asked for.
        after = Some(
            id.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("Last-Event-ID {id:?} is not an event id")))?,
        );
    }
    if let Some(a) = after {
        shown.insert("after".into(), serde_json::Value::from(a));
    }
    Ok((
        Filter {
            attributes,
            pattern,
        },
        after,
        serde_json::Value::Object(shown),
    ))
}

/// `GET /v1/tail`.
pub(crate) async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "cloudtrail.amazonaws.com");
    // A query that does not parse is refused below, never read as "no filters".
    let params: Result<Vec<(String, String)>, ApiError> = Query::try_from_uri(&parts.uri)
        .map(|Query(p)| p)
        .map_err(|e| bad(format!("the query string is not valid: {e}")));
    let last = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let checked = ctx
        .authenticate(&app, &parts, b"", &["opentrail", "cloudtrail"])
        .and_then(|caller| {
            app.access.authorize(
                &caller,
                "cloudtrail:StartLiveTail",
                "*",
                &ctx.source_ip,
                &ctx.region,
                ctx.now_ms,
            )
        })
        .and_then(|()| params.as_deref().map_err(Clone::clone))
        .and_then(|params| parse(params, last.as_deref()));
    let checked = checked.and_then(|parsed| {
        Arc::clone(&app.tails.slots)
            .try_acquire_owned()
            .map(|permit| (parsed, permit))
            .map_err(|_| {
                ApiError::new(
                    Exception::MaxConcurrentQueriesException,
                    format!("{MAX_TAILS} live tails are open already; close one first"),
                )
            })
    });
    let ((filter, after, shown), permit) = match checked {
        Ok(x) => x,
        Err(e) => {
            let request = serde_json::to_vec(&params_json(params.as_deref().unwrap_or_default()))
                .unwrap_or_default();
            if let Err(err) = audit::record(
                &app,
                &ctx,
                "StartLiveTail",
                true,
                &request,
                Outcome::Failure { error: &e },
            )
            .await
            {
                tracing::error!(error = %err, "self-audit record of a refused live tail could not be stored");
            }
            return error_reply(&ctx, &e);
        }
    };
    let request = serde_json::to_vec(&shown).unwrap_or_default();
    if let Err(err) = audit::record(
        &app,
        &ctx,
        "StartLiveTail",
        true,
        &request,
        Outcome::Success { response: b"" },
    )
    .await
    {
        tracing::error!(error = %err, "self-audit record of a live tail could not be stored");
    }
    let start = match after {
        Some(a) => a.saturating_add(1),
        None => app.log.durable_end().next_seq,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(follow(Arc::clone(&app), filter, start, tx, permit));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

fn params_json(params: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

/// Follows the log from `next`, sending what the filter keeps, until the client goes away or
/// the server shuts down.
async fn follow(
    app: Arc<App>,
    filter: Filter,
    mut next: u64,
    tx: mpsc::Sender<Bytes>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let filter = Arc::new(filter);
    let mut durable = app.log.subscribe();
    let mut closing = app.closing.clone();
    // A heartbeat first: the client sees the stream open at once.
    if tx.send(Bytes::from_static(b": open\n\n")).await.is_err() {
        return;
    }
    let first = app.log.first_seq();
    if next < first {
        let gap = format!(
            "event: gap\ndata: {{\"from\":{next},\"to\":{first},\"reason\":\"removed by retention\"}}\n\n"
        );
        if tx.send(Bytes::from(gap)).await.is_err() {
            return;
        }
        next = first;
    }
    loop {
        if *closing.borrow() {
            return;
        }
        durable.borrow_and_update();
        let (log, f, account) = (
            app.log.clone(),
            Arc::clone(&filter),
            app.settings.account_id.clone(),
        );
        let read = tokio::task::spawn_blocking(move || -> Result<(u64, Vec<Bytes>), String> {
            let end = log.durable_end().next_seq;
            if next >= end {
                return Ok((next, Vec::new()));
            }
            let mut reader = log.reader(next);
            let batch = reader.read(READ_CHUNK).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let mut upto = next;
            for r in batch {
                if r.seq >= end {
                    break;
                }
                upto = r.seq + 1;
                if f.matches(&r.json, &account) {
                    let mut b = Vec::with_capacity(r.json.len() + 48);
                    b.extend_from_slice(format!("id: {}\nevent: record\ndata: ", r.seq).as_bytes());
                    b.extend_from_slice(&r.json);
                    b.extend_from_slice(b"\n\n");
                    out.push(Bytes::from(b));
                }
            }
            Ok((upto, out))
        })
        .await;
        let (upto, events) = match read {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "live tail could not read the event log");
                let _ = tx
                    .send(Bytes::from(format!(
                        "event: error\ndata: {}\n\n",
                        serde_json::Value::String(e)
                    )))
                    .await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "live tail read task failed");
                return;
            }
        };
        let moved = upto > next;
        next = upto;
        for e in events {
            tokio::select! {
                sent = tx.send(e) => if sent.is_err() { return },
                _ = closing.changed() => return,
            }
        }
        if moved {
            continue;
        }
        tokio::select! {
            changed = durable.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(HEARTBEAT) => {
                if tx.send(Bytes::from_static(b": keep-alive\n\n")).await.is_err() {
                    return;
                }
            }
            () = tx.closed() => return,
            _ = closing.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const RECORD: &[u8] = br#"{"eventVersion":"1.11","userIdentity":{"type":"IAMUser","userName":"alice","accessKeyId":"AKIAEXAMPLE"},"eventTime":"2026-11-21T10:00:00Z","eventSource":"cloudtrail.amazonaws.com","eventName":"StopLogging","awsRegion":"us-east-1","sourceIPAddress":"10.0.0.1","readOnly":false,"eventID":"e-1","eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"123456789012","eventCategory":"Management"}"#;

    #[test]
    fn attributes_and_patterns_filter_together() {
        let (f, after, _) = parse(
            &p(&[("EventName", "StopLogging"), ("Username", "alice")]),
            None,
        )
        .expect("parse");
        assert_eq!(after, None);
        assert!(f.matches(RECORD, "123456789012"));
        let (f, _, _) = parse(&p(&[("EventName", "StartLogging")]), None).expect("parse");
        assert!(!f.matches(RECORD, "123456789012"));
        let (f, _, _) = parse(
            &p(&[
                ("ReadOnly", "false"),
                ("EventPattern", r#"{"source":["aws.cloudtrail"],"detail":{"userIdentity":{"userName":[{"prefix":"ali"}]}}}"#),
            ]),
            None,
        )
        .expect("parse");
        assert!(f.matches(RECORD, "123456789012"));
        let (f, _, _) =
            parse(&p(&[("EventPattern", r#"{"source":["aws.iam"]}"#)]), None).expect("parse");
        assert!(!f.matches(RECORD, "123456789012"));
    }

    #[test]
    fn resume_points_and_refusals() {
        let (_, after, shown) = parse(&p(&[("after", "41")]), Some("99")).expect("parse");
        assert_eq!(after, Some(99), "Last-Event-ID wins over after=");
        assert_eq!(shown["after"], 99);
        for (params, want) in [
            (p(&[("Colour", "red")]), "is not a filter"),
            (p(&[("after", "x")]), "is not an event id"),
            (p(&[("EventName", "")]), "1 to 2000"),
            (p(&[("EventPattern", "{")]), "EventPattern"),
        ] {
            let e = parse(&params, None).err().expect("refused");
            assert!(e.message.contains(want), "{params:?}: {}", e.message);
        }
        assert!(parse(&[], Some("nope")).is_err());
    }
}

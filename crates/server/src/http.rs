//! Small HTTP helpers: reading bodies with a limit, JSON replies, health and metrics.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::App;
use crate::api::{CallContext, error_reply};
use crate::audit::{self, Outcome};

/// Why a body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Broken(String),
}

/// Reads a whole body, refusing it as soon as it passes `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = body;
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) async fn health(State(app): State<Arc<App>>) -> Response {
    if app.log.is_poisoned() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            br#"{"status":"unavailable","reason":"event log poisoned by a failed write; restart"}"#
                .to_vec(),
        );
    }
    json_response(
        StatusCode::OK,
        "application/json",
        br#"{"status":"ok"}"#.to_vec(),
    )
}

/// `GET /metrics`: Prometheus text, for callers allowed `opentrail:GetMetrics`. Refused calls
/// are recorded; allowed scrapes are not (one every few seconds would drown event history).
pub(crate) async fn metrics(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, _body) = request.into_parts();
    let mut ctx = CallContext::new(&app, &parts.headers, peer, "opentrail.amazonaws.com");
    let allowed = ctx
        .authenticate(&app, &parts, b"", &["opentrail"])
        .and_then(|caller| {
            app.access.authorize(
                &caller,
                "opentrail:GetMetrics",
                "*",
                &ctx.source_ip,
                &ctx.region,
                ctx.now_ms,
            )
        });
    if let Err(e) = allowed {
        if let Err(err) = audit::record(
            &app,
            &ctx,
            "GetMetrics",
            true,
            b"",
            Outcome::Failure { error: &e },
        )
        .await
        {
            tracing::error!(error = %err, "self-audit record of a refused metrics call could not be stored");
        }
        return error_reply(&ctx, &e);
    }
    let end = app.log.durable_end();
    let (syncs, appends) = app.log.stats();
    let cursor = app.index.cursor().unwrap_or(0);
    let mut s = String::new();
    let mut metric = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "opentrail_log_next_seq",
        "Next sequence number of the event log.",
        "gauge",
        end.next_seq,
    );
    metric(
        "opentrail_log_group_commits_total",
        "Group commits synced to disk.",
        "counter",
        syncs,
    );
    metric(
        "opentrail_log_appends_total",
        "Append calls acknowledged.",
        "counter",
        appends,
    );
    metric(
        "opentrail_index_cursor",
        "Next log sequence the history index has not applied.",
        "gauge",
        cursor,
    );
    metric(
        "opentrail_index_lag",
        "Records durable in the log but not yet in event history.",
        "gauge",
        end.next_seq.saturating_sub(cursor),
    );
    metric(
        "opentrail_log_segments_unpacked",
        "Sealed log segments waiting to be packed.",
        "gauge",
        app.log.unpacked_segments() as u64,
    );
    let counted = app.counters.cursor().unwrap_or(0);
    metric(
        "opentrail_insights_lag",
        "Records durable in the log but not yet in the Insights counters.",
        "gauge",
        end.next_seq.saturating_sub(counted),
    );
    metric(
        "opentrail_log_poisoned",
        "1 if the event log refuses writes after a failure.",
        "gauge",
        u64::from(app.log.is_poisoned()),
    );
    let d = &app.delivery.stats;
    for (name, help, value) in [
        (
            "opentrail_delivery_files_total",
            "Log files written to buckets.",
            &d.files,
        ),
        (
            "opentrail_delivery_events_total",
            "Events delivered in log files.",
            &d.events,
        ),
        (
            "opentrail_delivery_json_bytes_total",
            "JSON bytes delivered (before compression).",
            &d.json_bytes,
        ),
        (
            "opentrail_delivery_gzip_bytes_total",
            "Compressed bytes written to buckets.",
            &d.gzip_bytes,
        ),
        (
            "opentrail_delivery_failures_total",
            "Delivery attempts that failed and will be retried.",
            &d.failures,
        ),
        (
            "opentrail_notifications_total",
            "Delivery notifications accepted by subscribers.",
            &d.notifications,
        ),
        (
            "opentrail_notification_failures_total",
            "Notification attempts that failed and will be retried.",
            &d.notification_failures,
        ),
        (
            "opentrail_delivery_digests_total",
            "Digest files written to buckets.",
            &d.digests,
        ),
        (
            "opentrail_digest_failures_total",
            "Digest rounds that failed and will be retried.",
            &d.digest_failures,
        ),
    ] {
        metric(
            name,
            help,
            "counter",
            value.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    let st = &app.streamer.stats;
    for (name, help, value) in [
        (
            "opentrail_stream_records_total",
            "Records sent to log group destinations.",
            &st.records,
        ),
        (
            "opentrail_stream_bytes_total",
            "Record bytes sent to log group destinations.",
            &st.bytes,
        ),
        (
            "opentrail_stream_skipped_total",
            "Records over 256 KB left out of log streams.",
            &st.skipped,
        ),
        (
            "opentrail_stream_failures_total",
            "Log streaming steps that failed and will be retried.",
            &st.failures,
        ),
    ] {
        metric(
            name,
            help,
            "counter",
            value.load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    let mut resp = s.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

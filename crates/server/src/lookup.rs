//! LookupEvents over the history index (reference §2.11), with one extension: several lookup
//! attributes in one call are ANDed instead of refused.

use std::sync::Arc;

use opentrail_index::{PageToken, Query, Scope, TokenError};
use opentrail_model::Category;
use opentrail_model::lookup::{AttributeKey, LookupKeys};
use opentrail_protocol::lookup::{Event, LookupEventsRequest, LookupEventsResponse, Resource};
use opentrail_protocol::{ApiError, Exception};

use crate::App;
use crate::api::CallContext;

const DEFAULT_MAX_RESULTS: i64 = 50;
/// More attributes than keys makes no sense; it also bounds the join.
const MAX_ATTRIBUTES: usize = 8;
/// How far past now the default end of the window reaches (ingest accepts event times up to
/// 24 hours ahead, so a producer with a fast clock is still visible at once).
const FUTURE_WINDOW_MS: i64 = 24 * 3_600_000;

/// AttributeValue length as CloudTrail counts it: `_`, space, `,` and newline count twice.
fn counted_len(v: &str) -> usize {
    v.chars()
        .map(|c| {
            if matches!(c, '_' | ' ' | ',' | '\n') {
                2
            } else {
                1
            }
        })
        .sum()
}

fn bad(exception: Exception, message: impl Into<String>) -> ApiError {
    ApiError::new(exception, message)
}

pub(crate) async fn lookup_events(
    app: &Arc<App>,
    ctx: &CallContext,
    req: LookupEventsRequest,
) -> Result<LookupEventsResponse, ApiError> {
    let category = match req.event_category.as_deref() {
        None => Category::Management,
        Some("insight") => Category::Insight,
        Some(other) => {
            return Err(bad(
                Exception::InvalidEventCategoryException,
                format!("EventCategory {other:?} is not valid; the only value is \"insight\""),
            ));
        }
    };
    let given = req.lookup_attributes.unwrap_or_default();
    if given.len() > MAX_ATTRIBUTES {
        return Err(bad(
            Exception::InvalidLookupAttributesException,
            format!(
                "at most {MAX_ATTRIBUTES} lookup attributes may be given; got {}",
                given.len()
            ),
        ));
    }
    let mut attributes = Vec::with_capacity(given.len());
    for a in given {
        let key = AttributeKey::parse(&a.attribute_key).ok_or_else(|| {
            bad(
                Exception::InvalidLookupAttributesException,
                format!(
                    "AttributeKey {:?} is not one of EventId, EventName, ReadOnly, Username, ResourceType, ResourceName, EventSource, AccessKeyId",
                    a.attribute_key
                ),
            )
        })?;
        let n = counted_len(&a.attribute_value);
        if n == 0 || n > 2000 {
            return Err(bad(
                Exception::InvalidLookupAttributesException,
                format!(
                    "AttributeValue for {} must be 1 to 2000 characters",
                    key.as_str()
                ),
            ));
        }
        if category == Category::Insight
            && !matches!(
                key,
                AttributeKey::EventId | AttributeKey::EventName | AttributeKey::EventSource
            )
        {
            return Err(bad(
                Exception::InvalidLookupAttributesException,
                format!(
                    "{} cannot be used to look up Insights events; use EventId, EventName or EventSource",
                    key.as_str()
                ),
            ));
        }
        attributes.push((key, a.attribute_value));
    }
    let max_results = req.max_results.unwrap_or(DEFAULT_MAX_RESULTS);
    if !(1..=50).contains(&max_results) {
        return Err(bad(
            Exception::InvalidMaxResultsException,
            format!("MaxResults must be from 1 to 50; got {max_results}"),
        ));
    }
    if let (Some(s), Some(e)) = (req.start_time, req.end_time)
        && s.0 > e.0
    {
        return Err(bad(
            Exception::InvalidTimeRangeException,
            "StartTime must not be after EndTime",
        ));
    }
    let floor = app.retention_cutoff_ms();
    let start_ms = req.start_time.map_or(floor, |t| t.0.max(floor));
    let end_ms = req.end_time.map_or(ctx.now_ms + FUTURE_WINDOW_MS, |t| t.0);

    attributes.sort();
    let mut fingerprint = format!(
        "{}|{}|{:?}|{:?}|{:?}",
        ctx.account, ctx.region, category, req.start_time, req.end_time
    );
    for (k, v) in &attributes {
        fingerprint.push_str(&format!("|{}={v}", k.as_str()));
    }
    let params_hash = crc32c::crc32c(fingerprint.as_bytes());
    let token = match req.next_token.as_deref() {
        None => None,
        Some(t) => Some(PageToken::decode(t, params_hash).map_err(|e| {
            let message = match e {
                TokenError::Malformed => "NextToken is not valid".to_owned(),
                TokenError::ParamsChanged => {
                    "NextToken was issued for a call with other parameters; repeat them unchanged"
                        .to_owned()
                }
            };
            bad(Exception::InvalidNextTokenException, message)
        })?),
    };
    let query = Query {
        scope: Scope {
            account: ctx.account.clone(),
            region: ctx.region.clone(),
            category,
        },
        attributes,
        start_ms,
        end_ms,
        max_results: usize::try_from(max_results).unwrap_or(50),
        token,
        params_hash,
    };
    let index = app.index.clone();
    let page = tokio::task::spawn_blocking(move || index.lookup(&query))
        .await
        .map_err(|e| {
            bad(
                Exception::InternalFailure,
                format!("lookup task failed: {e}"),
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "lookup failed");
            bad(
                Exception::InternalFailure,
                "event history could not be read",
            )
        })?;
    let mut events = Vec::with_capacity(page.hits.len());
    for hit in page.hits {
        let keys = LookupKeys::from_json(&hit.json).map_err(|e| {
            tracing::error!(seq = hit.seq, error = %e, "stored record unreadable");
            bad(
                Exception::InternalFailure,
                "a stored event could not be read",
            )
        })?;
        events.push(Event {
            event_id: keys.event_id,
            event_name: keys.event_name,
            read_only: keys.read_only.map(|r| r.to_string()),
            access_key_id: keys.access_key_id,
            event_time: hit.time_ms as f64 / 1000.0,
            event_source: keys.event_source,
            username: keys.username,
            resources: keys
                .resources
                .into_iter()
                .map(|r| Resource {
                    resource_type: r.resource_type,
                    resource_name: r.resource_name,
                })
                .collect(),
            // Stored records were checked as UTF-8 at ingest: no copy on the way out.
            cloud_trail_event: String::from_utf8(hit.json)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        });
    }
    Ok(LookupEventsResponse {
        events,
        next_token: page.next.map(|t| t.encode()),
    })
}

#[cfg(test)]
mod tests {
    use super::counted_len;

    #[test]
    fn attribute_value_length_counts_separators_twice() {
        assert_eq!(counted_len("abc"), 3);
        assert_eq!(counted_len("a_b c,d\n"), 12);
    }
}

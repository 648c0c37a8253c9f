//! Which events a trail gets, and where each goes: its event selectors, its account (or its
//! organization), its region scope, global service events, its insight selectors, and whether
//! it was logging when the event was recorded.

use opentrail_catalog::{LoggingSpan, Trail};
use opentrail_model::selectors::{EventSelector, MatchView, Selectors, matches};
use serde::Deserialize;

use crate::layout::FileKind;

/// Services whose events CloudTrail records as global (in us-east-1); trails take them only
/// with `IncludeGlobalServiceEvents`.
pub const GLOBAL_SERVICES: &[&str] = &[
    "iam.amazonaws.com",
    "sts.amazonaws.com",
    "cloudfront.amazonaws.com",
    "route53.amazonaws.com",
    "organizations.amazonaws.com",
    "waf.amazonaws.com",
    "shield.amazonaws.com",
];

/// The region CloudTrail records global service events in.
pub const GLOBAL_REGION: &str = "us-east-1";

/// The organization the server's default account belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Organization {
    pub id: String,
    pub management_account: String,
    pub members: Vec<String>,
}

impl Organization {
    pub fn contains(&self, account: &str) -> bool {
        self.management_account == account || self.members.iter().any(|m| m == account)
    }
}

/// The selectors in force on a trail: advanced, basic, or CloudTrail's default (all management
/// events).
pub fn trail_selectors(t: &Trail) -> Result<Selectors, serde_json::Error> {
    if let Some(a) = &t.advanced_event_selectors {
        return Ok(Selectors::Advanced(serde_json::from_value(a.clone())?));
    }
    if let Some(b) = &t.event_selectors {
        return Ok(Selectors::Basic(serde_json::from_value(b.clone())?));
    }
    Ok(Selectors::Basic(EventSelector::default_selectors()))
}

/// Where a delivered event goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub account: String,
    pub region: String,
    pub kind: FileKind,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Identity {
    arn: Option<String>,
}

#[derive(Deserialize)]
struct ResourceFields {
    #[serde(rename = "ARN")]
    arn: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InsightFields {
    insight_type: Option<String>,
}

/// The members of a record that delivery looks at; the rest is passed through untouched.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    event_category: Option<String>,
    event_source: Option<String>,
    event_name: Option<String>,
    aws_region: Option<String>,
    recipient_account_id: Option<String>,
    read_only: Option<bool>,
    resources: Option<Vec<ResourceFields>>,
    event_type: Option<String>,
    user_identity: Option<Identity>,
    session_credential_from_console: Option<serde_json::Value>,
    error_code: Option<String>,
    vpc_endpoint_id: Option<String>,
    insight_details: Option<InsightFields>,
}

/// One trail's rules, ready to apply to many records.
#[derive(Debug, Clone)]
pub struct TrailFilter {
    selectors: Selectors,
    account: String,
    home_region: String,
    multi_region: bool,
    include_global: bool,
    /// For an organization trail: the organization (its id goes into keys too).
    org: Option<Organization>,
    insight_types: Vec<String>,
    spans: Vec<LoggingSpan>,
}

impl TrailFilter {
    pub fn new(trail: &Trail, org: Option<&Organization>) -> Result<Self, serde_json::Error> {
        let insight_types = trail
            .insight_selectors
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|list| {
                list.iter()
                    .filter_map(|s| s.get("InsightType")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            selectors: trail_selectors(trail)?,
            account: trail.account.clone(),
            home_region: trail.home_region.clone(),
            multi_region: trail.is_multi_region_trail,
            include_global: trail.include_global_service_events,
            org: org
                .filter(|o| trail.is_organization_trail && o.management_account == trail.account)
                .cloned(),
            insight_types,
            spans: trail.logging_spans.clone(),
        })
    }

    /// The organization id that goes into this trail's keys, for an organization trail.
    pub fn org_id(&self) -> Option<&str> {
        self.org.as_ref().map(|o| o.id.as_str())
    }

    fn logged_at(&self, seq: u64) -> bool {
        self.spans
            .iter()
            .any(|s| seq >= s.from && s.to.is_none_or(|to| seq < to))
    }

    /// Where the record with sequence number `seq` goes for this trail, or `None` if the trail
    /// does not get it. A record that is not a JSON object of the expected shape is an error.
    pub fn route(&self, seq: u64, json: &[u8]) -> Result<Option<Route>, serde_json::Error> {
        if !self.logged_at(seq) {
            return Ok(None);
        }
        let f: Fields = serde_json::from_slice(json)?;
        let (Some(account), Some(region)) = (f.recipient_account_id, f.aws_region) else {
            return Ok(None);
        };
        let account_ok = match &self.org {
            Some(org) => org.contains(&account),
            None => account == self.account,
        };
        if !account_ok {
            return Ok(None);
        }
        let global = region == GLOBAL_REGION
            && f.event_source
                .as_deref()
                .is_some_and(|s| GLOBAL_SERVICES.contains(&s));
        if global && !self.include_global {
            return Ok(None);
        }
        if !self.multi_region && region != self.home_region {
            return Ok(None);
        }
        let category = f.event_category.unwrap_or_else(|| "Management".to_owned());
        if category == "Insight" {
            let wanted = f
                .insight_details
                .and_then(|d| d.insight_type)
                .is_some_and(|t| self.insight_types.contains(&t));
            return Ok(wanted.then_some(Route {
                account,
                region,
                kind: FileKind::Insight,
            }));
        }
        let view = MatchView {
            category,
            event_source: f.event_source,
            event_name: f.event_name,
            read_only: f.read_only,
            resources: f
                .resources
                .unwrap_or_default()
                .into_iter()
                .map(|r| (r.kind, r.arn))
                .collect(),
            event_type: f.event_type,
            user_arn: f.user_identity.and_then(|u| u.arn),
            session_credential_from_console: f.session_credential_from_console.map(|v| match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            }),
            error_code: f.error_code,
            vpc_endpoint_id: f.vpc_endpoint_id,
        };
        Ok(matches(&self.selectors, &view).then_some(Route {
            account,
            region,
            kind: FileKind::Log,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ACCT: &str = "111122223333";

    fn trail() -> Trail {
        let mut t = Trail::new(
            format!("arn:aws:cloudtrail:us-east-1:{ACCT}:trail/t"),
            "t".into(),
            ACCT.into(),
            "us-east-1".into(),
            "b".into(),
            0,
        );
        t.open_span(0);
        t
    }

    fn event(region: &str, source: &str, read_only: bool) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "eventVersion": "1.11", "eventSource": source, "eventName": "Op",
            "awsRegion": region, "recipientAccountId": ACCT, "readOnly": read_only,
            "eventCategory": "Management", "eventType": "AwsApiCall",
        }))
        .expect("json")
    }

    fn routed(f: &TrailFilter, seq: u64, json: &[u8]) -> Option<(String, FileKind)> {
        f.route(seq, json)
            .expect("parses")
            .map(|r| (r.region, r.kind))
    }

    #[test]
    fn region_scope_and_global_services() {
        let mut t = trail();
        let f = TrailFilter::new(&t, None).expect("filter");
        let home = event("us-east-1", "ec2.amazonaws.com", false);
        let away = event("eu-west-1", "ec2.amazonaws.com", false);
        let iam = event("us-east-1", "iam.amazonaws.com", false);
        assert_eq!(
            routed(&f, 1, &home),
            Some(("us-east-1".into(), FileKind::Log))
        );
        assert_eq!(routed(&f, 1, &away), None);
        assert!(routed(&f, 1, &iam).is_some());
        t.include_global_service_events = false;
        let f = TrailFilter::new(&t, None).expect("filter");
        assert_eq!(routed(&f, 1, &iam), None);
        assert!(routed(&f, 1, &home).is_some());
        t.is_multi_region_trail = true;
        t.include_global_service_events = true;
        let f = TrailFilter::new(&t, None).expect("filter");
        assert_eq!(
            routed(&f, 1, &away),
            Some(("eu-west-1".into(), FileKind::Log))
        );
    }

    #[test]
    fn spans_accounts_and_selectors() {
        let mut t = trail();
        t.close_span(5);
        let mut ro = t.clone();
        ro.event_selectors = Some(json!([{"ReadWriteType": "WriteOnly"}]));
        let f = TrailFilter::new(&ro, None).expect("filter");
        let write = event("us-east-1", "ec2.amazonaws.com", false);
        let read = event("us-east-1", "ec2.amazonaws.com", true);
        assert!(routed(&f, 4, &write).is_some());
        assert_eq!(routed(&f, 5, &write), None, "recorded after StopLogging");
        assert_eq!(routed(&f, 4, &read), None, "read event, write-only trail");

        let other = serde_json::to_vec(&json!({
            "eventSource": "ec2.amazonaws.com", "awsRegion": "us-east-1",
            "recipientAccountId": "444455556666", "readOnly": false,
        }))
        .expect("json");
        let f = TrailFilter::new(&t, None).expect("filter");
        assert_eq!(routed(&f, 1, &other), None);
        let org = Organization {
            id: "o-aaaaaaaaaa".into(),
            management_account: ACCT.into(),
            members: vec!["444455556666".into()],
        };
        t.is_organization_trail = true;
        let f = TrailFilter::new(&t, Some(&org)).expect("filter");
        assert_eq!(f.org_id(), Some("o-aaaaaaaaaa"));
        assert!(routed(&f, 1, &other).is_some());
        assert!(f.route(1, b"[1]").is_err());
    }

    #[test]
    fn insights_follow_insight_selectors() {
        let mut t = trail();
        let insight = serde_json::to_vec(&json!({
            "eventCategory": "Insight", "eventSource": "ec2.amazonaws.com",
            "awsRegion": "us-east-1", "recipientAccountId": ACCT,
            "insightDetails": {"state": "Start", "insightType": "ApiCallRateInsight"},
        }))
        .expect("json");
        let f = TrailFilter::new(&t, None).expect("filter");
        assert_eq!(routed(&f, 1, &insight), None);
        t.insight_selectors = Some(json!([{"InsightType": "ApiCallRateInsight"}]));
        let f = TrailFilter::new(&t, None).expect("filter");
        assert_eq!(
            routed(&f, 1, &insight),
            Some(("us-east-1".into(), FileKind::Insight))
        );
    }
}

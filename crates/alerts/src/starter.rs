//! Starter rules: the classic things a security team wants to hear about at once, ready to be
//! enabled by name (`opentrail rules enable-starter NAME --topic ARN`).

use crate::config::{RuleState, Threshold};

/// A ready-made rule.
#[derive(Debug, Clone, Copy)]
pub struct Starter {
    pub name: &'static str,
    pub description: &'static str,
    pub pattern: &'static str,
    pub state: RuleState,
    pub threshold: Option<Threshold>,
}

/// Every starter rule.
pub const STARTERS: &[Starter] = &[
    Starter {
        name: "trail-tampering",
        description: "Logging stopped, or a trail deleted or changed (including refused attempts)",
        pattern: r#"{"source":["aws.cloudtrail"],"detail-type":["AWS API Call via CloudTrail"],"detail":{"eventName":["StopLogging","DeleteTrail","UpdateTrail","PutEventSelectors","PutInsightSelectors"]}}"#,
        state: RuleState::Enabled,
        threshold: None,
    },
    Starter {
        name: "root-account-usage",
        description: "A call made with the root user's credentials",
        pattern: r#"{"detail":{"userIdentity":{"type":["Root"],"invokedBy":[{"exists":false}]},"eventType":[{"anything-but":"AwsServiceEvent"}]}}"#,
        state: RuleState::EnabledWithAllManagementEvents,
        threshold: None,
    },
    Starter {
        name: "console-signin-failures",
        description: "A failed console sign-in",
        pattern: r#"{"detail-type":["AWS Console Sign In via CloudTrail"],"detail":{"eventName":["ConsoleLogin"],"responseElements":{"ConsoleLogin":["Failure"]}}}"#,
        state: RuleState::Enabled,
        threshold: None,
    },
    Starter {
        name: "iam-policy-changes",
        description: "An IAM policy created, changed, attached or detached",
        pattern: r#"{"source":["aws.iam"],"detail":{"eventName":["CreatePolicy","DeletePolicy","CreatePolicyVersion","DeletePolicyVersion","SetDefaultPolicyVersion","PutUserPolicy","DeleteUserPolicy","PutGroupPolicy","DeleteGroupPolicy","PutRolePolicy","DeleteRolePolicy","AttachUserPolicy","DetachUserPolicy","AttachGroupPolicy","DetachGroupPolicy","AttachRolePolicy","DetachRolePolicy"],"errorCode":[{"exists":false}]}}"#,
        state: RuleState::Enabled,
        threshold: None,
    },
    Starter {
        name: "access-denied-burst",
        description: "10 or more calls refused for lack of permission within 5 minutes",
        pattern: r#"{"detail":{"errorCode":[{"prefix":"AccessDenied"},{"suffix":"UnauthorizedOperation"}]}}"#,
        state: RuleState::EnabledWithAllManagementEvents,
        threshold: Some(Threshold {
            count: 10,
            period_secs: 300,
        }),
    },
    Starter {
        name: "kms-key-deletion",
        description: "A KMS key disabled or scheduled for deletion",
        pattern: r#"{"source":["aws.kms"],"detail":{"eventName":["DisableKey","ScheduleKeyDeletion"]}}"#,
        state: RuleState::Enabled,
        threshold: None,
    },
];

/// The starter rule of that name.
pub fn starter(name: &str) -> Option<&'static Starter> {
    STARTERS.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::event::envelope;
    use crate::pattern::Pattern;

    fn fires(name: &str, record: serde_json::Value) -> bool {
        let s = starter(name).expect("starter");
        Pattern::parse(s.pattern)
            .expect("starter patterns parse")
            .matches(&envelope(record, "111122223333"))
    }

    #[test]
    fn starters_match_what_they_promise() {
        for s in STARTERS {
            Pattern::parse(s.pattern).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            crate::config::check_rule_name("Name", s.name).expect("valid name");
        }
        let ct = |name: &str| json!({"eventSource": "cloudtrail.amazonaws.com", "eventName": name, "eventType": "AwsApiCall", "userIdentity": {"type": "IAMUser"}});
        assert!(fires("trail-tampering", ct("StopLogging")));
        assert!(fires("trail-tampering", ct("DeleteTrail")));
        assert!(!fires("trail-tampering", ct("StartLogging")));

        let root = json!({"eventSource": "s3.amazonaws.com", "eventName": "ListBuckets", "eventType": "AwsApiCall", "userIdentity": {"type": "Root"}});
        assert!(fires("root-account-usage", root));
        let by_service = json!({"eventType": "AwsApiCall", "eventSource": "s3.amazonaws.com", "userIdentity": {"type": "Root", "invokedBy": "s3.amazonaws.com"}});
        assert!(!fires("root-account-usage", by_service));
        assert!(!fires("root-account-usage", ct("StopLogging")));

        let login = |outcome: &str| json!({"eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin", "eventType": "AwsConsoleSignIn", "responseElements": {"ConsoleLogin": outcome}});
        assert!(fires("console-signin-failures", login("Failure")));
        assert!(!fires("console-signin-failures", login("Success")));

        let iam = |name: &str, err: Option<&str>| {
            let mut r = json!({"eventSource": "iam.amazonaws.com", "eventName": name, "eventType": "AwsApiCall"});
            if let Some(e) = err {
                r["errorCode"] = json!(e);
            }
            r
        };
        assert!(fires("iam-policy-changes", iam("AttachUserPolicy", None)));
        assert!(!fires(
            "iam-policy-changes",
            iam("AttachUserPolicy", Some("AccessDenied"))
        ));
        assert!(!fires("iam-policy-changes", iam("ListPolicies", None)));

        let denied = |code: &str| json!({"eventSource": "cloudtrail.amazonaws.com", "eventName": "LookupEvents", "errorCode": code});
        assert!(fires("access-denied-burst", denied("AccessDenied")));
        assert!(fires(
            "access-denied-burst",
            denied("AccessDeniedException")
        ));
        assert!(fires(
            "access-denied-burst",
            denied("Client.UnauthorizedOperation")
        ));
        assert!(!fires(
            "access-denied-burst",
            denied("TrailNotFoundException")
        ));

        assert!(fires(
            "kms-key-deletion",
            json!({"eventSource": "kms.amazonaws.com", "eventName": "ScheduleKeyDeletion"})
        ));
    }
}

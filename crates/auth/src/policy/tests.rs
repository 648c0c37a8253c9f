//! Policy grammar and evaluation: examples of each rule, and a property test of the evaluator
//! against a small reference model written independently (wildcards as regular expressions,
//! each operator spelled out).

use proptest::prelude::*;
use serde_json::json;

use super::*;

const TRAIL_A: &str = "arn:aws:cloudtrail:us-east-1:111122223333:trail/a";
const TRAIL_B: &str = "arn:aws:cloudtrail:eu-west-1:111122223333:trail/b";

fn pol(v: serde_json::Value) -> Policy {
    Policy::parse(&v.to_string(), 10_000).expect("policy parses")
}

#[test]
fn explicit_deny_beats_allow_and_nothing_is_allowed_by_default() {
    let allow_all = pol(
        json!({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"cloudtrail:*","Resource":"*"}]}),
    );
    let deny_stop = pol(
        json!({"Version":"2012-10-17","Statement":{"Effect":"Deny","Action":"cloudtrail:StopLogging","Resource":TRAIL_A}}),
    );
    let stop_a = Context::new("cloudtrail:StopLogging", TRAIL_A);
    let stop_b = Context::new("cloudtrail:StopLogging", TRAIL_B);
    assert_eq!(
        evaluate([&allow_all, &deny_stop], &stop_a),
        Decision::ExplicitDeny
    );
    assert_eq!(evaluate([&allow_all, &deny_stop], &stop_b), Decision::Allow);
    assert_eq!(evaluate([&deny_stop], &stop_b), Decision::ImplicitDeny);
    assert_eq!(evaluate([], &stop_b), Decision::ImplicitDeny);
    // Actions compare case-insensitively, resources do not.
    let lower = pol(
        json!({"Statement":{"Effect":"Allow","Action":"CloudTrail:stoplogging","Resource":TRAIL_A}}),
    );
    assert_eq!(evaluate([&lower], &stop_a), Decision::Allow);
    let upper = pol(
        json!({"Statement":{"Effect":"Allow","Action":"cloudtrail:StopLogging","Resource":"arn:aws:cloudtrail:us-east-1:111122223333:trail/A"}}),
    );
    assert_eq!(evaluate([&upper], &stop_a), Decision::ImplicitDeny);
}

#[test]
fn wildcards_not_action_and_not_resource() {
    assert!(wildcard_match(
        "cloudtrail:Get*",
        "cloudtrail:GetTrailStatus",
        true
    ));
    assert!(wildcard_match(
        "cloudtrail:?etTrail",
        "cloudtrail:GetTrail",
        true
    ));
    assert!(!wildcard_match(
        "cloudtrail:?etTrail",
        "cloudtrail:etTrail",
        true
    ));
    assert!(wildcard_match("*", "", false));
    assert!(wildcard_match("a*b*c", "aXXbYYc", false));
    assert!(!wildcard_match("a*b*c", "aXXbYY", false));
    let read_only = pol(
        json!({"Statement":{"Effect":"Allow","NotAction":["cloudtrail:Stop*","cloudtrail:Delete*"],"Resource":"*"}}),
    );
    assert_eq!(
        evaluate(
            [&read_only],
            &Context::new("cloudtrail:StartLogging", TRAIL_A)
        ),
        Decision::Allow
    );
    assert_eq!(
        evaluate(
            [&read_only],
            &Context::new("cloudtrail:StopLogging", TRAIL_A)
        ),
        Decision::ImplicitDeny
    );
    let not_b = pol(
        json!({"Statement":{"Effect":"Deny","Action":"*","NotResource":"arn:aws:cloudtrail:*:*:trail/b"}}),
    );
    assert_eq!(
        evaluate([&not_b], &Context::new("cloudtrail:GetTrail", TRAIL_A)),
        Decision::ExplicitDeny
    );
    assert_eq!(
        evaluate([&not_b], &Context::new("cloudtrail:GetTrail", TRAIL_B)),
        Decision::ImplicitDeny
    );
}

#[test]
fn condition_operators() {
    let ctx = Context::new("cloudtrail:GetTrail", TRAIL_A)
        .with("aws:SourceIp", "10.1.2.3")
        .with("aws:CurrentTime", "2026-11-21T10:00:00Z")
        .with("aws:SecureTransport", "false")
        .with("aws:username", "alice")
        .with("aws:PrincipalArn", "arn:aws:iam::111122223333:user/alice");
    let check = |cond: serde_json::Value| {
        let p = pol(
            json!({"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":cond}}),
        );
        evaluate([&p], &ctx) == Decision::Allow
    };
    assert!(check(
        json!({"IpAddress":{"aws:SourceIp":["192.0.2.0/24","10.0.0.0/8"]}})
    ));
    assert!(!check(json!({"IpAddress":{"aws:SourceIp":"192.0.2.0/24"}})));
    assert!(check(
        json!({"NotIpAddress":{"aws:SourceIp":"192.0.2.0/24"}})
    ));
    assert!(
        check(json!({"IpAddress":{"aws:sourceip":"10.1.2.3"}})),
        "keys are case-insensitive"
    );
    assert!(check(
        json!({"DateGreaterThan":{"aws:CurrentTime":"2026-11-21T09:59:59Z"}})
    ));
    assert!(!check(
        json!({"DateGreaterThan":{"aws:CurrentTime":"2026-11-21T10:00:00Z"}})
    ));
    assert!(check(
        json!({"DateGreaterThanEquals":{"aws:CurrentTime":"2026-11-21T10:00:00Z"}})
    ));
    assert!(check(
        json!({"DateLessThan":{"aws:CurrentTime":"2026-11-22"}})
    ));
    assert!(
        check(json!({"DateLessThanEquals":{"aws:CurrentTime":"1795255200"}})),
        "epoch seconds"
    );
    assert!(check(
        json!({"DateEquals":{"aws:CurrentTime":"2026-11-21T10:00:00Z"}})
    ));
    assert!(check(
        json!({"DateNotEquals":{"aws:CurrentTime":"2026-11-21T10:00:01Z"}})
    ));
    assert!(check(json!({"Bool":{"aws:SecureTransport":"false"}})));
    assert!(
        check(json!({"Bool":{"aws:SecureTransport":false}})),
        "JSON booleans are accepted"
    );
    assert!(!check(json!({"Bool":{"aws:SecureTransport":"true"}})));
    assert!(check(json!({"StringEquals":{"aws:username":"alice"}})));
    assert!(!check(json!({"StringEquals":{"aws:username":"Alice"}})));
    assert!(check(
        json!({"StringEqualsIgnoreCase":{"aws:username":"ALICE"}})
    ));
    assert!(check(
        json!({"StringNotEquals":{"aws:username":["bob","carol"]}})
    ));
    assert!(!check(
        json!({"StringNotEqualsIgnoreCase":{"aws:username":"ALICE"}})
    ));
    assert!(check(
        json!({"StringLike":{"aws:PrincipalArn":"arn:aws:iam::*:user/a*"}})
    ));
    assert!(check(
        json!({"StringNotLike":{"aws:PrincipalArn":"*:root"}})
    ));
    // Several keys and operators: all must hold.
    assert!(!check(
        json!({"StringEquals":{"aws:username":"alice"},"Bool":{"aws:SecureTransport":"true"}})
    ));
    // Absent keys: positive operators fail, negated ones hold, IfExists holds, Null tells.
    assert!(!check(
        json!({"StringEquals":{"aws:RequestedRegion":"us-east-1"}})
    ));
    assert!(check(
        json!({"StringNotEquals":{"aws:RequestedRegion":"us-east-1"}})
    ));
    assert!(check(
        json!({"StringEqualsIfExists":{"aws:RequestedRegion":"us-east-1"}})
    ));
    assert!(!check(
        json!({"StringEqualsIfExists":{"aws:username":"bob"}})
    ));
    assert!(check(
        json!({"Null":{"aws:RequestedRegion":"true","aws:username":"false"}})
    ));
    assert!(!check(json!({"Null":{"aws:username":"true"}})));
    // Policy variables (2012-10-17 only).
    assert!(check(
        json!({"StringEquals":{"aws:PrincipalArn":"arn:aws:iam::111122223333:user/${aws:username}"}})
    ));
    let own = pol(
        json!({"Version":"2012-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:cloudtrail:*:*:trail/${aws:username}-*"}}),
    );
    let mine = Context::new(
        "cloudtrail:GetTrail",
        "arn:aws:cloudtrail:us-east-1:1:trail/alice-x",
    )
    .with("aws:username", "alice");
    let theirs = Context::new(
        "cloudtrail:GetTrail",
        "arn:aws:cloudtrail:us-east-1:1:trail/bob-x",
    )
    .with("aws:username", "alice");
    assert_eq!(evaluate([&own], &mine), Decision::Allow);
    assert_eq!(evaluate([&own], &theirs), Decision::ImplicitDeny);
    let old = pol(
        json!({"Version":"2008-10-17","Statement":{"Effect":"Allow","Action":"*","Resource":"arn:aws:cloudtrail:*:*:trail/${aws:username}-*"}}),
    );
    assert_eq!(
        evaluate([&old], &mine),
        Decision::ImplicitDeny,
        "no variables before 2012-10-17"
    );
}

#[test]
fn malformed_documents_are_refused_with_a_reason() {
    let bad = |v: serde_json::Value, needle: &str| {
        let e = Policy::parse(&v.to_string(), 10_000).expect_err("refused");
        assert!(
            e.0.contains(needle),
            "{:?} does not mention {needle:?}",
            e.0
        );
    };
    bad(json!({"Version":"2012-10-17"}), "Statement");
    bad(
        json!({"Version":"2020-01-01","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}),
        "version",
    );
    bad(json!({"Statement":{"Action":"*","Resource":"*"}}), "Effect");
    bad(
        json!({"Statement":{"Effect":"allow","Action":"*","Resource":"*"}}),
        "Effect",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Resource":"*"}}),
        "Action",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"*","NotAction":"x:y","Resource":"*"}}),
        "both Action",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"*"}}),
        "Resource",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"StopLogging","Resource":"*"}}),
        "service:Action",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"*","Resource":"trail/a"}}),
        "ARN",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Principal":"*","Action":"*","Resource":"*"}}),
        "principal",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"NumericEquals":{"a":"1"}}}}),
        "NumericEquals",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"300.1.1.1"}}}}),
        "300.1.1.1",
    );
    bad(
        json!({"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"DateLessThan":{"aws:CurrentTime":"soon"}}}}),
        "soon",
    );
    bad(json!({"Statement":[]}), "non-empty");
    let long = json!({"Statement":{"Effect":"Allow","Action":"*","Resource":format!("arn:{}", "x".repeat(3000))}});
    let e = Policy::parse(&long.to_string(), 2048).expect_err("too long");
    assert!(e.0.contains("limit is 2048"), "{}", e.0);
    assert!(
        Policy::parse("{not json", 100)
            .expect_err("syntax")
            .0
            .contains("Syntax")
    );
}

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

fn re_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let mut re = String::from(if ignore_case { "(?is)^" } else { "(?s)^" });
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).expect("regex").is_match(text)
}

#[derive(Debug, Clone)]
struct RefCond {
    op: &'static str,
    if_exists: bool,
    key: &'static str,
    values: Vec<&'static str>,
}

#[derive(Debug, Clone)]
struct RefStatement {
    allow: bool,
    not_action: bool,
    actions: Vec<&'static str>,
    not_resource: bool,
    resources: Vec<&'static str>,
    conds: Vec<RefCond>,
}

fn ref_cond(c: &RefCond, keys: &[(&'static str, &'static str)]) -> bool {
    let v = keys
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(c.key))
        .map(|(_, v)| *v);
    let Some(v) = v else {
        return c.if_exists || matches!(c.op, "StringNotEquals" | "NotIpAddress" | "StringNotLike");
    };
    let in_net = |p: &str| {
        let net: ipnet::IpNet = p
            .parse()
            .unwrap_or_else(|_| ipnet::IpNet::from(p.parse::<std::net::IpAddr>().expect("ip")));
        v.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| net.trunc().contains(&ip))
    };
    match c.op {
        "StringEquals" => c.values.contains(&v),
        "StringNotEquals" => !c.values.contains(&v),
        "StringLike" => c.values.iter().any(|p| re_match(p, v, false)),
        "StringNotLike" => !c.values.iter().any(|p| re_match(p, v, false)),
        "Bool" => c.values.iter().any(|p| p.eq_ignore_ascii_case(v)),
        "IpAddress" => c.values.iter().any(|p| in_net(p)),
        "NotIpAddress" => !c.values.iter().any(|p| in_net(p)),
        other => panic!("model has no {other}"),
    }
}

fn ref_decide(
    statements: &[RefStatement],
    action: &str,
    resource: &str,
    keys: &[(&'static str, &'static str)],
) -> Decision {
    let applies = |s: &RefStatement| {
        let a = s.actions.iter().any(|p| re_match(p, action, true)) != s.not_action;
        let r = s.resources.iter().any(|p| re_match(p, resource, false)) != s.not_resource;
        a && r && s.conds.iter().all(|c| ref_cond(c, keys))
    };
    let hits: Vec<&RefStatement> = statements.iter().filter(|s| applies(s)).collect();
    if hits.iter().any(|s| !s.allow) {
        Decision::ExplicitDeny
    } else if hits.iter().any(|s| s.allow) {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

const ACTIONS: [&str; 7] = [
    "cloudtrail:StopLogging",
    "cloudtrail:StartLogging",
    "cloudtrail:LookupEvents",
    "cloudtrail:GetTrail",
    "cloudtrail:GetTrailStatus",
    "opentrail:IngestEvents",
    "iam:CreateUser",
];
const ACTION_PATTERNS: [&str; 9] = [
    "*",
    "cloudtrail:*",
    "cloudtrail:Get*",
    "cloudtrail:?etTrail",
    "CLOUDTRAIL:stoplogging",
    "cloudtrail:StopLogging",
    "opentrail:Ingest*",
    "iam:*",
    "cloudtrail:*Logging",
];
const RESOURCES: [&str; 4] = [
    "*",
    TRAIL_A,
    TRAIL_B,
    "arn:aws:iam::111122223333:user/alice",
];
const RESOURCE_PATTERNS: [&str; 6] = [
    "*",
    TRAIL_A,
    "arn:aws:cloudtrail:*:111122223333:trail/*",
    "arn:aws:cloudtrail:us-east-1:111122223333:trail/?",
    "arn:aws:iam::*:user/*",
    "arn:aws:cloudtrail:eu-*",
];

fn cond_strategy() -> impl Strategy<Value = RefCond> {
    prop_oneof![
        (
            prop::sample::select(vec![
                "StringEquals",
                "StringNotEquals",
                "StringLike",
                "StringNotLike"
            ]),
            any::<bool>(),
            prop::collection::vec(
                prop::sample::select(vec!["alice", "bob", "a*", "?ob", "*"]),
                1..3
            ),
        )
            .prop_map(|(op, if_exists, values)| RefCond {
                op,
                if_exists,
                key: "aws:username",
                values
            }),
        (
            any::<bool>(),
            prop::sample::select(vec!["true", "false", "TRUE"])
        )
            .prop_map(|(if_exists, v)| RefCond {
                op: "Bool",
                if_exists,
                key: "aws:SecureTransport",
                values: vec![v]
            }),
        (
            prop::sample::select(vec!["IpAddress", "NotIpAddress"]),
            any::<bool>(),
            prop::collection::vec(
                prop::sample::select(vec!["10.0.0.0/8", "192.0.2.7", "::1/128", "192.0.2.0/24"]),
                1..3
            ),
        )
            .prop_map(|(op, if_exists, values)| RefCond {
                op,
                if_exists,
                key: "aws:SourceIp",
                values
            }),
    ]
}

fn statement_strategy() -> impl Strategy<Value = RefStatement> {
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(ACTION_PATTERNS.to_vec()), 1..3),
        any::<bool>(),
        prop::collection::vec(prop::sample::select(RESOURCE_PATTERNS.to_vec()), 1..3),
        prop::collection::vec(cond_strategy(), 0..3),
    )
        .prop_map(
            |(allow, not_action, actions, not_resource, resources, conds)| RefStatement {
                allow,
                not_action,
                actions,
                not_resource,
                resources,
                conds,
            },
        )
}

fn to_json(statements: &[RefStatement]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = statements
        .iter()
        .map(|s| {
            let mut m = serde_json::Map::new();
            m.insert(
                "Effect".into(),
                json!(if s.allow { "Allow" } else { "Deny" }),
            );
            m.insert(
                if s.not_action { "NotAction" } else { "Action" }.into(),
                json!(s.actions),
            );
            m.insert(
                if s.not_resource {
                    "NotResource"
                } else {
                    "Resource"
                }
                .into(),
                json!(s.resources),
            );
            if !s.conds.is_empty() {
                let mut cond = serde_json::Map::new();
                for c in &s.conds {
                    let op = if c.if_exists {
                        format!("{}IfExists", c.op)
                    } else {
                        c.op.to_owned()
                    };
                    let entry = cond.entry(op).or_insert_with(|| json!({}));
                    // A repeated operator and key can only be written once; `as_written` keeps
                    // the model to the same first occurrence.
                    if entry.get(c.key).is_none() {
                        entry[c.key] = json!(c.values);
                    }
                }
                m.insert("Condition".into(), serde_json::Value::Object(cond));
            }
            serde_json::Value::Object(m)
        })
        .collect();
    json!({"Version": "2012-10-17", "Statement": list})
}

/// The statements as the JSON actually expresses them (a repeated operator+key pair keeps its
/// first occurrence).
fn as_written(statements: &[RefStatement]) -> Vec<RefStatement> {
    statements
        .iter()
        .map(|s| {
            let mut seen = Vec::new();
            let conds = s
                .conds
                .iter()
                .filter(|c| {
                    let id = (c.op, c.if_exists, c.key);
                    if seen.contains(&id) {
                        false
                    } else {
                        seen.push(id);
                        true
                    }
                })
                .cloned()
                .collect();
            RefStatement { conds, ..s.clone() }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn evaluator_agrees_with_the_reference_model(
        policies in prop::collection::vec(prop::collection::vec(statement_strategy(), 1..4), 0..3),
        action in prop::sample::select(ACTIONS.to_vec()),
        resource in prop::sample::select(RESOURCES.to_vec()),
        username in prop::option::of(prop::sample::select(vec!["alice", "bob", "Alice", "a"])),
        secure in prop::option::of(prop::sample::select(vec!["true", "false"])),
        ip in prop::option::of(prop::sample::select(vec!["10.9.8.7", "192.0.2.7", "192.0.2.8", "::1", "203.0.113.1"])),
    ) {
        let mut keys: Vec<(&'static str, &'static str)> = Vec::new();
        if let Some(u) = username { keys.push(("aws:username", u)); }
        if let Some(s) = secure { keys.push(("aws:SecureTransport", s)); }
        if let Some(i) = ip { keys.push(("aws:SourceIp", i)); }
        let mut ctx = Context::new(action, resource);
        for (k, v) in &keys { ctx = ctx.with(k, *v); }
        let parsed: Vec<Policy> = policies
            .iter()
            .map(|p| Policy::parse(&to_json(p).to_string(), 100_000).expect("generated policy parses"))
            .collect();
        let written: Vec<RefStatement> = policies.iter().flat_map(|p| as_written(p)).collect();
        let expected = ref_decide(&written, action, resource, &keys);
        prop_assert_eq!(evaluate(parsed.iter(), &ctx), expected);
    }
}

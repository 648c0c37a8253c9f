use serde_json::json;

use super::*;

fn event() -> Value {
    json!({
        "version": "0",
        "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.cloudtrail",
        "account": "111122223333",
        "time": "2026-11-21T10:00:00Z",
        "region": "eu-west-1",
        "resources": [],
        "detail": {
            "eventName": "StopLogging",
            "eventSource": "cloudtrail.amazonaws.com",
            "sourceIPAddress": "10.1.2.3",
            "readOnly": false,
            "count": 42,
            "ratio": 0.5,
            "nothing": null,
            "userIdentity": {"type": "IAMUser", "userName": "Alice", "arn": "arn:aws:iam::111122223333:user/Alice"},
            "tags": ["prod", "eu", "critical"],
            "empty": [],
            "resources": [
                {"type": "AWS::S3::Bucket", "ARN": "arn:aws:s3:::logs"},
                {"type": "AWS::S3::Object", "ARN": "arn:aws:s3:::logs/a.txt"}
            ],
            "ipv6": "2001:db8::17"
        }
    })
}

fn m(pattern: Value) -> bool {
    Pattern::from_value(&pattern)
        .unwrap_or_else(|e| panic!("{pattern} refused: {e}"))
        .matches(&event())
}

fn refused(text: &str) -> String {
    match Pattern::parse(text) {
        Ok(p) => panic!("{text} was accepted as {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn exact_values_of_every_type() {
    assert!(m(json!({"source": ["aws.cloudtrail"]})));
    assert!(!m(json!({"source": ["aws.iam"]})));
    assert!(
        m(json!({"source": ["aws.iam", "aws.cloudtrail"]})),
        "any of the list"
    );
    assert!(m(json!({"detail": {"count": [42]}})));
    assert!(m(json!({"detail": {"count": [42.0]}})), "numbers by value");
    assert!(
        !m(json!({"detail": {"count": ["42"]}})),
        "a string is not a number"
    );
    assert!(m(json!({"detail": {"readOnly": [false]}})));
    assert!(!m(json!({"detail": {"readOnly": [true]}})));
    assert!(m(json!({"detail": {"nothing": [null]}})));
    assert!(!m(json!({"detail": {"eventName": [null]}})));
    assert!(
        !m(json!({"detail": {"eventName": ["stoplogging"]}})),
        "case matters"
    );
}

#[test]
fn every_key_must_match() {
    assert!(m(
        json!({"source": ["aws.cloudtrail"], "detail": {"eventName": ["StopLogging"]}})
    ));
    assert!(!m(
        json!({"source": ["aws.cloudtrail"], "detail": {"eventName": ["DeleteTrail"]}})
    ));
    assert!(
        !m(json!({"detail": {"missing": ["x"]}})),
        "an absent field fails a value"
    );
    assert!(!m(json!({"nosuch": {"eventName": ["StopLogging"]}})));
}

#[test]
fn nested_fields() {
    assert!(m(
        json!({"detail": {"userIdentity": {"type": ["IAMUser"], "userName": ["Alice"]}}})
    ));
    assert!(!m(json!({"detail": {"userIdentity": {"type": ["Root"]}}})));
    assert!(
        !m(json!({"detail": {"userIdentity": ["IAMUser"]}})),
        "an object is not a leaf value"
    );
}

#[test]
fn arrays_in_the_event() {
    assert!(
        m(json!({"detail": {"tags": ["eu"]}})),
        "one element matches"
    );
    assert!(!m(json!({"detail": {"tags": ["us"]}})));
    assert!(m(json!({"detail": {"tags": [{"prefix": "crit"}]}})));
    // Arrays of objects: a nested pattern matches within one element.
    assert!(m(
        json!({"detail": {"resources": {"type": ["AWS::S3::Object"]}}})
    ));
    assert!(m(
        json!({"detail": {"resources": {"type": ["AWS::S3::Bucket"], "ARN": ["arn:aws:s3:::logs"]}}})
    ));
    assert!(
        !m(
            json!({"detail": {"resources": {"type": ["AWS::S3::Bucket"], "ARN": ["arn:aws:s3:::logs/a.txt"]}}})
        ),
        "fields from different elements do not combine"
    );
    assert!(
        m(json!({"detail": {"empty": [{"exists": false}]}})),
        "an empty array is absent"
    );
    assert!(!m(json!({"detail": {"empty": [{"exists": true}]}})));
    assert!(
        !m(json!({"resources": [{"prefix": ""}]})),
        "nothing in an empty array"
    );
}

#[test]
fn prefix_and_suffix() {
    assert!(m(json!({"detail": {"eventName": [{"prefix": "Stop"}]}})));
    assert!(!m(json!({"detail": {"eventName": [{"prefix": "stop"}]}})));
    assert!(m(
        json!({"detail": {"eventName": [{"prefix": {"equals-ignore-case": "stop"}}]}})
    ));
    assert!(m(json!({"detail": {"eventName": [{"suffix": "Logging"}]}})));
    assert!(!m(
        json!({"detail": {"eventName": [{"suffix": "logging"}]}})
    ));
    assert!(m(
        json!({"detail": {"eventName": [{"suffix": {"equals-ignore-case": "LOGGING"}}]}})
    ));
    assert!(
        !m(json!({"detail": {"count": [{"prefix": "4"}]}})),
        "prefix is for strings"
    );
}

#[test]
fn equals_ignore_case_and_wildcard() {
    assert!(m(
        json!({"detail": {"userIdentity": {"userName": [{"equals-ignore-case": "ALICE"}]}}})
    ));
    assert!(!m(
        json!({"detail": {"userIdentity": {"userName": [{"equals-ignore-case": "alicia"}]}}})
    ));
    assert!(m(
        json!({"detail": {"userIdentity": {"arn": [{"wildcard": "arn:aws:iam::*:user/*"}]}}})
    ));
    assert!(m(json!({"detail": {"eventName": [{"wildcard": "Stop*"}]}})));
    assert!(m(json!({"detail": {"eventName": [{"wildcard": "*Log*"}]}})));
    assert!(m(
        json!({"detail": {"eventName": [{"wildcard": "StopLogging"}]}})
    ));
    assert!(
        !m(json!({"detail": {"eventName": [{"wildcard": "Stop"}]}})),
        "anchored at both ends"
    );
    assert!(!m(
        json!({"detail": {"eventName": [{"wildcard": "*Start*"}]}})
    ));
    assert!(!m(
        json!({"detail": {"eventName": [{"wildcard": "S*ggingX"}]}})
    ));
    let star = Pattern::from_value(&json!({"k": [{"wildcard": "a\\*b"}]})).expect("escaped");
    assert!(star.matches(&json!({"k": "a*b"})));
    assert!(!star.matches(&json!({"k": "axb"})));
    // Overlapping prefix and suffix must not share characters.
    let ab = Pattern::from_value(&json!({"k": [{"wildcard": "ab*ba"}]})).expect("wildcard");
    assert!(!ab.matches(&json!({"k": "aba"})));
    assert!(ab.matches(&json!({"k": "abba"})));
}

#[test]
fn anything_but_forms() {
    assert!(m(
        json!({"detail": {"eventName": [{"anything-but": "DeleteTrail"}]}})
    ));
    assert!(!m(
        json!({"detail": {"eventName": [{"anything-but": "StopLogging"}]}})
    ));
    assert!(!m(
        json!({"detail": {"eventName": [{"anything-but": ["DeleteTrail", "StopLogging"]}]}})
    ));
    assert!(m(
        json!({"detail": {"count": [{"anything-but": [1, 2, 3]}]}})
    ));
    assert!(!m(json!({"detail": {"count": [{"anything-but": 42}]}})));
    assert!(!m(
        json!({"detail": {"eventName": [{"anything-but": {"prefix": "Stop"}}]}})
    ));
    assert!(m(
        json!({"detail": {"eventName": [{"anything-but": {"prefix": ["Start", "Delete"]}}]}})
    ));
    assert!(!m(
        json!({"detail": {"eventName": [{"anything-but": {"suffix": "Logging"}}]}})
    ));
    assert!(!m(
        json!({"detail": {"eventName": [{"anything-but": {"equals-ignore-case": "stoplogging"}}]}})
    ));
    assert!(m(
        json!({"detail": {"eventName": [{"anything-but": {"equals-ignore-case": ["a", "b"]}}]}})
    ));
    assert!(!m(
        json!({"detail": {"eventName": [{"anything-but": {"wildcard": "*Log*"}}]}})
    ));
    assert!(
        !m(json!({"detail": {"missing": [{"anything-but": "x"}]}})),
        "absent is not anything"
    );
    assert!(
        m(json!({"detail": {"tags": [{"anything-but": "prod"}]}})),
        "another element qualifies"
    );
}

#[test]
fn numeric_ranges() {
    assert!(m(
        json!({"detail": {"count": [{"numeric": [">", 0, "<=", 42]}]}})
    ));
    assert!(!m(
        json!({"detail": {"count": [{"numeric": [">", 0, "<", 42]}]}})
    ));
    assert!(m(json!({"detail": {"count": [{"numeric": ["=", 42]}]}})));
    assert!(m(json!({"detail": {"ratio": [{"numeric": [">=", 0.5]}]}})));
    assert!(!m(json!({"detail": {"ratio": [{"numeric": [">", 0.5]}]}})));
    assert!(
        m(json!({"detail": {"count": [{"numeric": ["<", 100, ">", 40]}]}})),
        "either order"
    );
    assert!(
        !m(json!({"detail": {"eventName": [{"numeric": [">", 0]}]}})),
        "strings are not numbers"
    );
}

#[test]
fn exists() {
    assert!(m(json!({"detail": {"eventName": [{"exists": true}]}})));
    assert!(!m(json!({"detail": {"errorCode": [{"exists": true}]}})));
    assert!(m(json!({"detail": {"errorCode": [{"exists": false}]}})));
    assert!(!m(json!({"detail": {"eventName": [{"exists": false}]}})));
    assert!(
        m(json!({"detail": {"nothing": [{"exists": true}]}})),
        "null is a value"
    );
    assert!(
        m(json!({"nosuch": {"deeper": [{"exists": false}]}})),
        "under an absent object"
    );
    assert!(m(
        json!({"detail": {"errorCode": [{"exists": false}, "AccessDenied"]}})
    ));
}

#[test]
fn cidr_blocks() {
    assert!(m(
        json!({"detail": {"sourceIPAddress": [{"cidr": "10.1.0.0/16"}]}})
    ));
    assert!(!m(
        json!({"detail": {"sourceIPAddress": [{"cidr": "10.2.0.0/16"}]}})
    ));
    assert!(m(
        json!({"detail": {"sourceIPAddress": [{"cidr": "0.0.0.0/0"}]}})
    ));
    assert!(m(json!({"detail": {"ipv6": [{"cidr": "2001:db8::/32"}]}})));
    assert!(
        !m(json!({"detail": {"ipv6": [{"cidr": "10.0.0.0/8"}]}})),
        "families differ"
    );
    assert!(
        !m(json!({"detail": {"eventName": [{"cidr": "10.0.0.0/8"}]}})),
        "not an address"
    );
}

#[test]
fn or_at_any_level() {
    assert!(m(
        json!({"$or": [{"source": ["aws.iam"]}, {"detail": {"eventName": ["StopLogging"]}}]})
    ));
    assert!(!m(
        json!({"$or": [{"source": ["aws.iam"]}, {"detail": {"eventName": ["DeleteTrail"]}}]})
    ));
    assert!(m(json!({"source": ["aws.cloudtrail"], "detail": {"$or": [
        {"count": [{"numeric": [">", 100]}]},
        {"userIdentity": {"userName": ["Alice"]}}
    ]}})));
    assert!(
        !m(json!({"source": ["aws.iam"], "$or": [{"region": ["eu-west-1"]}, {"account": ["1"]}]})),
        "the other keys still count"
    );
}

#[test]
fn refusals_say_what_is_wrong() {
    assert!(refused("[1]").contains("must be a JSON object"));
    assert!(refused("{}").contains("at least one field"));
    assert!(refused("{\"a\": \"x\"}").contains("\"a\": match values must be in an array"));
    assert!(refused("{\"a\": []}").contains("empty array"));
    assert!(refused("{\"a\": {}}").contains("empty object"));
    assert!(refused("{\"a\": {\"b\": [[1]]}}").contains("\"a.b\""));
    assert!(refused("{\"a\": [{\"nope\": 1}]}").contains("unknown operator \"nope\""));
    assert!(refused("{\"a\": [{\"prefix\": 1}]}").contains("prefix takes a string"));
    assert!(refused("{\"a\": [{\"exists\": \"yes\"}]}").contains("exists takes true or false"));
    assert!(refused("{\"a\": [{\"numeric\": [\">\", \"1\"]}]}").contains("must be numbers"));
    assert!(refused("{\"a\": [{\"numeric\": [\">\", 5, \"<\", 1]}]}").contains("empty"));
    assert!(
        refused("{\"a\": [{\"numeric\": [\">\", 1, \">\", 2]}]}").contains("lower and one upper")
    );
    assert!(refused("{\"a\": [{\"numeric\": [\"~\", 1]}]}").contains("operators"));
    assert!(refused("{\"a\": [{\"numeric\": [\"<\", 6e9]}]}").contains("5.0e9"));
    assert!(refused("{\"a\": [{\"wildcard\": \"a**b\"}]}").contains("consecutive"));
    assert!(refused("{\"a\": [{\"wildcard\": \"a\\\\qb\"}]}").contains("escape"));
    assert!(refused("{\"a\": [{\"cidr\": \"10.0.0.0/33\"}]}").contains("prefix length"));
    assert!(refused("{\"a\": [{\"cidr\": \"10.0.0.0\"}]}").contains("CIDR"));
    assert!(refused("{\"a\": [{\"anything-but\": []}]}").contains("at least one"));
    assert!(refused("{\"a\": [{\"anything-but\": {\"exists\": true}}]}").contains("cannot hold"));
    assert!(refused("{\"a\": [{\"prefix\": \"x\", \"suffix\": \"y\"}]}").contains("exactly one"));
    assert!(refused("{\"$or\": [{\"a\": [1]}]}").contains("at least two"));
    assert!(refused("{\"$or\": {\"a\": [1]}}").contains("array of patterns"));
    assert!(refused("{\"a\": ").contains("not JSON"));
    let long = format!("{{\"a\": [\"{}\"]}}", "x".repeat(MAX_PATTERN_LEN));
    assert!(refused(&long).contains("at most 4096"));
    let deep = format!("{}[1]{}", "{\"a\":".repeat(40), "}".repeat(40));
    assert!(refused(&deep).contains("nesting deeper"));
}

//! EventBridge event patterns: the JSON pattern language, parsed once and matched many times.
//!
//! A pattern is a JSON object. Each key names a field of the event; its value is either a nested
//! pattern object or an array of matchers, any of which may match the field's leaf value:
//!
//! - literals: a string, number, `true`, `false` or `null`, matched exactly (numbers by value);
//! - `{"prefix": "s"}`, `{"suffix": "s"}` (either may wrap `{"equals-ignore-case": "s"}`);
//! - `{"equals-ignore-case": "s"}`;
//! - `{"anything-but": v}` where `v` is a literal, a list of literals, or an object with
//!   `prefix`, `suffix`, `equals-ignore-case` (a string or list) or `wildcard`;
//! - `{"numeric": [op, n, (op, n)]}` with `=`, `<`, `<=`, `>`, `>=` (one `=`, or a lower and/or
//!   an upper bound);
//! - `{"exists": true|false}`;
//! - `{"wildcard": "a*b"}` (`*` any run of characters, `\*` and `\\` escaped);
//! - `{"cidr": "10.0.0.0/8"}` (IPv4 or IPv6).
//!
//! `"$or": [pattern, pattern, ...]` at any level needs one of its patterns to match there.
//!
//! Matching follows EventBridge: every key of the pattern must match. A field whose value is an
//! array matches when one of its elements does; a nested pattern over an array of objects must
//! match within one element (matches never mix elements). Only leaf values (strings, numbers,
//! booleans, null) are matched; an absent field, an empty array and an object match only
//! `{"exists": false}`.

use std::net::IpAddr;

use serde_json::{Map, Value};

/// Longest pattern text accepted (EventBridge's `EventPattern` limit).
pub const MAX_PATTERN_LEN: usize = 4096;
/// Deepest nesting of objects accepted.
const MAX_DEPTH: usize = 24;
/// EventBridge's range for numeric matching.
const NUMERIC_LIMIT: f64 = 5.0e9;

/// Why a pattern was refused; the message says where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Event pattern is not valid. Reason: {0}")]
pub struct PatternError(pub String);

fn err<T>(path: &[&str], why: impl std::fmt::Display) -> Result<T, PatternError> {
    let at = if path.is_empty() {
        "the pattern".to_owned()
    } else {
        format!("\"{}\"", path.join("."))
    };
    Err(PatternError(format!("{at}: {why}")))
}

/// A parsed event pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    root: Node,
}

#[derive(Debug, Clone, PartialEq)]
struct Node {
    fields: Vec<(String, Field)>,
    /// Each `$or` at this level: one of its alternatives must match.
    ors: Vec<Vec<Node>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Nested(Node),
    Leaf(Vec<Matcher>),
}

#[derive(Debug, Clone, PartialEq)]
enum Literal {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Exact(Literal),
    Prefix { text: String, ignore_case: bool },
    Suffix { text: String, ignore_case: bool },
    EqualsIgnoreCase(String),
    AnythingBut(AnythingBut),
    Numeric(Vec<(Cmp, f64)>),
    Exists(bool),
    Wildcard(Wildcard),
    Cidr { net: IpAddr, bits: u8 },
}

#[derive(Debug, Clone, PartialEq)]
enum AnythingBut {
    Values(Vec<Literal>),
    Prefix(Vec<String>),
    Suffix(Vec<String>),
    IgnoreCase(Vec<String>),
    Wildcard(Vec<Wildcard>),
}

/// A wildcard pattern split at its unescaped `*`s.
#[derive(Debug, Clone, PartialEq)]
struct Wildcard {
    parts: Vec<String>,
}

impl Pattern {
    /// Parses pattern text, refusing anything EventBridge would refuse.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.len() > MAX_PATTERN_LEN {
            return err(
                &[],
                format!(
                    "it is {} characters long; at most {MAX_PATTERN_LEN} are allowed",
                    text.len()
                ),
            );
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| PatternError(format!("the pattern is not JSON: {e}")))?;
        Self::from_value(&value)
    }

    /// Parses a pattern already read as JSON.
    pub fn from_value(value: &Value) -> Result<Self, PatternError> {
        let Value::Object(map) = value else {
            return err(&[], "a pattern must be a JSON object");
        };
        if map.is_empty() {
            return err(&[], "a pattern must name at least one field");
        }
        Ok(Self {
            root: parse_node(map, &mut Vec::new())?,
        })
    }

    /// Whether `event` (an EventBridge event, as JSON) matches.
    pub fn matches(&self, event: &Value) -> bool {
        match_node(&self.root, Some(event))
    }
}

fn parse_node<'a>(
    map: &'a Map<String, Value>,
    path: &mut Vec<&'a str>,
) -> Result<Node, PatternError> {
    if path.len() > MAX_DEPTH {
        return err(path, format!("nesting deeper than {MAX_DEPTH} levels"));
    }
    let mut node = Node {
        fields: Vec::new(),
        ors: Vec::new(),
    };
    for (key, value) in map {
        path.push(key);
        if key == "$or" {
            let Value::Array(alternatives) = value else {
                return err(path, "$or takes an array of patterns");
            };
            if alternatives.len() < 2 {
                return err(path, "$or needs at least two patterns");
            }
            let mut alts = Vec::with_capacity(alternatives.len());
            for alt in alternatives {
                match alt {
                    Value::Object(m) if !m.is_empty() => alts.push(parse_node(m, path)?),
                    _ => return err(path, "each $or alternative must be a non-empty object"),
                }
            }
            node.ors.push(alts);
        } else {
            let field = match value {
                Value::Object(m) if m.is_empty() => {
                    return err(path, "an empty object matches nothing");
                }
                Value::Object(m) => Field::Nested(parse_node(m, path)?),
                Value::Array(items) if items.is_empty() => {
                    return err(path, "an empty array matches nothing");
                }
                Value::Array(items) => {
                    let mut matchers = Vec::with_capacity(items.len());
                    for item in items {
                        matchers.push(parse_matcher(item, path)?);
                    }
                    Field::Leaf(matchers)
                }
                _ => {
                    return err(path, "match values must be in an array");
                }
            };
            node.fields.push((key.clone(), field));
        }
        path.pop();
    }
    Ok(node)
}

fn literal(v: &Value, path: &[&str]) -> Result<Literal, PatternError> {
    Ok(match v {
        Value::String(s) => Literal::Str(s.clone()),
        Value::Number(n) => {
            Literal::Num(n.as_f64().filter(|f| f.is_finite()).ok_or_else(|| {
                PatternError(format!("\"{}\": number out of range", path.join(".")))
            })?)
        }
        Value::Bool(b) => Literal::Bool(*b),
        Value::Null => Literal::Null,
        _ => return err(path, "expected a string, number, boolean or null"),
    })
}

fn string<'a>(v: &'a Value, path: &[&str], op: &str) -> Result<&'a str, PatternError> {
    v.as_str()
        .map_or_else(|| err(path, format!("{op} takes a string")), Ok)
}

fn strings(v: &Value, path: &[&str], op: &str) -> Result<Vec<String>, PatternError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| string(i, path, op).map(str::to_owned))
            .collect(),
        _ => err(
            path,
            format!("{op} takes a string or a non-empty list of strings"),
        ),
    }
}

fn parse_matcher(item: &Value, path: &[&str]) -> Result<Matcher, PatternError> {
    let Value::Object(op) = item else {
        if item.is_array() {
            return err(path, "arrays cannot be nested inside a match array");
        }
        return Ok(Matcher::Exact(literal(item, path)?));
    };
    if op.len() != 1 {
        return err(path, "a matcher object has exactly one operator");
    }
    let Some((name, arg)) = op.iter().next() else {
        return err(path, "empty matcher");
    };
    match name.as_str() {
        "prefix" | "suffix" => {
            let (text, ignore_case) = match arg {
                Value::String(s) => (s.clone(), false),
                Value::Object(inner) if inner.len() == 1 => match inner.get("equals-ignore-case") {
                    Some(Value::String(s)) => (s.clone(), true),
                    _ => {
                        return err(
                            path,
                            format!("{name} takes a string or {{\"equals-ignore-case\": string}}"),
                        );
                    }
                },
                _ => return err(path, format!("{name} takes a string")),
            };
            Ok(if name == "prefix" {
                Matcher::Prefix { text, ignore_case }
            } else {
                Matcher::Suffix { text, ignore_case }
            })
        }
        "equals-ignore-case" => Ok(Matcher::EqualsIgnoreCase(
            string(arg, path, "equals-ignore-case")?.to_owned(),
        )),
        "wildcard" => Ok(Matcher::Wildcard(parse_wildcard(
            string(arg, path, "wildcard")?,
            path,
        )?)),
        "exists" => match arg {
            Value::Bool(b) => Ok(Matcher::Exists(*b)),
            _ => err(path, "exists takes true or false"),
        },
        "numeric" => parse_numeric(arg, path),
        "cidr" => parse_cidr(string(arg, path, "cidr")?, path),
        "anything-but" => parse_anything_but(arg, path),
        other => err(path, format!("unknown operator {other:?}")),
    }
}

fn parse_anything_but(arg: &Value, path: &[&str]) -> Result<Matcher, PatternError> {
    let but = match arg {
        Value::Array(items) if items.is_empty() => {
            return err(path, "anything-but needs at least one value");
        }
        Value::Array(items) => {
            let values = items
                .iter()
                .map(|i| match i {
                    Value::String(_) | Value::Number(_) => literal(i, path),
                    _ => err(path, "anything-but lists hold strings or numbers"),
                })
                .collect::<Result<Vec<_>, _>>()?;
            AnythingBut::Values(values)
        }
        Value::String(_) | Value::Number(_) => AnythingBut::Values(vec![literal(arg, path)?]),
        Value::Object(inner) if inner.len() == 1 => {
            let Some((op, v)) = inner.iter().next() else {
                return err(path, "empty anything-but");
            };
            match op.as_str() {
                "prefix" => AnythingBut::Prefix(strings(v, path, "anything-but prefix")?),
                "suffix" => AnythingBut::Suffix(strings(v, path, "anything-but suffix")?),
                "equals-ignore-case" => {
                    AnythingBut::IgnoreCase(strings(v, path, "anything-but equals-ignore-case")?)
                }
                "wildcard" => AnythingBut::Wildcard(
                    strings(v, path, "anything-but wildcard")?
                        .iter()
                        .map(|w| parse_wildcard(w, path))
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return err(path, format!("anything-but cannot hold {other:?}"));
                }
            }
        }
        _ => {
            return err(
                path,
                "anything-but takes a string, a number, a list of them, or one of prefix, suffix, equals-ignore-case, wildcard",
            );
        }
    };
    Ok(Matcher::AnythingBut(but))
}

fn parse_numeric(arg: &Value, path: &[&str]) -> Result<Matcher, PatternError> {
    let Value::Array(items) = arg else {
        return err(path, "numeric takes an array like [\">\", 0, \"<=\", 5]");
    };
    if items.is_empty() || items.len() % 2 != 0 || items.len() > 4 {
        return err(path, "numeric takes one or two (operator, number) pairs");
    }
    let mut bounds = Vec::new();
    for pair in items.chunks(2) {
        let cmp = match pair[0].as_str() {
            Some("=") => Cmp::Eq,
            Some("<") => Cmp::Lt,
            Some("<=") => Cmp::Le,
            Some(">") => Cmp::Gt,
            Some(">=") => Cmp::Ge,
            _ => return err(path, "numeric operators are =, <, <=, > and >="),
        };
        let Some(n) = pair[1].as_f64() else {
            return err(path, "numeric bounds must be numbers");
        };
        if !(-NUMERIC_LIMIT..=NUMERIC_LIMIT).contains(&n) {
            return err(path, "numeric bounds must be between -5.0e9 and 5.0e9");
        }
        bounds.push((cmp, n));
    }
    let lower = |c: Cmp| matches!(c, Cmp::Gt | Cmp::Ge);
    let upper = |c: Cmp| matches!(c, Cmp::Lt | Cmp::Le);
    match bounds.as_slice() {
        [_] => {}
        [(a, x), (b, y)] => {
            let (lo, hi) = if lower(*a) && upper(*b) {
                (x, y)
            } else if upper(*a) && lower(*b) {
                (y, x)
            } else {
                return err(path, "a numeric range needs one lower and one upper bound");
            };
            if lo > hi {
                return err(path, "the numeric range is empty");
            }
        }
        _ => return err(path, "numeric takes one or two (operator, number) pairs"),
    }
    Ok(Matcher::Numeric(bounds))
}

fn parse_cidr(text: &str, path: &[&str]) -> Result<Matcher, PatternError> {
    let Some((addr, bits)) = text.split_once('/') else {
        return err(
            path,
            format!("{text:?} is not a CIDR block like 10.0.0.0/24"),
        );
    };
    let net: IpAddr = addr
        .parse()
        .map_or_else(|_| err(path, format!("{addr:?} is not an IP address")), Ok)?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let bits: u8 = match bits.parse() {
        Ok(b) if b <= max => b,
        _ => return err(path, format!("{bits:?} is not a prefix length up to {max}")),
    };
    Ok(Matcher::Cidr { net, bits })
}

fn parse_wildcard(text: &str, path: &[&str]) -> Result<Wildcard, PatternError> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars().peekable();
    let mut last_star = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('*' | '\\')) => {
                    if let Some(p) = parts.last_mut() {
                        p.push(e);
                    }
                    last_star = false;
                }
                _ => return err(path, "in a wildcard, \\ may only escape * or \\"),
            },
            '*' => {
                if last_star {
                    return err(path, "a wildcard cannot have consecutive *");
                }
                parts.push(String::new());
                last_star = true;
            }
            c => {
                if let Some(p) = parts.last_mut() {
                    p.push(c);
                }
                last_star = false;
            }
        }
    }
    Ok(Wildcard { parts })
}

impl Wildcard {
    fn matches(&self, s: &str) -> bool {
        let [first, middle @ .., last] = self.parts.as_slice() else {
            // No star: the whole text.
            return self.parts.first().is_some_and(|p| p == s);
        };
        let Some(mut rest) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        if rest.len() < last.len() {
            return false;
        }
        let tail_at = rest.len() - last.len();
        if !rest.is_char_boundary(tail_at) || &rest[tail_at..] != last.as_str() {
            return false;
        }
        rest = &rest[..tail_at];
        for part in middle {
            match rest.find(part.as_str()) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        true
    }
}

fn match_node(node: &Node, value: Option<&Value>) -> bool {
    let object = value.and_then(Value::as_object);
    node.fields.iter().all(|(key, field)| {
        let child = object.and_then(|o| o.get(key));
        match_field(field, child)
    }) && node
        .ors
        .iter()
        .all(|alts| alts.iter().any(|n| match_node(n, value)))
}

fn match_field(field: &Field, child: Option<&Value>) -> bool {
    match field {
        Field::Nested(node) => match child {
            // Within one element of an array of objects.
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().any(|item| match_node(node, Some(item)))
            }
            Some(Value::Array(_)) => match_node(node, None),
            other => match_node(node, other),
        },
        Field::Leaf(matchers) => {
            let leaves: Vec<&Value> = match child {
                None => Vec::new(),
                Some(Value::Array(items)) => items.iter().filter(|v| is_leaf(v)).collect(),
                Some(v) if is_leaf(v) => vec![v],
                Some(_) => Vec::new(),
            };
            matchers.iter().any(|m| match m {
                Matcher::Exists(want) => leaves.is_empty() != *want,
                m => leaves.iter().any(|leaf| match_leaf(m, leaf)),
            })
        }
    }
}

fn is_leaf(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

fn literal_eq(lit: &Literal, v: &Value) -> bool {
    match (lit, v) {
        (Literal::Str(a), Value::String(b)) => a == b,
        (Literal::Num(a), Value::Number(b)) => b.as_f64() == Some(*a),
        (Literal::Bool(a), Value::Bool(b)) => a == b,
        (Literal::Null, Value::Null) => true,
        _ => false,
    }
}

fn starts_with_ci(s: &str, p: &str) -> bool {
    s.to_lowercase().starts_with(&p.to_lowercase())
}

fn ends_with_ci(s: &str, p: &str) -> bool {
    s.to_lowercase().ends_with(&p.to_lowercase())
}

fn match_leaf(m: &Matcher, v: &Value) -> bool {
    let text = v.as_str();
    match m {
        Matcher::Exact(lit) => literal_eq(lit, v),
        Matcher::Prefix {
            text: p,
            ignore_case,
        } => text.is_some_and(|s| {
            if *ignore_case {
                starts_with_ci(s, p)
            } else {
                s.starts_with(p.as_str())
            }
        }),
        Matcher::Suffix {
            text: p,
            ignore_case,
        } => text.is_some_and(|s| {
            if *ignore_case {
                ends_with_ci(s, p)
            } else {
                s.ends_with(p.as_str())
            }
        }),
        Matcher::EqualsIgnoreCase(p) => text.is_some_and(|s| s.to_lowercase() == p.to_lowercase()),
        Matcher::Wildcard(w) => text.is_some_and(|s| w.matches(s)),
        Matcher::Numeric(bounds) => v.as_f64().is_some_and(|x| {
            bounds.iter().all(|(cmp, n)| match cmp {
                Cmp::Eq => x == *n,
                Cmp::Lt => x < *n,
                Cmp::Le => x <= *n,
                Cmp::Gt => x > *n,
                Cmp::Ge => x >= *n,
            })
        }),
        Matcher::Cidr { net, bits } => text
            .and_then(|s| s.parse::<IpAddr>().ok())
            .is_some_and(|ip| in_cidr(ip, *net, *bits)),
        Matcher::AnythingBut(but) => match but {
            AnythingBut::Values(values) => {
                !matches!(v, Value::Null) && !values.iter().any(|l| literal_eq(l, v))
            }
            AnythingBut::Prefix(ps) => {
                text.is_some_and(|s| !ps.iter().any(|p| s.starts_with(p.as_str())))
            }
            AnythingBut::Suffix(ps) => {
                text.is_some_and(|s| !ps.iter().any(|p| s.ends_with(p.as_str())))
            }
            AnythingBut::IgnoreCase(ps) => text.is_some_and(|s| {
                let lower = s.to_lowercase();
                !ps.iter().any(|p| p.to_lowercase() == lower)
            }),
            AnythingBut::Wildcard(ws) => text.is_some_and(|s| !ws.iter().any(|w| w.matches(s))),
        },
        Matcher::Exists(_) => false,
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (a, b, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let bits = u32::from(bits);
    if bits == 0 {
        return true;
    }
    let shift = width - bits;
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
#[path = "pattern_tests.rs"]
mod tests;

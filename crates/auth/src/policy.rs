//! IAM-style identity policies: the JSON grammar, and evaluation of a request against a set of
//! policies (an explicit Deny wins over any Allow; without an Allow the request is denied).

use std::net::IpAddr;

use serde_json::Value;

/// Policy versions IAM accepts. `2012-10-17` enables policy variables (`${aws:username}`).
pub const VERSIONS: [&str; 2] = ["2012-10-17", "2008-10-17"];

/// Why a policy document was refused (`MalformedPolicyDocument`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, PolicyError> {
    Err(PolicyError(msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// `Action`/`Resource` (the listed patterns match) or `NotAction`/`NotResource` (they must not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patterns {
    Only(Vec<String>),
    Not(Vec<String>),
}

/// Condition operators of the string, date, bool, IP and null families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    DateEquals,
    DateNotEquals,
    DateLessThan,
    DateLessThanEquals,
    DateGreaterThan,
    DateGreaterThanEquals,
    Bool,
    IpAddress,
    NotIpAddress,
    Null,
}

impl Operator {
    fn parse(name: &str) -> Option<Self> {
        use Operator::*;
        Some(match name {
            "StringEquals" => StringEquals,
            "StringNotEquals" => StringNotEquals,
            "StringEqualsIgnoreCase" => StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => StringNotEqualsIgnoreCase,
            "StringLike" => StringLike,
            "StringNotLike" => StringNotLike,
            "DateEquals" => DateEquals,
            "DateNotEquals" => DateNotEquals,
            "DateLessThan" => DateLessThan,
            "DateLessThanEquals" => DateLessThanEquals,
            "DateGreaterThan" => DateGreaterThan,
            "DateGreaterThanEquals" => DateGreaterThanEquals,
            "Bool" => Bool,
            "IpAddress" => IpAddress,
            "NotIpAddress" => NotIpAddress,
            "Null" => Null,
            _ => return None,
        })
    }

    /// Operators that hold when none of their values matches (and when the key is absent).
    fn negated(self) -> Option<Self> {
        use Operator::*;
        Some(match self {
            StringNotEquals => StringEquals,
            StringNotEqualsIgnoreCase => StringEqualsIgnoreCase,
            StringNotLike => StringLike,
            DateNotEquals => DateEquals,
            NotIpAddress => IpAddress,
            _ => return None,
        })
    }
}

/// `ForAnyValue:` / `ForAllValues:` in front of an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetQualifier {
    AnyValue,
    AllValues,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub operator: Operator,
    pub if_exists: bool,
    pub qualifier: Option<SetQualifier>,
    /// As written; keys compare case-insensitively.
    pub key: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    pub actions: Patterns,
    pub resources: Patterns,
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub version: Option<String>,
    pub statements: Vec<Statement>,
}

/// What the evaluator is asked about: an action on a resource, with the request's condition
/// keys (`aws:SourceIp`, `aws:CurrentTime`, ...).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `service:Action`, e.g. `cloudtrail:StopLogging`.
    pub action: String,
    /// A resource ARN, or `*` for actions without one.
    pub resource: String,
    /// Condition keys and their values (a key may repeat for a multi-valued key).
    pub keys: Vec<(String, String)>,
}

impl Context {
    pub fn new(action: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            action: action.into(),
            resource: resource.into(),
            keys: Vec::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.keys.push((key.to_owned(), value.into()));
        self
    }

    fn values(&self, key: &str) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The outcome of evaluating policies for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// A statement with `"Effect": "Deny"` matched.
    ExplicitDeny,
    /// No statement allowed it.
    ImplicitDeny,
}

/// Evaluates `policies` for `ctx`: any matching Deny denies; otherwise any matching Allow
/// allows; otherwise the request is implicitly denied.
pub fn evaluate<'a>(policies: impl IntoIterator<Item = &'a Policy>, ctx: &Context) -> Decision {
    let mut allowed = false;
    for p in policies {
        for s in &p.statements {
            if s.applies(p.version.as_deref(), ctx) {
                match s.effect {
                    Effect::Deny => return Decision::ExplicitDeny,
                    Effect::Allow => allowed = true,
                }
            }
        }
    }
    if allowed {
        Decision::Allow
    } else {
        Decision::ImplicitDeny
    }
}

impl Statement {
    fn applies(&self, version: Option<&str>, ctx: &Context) -> bool {
        let vars = version == Some("2012-10-17");
        let action_hit =
            |pats: &[String]| pats.iter().any(|p| wildcard_match(p, &ctx.action, true));
        let resource_hit = |pats: &[String]| {
            pats.iter().any(|p| {
                let p = if vars { substitute(p, ctx) } else { p.clone() };
                wildcard_match(&p, &ctx.resource, false)
            })
        };
        let action_ok = match &self.actions {
            Patterns::Only(p) => action_hit(p),
            Patterns::Not(p) => !action_hit(p),
        };
        let resource_ok = match &self.resources {
            Patterns::Only(p) => resource_hit(p),
            Patterns::Not(p) => !resource_hit(p),
        };
        action_ok && resource_ok && self.conditions.iter().all(|c| c.holds(vars, ctx))
    }
}

/// Replaces `${key}` policy variables with the request's value (or leaves an unknown one as a
/// pattern that cannot match, as IAM does).
fn substitute(pattern: &str, ctx: &Context) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let key = &rest[start + 2..start + end];
        match key {
            "*" => out.push('*'),
            "?" => out.push('?'),
            "$" => out.push('$'),
            _ => match ctx.values(key).first() {
                Some(v) => out.push_str(v),
                // No value: the pattern must not match anything.
                None => out.push('\u{0}'),
            },
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

impl Condition {
    fn holds(&self, vars: bool, ctx: &Context) -> bool {
        let values: Vec<String> = if vars {
            self.values.iter().map(|x| substitute(x, ctx)).collect()
        } else {
            self.values.clone()
        };
        let present = ctx.values(&self.key);
        if self.operator == Operator::Null {
            let want_absent = values.iter().any(|v| v.eq_ignore_ascii_case("true"));
            let want_present = values.iter().any(|v| v.eq_ignore_ascii_case("false"));
            return (want_absent && present.is_empty()) || (want_present && !present.is_empty());
        }
        if present.is_empty() {
            if self.if_exists {
                return true;
            }
            return match self.qualifier {
                Some(SetQualifier::AllValues) => true,
                Some(SetQualifier::AnyValue) => false,
                None => self.operator.negated().is_some(),
            };
        }
        let one = |value: &str| -> bool {
            match self.operator.negated() {
                Some(positive) => !values.iter().any(|p| matches(positive, p, value)),
                None => values.iter().any(|p| matches(self.operator, p, value)),
            }
        };
        match self.qualifier {
            Some(SetQualifier::AllValues) => present.iter().all(|v| one(v)),
            Some(SetQualifier::AnyValue) => present.iter().any(|v| one(v)),
            // A single-valued key: every value the request has must satisfy it.
            None => present.iter().all(|v| one(v)),
        }
    }
}

/// Does request `value` match policy value `pattern` under a positive operator?
fn matches(op: Operator, pattern: &str, value: &str) -> bool {
    use Operator::*;
    match op {
        StringEquals => pattern == value,
        StringEqualsIgnoreCase => pattern.eq_ignore_ascii_case(value),
        StringLike => wildcard_match(pattern, value, false),
        DateEquals
        | DateLessThan
        | DateLessThanEquals
        | DateGreaterThan
        | DateGreaterThanEquals => {
            let (Some(p), Some(v)) = (parse_date(pattern), parse_date(value)) else {
                return false;
            };
            match op {
                DateEquals => v == p,
                DateLessThan => v < p,
                DateLessThanEquals => v <= p,
                DateGreaterThan => v > p,
                _ => v >= p,
            }
        }
        Bool => pattern.eq_ignore_ascii_case(value),
        IpAddress => match (parse_net(pattern), value.parse::<IpAddr>()) {
            (Some(net), Ok(ip)) => net.contains(&ip),
            _ => false,
        },
        // Negated operators and Null are handled by the caller.
        _ => false,
    }
}

/// A date condition value: ISO 8601 (`2026-11-21T10:00:00Z`, or a date) or epoch seconds.
/// Returns milliseconds since the epoch.
pub fn parse_date(s: &str) -> Option<i64> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t.as_millisecond());
    }
    if let Ok(d) = s.parse::<jiff::civil::Date>() {
        return d
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp().as_millisecond());
    }
    s.parse::<i64>()
        .ok()
        .and_then(|secs| secs.checked_mul(1000))
}

fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    if let Ok(n) = s.parse::<ipnet::IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

/// `*` matches any run of characters (also none), `?` exactly one.
pub fn wildcard_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if ignore_case {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

fn strings(v: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    let one = |x: &Value| -> Result<String, PolicyError> {
        match x {
            Value::String(s) => Ok(s.clone()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Number(n) => Ok(n.to_string()),
            _ => err(format!("{what} must be a string or a list of strings")),
        }
    };
    let out = match v {
        Value::Array(a) => a.iter().map(one).collect::<Result<Vec<_>, _>>()?,
        x => vec![one(x)?],
    };
    if out.is_empty() {
        return err(format!("{what} must not be an empty list"));
    }
    Ok(out)
}

fn check_action(a: &str) -> Result<(), PolicyError> {
    if a == "*" {
        return Ok(());
    }
    match a.split_once(':') {
        Some((svc, act))
            if !svc.is_empty()
                && svc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !act.is_empty()
                && act
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?') =>
        {
            Ok(())
        }
        _ => err(format!(
            "Action '{a}' must be '*' or of the form service:Action (letters, digits, * and ?)"
        )),
    }
}

fn check_resource(r: &str) -> Result<(), PolicyError> {
    if r == "*" || r.starts_with("arn:") {
        return Ok(());
    }
    err(format!("Resource '{r}' must be '*' or an ARN (arn:...)"))
}

fn parse_conditions(v: &Value) -> Result<Vec<Condition>, PolicyError> {
    let Value::Object(ops) = v else {
        return err("Condition must be an object of operators");
    };
    let mut out = Vec::new();
    for (name, block) in ops {
        let (qualifier, rest) = if let Some(r) = name.strip_prefix("ForAnyValue:") {
            (Some(SetQualifier::AnyValue), r)
        } else if let Some(r) = name.strip_prefix("ForAllValues:") {
            (Some(SetQualifier::AllValues), r)
        } else {
            (None, name.as_str())
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) if b != "Null" => (b, true),
            _ => (rest, false),
        };
        let Some(operator) = Operator::parse(base) else {
            return err(format!("Condition operator '{name}' is not supported"));
        };
        let Value::Object(keys) = block else {
            return err(format!("Condition '{name}' must be an object of keys"));
        };
        if keys.is_empty() {
            return err(format!("Condition '{name}' has no keys"));
        }
        for (key, vals) in keys {
            if key.is_empty() || key.len() > 256 {
                return err(format!("Condition key '{key}' must be 1 to 256 characters"));
            }
            let values = strings(vals, &format!("Condition {name} {key}"))?;
            for value in &values {
                let ok = match operator {
                    Operator::DateEquals
                    | Operator::DateNotEquals
                    | Operator::DateLessThan
                    | Operator::DateLessThanEquals
                    | Operator::DateGreaterThan
                    | Operator::DateGreaterThanEquals => {
                        value.contains("${") || parse_date(value).is_some()
                    }
                    Operator::Bool | Operator::Null => {
                        value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
                    }
                    Operator::IpAddress | Operator::NotIpAddress => parse_net(value).is_some(),
                    _ => true,
                };
                if !ok {
                    return err(format!(
                        "Condition {name} {key}: '{value}' is not a valid value for this operator"
                    ));
                }
            }
            out.push(Condition {
                operator,
                if_exists,
                qualifier,
                key: key.clone(),
                values,
            });
        }
    }
    Ok(out)
}

fn parse_statement(v: &Value) -> Result<Statement, PolicyError> {
    let Value::Object(m) = v else {
        return err("each Statement must be an object");
    };
    for k in m.keys() {
        match k.as_str() {
            "Sid" | "Effect" | "Action" | "NotAction" | "Resource" | "NotResource"
            | "Condition" => {}
            "Principal" | "NotPrincipal" => {
                return err("Policy document should not specify a principal.");
            }
            other => return err(format!("Statement has an unknown element '{other}'")),
        }
    }
    let sid = match m.get("Sid") {
        None => None,
        Some(Value::String(s)) if s.chars().all(|c| c.is_ascii_alphanumeric()) => Some(s.clone()),
        Some(_) => return err("Sid must be a string of letters and digits"),
    };
    let effect = match m.get("Effect") {
        Some(Value::String(s)) if s == "Allow" => Effect::Allow,
        Some(Value::String(s)) if s == "Deny" => Effect::Deny,
        Some(_) => return err("Effect must be \"Allow\" or \"Deny\""),
        None => return err("Statement is missing required element Effect"),
    };
    let actions = match (m.get("Action"), m.get("NotAction")) {
        (Some(a), None) => Patterns::Only(strings(a, "Action")?),
        (None, Some(a)) => Patterns::Not(strings(a, "NotAction")?),
        (Some(_), Some(_)) => return err("Statement must not have both Action and NotAction"),
        (None, None) => return err("Statement is missing required element Action"),
    };
    let resources = match (m.get("Resource"), m.get("NotResource")) {
        (Some(r), None) => Patterns::Only(strings(r, "Resource")?),
        (None, Some(r)) => Patterns::Not(strings(r, "NotResource")?),
        (Some(_), Some(_)) => {
            return err("Statement must not have both Resource and NotResource");
        }
        (None, None) => return err("Statement is missing required element Resource"),
    };
    let (Patterns::Only(a) | Patterns::Not(a)) = &actions;
    a.iter().try_for_each(|x| check_action(x))?;
    let (Patterns::Only(r) | Patterns::Not(r)) = &resources;
    r.iter().try_for_each(|x| check_resource(x))?;
    let conditions = match m.get("Condition") {
        Some(c) => parse_conditions(c)?,
        None => Vec::new(),
    };
    Ok(Statement {
        sid,
        effect,
        actions,
        resources,
        conditions,
    })
}

impl Policy {
    /// Parses a policy document, refusing one with more than `max_chars` characters that are
    /// not whitespace (IAM's way of counting).
    pub fn parse(text: &str, max_chars: usize) -> Result<Self, PolicyError> {
        let counted = text.chars().filter(|c| !c.is_whitespace()).count();
        if counted > max_chars {
            return err(format!(
                "Policy document has {counted} characters (not counting whitespace); the limit is {max_chars}"
            ));
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| PolicyError(format!("Syntax errors in policy: {e}")))?;
        let Value::Object(m) = &v else {
            return err("Policy document must be a JSON object");
        };
        for k in m.keys() {
            if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
                return err(format!("Policy document has an unknown element '{k}'"));
            }
        }
        let version = match m.get("Version") {
            None => None,
            Some(Value::String(s)) if VERSIONS.contains(&s.as_str()) => Some(s.clone()),
            Some(_) => {
                return err(format!(
                    "The policy must contain a valid version string: {}",
                    VERSIONS.join(" or ")
                ));
            }
        };
        let statements = match m.get("Statement") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(parse_statement)
                .collect::<Result<Vec<_>, _>>()?,
            Some(o @ Value::Object(_)) => vec![parse_statement(o)?],
            Some(_) => return err("Statement must be an object or a non-empty list"),
            None => return err("Policy document is missing required element Statement"),
        };
        Ok(Self {
            version,
            statements,
        })
    }
}

#[cfg(test)]
mod tests;

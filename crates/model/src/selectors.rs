//! Event selectors (reference §5): their wire shapes, CloudTrail's validation rules, and the one
//! pure function that decides whether a record is logged by a trail with given selectors.

use serde::{Deserialize, Serialize};

/// Basic data resource types (others need advanced selectors).
pub const BASIC_DATA_TYPES: [&str; 3] = [
    "AWS::S3::Object",
    "AWS::Lambda::Function",
    "AWS::DynamoDB::Table",
];
/// Management event sources a basic selector may exclude.
pub const EXCLUDABLE_SOURCES: [&str; 2] = ["kms.amazonaws.com", "rdsdata.amazonaws.com"];
/// Fields advanced selectors may use on trails.
pub const ADVANCED_FIELDS: [&str; 11] = [
    "eventCategory",
    "eventSource",
    "eventName",
    "readOnly",
    "resources.type",
    "resources.ARN",
    "eventType",
    "userIdentity.arn",
    "sessionCredentialFromConsole",
    "errorCode",
    "vpcEndpointId",
];
const MAX_BASIC_SELECTORS: usize = 5;
const MAX_DATA_RESOURCES: usize = 250;
const MAX_ADVANCED_VALUES: usize = 500;

/// `{Type, Values}` of a basic selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DataResource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// A basic event selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_write_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_management_events: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_resources: Option<Vec<DataResource>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude_management_event_sources: Option<Vec<String>>,
}

impl EventSelector {
    /// What a trail without custom selectors logs: all management events, no data events.
    pub fn default_selectors() -> Vec<EventSelector> {
        vec![EventSelector {
            read_write_type: Some("All".into()),
            include_management_events: Some(true),
            data_resources: Some(Vec::new()),
            exclude_management_event_sources: Some(Vec::new()),
        }]
    }
}

/// One condition of an advanced selector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FieldSelector {
    pub field: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_with: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_with: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_equals: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_starts_with: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ends_with: Option<Vec<String>>,
}

impl FieldSelector {
    fn operators(&self) -> [(&'static str, Option<&Vec<String>>); 6] {
        [
            ("Equals", self.equals.as_ref()),
            ("StartsWith", self.starts_with.as_ref()),
            ("EndsWith", self.ends_with.as_ref()),
            ("NotEquals", self.not_equals.as_ref()),
            ("NotStartsWith", self.not_starts_with.as_ref()),
            ("NotEndsWith", self.not_ends_with.as_ref()),
        ]
    }

    /// Whether one value satisfies every operator given.
    fn holds_for(&self, v: &str) -> bool {
        let any = |l: Option<&Vec<String>>, f: &dyn Fn(&str) -> bool| {
            l.is_none_or(|l| l.iter().any(|x| f(x)))
        };
        let none = |l: Option<&Vec<String>>, f: &dyn Fn(&str) -> bool| {
            l.is_none_or(|l| !l.iter().any(|x| f(x)))
        };
        any(self.equals.as_ref(), &|x| v == x)
            && any(self.starts_with.as_ref(), &|x| v.starts_with(x))
            && any(self.ends_with.as_ref(), &|x| v.ends_with(x))
            && none(self.not_equals.as_ref(), &|x| v == x)
            && none(self.not_starts_with.as_ref(), &|x| v.starts_with(x))
            && none(self.not_ends_with.as_ref(), &|x| v.ends_with(x))
    }

    fn only_negative(&self) -> bool {
        self.equals.is_none() && self.starts_with.is_none() && self.ends_with.is_none()
    }
}

/// An advanced event selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AdvancedEventSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub field_selectors: Vec<FieldSelector>,
}

/// A trail's selectors: basic or advanced (never both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selectors {
    Basic(Vec<EventSelector>),
    Advanced(Vec<AdvancedEventSelector>),
}

/// What the matcher needs of a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchView {
    pub category: String,
    pub event_source: Option<String>,
    pub event_name: Option<String>,
    pub read_only: Option<bool>,
    /// (type, ARN) of each resource.
    pub resources: Vec<(Option<String>, Option<String>)>,
    pub event_type: Option<String>,
    pub user_arn: Option<String>,
    pub session_credential_from_console: Option<String>,
    pub error_code: Option<String>,
    pub vpc_endpoint_id: Option<String>,
}

fn read_write_ok(rw: Option<&str>, read_only: Option<bool>) -> bool {
    match rw.unwrap_or("All") {
        "ReadOnly" => read_only == Some(true),
        "WriteOnly" => read_only == Some(false),
        _ => true,
    }
}

/// The value prefixes that select every resource of a basic data type.
fn all_resources(t: &str, v: &str) -> bool {
    let v = v.trim_end_matches(':');
    match t {
        "AWS::S3::Object" => v == "arn:aws:s3" || v == "arn:aws:s3::",
        "AWS::Lambda::Function" => v == "arn:aws:lambda",
        "AWS::DynamoDB::Table" => v == "arn:aws:dynamodb",
        _ => false,
    }
}

fn data_resource_matches(dr: &DataResource, resource: &(Option<String>, Option<String>)) -> bool {
    let (Some(t), Some(rtype)) = (dr.r#type.as_deref(), resource.0.as_deref()) else {
        return false;
    };
    if t != rtype {
        return false;
    }
    let arn = resource.1.as_deref().unwrap_or("");
    dr.values.iter().flatten().any(|v| {
        all_resources(t, v)
            || match t {
                // S3 values are bucket or object prefixes; Lambda and DynamoDB values are exact ARNs.
                "AWS::S3::Object" => arn.starts_with(v.as_str()),
                _ => arn == v,
            }
    })
}

fn field_values(view: &MatchView, field: &str) -> Vec<String> {
    let one = |v: &Option<String>| v.iter().cloned().collect::<Vec<_>>();
    match field {
        "eventCategory" => vec![view.category.clone()],
        "eventSource" => one(&view.event_source),
        "eventName" => one(&view.event_name),
        "readOnly" => view.read_only.map(|b| b.to_string()).into_iter().collect(),
        "resources.type" => view.resources.iter().filter_map(|r| r.0.clone()).collect(),
        "resources.ARN" => view.resources.iter().filter_map(|r| r.1.clone()).collect(),
        "eventType" => one(&view.event_type),
        "userIdentity.arn" => one(&view.user_arn),
        "sessionCredentialFromConsole" => one(&view.session_credential_from_console),
        "errorCode" => one(&view.error_code),
        "vpcEndpointId" => one(&view.vpc_endpoint_id),
        _ => Vec::new(),
    }
}

/// Whether a trail with `selectors` logs the record. Insights events are not selected here (they
/// follow the trail's insight selectors).
pub fn matches(selectors: &Selectors, view: &MatchView) -> bool {
    match selectors {
        Selectors::Basic(list) => list.iter().any(|s| {
            if !read_write_ok(s.read_write_type.as_deref(), view.read_only) {
                return false;
            }
            match view.category.as_str() {
                "Management" => {
                    s.include_management_events.unwrap_or(true)
                        && !s
                            .exclude_management_event_sources
                            .iter()
                            .flatten()
                            .any(|x| Some(x) == view.event_source.as_ref())
                }
                "Data" => s
                    .data_resources
                    .iter()
                    .flatten()
                    .any(|dr| view.resources.iter().any(|r| data_resource_matches(dr, r))),
                _ => false,
            }
        }),
        Selectors::Advanced(list) => list.iter().any(|sel| {
            sel.field_selectors.iter().all(|fs| {
                let values = field_values(view, &fs.field);
                if values.is_empty() {
                    return fs.only_negative();
                }
                values.iter().any(|v| fs.holds_for(v))
            })
        }),
    }
}

/// Checks basic selectors against CloudTrail's rules.
pub fn validate_basic(list: &[EventSelector]) -> Result<(), String> {
    if list.is_empty() || list.len() > MAX_BASIC_SELECTORS {
        return Err(format!(
            "a trail has 1 to {MAX_BASIC_SELECTORS} event selectors; got {}",
            list.len()
        ));
    }
    let mut counted = 0usize;
    for (i, s) in list.iter().enumerate() {
        if let Some(rw) = &s.read_write_type
            && !matches!(rw.as_str(), "ReadOnly" | "WriteOnly" | "All")
        {
            return Err(format!(
                "selector {i}: ReadWriteType {rw:?} is not ReadOnly, WriteOnly or All"
            ));
        }
        for src in s.exclude_management_event_sources.iter().flatten() {
            if !EXCLUDABLE_SOURCES.contains(&src.as_str()) {
                return Err(format!(
                    "selector {i}: ExcludeManagementEventSources may only name {}; got {src:?}",
                    EXCLUDABLE_SOURCES.join(" and ")
                ));
            }
        }
        for dr in s.data_resources.iter().flatten() {
            let t = dr.r#type.as_deref().unwrap_or("");
            if !BASIC_DATA_TYPES.contains(&t) {
                return Err(format!(
                    "selector {i}: data resource type {t:?} is not one of {}; use advanced event selectors for others",
                    BASIC_DATA_TYPES.join(", ")
                ));
            }
            let service = match t {
                "AWS::S3::Object" => "arn:aws:s3",
                "AWS::Lambda::Function" => "arn:aws:lambda",
                _ => "arn:aws:dynamodb",
            };
            let values = dr.values.as_deref().unwrap_or_default();
            if values.is_empty() {
                return Err(format!(
                    "selector {i}: data resource {t} needs at least one value"
                ));
            }
            for v in values {
                if !v.starts_with(service) || v.len() > 2048 {
                    return Err(format!(
                        "selector {i}: value {v:?} is not an ARN or ARN prefix of {t}"
                    ));
                }
                if !all_resources(t, v) {
                    counted += 1;
                }
            }
        }
    }
    if counted > MAX_DATA_RESOURCES {
        return Err(format!(
            "at most {MAX_DATA_RESOURCES} data resources may be selected across a trail's selectors; got {counted}"
        ));
    }
    Ok(())
}

/// Checks advanced selectors against CloudTrail's rules for trails.
pub fn validate_advanced(list: &[AdvancedEventSelector]) -> Result<(), String> {
    if list.is_empty() {
        return Err("at least one advanced event selector is required".into());
    }
    let mut total = 0usize;
    for (i, sel) in list.iter().enumerate() {
        if sel.name.as_ref().is_some_and(|n| n.chars().count() > 1000) {
            return Err(format!("selector {i}: Name is longer than 1000 characters"));
        }
        if sel.field_selectors.is_empty() {
            return Err(format!("selector {i}: FieldSelectors must not be empty"));
        }
        let mut category: Option<&str> = None;
        let mut has_resource_type = false;
        for fs in &sel.field_selectors {
            let f = fs.field.as_str();
            if !ADVANCED_FIELDS.contains(&f) {
                return Err(format!(
                    "selector {i}: field {f:?} is not one of {}",
                    ADVANCED_FIELDS.join(", ")
                ));
            }
            let ops: Vec<(&str, &Vec<String>)> = fs
                .operators()
                .into_iter()
                .filter_map(|(n, l)| l.map(|l| (n, l)))
                .collect();
            if ops.is_empty() {
                return Err(format!("selector {i}: field {f} has no condition"));
            }
            for (op, values) in &ops {
                if values.is_empty() {
                    return Err(format!(
                        "selector {i}: field {f}: {op} must list at least one value"
                    ));
                }
                if let Some(v) = values
                    .iter()
                    .find(|v| v.is_empty() || v.chars().count() > 2048)
                {
                    return Err(format!(
                        "selector {i}: field {f}: {op} value {v:?} must be 1 to 2048 characters"
                    ));
                }
                total += values.len();
            }
            let equals_only = ops.len() == 1 && ops[0].0 == "Equals";
            match f {
                "eventCategory" => {
                    if !equals_only {
                        return Err(format!("selector {i}: eventCategory supports only Equals"));
                    }
                    let vals = fs.equals.as_deref().unwrap_or_default();
                    if vals.len() != 1
                        || !matches!(vals[0].as_str(), "Management" | "Data" | "NetworkActivity")
                    {
                        return Err(format!(
                            "selector {i}: eventCategory must equal one of Management, Data, NetworkActivity"
                        ));
                    }
                    category = Some(vals[0].as_str());
                }
                "resources.type" => {
                    if !equals_only || fs.equals.as_ref().is_none_or(|v| v.len() != 1) {
                        return Err(format!(
                            "selector {i}: resources.type supports only Equals with one value"
                        ));
                    }
                    has_resource_type = true;
                }
                "readOnly"
                    if !equals_only
                        || fs
                            .equals
                            .iter()
                            .flatten()
                            .any(|v| v != "true" && v != "false") =>
                {
                    return Err(format!(
                        "selector {i}: readOnly supports only Equals \"true\" or \"false\""
                    ));
                }
                "sessionCredentialFromConsole"
                    if ops
                        .iter()
                        .any(|(op, _)| !matches!(*op, "Equals" | "NotEquals")) =>
                {
                    return Err(format!(
                        "selector {i}: sessionCredentialFromConsole supports only Equals and NotEquals"
                    ));
                }
                _ => {}
            }
        }
        match category {
            None => {
                return Err(format!(
                    "selector {i}: an eventCategory field selector is required"
                ));
            }
            Some("Data") if !has_resource_type => {
                return Err(format!(
                    "selector {i}: data event selectors need a resources.type field selector"
                ));
            }
            _ => {}
        }
    }
    if total > MAX_ADVANCED_VALUES {
        return Err(format!(
            "at most {MAX_ADVANCED_VALUES} values may be used across a trail's advanced selectors; got {total}"
        ));
    }
    Ok(())
}

/// Whether the selectors log management events of the given kind (`write`: write events, else
/// read or write), for Insights' preconditions.
pub fn logs_management(selectors: &Selectors, write: bool) -> bool {
    let probe = |ro: bool| MatchView {
        category: "Management".into(),
        read_only: Some(ro),
        ..MatchView::default()
    };
    if write {
        matches(selectors, &probe(false))
    } else {
        matches(selectors, &probe(false)) || matches(selectors, &probe(true))
    }
}

#[cfg(test)]
mod tests;

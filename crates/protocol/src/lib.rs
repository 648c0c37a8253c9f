//! The AWS JSON 1.1 wire layer of OpenTrail's CloudTrail API: the one list of operations, typed
//! request and response shapes, and the one mapping from exception to `__type` and HTTP status.
//! Pure: it never touches storage; handlers take typed requests and return typed responses.

pub mod error;
pub mod insights;
pub mod lookup;
mod operation;
pub mod trails;

pub use error::{ApiError, Exception};
pub use operation::Operation;

/// The `X-Amz-Target` prefix of CloudTrail 2013-11-01.
pub const TARGET_PREFIX: &str = "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101";
/// The prefix of error `__type` values.
pub const ERROR_NAMESPACE: &str = "com.amazonaws.cloudtrail.v20131101";
/// Content type of requests and responses.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// Parses a request body into its typed shape. An empty body counts as `{}`. Unknown members are
/// ignored; malformed JSON or a member of the wrong type is a `SerializationException` naming
/// the member.
pub fn parse_request<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || path == "." {
            ApiError::new(
                Exception::SerializationException,
                format!("request body is not a JSON object: {inner}"),
            )
        } else {
            ApiError::new(
                Exception::SerializationException,
                format!("member {path}: {inner}"),
            )
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            Exception::SerializationException,
            format!("trailing data after the JSON body: {e}"),
        )
    })?;
    Ok(value)
}

/// Splits `X-Amz-Target` into the operation, or says why it cannot.
pub fn parse_target(target: Option<&str>) -> Result<Operation, ApiError> {
    let target = target.ok_or_else(|| {
        ApiError::new(
            Exception::UnknownOperationException,
            "missing X-Amz-Target header",
        )
    })?;
    let name = target
        .strip_prefix(TARGET_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or_else(|| {
            ApiError::new(
                Exception::UnknownOperationException,
                format!("unknown target {target:?}"),
            )
        })?;
    Operation::from_name(name).ok_or_else(|| {
        ApiError::new(
            Exception::UnknownOperationException,
            format!("unknown operation {name:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = format!("{TARGET_PREFIX}.LookupEvents");
        assert_eq!(parse_target(Some(&t)), Ok(Operation::LookupEvents));
        let e = parse_target(Some(
            "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.Nope",
        ))
        .expect_err("unknown");
        assert_eq!(e.exception, Exception::UnknownOperationException);
        assert!(parse_target(None).is_err());
        assert!(parse_target(Some("LookupEvents")).is_err());
    }

    #[test]
    fn request_errors_name_the_member() {
        let e = parse_request::<lookup::LookupEventsRequest>(b"{\"MaxResults\": \"x\"}")
            .expect_err("bad type");
        assert_eq!(e.exception, Exception::SerializationException);
        assert!(e.message.contains("MaxResults"), "{}", e.message);
        let e = parse_request::<lookup::LookupEventsRequest>(b"{nope").expect_err("bad json");
        assert_eq!(e.exception, Exception::SerializationException);
        let ok = parse_request::<lookup::LookupEventsRequest>(b"").expect("empty is {}");
        assert!(ok.lookup_attributes.is_none());
        let ok = parse_request::<lookup::LookupEventsRequest>(
            b"{\"Unknown\": 1, \"StartTime\": 1700000000.5}",
        )
        .expect("ok");
        assert_eq!(ok.start_time.map(|t| t.0), Some(1_700_000_000_500));
    }
}

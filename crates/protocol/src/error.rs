//! CloudTrail exceptions and their one mapping to the wire: `__type` and HTTP status.

use serde::Serialize;

use crate::ERROR_NAMESPACE;

macro_rules! exceptions {
    ($( $name:ident = $status:literal ),* $(,)?) => {
        /// Every exception OpenTrail's CloudTrail API answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Exception { $( $name, )* }

        impl Exception {
            /// The code botocore exposes (the `__type` after the `#`).
            pub fn name(self) -> &'static str {
                match self { $( Self::$name => stringify!($name), )* }
            }

            /// The HTTP status (Smithy `httpError`; 400 where the model has none).
            pub fn status(self) -> u16 {
                match self { $( Self::$name => $status, )* }
            }
        }
    };
}

exceptions! {
    AccessDeniedException = 403,
    AlreadyExistsException = 400,
    DisabledException = 400,
    IncorrectKeyException = 400,
    InvalidAliasNameException = 400,
    InvalidArnException = 400,
    InvalidCiphertextException = 400,
    InvalidMarkerException = 400,
    KMSInternalException = 500,
    KMSInvalidStateException = 400,
    KmsException = 400,
    LimitExceededException = 400,
    NotFoundException = 400,
    ValidationException = 400,
    CloudTrailARNInvalidException = 400,
    CloudWatchLogsDeliveryUnavailableException = 400,
    ConflictException = 409,
    DeleteConflict = 409,
    EntityAlreadyExists = 409,
    IncompleteSignature = 400,
    InvalidAction = 400,
    InvalidClientTokenId = 403,
    LimitExceeded = 409,
    MalformedPolicyDocument = 400,
    MissingAuthenticationTokenException = 403,
    NoSuchEntity = 404,
    SignatureDoesNotMatch = 403,
    ValidationError = 400,
    InsightNotEnabledException = 400,
    // Live tail: too many streams open.
    MaxConcurrentQueriesException = 429,
    // EventBridge (rules) and the topics admin API (SNS's codes).
    InvalidEventPatternException = 400,
    InternalException = 500,
    NotFound = 404,
    InvalidParameter = 400,
    InsufficientSnsTopicPolicyException = 403,
    InsufficientS3BucketPolicyException = 403,
    InternalFailure = 500,
    InvalidCloudWatchLogsLogGroupArnException = 400,
    InvalidCloudWatchLogsRoleArnException = 400,
    InvalidEventCategoryException = 400,
    InvalidEventSelectorsException = 400,
    InvalidHomeRegionException = 400,
    InvalidInsightSelectorsException = 400,
    InvalidKmsKeyIdException = 400,
    InvalidLookupAttributesException = 400,
    InvalidMaxResultsException = 400,
    InvalidNextTokenException = 400,
    InvalidParameterCombinationException = 400,
    InvalidParameterException = 400,
    InvalidS3BucketNameException = 400,
    InvalidS3PrefixException = 400,
    InvalidSnsTopicNameException = 400,
    InvalidTagParameterException = 400,
    InvalidTimeRangeException = 400,
    InvalidTokenException = 400,
    InvalidTrailNameException = 400,
    KmsKeyNotFoundException = 400,
    MaximumNumberOfTrailsExceededException = 403,
    NotOrganizationMasterAccountException = 400,
    OperationNotPermittedException = 400,
    OrganizationsNotInUseException = 404,
    ResourceNotFoundException = 400,
    ResourceTypeNotSupportedException = 400,
    S3BucketDoesNotExistException = 404,
    SerializationException = 400,
    ServiceUnavailable = 503,
    TagsLimitExceededException = 400,
    ThrottlingException = 429,
    TrailAlreadyExistsException = 400,
    TrailNotFoundException = 404,
    UnknownOperationException = 400,
    UnsupportedOperationException = 400,
}

/// An error answer: an exception and a message that says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", exception.name())]
pub struct ApiError {
    pub exception: Exception,
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "__type")]
    kind: String,
    #[serde(rename = "Message")]
    message: &'a str,
}

impl ApiError {
    pub fn new(exception: Exception, message: impl Into<String>) -> Self {
        Self {
            exception,
            message: message.into(),
        }
    }

    pub fn status(&self) -> u16 {
        self.exception.status()
    }

    /// The JSON body: `{"__type": "<namespace>#<Name>", "Message": "..."}`.
    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody {
            kind: format!("{ERROR_NAMESPACE}#{}", self.exception.name()),
            message: &self.message,
        };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let e = ApiError::new(Exception::TrailNotFoundException, "Unknown trail: x");
        assert_eq!(e.status(), 404);
        let v: serde_json::Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(
            v["__type"],
            "com.amazonaws.cloudtrail.v20131101#TrailNotFoundException"
        );
        assert_eq!(v["Message"], "Unknown trail: x");
        assert_eq!(Exception::InvalidMaxResultsException.status(), 400);
        assert_eq!(Exception::ThrottlingException.status(), 429);
    }
}

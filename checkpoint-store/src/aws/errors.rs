//! One classification of SDK errors, for both SDKs and every operation.

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// What kind of failure an AWS call met, whatever the operation. Callers decide what to do
/// by class (retry, stop, report) and map it onto their own error kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The request rate is too high (throttling, exceeded throughput or limits): back off.
    Throttling,
    /// The service failed (internal error, unavailable, an unmodeled 5xx): retry later.
    Transient,
    /// No usable answer: connection refused, DNS, timeout, or an unreadable response.
    Transport,
    /// The table, stream or shard does not exist.
    NotFound,
    /// The request was rejected as invalid; sending it again fails again.
    Validation,
    /// A conditional write's condition did not hold.
    ConditionFailed,
    /// Anything else (access denied, operation-specific errors, request construction).
    Other,
}

impl ErrorClass {
    /// Whether the same call may succeed if retried after a pause.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Throttling | Self::Transient | Self::Transport)
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Throttling => "throttled",
            Self::Transient => "service failure",
            Self::Transport => "unreachable",
            Self::NotFound => "not found",
            Self::Validation => "invalid request",
            Self::ConditionFailed => "condition failed",
            Self::Other => "service error",
        })
    }
}

/// The class of an AWS error code. Codes are the SDK's error metadata (`__type` of the
/// answer), the same for modeled and unmodeled errors, so one table serves every
/// operation of both SDKs. `None` for codes without a class of their own.
fn class_of_code(code: &str) -> Option<ErrorClass> {
    let class = match code {
        "ThrottlingException"
        | "Throttling"
        | "ProvisionedThroughputExceededException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "LimitExceededException" => ErrorClass::Throttling,
        "InternalServerError" | "InternalFailure" | "ServiceUnavailable" => ErrorClass::Transient,
        "ResourceNotFoundException" => ErrorClass::NotFound,
        "ValidationException" | "SerializationException" => ErrorClass::Validation,
        "ConditionalCheckFailedException" => ErrorClass::ConditionFailed,
        _ => return None,
    };
    Some(class)
}

/// Classifies an error of any operation of either SDK: by error code for service errors
/// (an answer without a known code is transient when its HTTP status is 5xx), and by
/// variant for the rest (dispatch failures and timeouts are transport errors, and so is an
/// unreadable answer that is not a 5xx).
pub fn classify<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> ErrorClass {
    let server_failed = || {
        err.raw_response()
            .is_some_and(|raw| raw.status().is_server_error())
    };
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ErrorClass::Transport,
        SdkError::ServiceError(context) => {
            context
                .err()
                .code()
                .and_then(class_of_code)
                .unwrap_or(if server_failed() {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Other
                })
        }
        SdkError::ResponseError(_) if server_failed() => ErrorClass::Transient,
        SdkError::ResponseError(_) => ErrorClass::Transport,
        // Construction failures (a bug of ours) and future variants.
        _ => ErrorClass::Other,
    }
}

/// One line saying what went wrong, for error messages and logs: the service's code and
/// message for an answer (the HTTP status when it has no code), or what kept the request
/// from being answered, naming `endpoint`. Never the raw response's debug dump.
pub fn error_message<E>(err: &SdkError<E, HttpResponse>, endpoint: &str) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(context) => {
            let message = service_message(context.err());
            match context.err().code() {
                Some(_) => message,
                // No code at all: the HTTP status is the only clue left.
                None => format!("HTTP {}: {message}", context.raw().status().as_u16()),
            }
        }
        SdkError::DispatchFailure(_) => {
            format!("could not reach {endpoint}: {}", DisplayErrorContext(err))
        }
        SdkError::TimeoutError(_) => format!(
            "no answer from {endpoint} in time: {}",
            DisplayErrorContext(err)
        ),
        SdkError::ResponseError(_) if classify(err) == ErrorClass::Transport => format!(
            "unusable answer from {endpoint}: {}",
            DisplayErrorContext(err)
        ),
        // 5xx answers we could not read, construction failures and future variants.
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// `Code: message` of a service error.
fn service_message<E: ProvideErrorMetadata + std::error::Error>(err: &E) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        // Modeled errors built without metadata display their name and message.
        _ => err.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    fn answer(status: u16, code: Option<&str>) -> SdkError<GetItemError, HttpResponse> {
        let mut meta = ErrorMetadata::builder();
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let err = GetItemError::generic(meta.build());
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn service_errors_are_classified_by_code_then_status() {
        let cases = [
            (400, Some("ThrottlingException"), ErrorClass::Throttling),
            (400, Some("LimitExceededException"), ErrorClass::Throttling),
            (500, Some("InternalServerError"), ErrorClass::Transient),
            (400, Some("ResourceNotFoundException"), ErrorClass::NotFound),
            (400, Some("ValidationException"), ErrorClass::Validation),
            (
                400,
                Some("ConditionalCheckFailedException"),
                ErrorClass::ConditionFailed,
            ),
            (400, Some("AccessDeniedException"), ErrorClass::Other),
            (503, None, ErrorClass::Transient),
            (400, None, ErrorClass::Other),
        ];
        for (status, code, class) in cases {
            assert_eq!(classify(&answer(status, code)), class, "{status} {code:?}");
        }
    }

    #[test]
    fn transport_failures_are_retryable_and_validation_is_not() {
        let refused: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let timeout: SdkError<GetItemError, HttpResponse> = SdkError::timeout_error("slow");
        assert_eq!(classify(&refused), ErrorClass::Transport);
        assert_eq!(classify(&timeout), ErrorClass::Transport);
        assert!(ErrorClass::Transport.is_retryable());
        assert!(ErrorClass::Throttling.is_retryable());
        assert!(!ErrorClass::Validation.is_retryable());
        assert!(!ErrorClass::NotFound.is_retryable());
        assert!(!ErrorClass::ConditionFailed.is_retryable());
    }

    #[test]
    fn messages_are_one_line_naming_the_code_or_the_endpoint() {
        let mut meta = ErrorMetadata::builder().code("ValidationException");
        meta = meta.message("Invalid table/index name.");
        let raw = HttpResponse::new(StatusCode::try_from(400).unwrap(), SdkBody::empty());
        let invalid = SdkError::service_error(GetItemError::generic(meta.build()), raw);
        assert_eq!(
            error_message(&invalid, "http://local"),
            "ValidationException: Invalid table/index name."
        );
        assert!(error_message(&answer(503, None), "http://local").starts_with("HTTP 503: "));
        let refused: SdkError<GetItemError, HttpResponse> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let text = error_message(&refused, "http://local");
        assert!(text.starts_with("could not reach http://local: "), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}

//! Failures of a request, and how each contract spells them.
//!
//! The container routes (MME, TF Serving) answer the container's own status (400, 404, 409,
//! 413, 415, 503, 504, 507, ...) with TF Serving's `{"error": "..."}` body.
//!
//! InvokeEndpoint answers what the SageMaker Runtime service answers, in the AWS REST-JSON
//! error shape: the error code in the `x-amzn-ErrorType` header (`Code:namespace`) and the
//! message in the body's `message`. botocore's `RestJSONParser` takes the code from that header
//! (else the body's `code`/`__type`), strips what follows `:` and precedes `#`, and raises the
//! modeled exception of that name from `sagemaker-runtime`'s service-2.json:
//!
//! | case | status | code (botocore class) |
//! |---|---|---|
//! | unknown or invalid model name, unknown endpoint, no target model | 400 | `ValidationError` |
//! | the model refused the request (bad body, bad media type), or failed | 424 | `ModelError`, with `OriginalStatusCode` the container's (400, 415, 500, 507) |
//! | the deadline passed | 424 | `ModelError` (`OriginalStatusCode` 0, the cloud's timeout message) |
//! | the queue is full, or the server is shutting down | 503 | `ServiceUnavailable` |
//! | body over the payload limit | 413 | none: the cloud answers a bare 413, botocore raises `ClientError` with code `"413"` |
//! | missing or wrong auth token | 403 | `UnrecognizedClientException` (a `ClientError`, as the cloud's bad-signature answer) |

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use edgemm::ErrorKind;
use serde_json::json;

/// Which contract a route speaks, hence how its errors are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SageMaker Runtime InvokeEndpoint.
    SageMakerRuntime,
    /// The container routes: MME and TF Serving.
    Container,
}

/// Why a request failed, before it is spelled for a contract.
#[derive(Debug)]
pub enum ApiError {
    /// The runtime refused or failed (bad input, unknown model, insufficient memory, ...).
    Runtime(edgemm::Error),
    /// A malformed request to the server itself (a control call's body, a missing header).
    BadRequest(String),
    /// No model named in the request (no target-model header and no default model).
    NoTargetModel,
    /// `/endpoints/{name}` other than the configured endpoint.
    UnknownEndpoint(String),
    /// MME: a model of this name is already loaded (409).
    AlreadyLoaded(String),
    /// MME: no such model loaded or registered (404).
    NotLoaded(String),
    /// The body is larger than the payload limit.
    PayloadTooLarge {
        limit: usize,
    },
    UnsupportedMediaType(String),
    NotAcceptable(String),
    /// The admission queue is full.
    Overloaded {
        retry_after_s: u64,
    },
    /// The request's deadline passed.
    Timeout {
        seconds: u64,
    },
    Unauthorized,
    /// Reading the body failed (the client went away).
    Body(String),
    Internal(String),
}

impl From<edgemm::Error> for ApiError {
    fn from(e: edgemm::Error) -> Self {
        ApiError::Runtime(e)
    }
}

impl ApiError {
    /// The status a container (and the TF Serving and MME routes) answers with.
    pub fn container_status(&self) -> StatusCode {
        let code = match self {
            ApiError::Runtime(e) => edgemm::json::http_status(e),
            ApiError::BadRequest(_) | ApiError::NoTargetModel | ApiError::Body(_) => 400,
            ApiError::UnknownEndpoint(_) | ApiError::NotLoaded(_) => 404,
            ApiError::AlreadyLoaded(_) => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::NotAcceptable(_) => 406,
            ApiError::Overloaded { .. } => 503,
            ApiError::Timeout { .. } => 504,
            ApiError::Unauthorized => 401,
            ApiError::Internal(_) => 500,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn message(&self) -> String {
        match self {
            ApiError::Runtime(e) => e.to_string(),
            ApiError::BadRequest(m) | ApiError::Body(m) | ApiError::Internal(m) => m.clone(),
            ApiError::NoTargetModel => "no target model: set the X-Amzn-SageMaker-Target-Model header (TargetModel in boto3)".into(),
            ApiError::UnknownEndpoint(name) => format!("Endpoint {name} not found."),
            ApiError::AlreadyLoaded(name) => format!("model {name:?} is already loaded"),
            ApiError::NotLoaded(name) => format!("model {name:?} is not loaded"),
            ApiError::PayloadTooLarge { limit } => {
                format!("HTTP content length exceeded {limit} bytes.")
            }
            ApiError::UnsupportedMediaType(t) => format!(
                "content type {t:?} is not supported: send application/json, image/jpeg, image/png or application/x-image"
            ),
            ApiError::NotAcceptable(t) => {
                format!("accept {t:?} cannot be met: answers are application/json")
            }
            ApiError::Overloaded { .. } => {
                "the server is at capacity: its request queue is full; retry later".into()
            }
            ApiError::Timeout { seconds } => format!("the request did not finish within {seconds} s"),
            ApiError::Unauthorized => "The security token included in the request is invalid.".into(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded { retry_after_s } => Some(*retry_after_s),
            _ => None,
        }
    }

    /// The InvokeEndpoint spelling: (status, error code, extra body fields).
    fn sagemaker(&self, variant: &str) -> (StatusCode, Option<&'static str>, serde_json::Value) {
        let message = self.message();
        let model_error = |original: u16, message: String| {
            let kind = if original >= 500 || original == 0 {
                "server"
            } else {
                "client"
            };
            let original_message = json!({ "error": message }).to_string();
            (
                StatusCode::FAILED_DEPENDENCY,
                Some("ModelError"),
                json!({
                    "message": format!("Received {kind} error ({original}) from {variant} with message \"{original_message}\". See the server's access log for more information."),
                    "OriginalStatusCode": original,
                    "OriginalMessage": original_message,
                    "ErrorCode": if original >= 500 || original == 0 { "SERVER_ERROR_FROM_MODEL" } else { "CLIENT_ERROR_FROM_MODEL" },
                }),
            )
        };
        match self {
            ApiError::Runtime(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::InvalidArgument) =>
            {
                (
                    StatusCode::BAD_REQUEST,
                    Some("ValidationError"),
                    json!({ "message": message }),
                )
            }
            ApiError::NoTargetModel | ApiError::UnknownEndpoint(_) | ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                Some("ValidationError"),
                json!({ "message": message }),
            ),
            ApiError::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some("ServiceUnavailable"),
                json!({ "message": message }),
            ),
            ApiError::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                json!({ "message": message }),
            ),
            ApiError::Unauthorized => (
                StatusCode::FORBIDDEN,
                Some("UnrecognizedClientException"),
                json!({ "message": message }),
            ),
            ApiError::Timeout { .. } => {
                let (status, code, mut body) = model_error(0, message);
                body["message"] = json!(format!(
                    "Received server error (0) from {variant} with message \"Your invocation timed out while waiting for a response from container {variant}.\""
                ));
                (status, code, body)
            }
            ApiError::Body(_) => (
                StatusCode::BAD_REQUEST,
                Some("ValidationError"),
                json!({ "message": message }),
            ),
            other => model_error(other.container_status().as_u16(), message),
        }
    }

    /// The full response in `dialect`.
    pub fn response(&self, dialect: Dialect, variant: &str) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(s) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        match dialect {
            Dialect::Container => {
                if matches!(self, ApiError::Unauthorized) {
                    headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                let body = json!({ "error": self.message() }).to_string();
                (self.container_status(), headers, body).into_response()
            }
            Dialect::SageMakerRuntime => {
                let (status, code, body) = self.sagemaker(variant);
                if let Some(code) = code {
                    let value =
                        format!("{code}:http://internal.amazon.com/coral/com.amazon.sagemaker/");
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        headers.insert("x-amzn-ErrorType", v);
                    }
                }
                (status, headers, body.to_string()).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: &ApiError) -> (u16, Option<&'static str>) {
        let (s, c, _) = e.sagemaker("AllTraffic");
        (s.as_u16(), c)
    }

    #[test]
    fn sagemaker_codes_are_the_cloud_ones() {
        let missing = ApiError::Runtime(edgemm::Error::ModelNotFound { name: "x".into() });
        assert_eq!(code(&missing), (400, Some("ValidationError")));
        let bad = ApiError::Runtime(edgemm::InputError::EmptyBatch.into());
        assert_eq!(code(&bad), (424, Some("ModelError")));
        assert_eq!(
            code(&ApiError::Overloaded { retry_after_s: 1 }),
            (503, Some("ServiceUnavailable"))
        );
        assert_eq!(code(&ApiError::PayloadTooLarge { limit: 6 }), (413, None));
        assert_eq!(
            code(&ApiError::Timeout { seconds: 60 }),
            (424, Some("ModelError"))
        );
        let (_, _, body) = bad.sagemaker("AllTraffic");
        assert_eq!(body["OriginalStatusCode"], 400);
    }
}

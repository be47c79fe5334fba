//! Request bodies: read under the payload limit, frame by frame, never buffering more than the
//! limit; and what their media type says they are.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use http_body_util::BodyExt;

use crate::errors::ApiError;

/// After a refusal, at most this many further bytes are read and thrown away, so that a client
/// that writes its whole body before reading (urllib3, hence boto3) gets the answer instead of
/// a reset connection. Past it the connection is closed.
const DISCARD_CAP: u64 = 64 << 20;

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole body if it holds at most `limit` bytes.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        discard(body).await;
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // Reserve what was declared (checked against the limit above), never more.
    let mut out = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::Body(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                drop(out);
                discard(body).await;
                return Err(ApiError::PayloadTooLarge { limit });
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Reads and drops up to [`DISCARD_CAP`] bytes of a body that will not be used.
pub async fn discard(body: Body) {
    let mut body = body;
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > DISCARD_CAP {
                return;
            }
        }
    }
}

/// What a body holds, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// TF Serving JSON.
    Json,
    /// An encoded PNG or JPEG.
    Image,
}

/// `application/json` (the default when no type is given, as boto3 sends none unless told),
/// `image/jpeg`, `image/png`, `application/x-image`; parameters (`; charset=utf-8`) ignored.
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType("(not ASCII)".into()))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "" => Ok(BodyKind::Json),
        "image/jpeg" | "image/jpg" | "image/png" | "application/x-image" => Ok(BodyKind::Image),
        _ => Err(ApiError::UnsupportedMediaType(
            text.chars().take(100).collect(),
        )),
    }
}

/// Answers are JSON: `Accept` must allow `application/json`.
pub fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let ok = text.split(',').any(|part| {
        let essence = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        matches!(
            essence.as_str(),
            "application/json" | "application/*" | "*/*" | ""
        )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(text.chars().take(100).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn media_types() {
        let mut h = HeaderMap::new();
        assert_eq!(body_kind(&h).unwrap(), BodyKind::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(body_kind(&h).unwrap(), BodyKind::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-image"),
        );
        assert_eq!(body_kind(&h).unwrap(), BodyKind::Image);
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
        assert!(matches!(
            body_kind(&h),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        h.insert(header::ACCEPT, HeaderValue::from_static("text/csv"));
        assert!(check_accept(&h).is_err());
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/csv, application/json;q=0.5"),
        );
        check_accept(&h).unwrap();
    }
}

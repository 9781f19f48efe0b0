//! The one mapping from Rhizome's errors to Matrix error responses: HTTP status, `errcode`,
//! message and extra fields (`retry_after_ms`, UIA flows, …). Internal causes are logged here,
//! never sent.

use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use rhizome_core::{Error, ErrorKind, error::MatrixErrorKind};
use ruma::api::error::{RetryAfter, StandardErrorBody};

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

/// The HTTP status the spec gives an error kind.
pub fn status_for(kind: &MatrixErrorKind) -> StatusCode {
    use MatrixErrorKind as K;
    match kind {
        K::Forbidden
        | K::GuestAccessForbidden
        | K::UserDeactivated
        | K::ServerNotTrusted
        | K::ThreepidDenied
        | K::CannotLeaveServerNoticeRoom
        | K::ResourceLimitExceeded(_)
        | K::UserSuspended
        | K::WrongRoomKeysVersion(_)
        | K::InviteBlocked => StatusCode::FORBIDDEN,
        K::UnknownToken(_) | K::MissingToken | K::Unauthorized | K::UserLocked => {
            StatusCode::UNAUTHORIZED
        }
        K::NotFound | K::Unrecognized => StatusCode::NOT_FOUND,
        K::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        K::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        K::CannotOverwriteMedia => StatusCode::CONFLICT,
        K::NotYetUploaded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body)
        .unwrap_or_else(|_| br#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#.to_vec());
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.0;
        match error.kind() {
            ErrorKind::Matrix(kind) | ErrorKind::Conflict(kind) => {
                let mut status = status_for(kind);
                if matches!(error.kind(), ErrorKind::Conflict(_)) {
                    status = StatusCode::CONFLICT;
                }
                if status.is_server_error() {
                    tracing::error!(%error, "request failed");
                } else {
                    tracing::debug!(errcode = %kind.errcode(), "request refused");
                }
                let retry_after_ms = match kind {
                    MatrixErrorKind::LimitExceeded(data) => match &data.retry_after {
                        Some(RetryAfter::Delay(delay)) => Some(delay.as_millis()),
                        _ => None,
                    },
                    _ => None,
                };
                let mut response = json_response(
                    status,
                    &StandardErrorBody::new(kind.clone(), error.message().to_owned()),
                );
                if let Some(millis) = retry_after_ms {
                    let seconds = millis.div_ceil(1000).max(1);
                    if let Ok(value) = http::HeaderValue::from_str(&seconds.to_string()) {
                        response.headers_mut().insert(header::RETRY_AFTER, value);
                    }
                }
                response
            }
            ErrorKind::Uiaa(info) => json_response(StatusCode::UNAUTHORIZED, info),
            ErrorKind::Internal => {
                tracing::error!(%error, "internal error");
                json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &StandardErrorBody::new(
                        MatrixErrorKind::Unknown,
                        "Internal server error".to_owned(),
                    ),
                )
            }
        }
    }
}

/// `M_UNRECOGNIZED` for unknown endpoints (404) and known paths with the wrong method (405).
pub async fn unrecognized() -> Response {
    let body =
        StandardErrorBody::new(MatrixErrorKind::Unrecognized, "Unrecognized request".to_owned());
    json_response(StatusCode::NOT_FOUND, &body)
}

/// `M_UNRECOGNIZED` with 405, for a known path and an unsupported method.
pub async fn method_not_allowed() -> Response {
    let body = StandardErrorBody::new(
        MatrixErrorKind::Unrecognized,
        "Method not allowed on this endpoint".to_owned(),
    );
    json_response(StatusCode::METHOD_NOT_ALLOWED, &body)
}

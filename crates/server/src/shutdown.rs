//! An orderly shutdown: stop taking work, finish or end what is in flight, drain the workers,
//! and only then close the database, so nothing queued is lost and nothing warns.
//!
//! Requests still running when the grace period ends (long-polling syncs, mostly) are answered
//! `M_LIMIT_EXCEEDED` with a `retry_after_ms`, which every client retries after a pause: by
//! then the server is back, or the client keeps retrying.

use std::time::Duration;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use rhizome_api::error::ApiError;
use rhizome_core::{Error, error::MatrixErrorKind};
use ruma::api::error::{LimitExceededErrorData, RetryAfter};
use tokio::sync::watch;

/// How long requests in flight may take to finish once the listeners stop.
pub const GRACE: Duration = Duration::from_secs(3);
/// How long the ended requests and their connections then get to close.
pub const CLOSE: Duration = Duration::from_secs(2);
/// How long the push queue may take to drain.
pub const PUSH_DRAIN: Duration = Duration::from_secs(15);
/// When a client answered at shutdown should come back.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// Ends the requests still running when `ended` turns true.
pub async fn end_at_shutdown(
    State(ended): State<watch::Receiver<bool>>,
    request: Request,
    next: Next,
) -> Response {
    let mut ended = ended;
    tokio::select! {
        response = next.run(request) => response,
        _ = ended.wait_for(|ended| *ended) => shutting_down(),
    }
}

/// The answer to a request cut short by the shutdown.
fn shutting_down() -> Response {
    let mut data = LimitExceededErrorData::new();
    data.retry_after = Some(RetryAfter::Delay(RETRY_AFTER));
    let error = Error::matrix(
        MatrixErrorKind::LimitExceeded(data),
        "The server is restarting; try again shortly",
    );
    ApiError(error).into_response()
}

//! Reading a response body up to a limit: a declared length over the limit is refused before
//! reading, and a body that grows past it is dropped at once (closing the connection), so a
//! hostile server cannot make this server buffer more than the limit.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;

use super::FederationError;

/// The most reserved before the bytes arrive.
const PREALLOCATE_AT_MOST: u64 = 1024 * 1024;

/// Reads at most `limit` bytes of a body.
pub(crate) async fn read_limited<B>(
    headers: &HeaderMap,
    mut body: B,
    limit: usize,
) -> Result<Bytes, FederationError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(FederationError::ResponseTooLarge { limit });
    }
    // Reserve what was declared, but no more than a little: a declared length costs the
    // remote nothing until it sends the bytes.
    let capacity = declared.map_or(0, |length| length.min(PREALLOCATE_AT_MOST) as usize).min(limit);
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|error| FederationError::Connection(FederationError::cause(error)))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len().saturating_add(data.len()) > limit {
                return Err(FederationError::ResponseTooLarge { limit });
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

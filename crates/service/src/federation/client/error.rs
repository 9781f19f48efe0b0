//! Why a request to another server failed, as a typed enum, and how that reaches a client.
//!
//! The `Display` texts name no address, body or signature: they may be logged. The remote's
//! own error message is kept in a field for callers that need it, never in `Display`.

use std::{error::Error as StdError, sync::Arc};

use http::StatusCode;
use rhizome_core::{Error, error::MatrixErrorKind};

/// A shareable underlying cause.
pub type Cause = Arc<dyn StdError + Send + Sync + 'static>;

/// A failed request to another server.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FederationError {
    /// Federation is turned off (`federation.enabled = false`).
    #[error("federation is disabled")]
    Disabled,
    /// The destination is not allowed by `federation.allowed_servers`/`denied_servers`.
    #[error("federation with this server is not allowed")]
    ServerDenied,
    /// The destination leads to an address that is neither public nor allowed by
    /// `federation.allowed_addresses`.
    #[error("the server's address is neither public nor allowed")]
    AddressDenied,
    /// The server name has no address (DNS failed or answered nothing).
    #[error("the server name could not be resolved")]
    Unresolvable,
    /// No connection could be made, or it broke before the answer was complete.
    #[error("could not connect to the server")]
    Connection(#[source] Cause),
    /// The TLS handshake failed (certificate not valid for the name, untrusted, …).
    #[error("the TLS handshake with the server failed")]
    Tls(#[source] Cause),
    /// The request did not finish in time.
    #[error("the server did not answer in time")]
    Timeout,
    /// The response body was larger than the limit of the call; it was not read further.
    #[error("the server's response is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server answered with an error status.
    #[error("the server answered HTTP {status}{}", errcode_suffix(kind.as_ref()))]
    Remote {
        /// The HTTP status.
        status: StatusCode,
        /// The Matrix error code, if the body was a Matrix error.
        kind: Option<MatrixErrorKind>,
        /// The remote's error message (remote-controlled text: do not log it above debug).
        message: Option<String>,
    },
    /// The server's answer could not be understood (not the expected JSON, bad HTTP).
    #[error("the server's response is malformed")]
    Malformed(#[source] Cause),
    /// The request could not be built or signed (a fault on this side).
    #[error("the request could not be built")]
    Request(#[source] Cause),
}

fn errcode_suffix(kind: Option<&MatrixErrorKind>) -> String {
    kind.map(|kind| format!(" ({})", kind.errcode())).unwrap_or_default()
}

impl FederationError {
    /// Wraps a cause.
    pub(crate) fn cause(error: impl StdError + Send + Sync + 'static) -> Cause {
        Arc::new(error)
    }

    /// Wraps a message as a cause.
    pub(crate) fn message_cause(message: impl Into<String>) -> Cause {
        let boxed: Box<dyn StdError + Send + Sync> = message.into().into();
        Arc::from(boxed)
    }

    /// Whether this server refused the request by its own policy, before any connection.
    pub fn is_refused_by_policy(&self) -> bool {
        matches!(self, Self::Disabled | Self::ServerDenied | Self::AddressDenied)
    }

    /// Whether the destination could not be reached at all (worth a retry later).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unresolvable | Self::Connection(_) | Self::Tls(_) | Self::Timeout)
    }

    /// The Matrix error code the remote answered with, if any.
    pub fn remote_kind(&self) -> Option<&MatrixErrorKind> {
        match self {
            Self::Remote { kind, .. } => kind.as_ref(),
            _ => None,
        }
    }

    /// Finds a federation error in a chain of causes (the HTTP stack wraps the connector's).
    pub(crate) fn find_in(error: &(dyn StdError + 'static)) -> Option<Self> {
        let mut current: Option<&(dyn StdError + 'static)> = Some(error);
        while let Some(error) = current {
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found.clone());
            }
            current = error.source();
        }
        None
    }
}

/// The Matrix errors of a remote server that may be passed on to a client as they are. Others
/// (an unknown token, a rate limit meant for this server, …) would mislead the client.
fn passes_through(kind: &MatrixErrorKind) -> bool {
    use MatrixErrorKind as K;
    matches!(
        kind,
        K::Forbidden
            | K::NotFound
            | K::InvalidParam
            | K::MissingParam
            | K::BadJson
            | K::NotJson
            | K::TooLarge
            | K::IncompatibleRoomVersion(_)
            | K::UnsupportedRoomVersion
            | K::UnableToAuthorizeJoin
            | K::UnableToGrantJoin
            | K::BadState
            | K::InvalidRoomState
            | K::InviteBlocked
    )
}

impl From<FederationError> for Error {
    fn from(error: FederationError) -> Self {
        let message = match &error {
            FederationError::Disabled => return Error::forbidden("Federation is disabled"),
            FederationError::ServerDenied | FederationError::AddressDenied => {
                return Error::forbidden("Federation with that server is not allowed");
            }
            FederationError::Request(_) => return Error::internal(error),
            FederationError::Remote { kind: Some(kind), .. } if passes_through(kind) => {
                let kind = kind.clone();
                return Error::matrix(kind, "The remote server refused the request")
                    .with_cause(error);
            }
            FederationError::Remote { .. } => "The remote server could not handle the request",
            FederationError::Unresolvable
            | FederationError::Connection(_)
            | FederationError::Tls(_)
            | FederationError::Timeout => "The remote server could not be reached",
            FederationError::ResponseTooLarge { .. } | FederationError::Malformed(_) => {
                "The remote server sent an invalid response"
            }
        };
        Error::matrix(MatrixErrorKind::Unknown, message).with_cause(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_what_a_client_may_see() {
        let forbidden = Error::from(FederationError::ServerDenied);
        assert_eq!(forbidden.matrix_kind(), Some(&MatrixErrorKind::Forbidden));
        let unreachable = Error::from(FederationError::Timeout);
        assert_eq!(unreachable.matrix_kind(), Some(&MatrixErrorKind::Unknown));
        assert!(unreachable.message().contains("could not be reached"));
        let not_found = Error::from(FederationError::Remote {
            status: StatusCode::NOT_FOUND,
            kind: Some(MatrixErrorKind::NotFound),
            message: Some("secret remote text".to_owned()),
        });
        assert_eq!(not_found.matrix_kind(), Some(&MatrixErrorKind::NotFound));
        assert!(!not_found.message().contains("secret"));
        // A remote "unknown token" must not log the client out.
        let token = Error::from(FederationError::Remote {
            status: StatusCode::UNAUTHORIZED,
            kind: Some(MatrixErrorKind::UnknownToken(Default::default())),
            message: None,
        });
        assert_eq!(token.matrix_kind(), Some(&MatrixErrorKind::Unknown));
        assert!(
            Error::from(FederationError::Request(FederationError::message_cause("x")))
                .is_internal()
        );
    }

    #[test]
    fn display_names_no_remote_text() {
        let error = FederationError::Remote {
            status: StatusCode::FORBIDDEN,
            kind: Some(MatrixErrorKind::Forbidden),
            message: Some("remote words".to_owned()),
        };
        assert_eq!(error.to_string(), "the server answered HTTP 403 Forbidden (M_FORBIDDEN)");
    }
}

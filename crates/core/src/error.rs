//! The one error type: a public Matrix error kind, a public message, an internal cause and the
//! place it arose.
//!
//! Only the API crate turns an [`Error`] into an HTTP status and JSON body; everything below it
//! speaks in [`ErrorKind`]s.

use std::{borrow::Cow, fmt, panic::Location};

pub use ruma::api::error::ErrorKind as MatrixErrorKind;
use ruma::api::{
    client::uiaa::UiaaInfo,
    error::{LimitExceededErrorData, RetryAfter, UnknownTokenErrorData},
};

/// The result type used across Rhizome.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as far as the client or remote server may know.
#[derive(Debug, Clone)]
pub enum ErrorKind {
    /// A Matrix error with a standard error code (`M_FORBIDDEN`, `M_BAD_JSON`, …).
    Matrix(MatrixErrorKind),
    /// User-interactive authentication must continue: the client gets the flows (HTTP 401).
    Uiaa(Box<UiaaInfo>),
    /// The thing to create exists already (a Matrix error of the given kind).
    Conflict(MatrixErrorKind),
    /// A fault of the server itself (database, bug, I/O). The client sees only `M_UNKNOWN`.
    Internal,
}

/// Rhizome's error: a public kind and message, an optional internal cause and where it arose.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    cause: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    location: &'static Location<'static>,
}

impl Error {
    /// An error of the given Matrix kind with a message the client will see.
    #[track_caller]
    pub fn matrix(kind: MatrixErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: ErrorKind::Matrix(kind),
            message: message.into(),
            cause: None,
            location: Location::caller(),
        }
    }

    /// The thing to create exists already.
    #[track_caller]
    pub fn conflict(kind: MatrixErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: ErrorKind::Conflict(kind),
            message: message.into(),
            cause: None,
            location: Location::caller(),
        }
    }

    /// `M_FORBIDDEN`.
    #[track_caller]
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(MatrixErrorKind::Forbidden, message)
    }

    /// `M_NOT_FOUND`.
    #[track_caller]
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(MatrixErrorKind::NotFound, message)
    }

    /// `M_BAD_JSON`.
    #[track_caller]
    pub fn bad_json(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(MatrixErrorKind::BadJson, message)
    }

    /// `M_INVALID_PARAM`.
    #[track_caller]
    pub fn invalid_param(message: impl Into<Cow<'static, str>>) -> Self {
        Self::matrix(MatrixErrorKind::InvalidParam, message)
    }

    /// `M_UNKNOWN_TOKEN`.
    #[track_caller]
    pub fn unknown_token(soft_logout: bool) -> Self {
        let mut data = UnknownTokenErrorData::new();
        data.soft_logout = soft_logout;
        Self::matrix(MatrixErrorKind::UnknownToken(data), "Unknown or expired access token")
    }

    /// `M_LIMIT_EXCEEDED` with the delay after which the client may retry.
    #[track_caller]
    pub fn limit_exceeded(retry_after: std::time::Duration) -> Self {
        let mut data = LimitExceededErrorData::new();
        data.retry_after = Some(RetryAfter::Delay(retry_after));
        Self::matrix(MatrixErrorKind::LimitExceeded(data), "Too many requests")
    }

    /// User-interactive authentication must continue with these flows.
    #[track_caller]
    pub fn uiaa(info: UiaaInfo) -> Self {
        Self {
            kind: ErrorKind::Uiaa(Box::new(info)),
            message: Cow::Borrowed("User-interactive authentication required"),
            cause: None,
            location: Location::caller(),
        }
    }

    /// A server fault; the cause is logged, the client sees only `M_UNKNOWN`.
    #[track_caller]
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>) -> Self {
        Self {
            kind: ErrorKind::Internal,
            message: Cow::Borrowed("Internal server error"),
            cause: Some(cause.into()),
            location: Location::caller(),
        }
    }

    /// A server fault described by a message only (an invariant that did not hold).
    #[track_caller]
    pub fn bug(message: impl Into<Cow<'static, str>>) -> Self {
        let message: Cow<'static, str> = message.into();
        Self {
            kind: ErrorKind::Internal,
            message: Cow::Borrowed("Internal server error"),
            cause: Some(message.into_owned().into()),
            location: Location::caller(),
        }
    }

    /// Attaches an internal cause, kept out of the client's view.
    pub fn with_cause(
        mut self,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The public kind.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The Matrix error kind, if this is a Matrix error.
    pub fn matrix_kind(&self) -> Option<&MatrixErrorKind> {
        match &self.kind {
            ErrorKind::Matrix(kind) | ErrorKind::Conflict(kind) => Some(kind),
            _ => None,
        }
    }

    /// The message the client sees.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The internal cause, if any.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// Where in Rhizome's code the error was made.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// Whether this is a server fault rather than a refusal of the request.
    pub fn is_internal(&self) -> bool {
        matches!(self.kind, ErrorKind::Internal)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Matrix(kind) | ErrorKind::Conflict(kind) => {
                write!(f, "{}: {}", kind.errcode(), self.message)?
            }
            ErrorKind::Uiaa(_) => write!(f, "user-interactive authentication required")?,
            ErrorKind::Internal => write!(f, "internal error")?,
        }
        if let Some(cause) = &self.cause {
            write!(f, " ({cause})")?;
        }
        write!(f, " at {}:{}", self.location.file(), self.location.line())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

impl From<serde_json::Error> for Error {
    #[track_caller]
    fn from(error: serde_json::Error) -> Self {
        Error::internal(error)
    }
}

/// Shorthand for turning an `Option` into a Matrix `M_NOT_FOUND` error.
pub trait OptionExt<T> {
    /// `None` becomes `M_NOT_FOUND` with the given message.
    fn or_not_found(self, message: &'static str) -> Result<T>;
}

impl<T> OptionExt<T> for Option<T> {
    #[track_caller]
    fn or_not_found(self, message: &'static str) -> Result<T> {
        match self {
            Some(value) => Ok(value),
            None => Err(Error::not_found(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_message_and_place() {
        let error = Error::forbidden("not allowed");
        let text = error.to_string();
        assert!(text.starts_with("M_FORBIDDEN: not allowed at "), "{text}");
        assert!(text.contains("error.rs"), "{text}");
    }

    #[test]
    fn internal_errors_hide_their_cause_from_the_message() {
        let error = Error::internal(std::io::Error::other("disk on fire"));
        assert_eq!(error.message(), "Internal server error");
        assert!(error.is_internal());
        assert!(error.to_string().contains("disk on fire"));
    }
}

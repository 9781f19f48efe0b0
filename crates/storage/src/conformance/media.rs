//! Conformance checks for media storage.

/// The media checks, for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! media_conformance_tests {
    ($make:expr) => {};
}

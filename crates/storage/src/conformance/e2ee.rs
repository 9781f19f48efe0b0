//! Conformance checks for end-to-end encryption storage.

/// The end-to-end encryption checks, for [`conformance_tests!`](crate::conformance_tests).
#[macro_export]
macro_rules! e2ee_conformance_tests {
    ($make:expr) => {};
}

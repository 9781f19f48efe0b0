//! End-to-end tests of Rhizome with a real Matrix client live in `tests/it`; this library is
//! empty.

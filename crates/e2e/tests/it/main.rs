//! End-to-end tests: real Matrix clients (matrix-sdk, encryption included) against a real
//! Rhizome server over HTTP on loopback.

// Test code: a failed step fails the test at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![recursion_limit = "256"]

mod e2ee;
mod federation;
mod invites;
mod media;
mod migrate;
mod rooms;
mod sliding_sync;
mod support;

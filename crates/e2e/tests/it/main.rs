//! End-to-end tests: real Matrix clients (matrix-sdk, encryption included) against a real
//! Rhizome server over HTTP on loopback.

#![recursion_limit = "256"]

mod e2ee;
mod media;
mod rooms;
mod support;

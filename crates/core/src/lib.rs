//! Rhizome's shared foundations: configuration, the error type and the clock.
//!
//! This crate does no I/O: it parses configuration text it is given, it never reads files or
//! the environment itself (callers pass those in).

pub mod clock;
pub mod config;
pub mod error;

pub use config::Config;
pub use error::{Error, ErrorKind, Result};

use ruma::RoomVersionId;

/// The room versions Rhizome can create and join.
pub const SUPPORTED_ROOM_VERSIONS: &[RoomVersionId] = &[
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
    RoomVersionId::V12,
];

//! HTTP endpoint tests against a real in-process server: exact statuses, error codes and
//! bodies for good and bad requests, on SQLite and PostgreSQL.

mod bad_input;
mod e2ee;
mod forks;
mod media;
mod sync;

//! HTTP endpoint tests against a real in-process server: exact statuses, error codes and
//! bodies for good and bad requests, on SQLite and PostgreSQL.

mod bad_input;
mod forks;
mod sync;

//! HTTP endpoint tests against a real in-process server: exact statuses, error codes and
//! bodies for good and bad requests, on SQLite and PostgreSQL.

// Test code: a failed step fails the test at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod account_data_deletion;
mod accounts;
mod acme;
mod admin;
mod archived;
mod bad_input;
mod delayed_events;
mod e2ee;
mod federation;
mod forget;
mod forks;
mod integrations;
mod invite_filtering;
mod invites;
mod joins;
mod media;
mod membership_views;
mod messages;
mod notifications;
mod peer;
mod presence;
mod push_gateway;
mod push_rules;
mod registration;
mod relations;
mod reports;
mod room_details;
mod rooms;
mod sliding_bump;
mod sliding_sync;
mod small_fixes;
mod spaces;
mod synapse;
mod synapse_admin;
mod sync;
mod sync_details;
mod sync_memory;
mod thread_subscriptions;
mod tls;
mod upgrades;
mod user_directory;

//! Client-Server API handlers, one module per spec area. Each handler turns ruma's request type
//! into a service call and the result into ruma's response type, and nothing more.

pub mod account_data;
pub mod backup;
pub mod delayed_events;
pub mod devices;
pub mod directory;
pub mod discovery;
pub mod ephemeral;
pub mod events;
pub mod integrations;
pub mod keys;
pub mod keys_dehydrated;
pub mod media;
pub mod profile;
pub mod push;
pub(crate) mod raw_endpoint;
pub mod reporting;
pub mod rooms;
pub mod search;
pub mod session;
pub mod sliding_sync;
pub mod synapse_admin;
pub mod sync;
pub mod thread_subscriptions;
pub mod to_device;

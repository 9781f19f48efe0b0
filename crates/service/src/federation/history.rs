//! History across servers (Server-Server API, "Backfilling and retrieving missing events",
//! "Retrieving events", "Retrieving event authorization information"):
//!
//! - [`serve`]: what this server gives other servers of a room's history: single events, the
//!   state before an event and its auth chain, auth chains, `/backfill`,
//!   `/get_missing_events` and `/timestamp_to_event`;
//! - [`access`]: who may have it: the room's server ACL, then history visibility judged for
//!   the requesting server ([`rhizome_room::visibility::server_may_see_event`]);
//! - [`backfill`]: the history this server fetches from the others when a local user pages
//!   back past the start of what it holds of a room, checked like any PDU and kept as history
//!   (below every stream position, outside `/sync`).

mod access;
mod backfill;
mod serve;

pub(crate) use backfill::BackfillState;
pub use serve::StateAnswer;

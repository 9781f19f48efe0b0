//! The conformance suite: behaviour every storage backend must have, written once against the
//! traits. A backend's test crate runs it with [`conformance_tests!`](crate::conformance_tests).

// This module is test code compiled into the library so every backend can run it: a failed
// step must fail the test at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accounts;
mod device_lists;
mod e2ee;
mod federation;
mod jobs;
mod media;
mod moderation;
mod rooms;
mod scheduled;
mod user_data;

use std::{any::Any, sync::Arc};

use crate::DataStore;

pub use accounts::*;
pub use device_lists::*;
pub use e2ee::*;
pub use federation::*;
pub use jobs::*;
pub use media::*;
pub use moderation::*;
pub use rooms::*;
pub use scheduled::*;
pub use user_data::*;

/// A store under test, and whatever must stay alive while it is used (a temporary directory).
pub type TestStore = (Arc<dyn DataStore>, Box<dyn Any + Send>);

/// Generates one `#[tokio::test]` per conformance check, each on a fresh store made by the
/// given async expression (of type [`TestStore`]).
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@each $make;
            users_are_created_once_and_updated,
            deactivation_removes_devices_and_tokens,
            devices_and_tokens,
            refresh_tokens_rotate_once,
            registration_tokens_are_used_up_exactly,
            users_are_listed_and_made_admin,
            client_sessions_expire_and_are_replaced,
            job_leases_have_one_holder,
            pushes_are_queued_with_their_event,
            pushes_of_a_big_room_are_queued_for_the_users_with_pushers,
            events_persist_with_state_extremities_and_positions,
            state_groups_stay_correct_across_snapshots,
            a_failed_persist_changes_nothing,
            timeline_pagination_and_positions,
            transactions_are_found_again,
            redaction_replaces_the_stored_event,
            redactions_wait_for_their_target,
            relations_edits_and_threads,
            memberships_track_current_state,
            aliases_directory_and_search,
            account_data_and_filters,
            receipts_and_unread_counts,
            push_actions_are_pruned_by_age,
            push_actions_of_a_big_room,
            notifications_page_newest_first,
            pushers_are_stored_per_user,
            reports_are_kept_and_resolved,
            rooms_are_shut_down,
            server_keys_are_kept_with_their_validity,
            the_outbound_queue_sends_transactions_whole,
            catch_up_keeps_the_latest_event_per_room,
            destination_leases_have_one_owner,
            inbound_transactions_are_remembered,
            outliers_are_found_and_can_join_the_timeline,
            soft_failed_and_historical_events,
            memberships_in_rooms_not_joined,
            thread_subscriptions_are_kept_and_listed,
            delayed_events_are_scheduled_and_taken_once,
        );
        $crate::e2ee_conformance_tests!($make);
        $crate::device_list_conformance_tests!($make);
        $crate::media_conformance_tests!($make);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (store, _guard) = $make.await;
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

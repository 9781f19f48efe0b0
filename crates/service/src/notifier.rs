//! Wake-ups for waiting `/sync` requests: one counter per user, bumped whenever something the
//! user may sync changes. A waiting sync subscribes before it looks, so no change is missed.
//! With other processes on the same database, every wake-up is also sent to them (with the
//! stream position it follows, see [`crate::processes`]).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use parking_lot::Mutex;
use rhizome_storage::DataStore;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

/// Per-user wake-up channels.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
    /// The store, when other processes share it (their syncs are woken too).
    shared_store: OnceLock<Arc<dyn DataStore>>,
}

impl Notifier {
    /// A receiver that changes whenever [`Notifier::notify`] names the user.
    pub fn subscribe(&self, user_id: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock();
        users.entry(user_id.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Sends wake-ups to the other processes on `store` too, from now on.
    pub(crate) fn share_with_processes(&self, store: Arc<dyn DataStore>) {
        if store.shared_by_processes() {
            let _ = self.shared_store.set(store);
        }
    }

    /// Wakes every waiting sync of these users, in this process and the others.
    pub fn notify<'a>(&self, user_ids: impl IntoIterator<Item = &'a UserId>) {
        let Some(store) = self.shared_store.get() else {
            self.notify_local(user_ids);
            return;
        };
        let user_ids: Vec<OwnedUserId> = user_ids.into_iter().map(ToOwned::to_owned).collect();
        self.notify_local(user_ids.iter().map(|user| user.as_ref()));
        crate::processes::publish_wake(store.as_ref(), store.current_stream_pos(), &user_ids);
    }

    /// Wakes every waiting sync in this process.
    pub(crate) fn notify_everyone(&self) {
        let users: Vec<OwnedUserId> = self.users.lock().keys().cloned().collect();
        self.notify_local(users.iter().map(|user| user.as_ref()));
    }

    /// Wakes the waiting syncs of these users in this process.
    pub fn notify_local<'a>(&self, user_ids: impl IntoIterator<Item = &'a UserId>) {
        let mut users = self.users.lock();
        for user_id in user_ids {
            let idle = match users.get(user_id) {
                Some(sender) => {
                    sender.send_modify(|counter| *counter = counter.wrapping_add(1));
                    sender.receiver_count() == 0
                }
                None => false,
            };
            if idle {
                users.remove(user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::user_id;

    #[tokio::test]
    async fn a_subscriber_sees_a_notification_sent_after_it_subscribed() {
        let notifier = Notifier::default();
        let mut receiver = notifier.subscribe(user_id!("@a:x"));
        notifier.notify([user_id!("@b:x")]);
        assert!(!receiver.has_changed().unwrap());
        notifier.notify([user_id!("@a:x")]);
        tokio::time::timeout(std::time::Duration::from_secs(1), receiver.changed())
            .await
            .expect("woken")
            .unwrap();
    }
}

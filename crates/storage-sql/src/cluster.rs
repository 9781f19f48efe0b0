//! Several processes on one PostgreSQL database: one listening connection per process
//! (`LISTEN rhizome_stream, rhizome_bus`) that moves the stream watermark forward when another
//! process commits, and carries messages between processes (the services' wake-ups, typing,
//! presence and cache invalidations; the store's own membership changes, announced inside the
//! transaction that makes them); one sender task that publishes this process's messages
//! in order (`pg_notify`), and one that announces the stream positions it committed. Messages are handed to the services' handler in the order they
//! were committed, each before any later stream position is read. SQLite has one process, so
//! none of this runs there.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rhizome_core::Result;
use rhizome_storage::{ProcessHandler, ProcessMessage};
use ruma::{OwnedRoomId, OwnedUserId};
use sqlx::{AnyConnection, AnyPool, postgres::PgListener};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{db_error, stream::StreamPositions};

/// The channel the services' messages travel on.
const BUS_CHANNEL: &str = "rhizome_bus";
/// The channel every stream commit is announced on.
const STREAM_CHANNEL: &str = "rhizome_stream";
/// PostgreSQL's limit on a notification's payload is 8000 bytes.
pub const MAX_PAYLOAD: usize = 7900;
/// How often the watermark is read even when nobody announced anything: a writer that died
/// with a position in flight releases it without a word.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Where the other processes' messages go.
type HandlerSlot = Arc<Mutex<Option<ProcessHandler>>>;

/// The running connection to the other processes.
pub(crate) struct Cluster {
    /// This process's name on the bus (its own messages come back and are dropped).
    instance: String,
    outgoing: mpsc::UnboundedSender<String>,
    /// Messages published and not yet sent (or given up on).
    pending: Arc<AtomicUsize>,
    handler: HandlerSlot,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Starts listening (the first `LISTEN` is in place when this returns) and the sender.
    pub(crate) async fn start(
        url: &str,
        pool: AnyPool,
        stream: Arc<StreamPositions>,
    ) -> Result<Self> {
        let instance = random_instance_name();
        let mut listener = PgListener::connect(url).await.map_err(db_error)?;
        listener.listen_all([BUS_CHANNEL, STREAM_CHANNEL]).await.map_err(db_error)?;
        let handler: HandlerSlot = Arc::default();
        let (outgoing, outgoing_receiver) = mpsc::unbounded_channel();
        let listen = tokio::spawn(listen(
            listener,
            pool.clone(),
            stream.clone(),
            handler.clone(),
            instance.clone(),
        ));
        let pending = Arc::new(AtomicUsize::new(0));
        let sender = send(pool.clone(), outgoing_receiver, instance.clone(), pending.clone());
        let send = tokio::spawn(sender);
        let announce = tokio::spawn(announce(pool.clone(), stream.subscribe_committed()));
        let poll = tokio::spawn(poll(pool, stream));
        let tasks = vec![listen, send, announce, poll];
        Ok(Self { instance, outgoing, pending, handler, tasks })
    }

    /// Queues a message for the other processes (sent in order, best effort).
    pub(crate) fn publish(&self, payload: String) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.outgoing.send(format!("{PUBLISHED}{payload}")).is_err() {
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits (up to a few seconds) until every published message has been sent: a short-lived
    /// process (an admin command) must not end before its cache invalidations are out.
    pub(crate) async fn flush(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sets the handler of the other processes' messages.
    pub(crate) fn set_handler(&self, handler: ProcessHandler) {
        if let Ok(mut slot) = self.handler.lock() {
            *slot = Some(handler);
        }
    }

    /// Announces, inside the transaction that makes them, membership changes in a room: the
    /// other processes hear of them before they read the stream position that holds them.
    pub(crate) async fn announce_memberships(
        &self,
        connection: &mut AnyConnection,
        room_id: &ruma::RoomId,
        users: &[OwnedUserId],
    ) -> Result<()> {
        let mut payload = format!("{} {MEMBERSHIPS}{room_id}", self.instance);
        for user in users {
            if payload.len() + user.as_str().len() + 1 > MAX_PAYLOAD {
                // Too many to name: the room's every member counts as changed.
                payload = format!("{} {MEMBERSHIPS}{room_id}", self.instance);
                break;
            }
            payload.push(' ');
            payload.push_str(user.as_str());
        }
        notify_in(connection, payload).await
    }

    /// Announces, inside the transaction that redacts it, that an event was redacted.
    pub(crate) async fn announce_redaction(
        &self,
        connection: &mut AnyConnection,
        event_id: &ruma::EventId,
    ) -> Result<()> {
        notify_in(connection, format!("{} {REDACTED}{event_id}", self.instance)).await
    }

    /// Stops the tasks.
    pub(crate) fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn random_instance_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |time| time.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

/// The first character of a message from the services.
const PUBLISHED: char = 'P';
/// The first character of a store's announcement of membership changes.
const MEMBERSHIPS: char = 'M';
/// The first character of a store's announcement of a redaction.
const REDACTED: char = 'R';

async fn notify_in(connection: &mut AnyConnection, payload: String) -> Result<()> {
    sqlx::query("SELECT CAST(pg_notify($1, $2) AS TEXT)")
        .bind(BUS_CHANNEL)
        .bind(payload)
        .execute(connection)
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Reads a message from another process (`None`: from this one, or garbled).
fn parse_message(payload: &str, instance: &str) -> Option<ProcessMessage> {
    let (sender, message) = payload.split_once(' ')?;
    if sender == instance {
        return None;
    }
    if let Some(message) = message.strip_prefix(PUBLISHED) {
        return Some(ProcessMessage::Published(message.to_owned()));
    }
    if let Some(event_id) = message.strip_prefix(REDACTED) {
        let event_id = ruma::OwnedEventId::try_from(event_id).ok()?;
        return Some(ProcessMessage::EventRedacted { event_id });
    }
    let mut words = message.strip_prefix(MEMBERSHIPS)?.split(' ');
    let room_id = OwnedRoomId::try_from(words.next()?).ok()?;
    let users: Vec<OwnedUserId> =
        words.filter_map(|user| OwnedUserId::try_from(user).ok()).collect();
    let users = (!users.is_empty()).then_some(users);
    Some(ProcessMessage::MembershipsChanged { room_id, users })
}

fn deliver(handler: &HandlerSlot, message: ProcessMessage) {
    let handler = handler.lock().ok().and_then(|slot| slot.clone());
    if let Some(handler) = handler {
        handler(message);
    }
}

async fn listen(
    mut listener: PgListener,
    pool: AnyPool,
    stream: Arc<StreamPositions>,
    handler: HandlerSlot,
    instance: String,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => match notification.channel() {
                STREAM_CHANNEL => {
                    let pos: i64 = notification.payload().parse().unwrap_or(i64::MAX);
                    if pos > stream.current()
                        && let Err(error) = stream.refresh(&pool).await
                    {
                        tracing::warn!(%error, "could not read the stream watermark");
                    }
                }
                _ => {
                    if let Some(message) = parse_message(notification.payload(), &instance) {
                        deliver(&handler, message);
                    }
                }
            },
            Ok(None) => {
                // The connection dropped and is re-established on the next call: whatever
                // was announced meanwhile is lost, so everyone looks again.
                tracing::warn!("the database notification connection was lost; reconnecting");
                deliver(&handler, ProcessMessage::Resync);
                if let Err(error) = stream.refresh(&pool).await {
                    tracing::warn!(%error, "could not read the stream watermark");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "database notifications failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn send(
    pool: AnyPool,
    mut outgoing: mpsc::UnboundedReceiver<String>,
    instance: String,
    pending: Arc<AtomicUsize>,
) {
    while let Some(message) = outgoing.recv().await {
        let payload = format!("{instance} {message}");
        let mut attempts = 0;
        loop {
            let result = sqlx::query("SELECT CAST(pg_notify($1, $2) AS TEXT)")
                .bind(BUS_CHANNEL)
                .bind(&payload)
                .execute(&pool)
                .await;
            match result {
                Ok(_) => break,
                Err(error) if attempts < 3 => {
                    attempts += 1;
                    tracing::debug!(%error, "could not publish to the other processes; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not publish to the other processes");
                    break;
                }
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Announces this process's commits to the others, outside their transactions: the latest
/// position only when several commits came while one announcement was on its way (readers
/// read the watermark again, so the latest says all). A lost announcement costs the others at
/// most [`POLL_INTERVAL`].
async fn announce(pool: AnyPool, mut committed: tokio::sync::watch::Receiver<i64>) {
    while committed.changed().await.is_ok() {
        let pos = *committed.borrow_and_update();
        let result = sqlx::query("SELECT CAST(pg_notify($1, $2) AS TEXT)")
            .bind(STREAM_CHANNEL)
            .bind(pos.to_string())
            .execute(&pool)
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, "could not announce a stream position");
        }
    }
}

async fn poll(pool: AnyPool, stream: Arc<StreamPositions>) {
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(error) = stream.refresh(&pool).await {
            tracing::debug!(%error, "could not read the stream watermark");
        }
    }
}

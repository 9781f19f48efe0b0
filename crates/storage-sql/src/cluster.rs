//! Several processes on one PostgreSQL database: one listening connection per process
//! (`LISTEN rhizome_stream, rhizome_bus`) that moves the stream watermark forward when another
//! process commits, and carries the services' messages between processes (wake-ups, typing,
//! presence, cache invalidations); and one sender task that publishes this process's messages
//! in order (`pg_notify`). SQLite has one process, so none of this runs there.

use std::{sync::Arc, time::Duration};

use rhizome_core::Result;
use sqlx::{AnyPool, postgres::PgListener};
use tokio::{
    sync::{broadcast, mpsc},
    task::JoinHandle,
};

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

/// The running connection to the other processes.
pub(crate) struct Cluster {
    outgoing: mpsc::UnboundedSender<String>,
    incoming: broadcast::Sender<String>,
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
        let (incoming, _) = broadcast::channel(4096);
        let (outgoing, outgoing_receiver) = mpsc::unbounded_channel();
        let listen = tokio::spawn(listen(
            listener,
            pool.clone(),
            stream.clone(),
            incoming.clone(),
            instance.clone(),
        ));
        let send = tokio::spawn(send(pool.clone(), outgoing_receiver, instance.clone()));
        let poll = tokio::spawn(poll(pool, stream));
        Ok(Self { outgoing, incoming, tasks: vec![listen, send, poll] })
    }

    /// Queues a message for the other processes (sent in order, best effort).
    pub(crate) fn publish(&self, payload: String) {
        let _ = self.outgoing.send(payload);
    }

    /// The other processes' messages; an empty message means some may have been lost (the
    /// listening connection was re-established) and everything should be looked at again.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<String> {
        self.incoming.subscribe()
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

async fn listen(
    mut listener: PgListener,
    pool: AnyPool,
    stream: Arc<StreamPositions>,
    incoming: broadcast::Sender<String>,
    instance: String,
) {
    let prefix = format!("{instance} ");
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
                    let payload = notification.payload();
                    if !payload.starts_with(&prefix)
                        && let Some((_, message)) = payload.split_once(' ')
                    {
                        let _ = incoming.send(message.to_owned());
                    }
                }
            },
            Ok(None) => {
                // The connection dropped and is re-established on the next call: whatever
                // was announced meanwhile is lost, so everyone looks again.
                tracing::warn!("the database notification connection was lost; reconnecting");
                if let Err(error) = stream.refresh(&pool).await {
                    tracing::warn!(%error, "could not read the stream watermark");
                }
                let _ = incoming.send(String::new());
            }
            Err(error) => {
                tracing::warn!(%error, "database notifications failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn send(pool: AnyPool, mut outgoing: mpsc::UnboundedReceiver<String>, instance: String) {
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

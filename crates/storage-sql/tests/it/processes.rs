//! Several processes on one PostgreSQL database, as several stores in one test: stream
//! positions in one order for all, a reader never past a position still being written, the
//! room lock, and messages between processes.

use std::{sync::Arc, time::Duration};

use rhizome_storage::{DataStore, RoomStore, UserDataStore};
use rhizome_storage_sql::{SqlStore, testing::shared_postgres};
use ruma::{room_id, user_id};

async fn two_stores() -> (Arc<SqlStore>, Arc<SqlStore>) {
    let (first, second, _) = two_stores_on_a_database().await;
    (first, second)
}

/// Two stores on a fresh database, and that database's name.
async fn two_stores_on_a_database() -> (Arc<SqlStore>, Arc<SqlStore>, String) {
    let url = shared_postgres().create_database().await.unwrap();
    let first = SqlStore::connect(&url, 4).await.unwrap();
    let second = SqlStore::connect(&url, 4).await.unwrap();
    let database = url.rsplit('/').next().unwrap_or_default().to_owned();
    (Arc::new(first), Arc::new(second), database)
}

async fn write_account_data(store: &SqlStore, n: usize) -> i64 {
    store
        .set_account_data(
            user_id!("@a:example.org"),
            None,
            "org.example.test",
            &serde_json::json!({ "n": n }).to_string(),
        )
        .await
        .unwrap()
}

async fn wait_until(store: &SqlStore, pos: i64) -> Duration {
    let started = std::time::Instant::now();
    let mut changes = store.subscribe_stream_pos();
    tokio::time::timeout(Duration::from_secs(5), changes.wait_for(|current| *current >= pos))
        .await
        .expect("the position reached the other store")
        .unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_stop_below_a_position_still_being_written() {
    let (first, second) = two_stores().await;
    let before = write_account_data(&first, 0).await;
    wait_until(&second, before).await;

    let slow = first.hold_stream_position().await.unwrap();
    assert_eq!(slow.pos(), before + 1);
    let fast_store = second.clone();
    let fast = tokio::spawn(async move { write_account_data(&fast_store, 1).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!fast.is_finished(), "a write waits until the positions before it are readable");
    assert_eq!(first.current_stream_pos(), before, "first reads past a position in flight");
    assert_eq!(second.current_stream_pos(), before, "second reads past a position in flight");

    slow.commit().await.unwrap();
    let fast_pos = fast.await.unwrap();
    assert_eq!(fast_pos, before + 2);
    assert!(second.current_stream_pos() >= fast_pos);
    let latency = wait_until(&first, fast_pos).await;
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_rolled_back_or_abandoned_holds_nobody_back() {
    let (first, second, database) = two_stores_on_a_database().await;
    let held = first.hold_stream_position().await.unwrap();
    let skipped = held.pos();
    drop(held);
    let next = write_account_data(&second, 1).await;
    assert!(next > skipped);
    wait_until(&first, next).await;

    // A process that dies mid-write: its connection goes, and so does its position. Only
    // this test's database: other tests run on the same PostgreSQL at the same time.
    let held = first.hold_stream_position().await.unwrap();
    let abandoned = held.pos();
    let url = shared_postgres().url("postgres");
    let mut admin = <sqlx::AnyConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND objsubid = 1 AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = $1)",
    )
    .bind(database)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty());
    let next = write_account_data(&second, 2).await;
    assert!(next > abandoned);
    assert!(second.current_stream_pos() >= next);
    wait_until(&first, next).await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_one_order() {
    let (first, second) = two_stores().await;
    let mut tasks = Vec::new();
    for (index, store) in [first.clone(), second.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for n in 0..40 {
                positions.push(write_account_data(&store, index * 100 + n).await);
            }
            positions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let positions = task.await.unwrap();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "one writer's order");
        all.extend(positions);
    }
    all.sort_unstable();
    let count = all.len();
    all.dedup();
    assert_eq!(all.len(), count, "every position is taken once");
    let last = *all.last().unwrap();
    wait_until(&first, last).await;
    wait_until(&second, last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_at_a_time_holds_a_room() {
    let (first, second) = two_stores().await;
    let room = room_id!("!locked:example.org");
    let held = first.lock_room(room).await.unwrap();
    let waiting_store = second.clone();
    let waiting = tokio::spawn(async move { waiting_store.lock_room(room).await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the second process waits for the room");
    let other = second.lock_room(room_id!("!other:example.org")).await.unwrap();
    drop(other);
    drop(held);
    tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_other_processes_only() {
    use rhizome_storage::ProcessMessage;
    let (first, second) = two_stores().await;
    assert!(first.shared_by_processes());
    let (first_sender, mut first_hears) = tokio::sync::mpsc::unbounded_channel();
    let (second_sender, mut second_hears) = tokio::sync::mpsc::unbounded_channel();
    first.set_process_handler(Arc::new(move |message: ProcessMessage| {
        let _ = first_sender.send(message);
    }));
    second.set_process_handler(Arc::new(move |message: ProcessMessage| {
        let _ = second_sender.send(message);
    }));
    first.publish_to_processes("hello from first".into());
    let heard = tokio::time::timeout(Duration::from_secs(5), second_hears.recv()).await;
    assert!(
        matches!(heard.unwrap().unwrap(), ProcessMessage::Published(text) if text == "hello from first")
    );
    second.publish_to_processes("and back".into());
    let heard = tokio::time::timeout(Duration::from_secs(5), first_hears.recv()).await;
    assert!(
        matches!(heard.unwrap().unwrap(), ProcessMessage::Published(text) if text == "and back"),
        "first never hears itself"
    );
}

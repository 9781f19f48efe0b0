//! The storage conformance suite, run on SQLite and on a real PostgreSQL server.

// Test code: a failed step fails the test at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod processes;

mod sqlite {
    use std::sync::Arc;

    use rhizome_storage::conformance::TestStore;
    use rhizome_storage_sql::SqlStore;

    async fn make() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = SqlStore::connect(&url, 4).await.unwrap();
        (Arc::new(store), Box::new(dir))
    }

    rhizome_storage::conformance_tests!(make());

    /// Push actions staged on SQLite read the same once moved to their table, from the store
    /// that wrote them and from one opened afresh.
    #[tokio::test]
    async fn staged_push_actions_read_the_same_once_moved() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Arc::new(SqlStore::connect(&url, 4).await.unwrap());
        let settle = || {
            let (store, url) = (store.clone(), url.clone());
            async move {
                store.move_staged_push_actions().await.unwrap();
                let fresh: Arc<dyn rhizome_storage::DataStore> =
                    Arc::new(SqlStore::connect(&url, 2).await.unwrap());
                fresh
            }
        };
        rhizome_storage::conformance::push_actions_read_the_same_after(store.clone(), settle).await;
        // Everything was moved: nothing is left to move.
        assert_eq!(store.move_staged_push_actions().await.unwrap(), 0);
    }

    /// A room's record and extremities, which the store remembers, read the same as from a
    /// store opened afresh after every write that changes them.
    #[tokio::test]
    async fn room_heads_read_the_same_as_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store: Arc<dyn rhizome_storage::DataStore> =
            Arc::new(SqlStore::connect(&url, 4).await.unwrap());
        let fresh = || {
            let url = url.clone();
            async move {
                let fresh: Arc<dyn rhizome_storage::DataStore> =
                    Arc::new(SqlStore::connect(&url, 2).await.unwrap());
                fresh
            }
        };
        rhizome_storage::conformance::room_heads_read_the_same_after(store, fresh).await;
    }

    /// The write-ahead log is copied back into the database file in the background, well
    /// before the log is big enough for a write to do it itself.
    #[tokio::test]
    async fn the_log_is_checkpointed_in_the_background() {
        use rhizome_storage::UserDataStore;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let store = SqlStore::connect(&format!("sqlite://{}", path.display()), 2).await.unwrap();
        let size = || std::fs::metadata(&path).unwrap().len();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let before = size();
        // About 2 MB in the log: a few hundred pages, far below the writer's own threshold.
        let user = ruma::user_id!("@a:example.org");
        let content = format!("{{\"x\":\"{}\"}}", "y".repeat(10_000));
        for index in 0..200 {
            store.set_account_data(user, None, &format!("t{index}"), &content).await.unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while size() < before + 1_500_000 {
            assert!(std::time::Instant::now() < deadline, "not copied back: {} bytes", size());
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        store.close().await;
    }

    /// Enough staged push actions move by themselves, and read the same after.
    #[tokio::test]
    async fn staged_push_actions_move_by_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Arc::new(SqlStore::connect(&url, 4).await.unwrap());
        let counter = store.clone();
        rhizome_storage::conformance::staged_push_actions_are_moved_by_themselves(
            store.clone(),
            move || counter.staged_push_action_rows(),
        )
        .await;
        // Read afresh from the database: the moved rows and the staged ones count alike.
        let fresh = SqlStore::connect(&url, 2).await.unwrap();
        // (A store counts the staged table's rows when it opens: they really moved.)
        assert!(fresh.staged_push_action_rows() < 10_000, "{}", fresh.staged_push_action_rows());
        let member = ruma::user_id!("@m5:example.org");
        let room = ruma::room_id!("!moved:example.org");
        use rhizome_storage::UserDataStore;
        assert_eq!(fresh.unread_counts(member, room).await.unwrap().notifications, 12);
    }

    /// A database whose push actions are laid out as before migration 12 (a table with a key
    /// and an index of its own) keeps every row once migrated to the one ordered by user, room
    /// and position, and reads them the same.
    #[tokio::test]
    async fn push_actions_keep_their_rows_in_their_new_layout() {
        use rhizome_storage::{UnreadCounts, UserDataStore};
        use sqlx::{Connection, Executor};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        SqlStore::connect(&url, 2).await.unwrap().close().await;
        let layout = "SELECT sql FROM sqlite_master WHERE name = 'event_push_actions'";
        // Back to the layout before the migration, with rows in it.
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let sql: String = sqlx::query_scalar(layout).fetch_one(&mut db).await.unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        db.execute(
            "DROP VIEW push_actions; DROP TABLE event_push_actions; \
             CREATE TABLE event_push_actions (user_id TEXT NOT NULL, room_id TEXT NOT NULL, \
               stream_pos BIGINT NOT NULL, notify BIGINT NOT NULL, highlight BIGINT NOT NULL, \
               thread_id TEXT, actions TEXT, PRIMARY KEY (user_id, stream_pos)); \
             CREATE INDEX event_push_actions_room ON event_push_actions \
               (user_id, room_id, stream_pos); \
             CREATE VIEW push_actions AS \
               SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions \
               FROM event_push_actions UNION ALL \
               SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions \
               FROM event_push_actions_staged; \
             INSERT INTO event_push_actions VALUES \
               ('@a:example.org', '!r:example.org', 5, 1, 0, NULL, '[\"notify\"]'), \
               ('@a:example.org', '!r:example.org', 6, 1, 1, NULL, '[\"notify\"]'), \
               ('@a:example.org', '!s:example.org', 7, 1, 0, NULL, '[\"notify\"]'), \
               ('@b:example.org', '!r:example.org', 5, 1, 0, NULL, '[\"notify\"]'); \
             DELETE FROM schema_migrations WHERE version = 12;",
        )
        .await
        .unwrap();
        db.close().await.unwrap();

        let store = SqlStore::connect(&url, 2).await.unwrap();
        let (a, b) = (ruma::user_id!("@a:example.org"), ruma::user_id!("@b:example.org"));
        let (r, s) = (ruma::room_id!("!r:example.org"), ruma::room_id!("!s:example.org"));
        let counts = |notifications, highlights| UnreadCounts { notifications, highlights };
        assert_eq!(store.unread_counts(a, r).await.unwrap(), counts(2, 1));
        assert_eq!(store.unread_counts(a, s).await.unwrap(), counts(1, 0));
        assert_eq!(store.unread_counts(b, r).await.unwrap(), counts(1, 0));
        assert_eq!(store.notifications(a, None, false, 10).await.unwrap().len(), 0, "no events");
        store.close().await;
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let sql: String = sqlx::query_scalar(layout).fetch_one(&mut db).await.unwrap();
        assert!(sql.contains("WITHOUT ROWID"), "{sql}");
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_push_actions")
            .fetch_one(&mut db)
            .await
            .unwrap();
        assert_eq!(rows, 4);
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        use rhizome_storage::AccountStore;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = SqlStore::connect(&url, 2).await.unwrap();
        store
            .create_registration_token(&rhizome_storage::RegistrationTokenRecord {
                token: "kept".into(),
                uses_allowed: None,
                completed: 0,
                expiry_ts: None,
                created_ts: 1,
            })
            .await
            .unwrap();
        store.close().await;
        let again = SqlStore::connect(&url, 2).await.unwrap();
        assert!(again.get_registration_token("kept").await.unwrap().is_some());
    }
}

mod postgres {
    use std::sync::Arc;

    use rhizome_storage::conformance::TestStore;
    use rhizome_storage_sql::{SqlStore, testing::shared_postgres};

    async fn make() -> TestStore {
        let url = shared_postgres().create_database().await.unwrap();
        let store = SqlStore::connect(&url, 4).await.unwrap();
        (Arc::new(store), Box::new(()))
    }

    rhizome_storage::conformance_tests!(make());

    /// A SQLite table without a rowid (the push actions) is copied to PostgreSQL whole, page
    /// after page along its key, rows whose key order is not the order they were written in.
    #[tokio::test]
    async fn a_table_without_rowid_is_copied_page_by_page() {
        use sqlx::{Connection, Executor};
        let dir = tempfile::tempdir().unwrap();
        let source = format!("sqlite://{}", dir.path().join("test.db").display());
        SqlStore::connect(&source, 2).await.unwrap().close().await;
        let mut db = sqlx::SqliteConnection::connect(&source).await.unwrap();
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 1199) \
             INSERT INTO event_push_actions \
             SELECT '@u' || (i % 7) || ':example.org', '!r' || (i % 3) || ':example.org', i, 1, \
                    i % 2, NULL, '[\"notify\"]' FROM n",
        )
        .await
        .unwrap();
        db.close().await.unwrap();
        let target = shared_postgres().create_database().await.unwrap();
        rhizome_storage_sql::copy::copy_sqlite_to_postgres(&source, &target, |_| {}).await.unwrap();
        let mut pg = sqlx::PgConnection::connect(&target).await.unwrap();
        let copied: (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*), CAST(sum(stream_pos) AS BIGINT), CAST(sum(highlight) AS BIGINT), \
                    count(DISTINCT (user_id, room_id)) FROM event_push_actions",
        )
        .fetch_one(&mut pg)
        .await
        .unwrap();
        assert_eq!(copied, (1200, 1200 * 1199 / 2, 600, 21));
    }
}

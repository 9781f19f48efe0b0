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
}

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

//! End-to-end encryption storage in SQL.

use async_trait::async_trait;
use rhizome_storage::E2eeStore;

use crate::SqlStore;

#[async_trait]
impl E2eeStore for SqlStore {}

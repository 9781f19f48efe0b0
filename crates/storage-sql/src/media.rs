//! Media metadata in SQL.

use async_trait::async_trait;
use rhizome_storage::MediaStore;

use crate::SqlStore;

#[async_trait]
impl MediaStore for SqlStore {}

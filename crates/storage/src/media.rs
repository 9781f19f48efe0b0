//! Media storage: metadata of uploaded files and their thumbnails (the bytes live in files).

use async_trait::async_trait;

/// Media metadata storage.
#[async_trait]
pub trait MediaStore {}

//! End-to-end encryption storage: device keys, one-time and fallback keys, cross-signing keys
//! and signatures, to-device messages, device-list changes and key backups.

use async_trait::async_trait;

/// End-to-end encryption storage.
#[async_trait]
pub trait E2eeStore {}

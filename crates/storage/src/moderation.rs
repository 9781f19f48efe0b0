//! Moderation: reports of rooms and events that users make for the server's administrator.

use async_trait::async_trait;
use rhizome_core::Result;

use crate::{NewReport, ReportRecord};

/// Reports of rooms and events, kept for the server's administrator.
#[async_trait]
pub trait ModerationStore {
    /// Stores a report and returns its number.
    async fn add_report(&self, report: &NewReport) -> Result<i64>;

    /// Reports, oldest first: the unresolved ones, or all of them.
    async fn list_reports(&self, include_resolved: bool) -> Result<Vec<ReportRecord>>;

    /// Marks a report resolved; `false` if there is no unresolved report of that number.
    async fn resolve_report(&self, report_id: i64, resolved_ts: i64) -> Result<bool>;
}

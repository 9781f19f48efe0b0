//! Reports for the server's administrator in SQL.

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::{ModerationStore, NewReport, ReportRecord};
use sqlx::{Row, any::AnyRow};

use crate::{SqlStore, db_error, flag, parse_id};

fn report_from_row(row: &AnyRow) -> Result<ReportRecord> {
    let event_id: Option<String> = row.try_get("event_id").map_err(db_error)?;
    Ok(ReportRecord {
        report_id: row.try_get("report_id").map_err(db_error)?,
        report: NewReport {
            reporter: parse_id(row.try_get("reporter").map_err(db_error)?)?,
            room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
            event_id: event_id.map(parse_id).transpose()?,
            reason: row.try_get("reason").map_err(db_error)?,
            score: row.try_get("score").map_err(db_error)?,
            received_ts: row.try_get("received_ts").map_err(db_error)?,
        },
        resolved_ts: row.try_get("resolved_ts").map_err(db_error)?,
    })
}

#[async_trait]
impl ModerationStore for SqlStore {
    async fn add_report(&self, report: &NewReport) -> Result<i64> {
        sqlx::query_scalar(
            "INSERT INTO reports (reporter, room_id, event_id, reason, score, received_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING report_id",
        )
        .bind(report.reporter.as_str())
        .bind(report.room_id.as_str())
        .bind(report.event_id.as_ref().map(|id| id.as_str()))
        .bind(report.reason.as_deref())
        .bind(report.score)
        .bind(report.received_ts)
        .fetch_one(&self.write)
        .await
        .map_err(db_error)
    }

    async fn list_reports(&self, include_resolved: bool) -> Result<Vec<ReportRecord>> {
        let rows = sqlx::query(
            "SELECT report_id, reporter, room_id, event_id, reason, score, received_ts, \
             resolved_ts FROM reports WHERE resolved_ts IS NULL OR $1 = 1 ORDER BY report_id",
        )
        .bind(flag(include_resolved))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(report_from_row).collect()
    }

    async fn resolve_report(&self, report_id: i64, resolved_ts: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE reports SET resolved_ts = $1 WHERE report_id = $2 AND resolved_ts IS NULL",
        )
        .bind(resolved_ts)
        .bind(report_id)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }
}

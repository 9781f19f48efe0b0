//! `rhizome admin reports …`: list the reports users made, and mark them resolved.

use anyhow::Result;
use rhizome_service::Services;

use super::{format_ts, one_line};

/// The open reports (all with `include_resolved`), oldest first, one line each: number, time,
/// reporter, room, event (or `room` for a room report), score, reason and, if resolved, when.
pub async fn list(services: &Services, include_resolved: bool) -> Result<Vec<String>> {
    Ok(services
        .reports(include_resolved)
        .await?
        .into_iter()
        .map(|record| {
            let report = record.report;
            let mut line = format!(
                "#{}\t{}\t{}\t{}\t{}\tscore {}\t{}",
                record.report_id,
                format_ts(report.received_ts),
                report.reporter,
                report.room_id,
                report.event_id.map_or_else(|| "room".to_owned(), |id| id.to_string()),
                report.score.map_or_else(|| "-".to_owned(), |score| score.to_string()),
                report.reason.as_deref().map_or_else(|| "(no reason)".to_owned(), one_line),
            );
            if let Some(resolved) = record.resolved_ts {
                line.push_str(&format!("\tresolved {}", format_ts(resolved)));
            }
            line
        })
        .collect())
}

/// Marks a report resolved (`#12` or `12`).
pub async fn resolve(services: &Services, report: &str) -> Result<String> {
    let id: i64 = report
        .trim_start_matches('#')
        .parse()
        .map_err(|_| anyhow::anyhow!("`{report}` is not a report number"))?;
    services.resolve_report(id).await?;
    Ok(format!("resolved report #{id}"))
}

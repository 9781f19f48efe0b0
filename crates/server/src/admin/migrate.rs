//! `rhizome admin migrate-db --to postgres://…`: copies the server's SQLite database into a
//! new PostgreSQL database, with a progress line on standard error. The server must be
//! stopped (the data directory's lock is taken). A copy that stops half-way is run again;
//! the signing key and media stay in the data directory, which the server keeps using.

use std::io::Write;

use anyhow::{Context, Result, bail};
use rhizome_core::Config;
use rhizome_storage_sql::copy::{CopyProgress, copy_sqlite_to_postgres};

use crate::{DataDirLock, database_url};

/// Width of the progress bar.
const BAR: u64 = 30;

/// The progress line for where a copy is.
pub fn progress_line(at: &CopyProgress) -> String {
    // An empty table is done at once.
    let filled = (at.rows_done.min(at.rows_total) * BAR).checked_div(at.rows_total).unwrap_or(BAR);
    let bar: String = (0..BAR).map(|cell| if cell < filled { '#' } else { '.' }).collect();
    format!(
        "[{bar}] table {}/{} {}: {}/{} rows",
        at.table_number, at.tables, at.table, at.rows_done, at.rows_total
    )
}

/// Copies the configured SQLite database into `to`; the lines to print.
pub async fn migrate_db(config: &Config, to: &str) -> Result<Vec<String>> {
    let from = database_url(config)?;
    if !from.starts_with("sqlite:") {
        bail!("the server's database is not SQLite: nothing to move");
    }
    if !(to.starts_with("postgres://") || to.starts_with("postgresql://")) {
        bail!("--to must be a PostgreSQL URL (postgres://user:password@host/dbname)");
    }
    let _lock = DataDirLock::acquire(&config.data_dir, "cannot copy the database")?;
    let mut stderr = std::io::stderr();
    let report = copy_sqlite_to_postgres(&from, to, |at| {
        let _ = write!(stderr, "\r{}\x1b[K", progress_line(at));
        let _ = stderr.flush();
    })
    .await
    .context("copying the database")?;
    let _ = writeln!(stderr);
    Ok(vec![
        format!(
            "copied {} tables ({} rows){}",
            report.tables_copied,
            report.rows_copied,
            if report.tables_skipped > 0 {
                format!("; {} were copied by an earlier run", report.tables_skipped)
            } else {
                String::new()
            }
        ),
        format!(
            "verified: {} rows in every table as in SQLite, the latest {} events identical",
            report.rows_verified, report.events_verified
        ),
        "now set database.url to the PostgreSQL URL (or database.url_file) and start Rhizome \
         with the same data directory"
            .to_owned(),
    ])
}

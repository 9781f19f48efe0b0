//! Administration commands run against the database directly: registration tokens, stored
//! media, accounts ([`users`]), rooms ([`rooms`]), reports ([`reports`]) and federation
//! ([`federation`]: the signing key, destinations). Each returns the
//! text to print, so it can be tested without a terminal.

pub mod backup;
pub mod federation;
pub mod reports;
pub mod rooms;
pub mod users;

use std::time::Duration;

use anyhow::{Result, bail};
use rhizome_core::clock::now_millis;
use rhizome_service::Services;

/// Parses a duration like `30m`, `12h`, `7d` or `2w`.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration `{text}`: expected e.g. 30m, 12h, 7d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => bail!("invalid duration unit in `{text}`: use s, m, h, d or w"),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// A time (ms since the epoch) as `YYYY-MM-DD HH:MM` in UTC.
pub fn format_ts(millis: i64) -> String {
    let secs = millis.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rest / 3600, rest % 3600 / 60)
}

/// Text from users (display names, reasons) on one line: control characters become spaces.
pub fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Creates a registration token and prints it.
pub async fn create_token(
    services: &Services,
    token: Option<String>,
    uses: Option<i64>,
    expires: Option<&str>,
) -> Result<String> {
    let expiry_ts = match expires {
        Some(text) => Some(
            now_millis() + i64::try_from(parse_duration(text)?.as_millis()).unwrap_or(i64::MAX / 2),
        ),
        None => None,
    };
    let record = services.create_registration_token(token, uses, expiry_ts).await?;
    Ok(record.token)
}

/// Lists registration tokens as text lines.
pub async fn list_tokens(services: &Services) -> Result<Vec<String>> {
    let now = now_millis();
    let tokens = services.store.list_registration_tokens().await?;
    Ok(tokens
        .into_iter()
        .map(|token| {
            let uses = match token.uses_allowed {
                Some(allowed) => format!("{}/{allowed} used", token.completed),
                None => format!("{} used, unlimited", token.completed),
            };
            let expiry = match token.expiry_ts {
                Some(expiry) if expiry <= now => "expired".to_owned(),
                Some(expiry) => format!("expires in {}h", (expiry - now) / 3_600_000),
                None => "never expires".to_owned(),
            };
            let state = if token.is_valid_at(now) { "valid" } else { "invalid" };
            format!("{}\t{state}\t{uses}\t{expiry}", token.token)
        })
        .collect())
}

/// Revokes (deletes) a registration token.
pub async fn revoke_token(services: &Services, token: &str) -> Result<()> {
    if !services.store.delete_registration_token(token).await? {
        bail!("no registration token `{token}`");
    }
    Ok(())
}

/// Deletes one media item of this server, given its `mxc://` URI.
pub async fn delete_media(services: &Services, mxc_uri: &str) -> Result<String> {
    if !services.delete_media_by_uri(mxc_uri).await? {
        bail!("no media `{mxc_uri}`");
    }
    Ok(format!("deleted {mxc_uri}"))
}

/// Deletes media of this server not used for the given duration (`30d`, `12h`, …).
pub async fn purge_media(services: &Services, older_than: &str) -> Result<String> {
    let unused_for = parse_duration(older_than)?;
    let report = services.purge_media(unused_for).await?;
    Ok(format!(
        "deleted {} media items ({} files), {} lapsed upload reservations and {} cached URL \
         previews",
        report.media, report.files, report.pending, report.previews
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(format_ts(0), "1970-01-01 00:00");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(format_ts(1_764_066_300_000), "2025-11-25 10:25");
        assert_eq!(one_line("a\tb\nc"), "a b c");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3y").is_err());
    }
}

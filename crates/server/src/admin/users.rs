//! `rhizome admin user …`: list accounts, create one, deactivate one, reset a password and
//! grant or withdraw server administration.

use anyhow::Result;
use rhizome_service::{Services, users::admin::generate_password};

use super::{format_ts, one_line};

/// The accounts, one line each: user ID, display name, admin, state and creation time. No
/// addresses: Rhizome keeps none.
pub async fn list(services: &Services) -> Result<Vec<String>> {
    Ok(services
        .list_accounts()
        .await?
        .into_iter()
        .map(|user| {
            format!(
                "{}\t{}\t{}\t{}\tcreated {}",
                user.user_id,
                user.displayname.as_deref().map_or_else(|| "-".to_owned(), one_line),
                if user.is_admin { "admin" } else { "-" },
                if user.deactivated { "deactivated" } else { "active" },
                format_ts(user.created_ts),
            )
        })
        .collect())
}

/// What `user create` and `user reset-password` print: the account and, when Rhizome made the
/// password up, the password.
#[derive(Debug)]
pub struct Created {
    /// The account.
    pub user_id: String,
    /// The generated password, to hand on.
    pub generated_password: Option<String>,
}

impl Created {
    /// The lines to print.
    pub fn lines(&self, what: &str) -> Vec<String> {
        let mut lines = vec![format!("{what} {}", self.user_id)];
        if let Some(password) = &self.generated_password {
            lines.push(format!("password: {password}"));
        }
        lines
    }
}

/// Creates an account; with no password given, generates one.
pub async fn create(
    services: &Services,
    name: &str,
    password: Option<String>,
    is_admin: bool,
) -> Result<Created> {
    let (password, generated) = match password {
        Some(password) => (password, false),
        None => (generate_password(), true),
    };
    let user_id = services.create_account(name, &password, is_admin).await?;
    Ok(Created { user_id: user_id.to_string(), generated_password: generated.then_some(password) })
}

/// Deactivates an account: it leaves its rooms, its sessions end, its ID stays taken.
pub async fn deactivate(services: &Services, user: &str) -> Result<String> {
    let user_id = services.parse_user_identifier(user)?;
    services.active_account(&user_id).await?;
    services.deactivate_user(&user_id).await?;
    Ok(format!("deactivated {user_id}"))
}

/// Sets a new password (generated when none is given) and ends the account's sessions.
pub async fn reset_password(
    services: &Services,
    user: &str,
    password: Option<String>,
) -> Result<Created> {
    let user_id = services.parse_user_identifier(user)?;
    let (password, generated) = match password {
        Some(password) => (password, false),
        None => (generate_password(), true),
    };
    services.reset_password(&user_id, &password).await?;
    Ok(Created { user_id: user_id.to_string(), generated_password: generated.then_some(password) })
}

/// Grants (`true`) or withdraws (`false`) server administration.
pub async fn set_admin(services: &Services, user: &str, is_admin: bool) -> Result<String> {
    let user_id = services.parse_user_identifier(user)?;
    services.set_server_admin(&user_id, is_admin).await?;
    Ok(if is_admin {
        format!("{user_id} is now a server administrator")
    } else {
        format!("{user_id} is no longer a server administrator")
    })
}

/// Reads a password from the first line of `input` (for `--password-stdin`).
pub fn read_password(input: impl std::io::BufRead) -> Result<String> {
    let mut line = String::new();
    let mut input = input;
    input.read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        anyhow::bail!("no password on standard input");
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_read_from_the_first_line() {
        assert_eq!(read_password(&b"s3cret pass\nmore"[..]).unwrap(), "s3cret pass");
        assert_eq!(read_password(&b"crlf\r\n"[..]).unwrap(), "crlf");
        assert!(read_password(&b"\n"[..]).is_err());
        assert!(read_password(&b""[..]).is_err());
    }
}

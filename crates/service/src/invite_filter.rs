//! Who may invite a user, as the user's account data says: invite blocking (spec 1.18,
//! `m.invite_permission_config` with `default_action: block`, or MSC4380's unstable type with
//! `block_all: true`: no invites at all) and invite
//! filtering (MSC4155, `org.matrix.msc4155.invite_permission_config`: glob lists of users and
//! servers to allow, ignore or block, users first, then servers). A blocked invite is refused
//! with 403 `M_INVITE_BLOCKED` (from local users and other servers alike); an ignored one is
//! made, but never shown to the invitee; neither shows in their syncs.

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use ruma::UserId;
use serde_json::Value;

use crate::Services;

/// Invite blocking's account data type (spec 1.18).
pub const INVITE_PERMISSION_TYPE: &str = "m.invite_permission_config";
/// Invite blocking's unstable account data type (MSC4380, `block_all: true`).
pub const UNSTABLE_INVITE_PERMISSION_TYPE: &str = "org.matrix.msc4380.invite_permission_config";
/// Invite filtering's account data type (MSC4155, unstable).
pub const INVITE_FILTER_TYPE: &str = "org.matrix.msc4155.invite_permission_config";

/// What becomes of an invite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteRule {
    /// Made and shown.
    Allow,
    /// Made, never shown.
    Ignore,
    /// Refused.
    Block,
}

/// A user's invite rules.
#[derive(Clone, Debug, Default)]
pub struct InviteFilter {
    block_all: bool,
    allowed_users: Vec<String>,
    ignored_users: Vec<String>,
    blocked_users: Vec<String>,
    allowed_servers: Vec<String>,
    ignored_servers: Vec<String>,
    blocked_servers: Vec<String>,
}

/// A list of globs from the content (anything but a list of strings is no list).
fn globs(content: &Value, field: &str) -> Vec<String> {
    content
        .get(field)
        .and_then(Value::as_array)
        .map(|items| items.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether `text` matches the glob `pattern` (`*` any run, `?` one character), ignoring ASCII
/// case.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    rhizome_core::config::glob_match(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

fn any_matches(globs: &[String], text: &str) -> bool {
    globs.iter().any(|glob| glob_matches(glob, text))
}

impl InviteFilter {
    /// The rules from the two account data contents (either may be missing).
    pub fn new(blocking: Option<&Value>, filtering: Option<&Value>) -> Self {
        let block_all = blocking.is_some_and(|content| {
            content.get("default_action").is_some_and(|action| action == "block")
                || content.get("block_all").is_some_and(|block| block == true)
        });
        let filtering = filtering.cloned().unwrap_or(Value::Null);
        Self {
            block_all,
            allowed_users: globs(&filtering, "allowed_users"),
            ignored_users: globs(&filtering, "ignored_users"),
            blocked_users: globs(&filtering, "blocked_users"),
            allowed_servers: globs(&filtering, "allowed_servers"),
            ignored_servers: globs(&filtering, "ignored_servers"),
            blocked_servers: globs(&filtering, "blocked_servers"),
        }
    }

    /// What becomes of an invite from `inviter`.
    pub fn rule(&self, inviter: &UserId) -> InviteRule {
        if self.block_all {
            return InviteRule::Block;
        }
        let user = inviter.as_str();
        // Servers by name, without a port.
        let server = inviter.server_name().host();
        if any_matches(&self.allowed_users, user) {
            InviteRule::Allow
        } else if any_matches(&self.ignored_users, user) {
            InviteRule::Ignore
        } else if any_matches(&self.blocked_users, user) {
            InviteRule::Block
        } else if any_matches(&self.allowed_servers, server) {
            InviteRule::Allow
        } else if any_matches(&self.ignored_servers, server) {
            InviteRule::Ignore
        } else if any_matches(&self.blocked_servers, server) {
            InviteRule::Block
        } else {
            InviteRule::Allow
        }
    }
}

impl Services {
    /// The invite rules of a local user.
    pub async fn invite_filter(&self, user_id: &UserId) -> Result<InviteFilter> {
        let mut contents = Vec::new();
        for kind in [INVITE_PERMISSION_TYPE, UNSTABLE_INVITE_PERMISSION_TYPE, INVITE_FILTER_TYPE] {
            let record = self.store.get_account_data(user_id, None, kind).await?;
            contents.push(record.and_then(|record| serde_json::from_str(&record.content).ok()));
        }
        let [stable, unstable, filtering]: [Option<Value>; 3] =
            contents.try_into().unwrap_or_default();
        let mut filter = InviteFilter::new(stable.as_ref(), filtering.as_ref());
        filter.block_all |= InviteFilter::new(unstable.as_ref(), None).block_all;
        Ok(filter)
    }

    /// Refuses an invite of a local user the user blocks; `Ok(Ignore)` for one they ignore.
    pub(crate) async fn check_invite_allowed(
        &self,
        invitee: &UserId,
        inviter: &UserId,
    ) -> Result<InviteRule> {
        let rule = self.invite_filter(invitee).await?.rule(inviter);
        if rule == InviteRule::Block {
            return Err(Error::matrix(
                MatrixErrorKind::InviteBlocked,
                "This user does not accept invites from you",
            ));
        }
        Ok(rule)
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;
    use serde_json::json;

    use super::*;

    #[test]
    fn globs_match_runs_and_single_characters() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("*.example.org", "chat.example.org"));
        assert!(!glob_matches("*.example.org", "example.org"));
        assert!(glob_matches("@bot?:*", "@bot1:example.org"));
        assert!(!glob_matches("@bot?:*", "@bot12:example.org"));
        assert!(glob_matches("a*b*c", "aXbYbZc"));
        assert!(glob_matches("EXAMPLE.org", "example.ORG"));
        assert!(!glob_matches("example.org", "example.org.evil"));
    }

    #[test]
    fn users_come_before_servers_and_allow_before_ignore_before_block() {
        let filter = InviteFilter::new(
            None,
            Some(&json!({
                "allowed_users": ["@friend:bad.example"],
                "ignored_users": ["@pest:*"],
                "blocked_servers": ["bad.example", "*.bad.example"],
                "ignored_servers": ["quiet.example"],
                "allowed_servers": "not a list",
            })),
        );
        assert_eq!(filter.rule(user_id!("@friend:bad.example")), InviteRule::Allow);
        assert_eq!(filter.rule(user_id!("@other:bad.example")), InviteRule::Block);
        assert_eq!(filter.rule(user_id!("@other:sub.bad.example:8448")), InviteRule::Block);
        assert_eq!(filter.rule(user_id!("@pest:good.example")), InviteRule::Ignore);
        assert_eq!(filter.rule(user_id!("@anyone:quiet.example")), InviteRule::Ignore);
        assert_eq!(filter.rule(user_id!("@anyone:good.example")), InviteRule::Allow);
        let blocking = InviteFilter::new(Some(&json!({ "default_action": "block" })), None);
        assert_eq!(blocking.rule(user_id!("@anyone:good.example")), InviteRule::Block);
        let unknown = InviteFilter::new(Some(&json!({ "default_action": "shrug" })), None);
        assert_eq!(unknown.rule(user_id!("@anyone:good.example")), InviteRule::Allow);
    }
}

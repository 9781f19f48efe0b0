//! Configuration of voice and video calls: the TURN server clients relay calls through.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Voice and video calls. Clients ask `/voip/turnServer` for a TURN server to relay calls
/// through when a direct connection fails. With no TURN server, calls between clients behind
/// restrictive networks may not connect.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct VoipConfig {
    /// The TURN server's URIs handed to clients, e.g.
    /// `["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]`.
    /// Empty means no TURN server: clients are told none is available.
    pub turn_uris: Vec<String>,
    /// A file holding the secret shared with the TURN server (coturn's `static-auth-secret`
    /// with `use-auth-secret`). Clients get time-limited credentials made from it, never the
    /// secret itself. Both this and `turn_uris` are needed.
    pub turn_shared_secret_file: Option<PathBuf>,
    /// How long the credentials handed to clients stay valid, in seconds.
    pub turn_user_lifetime_secs: u64,
}

impl Default for VoipConfig {
    fn default() -> Self {
        Self {
            turn_uris: Vec::new(),
            turn_shared_secret_file: None,
            turn_user_lifetime_secs: 86_400,
        }
    }
}

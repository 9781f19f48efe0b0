//! User-interactive authentication: sessions kept in the store for a short time (a client's
//! next request may reach another process), with the first request's parameters, stages
//! completed one request at a time, as the spec's `/register`, device deletion, password change
//! and cross-signing key upload use it.

use rhizome_core::{Error, Result, clock::now_millis, error::MatrixErrorKind};
use ruma::{
    OwnedUserId, UserId,
    api::{
        client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
        error::StandardErrorBody,
    },
};

use serde_json::Value;

use crate::{Services, auth::generate_token, users::password::verify_password};

/// What a UIA session authenticates.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UiaPurpose {
    /// Creating an account.
    Register,
    /// An action on an existing account.
    Account(OwnedUserId),
}

/// A session as kept in the store.
#[derive(serde::Serialize, serde::Deserialize)]
struct Session {
    purpose: UiaPurpose,
    flows: Vec<AuthFlow>,
    completed: Vec<AuthType>,
    registration_token: Option<String>,
    /// The request's own parameters as the session's first request gave them (a client may
    /// leave them out of later stages); a registration's password only as its hash.
    #[serde(default)]
    params: Value,
    /// When it began (ms since the epoch); it lasts `sessions.uia_session_lifetime_secs`.
    created_ts: i64,
}

/// The kind of client session UIA sessions are kept as.
const KIND: &str = "uia";
/// The kind of client session that remembers the account a registration session created.
const REGISTERED_KIND: &str = "uia-registered";

/// A finished UIA session.
#[derive(Clone, Debug)]
pub struct UiaOutcome {
    /// The session.
    pub session_id: String,
    /// The registration token the user gave, for registrations with one.
    pub registration_token: Option<String>,
    /// The request's parameters: this request's, or (when it gave none) the first request's.
    pub params: Value,
}

/// Whether request parameters carry anything.
fn has_params(params: &Value) -> bool {
    params.as_object().is_some_and(|params| !params.is_empty())
}

fn info(
    flows: &[AuthFlow],
    completed: &[AuthType],
    session: &str,
    error: Option<StandardErrorBody>,
) -> UiaaInfo {
    let mut info = UiaaInfo::new(flows.to_vec());
    info.completed = completed.to_vec();
    info.session = Some(session.to_owned());
    info.auth_error = error.map(Box::new);
    // Always an object, empty when no stage has parameters: clients read it unconditionally.
    info.params = serde_json::value::to_raw_value(&serde_json::json!({})).ok();
    info
}

fn flow_complete(flows: &[AuthFlow], completed: &[AuthType]) -> bool {
    flows.iter().any(|flow| flow.stages.iter().all(|stage| completed.contains(stage)))
}

impl Services {
    /// Runs one step of user-interactive authentication. Returns the outcome once a flow is
    /// complete; otherwise an error carrying the flows (HTTP 401), with `auth_error` set when
    /// the stage just tried failed.
    pub async fn check_uia(
        &self,
        auth: Option<&AuthData>,
        flows: Vec<AuthFlow>,
        purpose: UiaPurpose,
    ) -> Result<UiaOutcome> {
        self.check_uia_with_params(auth, flows, purpose, Value::Object(Default::default())).await
    }

    /// [`Services::check_uia`] for a request with parameters of its own (`params`, a JSON
    /// object without `auth`): the session keeps the first request's, and a later request that
    /// gives none gets them back in the outcome.
    pub async fn check_uia_with_params(
        &self,
        auth: Option<&AuthData>,
        flows: Vec<AuthFlow>,
        purpose: UiaPurpose,
        params: Value,
    ) -> Result<UiaOutcome> {
        let lifetime_ms =
            i64::try_from(self.config.sessions.uia_session_lifetime_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
        let now = now_millis();
        let Some(auth) = auth else {
            let session_id = generate_token("uia");
            let session = Session {
                purpose,
                flows: flows.clone(),
                completed: Vec::new(),
                registration_token: None,
                params,
                created_ts: now,
            };
            self.save_uia_session(&session_id, &session, lifetime_ms).await?;
            // Sessions nobody finished are swept as new ones begin.
            self.store.delete_expired_client_sessions(now).await?;
            return Err(Error::uiaa(info(&flows, &[], &session_id, None)));
        };
        // Nobody proves who they are with another user's password.
        if let (AuthData::Password(stage), UiaPurpose::Account(user_id)) = (auth, &purpose)
            && let UserIdentifier::Matrix(id) = &stage.identifier
            && self.parse_user_identifier(&id.user).ok().as_ref() != Some(user_id)
        {
            return Err(Error::forbidden("You can only authenticate as yourself"));
        }
        let session_id = auth.session().map(str::to_owned);
        let stored = match session_id.as_deref() {
            Some(id) => self.store.get_client_session(KIND, id, now).await?,
            None => None,
        };
        let stored = stored.and_then(|data| serde_json::from_str::<Session>(&data).ok());
        let mut session = match stored {
            Some(session) if session.purpose == purpose => session,
            Some(_) => {
                return Err(Error::forbidden("This authentication session is for another request"));
            }
            // A stage with no known session: allowed for one-stage flows (clients may skip the
            // first 401 when they know the flow), on a fresh session.
            None if session_id.is_none() => Session {
                purpose: purpose.clone(),
                flows,
                completed: Vec::new(),
                registration_token: None,
                params: Value::Object(Default::default()),
                created_ts: now,
            },
            None => {
                return Err(Error::matrix(
                    MatrixErrorKind::Unknown,
                    "Unknown authentication session",
                ));
            }
        };
        let session_id = session_id.unwrap_or_else(|| generate_token("uia"));
        let stage_result = self.run_uia_stage(auth, &purpose).await;
        if has_params(&params) {
            session.params = params;
        }
        let flows = session.flows.clone();
        let (stage, token) = match stage_result {
            Ok(passed) => passed,
            Err(error) => {
                let kind = error.matrix_kind().cloned().unwrap_or(MatrixErrorKind::Forbidden);
                if error.is_internal() {
                    return Err(error);
                }
                self.save_uia_session(&session_id, &session, lifetime_ms).await?;
                return Err(Error::uiaa(info(
                    &flows,
                    &session.completed,
                    &session_id,
                    Some(StandardErrorBody::new(kind, error.message().to_owned())),
                )));
            }
        };
        if !flows.iter().any(|flow| flow.stages.contains(&stage)) {
            self.save_uia_session(&session_id, &session, lifetime_ms).await?;
            return Err(Error::uiaa(info(
                &flows,
                &session.completed,
                &session_id,
                Some(StandardErrorBody::new(
                    MatrixErrorKind::Unrecognized,
                    "That stage is not offered".into(),
                )),
            )));
        }
        if !session.completed.contains(&stage) {
            session.completed.push(stage);
        }
        if token.is_some() {
            session.registration_token = token;
        }
        if !flow_complete(&flows, &session.completed) {
            self.save_uia_session(&session_id, &session, lifetime_ms).await?;
            return Err(Error::uiaa(info(&flows, &session.completed, &session_id, None)));
        }
        self.store.delete_client_session(KIND, &session_id).await?;
        Ok(UiaOutcome {
            session_id,
            registration_token: session.registration_token,
            params: session.params,
        })
    }

    /// The account a completed registration session created, if any.
    pub(crate) async fn uia_registered_user(
        &self,
        session_id: &str,
    ) -> Result<Option<OwnedUserId>> {
        let stored =
            self.store.get_client_session(REGISTERED_KIND, session_id, now_millis()).await?;
        Ok(stored.and_then(|user_id| OwnedUserId::try_from(user_id).ok()))
    }

    /// Remembers the account a registration session created, for the session's lifetime.
    pub(crate) async fn record_uia_registration(
        &self,
        session_id: &str,
        user_id: &UserId,
    ) -> Result<()> {
        let lifetime_ms =
            i64::try_from(self.config.sessions.uia_session_lifetime_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
        let expires_ts = now_millis().saturating_add(lifetime_ms);
        self.store
            .save_client_session(REGISTERED_KIND, session_id, user_id.as_str(), expires_ts)
            .await
    }

    /// Keeps a session until its lifetime (from its start) is over.
    async fn save_uia_session(
        &self,
        session_id: &str,
        session: &Session,
        lifetime_ms: i64,
    ) -> Result<()> {
        let data = serde_json::to_string(session).map_err(Error::internal)?;
        let expires_ts = session.created_ts.saturating_add(lifetime_ms);
        self.store.save_client_session(KIND, session_id, &data, expires_ts).await
    }

    /// Checks one stage; returns the stage type and, for a registration token, the token.
    async fn run_uia_stage(
        &self,
        auth: &AuthData,
        purpose: &UiaPurpose,
    ) -> Result<(AuthType, Option<String>)> {
        match auth {
            AuthData::Dummy(_) => Ok((AuthType::Dummy, None)),
            AuthData::RegistrationToken(stage) => {
                let valid = self
                    .store
                    .get_registration_token(&stage.token)
                    .await?
                    .is_some_and(|token| token.is_valid_at(now_millis()));
                if valid {
                    Ok((AuthType::RegistrationToken, Some(stage.token.clone())))
                } else {
                    Err(Error::matrix(
                        MatrixErrorKind::Unauthorized,
                        "Invalid, expired or used-up registration token",
                    ))
                }
            }
            AuthData::Password(stage) => {
                let UiaPurpose::Account(user_id) = purpose else {
                    return Err(Error::forbidden("Password authentication needs an account"));
                };
                if !matches!(&stage.identifier, UserIdentifier::Matrix(_)) {
                    return Err(Error::forbidden("Only user ID identifiers are supported"));
                }
                if self.check_password(user_id, &stage.password).await? {
                    Ok((AuthType::Password, None))
                } else {
                    Err(Error::forbidden("Invalid password"))
                }
            }
            _ => {
                Err(Error::matrix(MatrixErrorKind::Unrecognized, "Unsupported authentication type"))
            }
        }
    }

    /// Whether the password is the user's (false for unknown or deactivated users).
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<bool> {
        let Some(user) = self.store.get_user(user_id).await? else { return Ok(false) };
        let Some(hash) = user.password_hash.filter(|_| !user.deactivated) else { return Ok(false) };
        verify_password(&self.password_permits, password.to_owned(), hash).await
    }
}

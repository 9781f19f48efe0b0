//! The parts of Synapse's admin API that tooling and test harnesses use against any
//! homeserver: registration with the shared secret (`/_synapse/admin/v1/register`, as
//! `register_new_matrix_user` speaks it) and registration tokens
//! (`/_synapse/admin/v1/registration_tokens`), for server administrators.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use rhizome_core::{Error, clock::now_millis};
use rhizome_service::users::{
    admin::random_registration_token, shared_secret::SharedSecretRegistration,
};
use rhizome_storage::RegistrationTokenRecord;
use ruma::api::auth_scheme::{AccessToken, NoAuthentication};
use serde_json::{Map, Value, json};

use crate::{AppState, Ruma, client::raw_endpoint::raw_endpoint, error::ApiError, routes::add};

raw_endpoint!(
    /// `GET /_synapse/admin/v1/register`: a nonce.
    Nonce, GET, NoAuthentication, "/_synapse/admin/v1/register"
);
raw_endpoint!(
    /// `POST /_synapse/admin/v1/register`: an account, with the shared secret's MAC.
    Register, POST, NoAuthentication, "/_synapse/admin/v1/register"
);
raw_endpoint!(
    /// `GET /_synapse/admin/v1/registration_tokens[?valid=…]`.
    ListTokens, GET, AccessToken, "/_synapse/admin/v1/registration_tokens"
);
raw_endpoint!(
    /// `POST /_synapse/admin/v1/registration_tokens/new`.
    NewToken, POST, AccessToken, "/_synapse/admin/v1/registration_tokens/new"
);
raw_endpoint!(
    /// `GET /_synapse/admin/v1/registration_tokens/{token}`.
    GetToken, GET, AccessToken, "/_synapse/admin/v1/registration_tokens/{token}"
);
raw_endpoint!(
    /// `PUT /_synapse/admin/v1/registration_tokens/{token}`.
    UpdateToken, PUT, AccessToken, "/_synapse/admin/v1/registration_tokens/{token}"
);
raw_endpoint!(
    /// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
    DeleteToken, DELETE, AccessToken, "/_synapse/admin/v1/registration_tokens/{token}"
);

/// The `{token}` path argument.
fn token_arg(path_args: &[String]) -> Result<&str, Error> {
    path_args.first().map(String::as_str).ok_or_else(|| Error::bug("a token path without token"))
}

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<Nonce, _, _>(router, get_nonce);
    let router = add::<Register, _, _>(router, register_with_secret);
    let router = add::<ListTokens, _, _>(router, list);
    let router = add::<NewToken, _, _>(router, create);
    let router = add::<GetToken, _, _>(router, get);
    let router = add::<UpdateToken, _, _>(router, update);
    add::<DeleteToken, _, _>(router, delete)
}

async fn get_nonce(State(services): State<AppState>, _: Ruma<Nonce>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "nonce": services.shared_secret_nonce().await? })).into_response())
}

/// The body of a shared-secret registration.
#[derive(serde::Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
}

async fn register_with_secret(
    State(services): State<AppState>,
    request: Ruma<Register>,
) -> Result<Response, ApiError> {
    let body: RegisterBody = serde_json::from_slice(&request.json_body).map_err(|error| {
        Error::bad_json(format!("nonce, username, password and mac are needed: {error}"))
    })?;
    let session = services
        .register_with_shared_secret(
            SharedSecretRegistration {
                nonce: body.nonce,
                username: body.username,
                password: body.password,
                admin: body.admin,
                displayname: body.displayname,
                user_type: body.user_type,
                mac: body.mac,
            },
            &request.client_key,
        )
        .await?;
    Ok(Json(json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": services.server_name(),
    }))
    .into_response())
}

fn ensure_admin<T>(request: &Ruma<T>) -> Result<(), ApiError> {
    if request.requester()?.is_admin {
        Ok(())
    } else {
        Err(Error::forbidden("You are not a server admin").into())
    }
}

/// A token as Synapse's admin API shows it.
fn token_json(record: &RegistrationTokenRecord) -> Value {
    json!({
        "token": record.token,
        "uses_allowed": record.uses_allowed,
        "pending": 0,
        "completed": record.completed,
        "expiry_time": record.expiry_ts,
    })
}

async fn list(
    State(services): State<AppState>,
    request: Ruma<ListTokens>,
) -> Result<Response, ApiError> {
    ensure_admin(&request)?;
    let valid = match request.body.query.get("valid").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(Error::invalid_param("valid must be true or false").into()),
    };
    let now = now_millis();
    let tokens: Vec<Value> = services
        .store
        .list_registration_tokens()
        .await?
        .iter()
        .filter(|record| valid.is_none_or(|valid| record.is_valid_at(now) == valid))
        .map(token_json)
        .collect();
    Ok(Json(json!({ "registration_tokens": tokens })).into_response())
}

async fn get(
    State(services): State<AppState>,
    request: Ruma<GetToken>,
) -> Result<Response, ApiError> {
    ensure_admin(&request)?;
    let record = services
        .store
        .get_registration_token(token_arg(&request.body.path_args)?)
        .await?
        .ok_or_else(|| Error::not_found("No such registration token"))?;
    Ok(Json(token_json(&record)).into_response())
}

/// The body's fields; `{}` for an empty body.
fn body_fields(body: &[u8]) -> Result<Map<String, Value>, Error> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_slice(body).map_err(|_| Error::bad_json("The body must be a JSON object"))
}

/// `uses_allowed`: a non-negative integer or `null` (unlimited).
fn uses_allowed(value: &Value) -> Result<Option<i64>, Error> {
    match value {
        Value::Null => Ok(None),
        value => value.as_i64().filter(|uses| *uses >= 0).map(Some).ok_or_else(|| {
            Error::invalid_param("uses_allowed must be a non-negative integer or null")
        }),
    }
}

/// `expiry_time`: milliseconds since the epoch, in the future, or `null` (never).
fn expiry_time(value: &Value) -> Result<Option<i64>, Error> {
    match value {
        Value::Null => Ok(None),
        value => {
            value.as_i64().filter(|expiry| *expiry > now_millis()).map(Some).ok_or_else(|| {
                Error::invalid_param("expiry_time must be a time in the future or null")
            })
        }
    }
}

async fn create(
    State(services): State<AppState>,
    request: Ruma<NewToken>,
) -> Result<Response, ApiError> {
    ensure_admin(&request)?;
    let fields = body_fields(&request.json_body)?;
    let token = match fields.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) => Some(token.clone()),
        Some(_) => return Err(Error::invalid_param("token must be a string").into()),
    };
    let length = match fields.get("length") {
        None => 16,
        Some(value) => value
            .as_u64()
            .filter(|length| (1..=64).contains(length))
            .ok_or_else(|| Error::invalid_param("length must be an integer from 1 to 64"))?,
    };
    if token.is_some() && fields.contains_key("length") {
        return Err(Error::invalid_param("Give a token or a length, not both").into());
    }
    let length = usize::try_from(length).unwrap_or(16);
    let token = token.or_else(|| Some(random_registration_token(length)));
    let uses = fields.get("uses_allowed").map(uses_allowed).transpose()?.flatten();
    let expiry = fields.get("expiry_time").map(expiry_time).transpose()?.flatten();
    let record = services.create_registration_token(token, uses, expiry).await?;
    Ok(Json(token_json(&record)).into_response())
}

async fn update(
    State(services): State<AppState>,
    request: Ruma<UpdateToken>,
) -> Result<Response, ApiError> {
    ensure_admin(&request)?;
    let fields = body_fields(&request.json_body)?;
    let token = token_arg(&request.body.path_args)?;
    let current = services
        .store
        .get_registration_token(token)
        .await?
        .ok_or_else(|| Error::not_found("No such registration token"))?;
    // A field left out keeps its value; `null` clears it.
    let uses = match fields.get("uses_allowed") {
        Some(value) => uses_allowed(value)?,
        None => current.uses_allowed,
    };
    let expiry = match fields.get("expiry_time") {
        Some(value) => expiry_time(value)?,
        None => current.expiry_ts,
    };
    let record = services.update_registration_token(token, uses, expiry).await?;
    Ok(Json(token_json(&record)).into_response())
}

async fn delete(
    State(services): State<AppState>,
    request: Ruma<DeleteToken>,
) -> Result<Response, ApiError> {
    ensure_admin(&request)?;
    if !services.store.delete_registration_token(token_arg(&request.body.path_args)?).await? {
        return Err(Error::not_found("No such registration token").into());
    }
    Ok(Json(json!({})).into_response())
}

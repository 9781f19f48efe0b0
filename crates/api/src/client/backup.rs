//! Server-side key backup: `/room_keys/version[/{version}]` and
//! `/room_keys/keys[/{roomId}[/{sessionId}]]`.

use axum::{Router, extract::State};
use rhizome_core::Error;
use rhizome_service::e2ee::backup::{key_data, rooms_of};
use rhizome_storage::e2ee::{BackupCounts, BackupVersionRecord};
use ruma::{
    UInt,
    api::client::backup::{
        BackupAlgorithm, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version,
    },
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, error::ApiError, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<create_backup_version::v3::Request, _, _>(router, create_version);
    let router = add::<get_latest_backup_info::v3::Request, _, _>(router, latest_version);
    let router = add::<get_backup_info::v3::Request, _, _>(router, get_version);
    let router = add::<update_backup_version::v3::Request, _, _>(router, update_version);
    let router = add::<delete_backup_version::v3::Request, _, _>(router, delete_version);
    let router = add::<add_backup_keys::v3::Request, _, _>(router, put_keys);
    let router = add::<add_backup_keys_for_room::v3::Request, _, _>(router, put_room_keys);
    let router = add::<add_backup_keys_for_session::v3::Request, _, _>(router, put_session_key);
    let router = add::<get_backup_keys::v3::Request, _, _>(router, get_keys);
    let router = add::<get_backup_keys_for_room::v3::Request, _, _>(router, get_room_keys);
    let router = add::<get_backup_keys_for_session::v3::Request, _, _>(router, get_session_key);
    let router = add::<delete_backup_keys::v3::Request, _, _>(router, delete_keys);
    let router = add::<delete_backup_keys_for_room::v3::Request, _, _>(router, delete_room_keys);
    add::<delete_backup_keys_for_session::v3::Request, _, _>(router, delete_session_key)
}

/// A version's algorithm data, count and etag, as the version endpoints return them.
fn version_parts(
    record: BackupVersionRecord,
) -> Result<(Raw<BackupAlgorithm>, UInt, String, String), ApiError> {
    let algorithm =
        serde_json::value::RawValue::from_string(record.algorithm).map_err(Error::internal)?;
    let count = UInt::new_saturating(record.count.max(0).unsigned_abs());
    Ok((Raw::from_json(algorithm), count, record.etag, record.version))
}

fn counts(counts: &BackupCounts) -> (String, UInt) {
    (counts.etag.clone(), UInt::new_saturating(counts.count.max(0).unsigned_abs()))
}

async fn create_version(
    State(services): State<AppState>,
    request: Ruma<create_backup_version::v3::Request>,
) -> ApiResult<create_backup_version::v3::Response> {
    let user_id = &request.requester()?.user_id;
    let version = services.create_backup_version(user_id, &request.body.algorithm).await?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(version)))
}

async fn latest_version(
    State(services): State<AppState>,
    request: Ruma<get_latest_backup_info::v3::Request>,
) -> ApiResult<get_latest_backup_info::v3::Response> {
    let record = services.backup_version(&request.requester()?.user_id, None).await?;
    let (algorithm, count, etag, version) = version_parts(record)?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(algorithm, count, etag, version)))
}

async fn get_version(
    State(services): State<AppState>,
    request: Ruma<get_backup_info::v3::Request>,
) -> ApiResult<get_backup_info::v3::Response> {
    let user_id = &request.requester()?.user_id;
    let record = services.backup_version(user_id, Some(&request.body.version)).await?;
    let (algorithm, count, etag, version) = version_parts(record)?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(algorithm, count, etag, version)))
}

async fn update_version(
    State(services): State<AppState>,
    request: Ruma<update_backup_version::v3::Request>,
) -> ApiResult<update_backup_version::v3::Response> {
    let user_id = &request.requester()?.user_id;
    services.update_backup_version(user_id, &request.body.version, &request.body.algorithm).await?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

async fn delete_version(
    State(services): State<AppState>,
    request: Ruma<delete_backup_version::v3::Request>,
) -> ApiResult<delete_backup_version::v3::Response> {
    services.delete_backup_version(&request.requester()?.user_id, &request.body.version).await?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

async fn put_keys(
    State(services): State<AppState>,
    request: Ruma<add_backup_keys::v3::Request>,
) -> ApiResult<add_backup_keys::v3::Response> {
    let body = &request.body;
    let stored =
        services.put_backup_keys(&request.requester()?.user_id, &body.version, &body.rooms).await?;
    let (etag, count) = counts(&stored);
    Ok(RumaResponse(add_backup_keys::v3::Response::new(etag, count)))
}

async fn put_room_keys(
    State(services): State<AppState>,
    request: Ruma<add_backup_keys_for_room::v3::Request>,
) -> ApiResult<add_backup_keys_for_room::v3::Response> {
    let body = &request.body;
    let user_id = &request.requester()?.user_id;
    let stored = services
        .put_backup_room_keys(user_id, &body.version, &body.room_id, &body.sessions)
        .await?;
    let (etag, count) = counts(&stored);
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(etag, count)))
}

async fn put_session_key(
    State(services): State<AppState>,
    request: Ruma<add_backup_keys_for_session::v3::Request>,
) -> ApiResult<add_backup_keys_for_session::v3::Response> {
    let body = &request.body;
    let user_id = &request.requester()?.user_id;
    let stored = services
        .put_backup_session_key(
            user_id,
            &body.version,
            &body.room_id,
            &body.session_id,
            &body.session_data,
        )
        .await?;
    let (etag, count) = counts(&stored);
    Ok(RumaResponse(add_backup_keys_for_session::v3::Response::new(etag, count)))
}

async fn get_keys(
    State(services): State<AppState>,
    request: Ruma<get_backup_keys::v3::Request>,
) -> ApiResult<get_backup_keys::v3::Response> {
    let user_id = &request.requester()?.user_id;
    let records = services.backup_keys(user_id, &request.body.version, None, None).await?;
    Ok(RumaResponse(get_backup_keys::v3::Response::new(rooms_of(&records)?)))
}

async fn get_room_keys(
    State(services): State<AppState>,
    request: Ruma<get_backup_keys_for_room::v3::Request>,
) -> ApiResult<get_backup_keys_for_room::v3::Response> {
    let body = &request.body;
    let user_id = &request.requester()?.user_id;
    let records = services.backup_keys(user_id, &body.version, Some(&body.room_id), None).await?;
    let sessions = records
        .iter()
        .map(|record| Ok((record.session_id.clone(), key_data(record)?)))
        .collect::<Result<_, rhizome_core::Error>>()?;
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(sessions)))
}

async fn get_session_key(
    State(services): State<AppState>,
    request: Ruma<get_backup_keys_for_session::v3::Request>,
) -> ApiResult<get_backup_keys_for_session::v3::Response> {
    let body = &request.body;
    let user_id = &request.requester()?.user_id;
    let records = services
        .backup_keys(user_id, &body.version, Some(&body.room_id), Some(&body.session_id))
        .await?;
    let record = records.first().ok_or_else(|| Error::not_found("No key for that session"))?;
    Ok(RumaResponse(get_backup_keys_for_session::v3::Response::new(key_data(record)?)))
}

async fn delete_keys(
    State(services): State<AppState>,
    request: Ruma<delete_backup_keys::v3::Request>,
) -> ApiResult<delete_backup_keys::v3::Response> {
    let user_id = &request.requester()?.user_id;
    let stored = services.delete_backup_keys(user_id, &request.body.version, None, None).await?;
    let (etag, count) = counts(&stored);
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(etag, count)))
}

async fn delete_room_keys(
    State(services): State<AppState>,
    request: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> ApiResult<delete_backup_keys_for_room::v3::Response> {
    let body = &request.body;
    let user_id = &request.requester()?.user_id;
    let stored =
        services.delete_backup_keys(user_id, &body.version, Some(&body.room_id), None).await?;
    let (etag, count) = counts(&stored);
    Ok(RumaResponse(delete_backup_keys_for_room::v3::Response::new(etag, count)))
}

async fn delete_session_key(
    State(services): State<AppState>,
    request: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> ApiResult<delete_backup_keys_for_session::v3::Response> {
    let body = &request.body;
    let user_id = &request.requester()?.user_id;
    let stored = services
        .delete_backup_keys(user_id, &body.version, Some(&body.room_id), Some(&body.session_id))
        .await?;
    let (etag, count) = counts(&stored);
    Ok(RumaResponse(delete_backup_keys_for_session::v3::Response::new(etag, count)))
}

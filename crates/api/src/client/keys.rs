//! End-to-end encryption endpoints: device, one-time and fallback keys, key changes and
//! cross-signing. To-device messages, key backup and dehydrated devices have their own modules.

use axum::{Router, extract::State};
use rhizome_service::e2ee::{cross_signing::SigningKeysUpload, keys::KeyUpload};
use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, client, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<upload_keys::v3::Request, _, _>(router, upload);
    let router = add::<get_keys::v3::Request, _, _>(router, query);
    let router = add::<claim_keys::v3::Request, _, _>(router, claim);
    let router = add::<get_key_changes::v3::Request, _, _>(router, changes);
    let router = add::<upload_signing_keys::v3::Request, _, _>(router, upload_signing);
    let router = add::<upload_signatures::v3::Request, _, _>(router, upload_signatures);
    let router = client::to_device::routes(router);
    let router = client::backup::routes(router);
    client::keys_dehydrated::routes(router)
}

async fn upload(
    State(services): State<AppState>,
    request: Ruma<upload_keys::v3::Request>,
) -> ApiResult<upload_keys::v3::Response> {
    let body = &request.body;
    let upload = KeyUpload {
        device_keys: body.device_keys.as_ref(),
        one_time_keys: &body.one_time_keys,
        fallback_keys: &body.fallback_keys,
    };
    let counts = services.upload_keys(request.requester()?, upload).await?;
    Ok(RumaResponse(upload_keys::v3::Response::new(counts)))
}

async fn query(
    State(services): State<AppState>,
    request: Ruma<get_keys::v3::Request>,
) -> ApiResult<get_keys::v3::Response> {
    let response = services.query_keys(request.requester()?, &request.body.device_keys).await?;
    Ok(RumaResponse(response))
}

async fn claim(
    State(services): State<AppState>,
    request: Ruma<claim_keys::v3::Request>,
) -> ApiResult<claim_keys::v3::Response> {
    request.requester()?;
    Ok(RumaResponse(services.claim_keys(&request.body.one_time_keys).await?))
}

async fn changes(
    State(services): State<AppState>,
    request: Ruma<get_key_changes::v3::Request>,
) -> ApiResult<get_key_changes::v3::Response> {
    let (changed, left) =
        services.key_changes(request.requester()?, &request.body.from, &request.body.to).await?;
    Ok(RumaResponse(get_key_changes::v3::Response::new(changed, left)))
}

async fn upload_signing(
    State(services): State<AppState>,
    request: Ruma<upload_signing_keys::v3::Request>,
) -> ApiResult<upload_signing_keys::v3::Response> {
    let body = &request.body;
    let upload = SigningKeysUpload {
        master_key: body.master_key.as_ref(),
        self_signing_key: body.self_signing_key.as_ref(),
        user_signing_key: body.user_signing_key.as_ref(),
    };
    services.upload_signing_keys(request.requester()?, upload, body.auth.as_ref()).await?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

async fn upload_signatures(
    State(services): State<AppState>,
    request: Ruma<upload_signatures::v3::Request>,
) -> ApiResult<upload_signatures::v3::Response> {
    let failures =
        services.upload_signatures(request.requester()?, &request.body.signed_keys).await?;
    let mut response = upload_signatures::v3::Response::new();
    response.failures = failures;
    Ok(RumaResponse(response))
}

//! Dehydrated devices (MSC3814, unstable paths as ruma defines them): upload, fetch and delete
//! the user's dehydrated device, and collect the to-device messages it received.

use axum::{Router, extract::State};
use rhizome_core::Error;
use rhizome_service::e2ee::{dehydrated::DehydratedDeviceUpload, keys::KeyUpload};
use ruma::{
    api::client::dehydrated_device::{
        delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device,
    },
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<put_dehydrated_device::unstable::Request, _, _>(router, put);
    let router = add::<get_dehydrated_device::unstable::Request, _, _>(router, get);
    let router = add::<delete_dehydrated_device::unstable::Request, _, _>(router, delete);
    add::<get_events::unstable::Request, _, _>(router, events)
}

async fn put(
    State(services): State<AppState>,
    request: Ruma<put_dehydrated_device::unstable::Request>,
) -> ApiResult<put_dehydrated_device::unstable::Response> {
    let body = &request.body;
    let upload = DehydratedDeviceUpload {
        device_id: &body.device_id,
        display_name: body.initial_device_display_name.as_deref(),
        device_data: body.device_data.json(),
        keys: KeyUpload {
            device_keys: Some(&body.device_keys),
            one_time_keys: &body.one_time_keys,
            fallback_keys: &body.fallback_keys,
        },
    };
    let device_id = services.put_dehydrated_device(request.requester()?, upload).await?;
    Ok(RumaResponse(put_dehydrated_device::unstable::Response::new(device_id)))
}

async fn get(
    State(services): State<AppState>,
    request: Ruma<get_dehydrated_device::unstable::Request>,
) -> ApiResult<get_dehydrated_device::unstable::Response> {
    let (device_id, data) = services.dehydrated_device(&request.requester()?.user_id).await?;
    let data = serde_json::value::RawValue::from_string(data).map_err(Error::internal)?;
    Ok(RumaResponse(get_dehydrated_device::unstable::Response::new(
        device_id,
        Raw::from_json(data),
    )))
}

async fn delete(
    State(services): State<AppState>,
    request: Ruma<delete_dehydrated_device::unstable::Request>,
) -> ApiResult<delete_dehydrated_device::unstable::Response> {
    let device_id = services.delete_dehydrated_device(&request.requester()?.user_id).await?;
    Ok(RumaResponse(delete_dehydrated_device::unstable::Response::new(device_id)))
}

async fn events(
    State(services): State<AppState>,
    request: Ruma<get_events::unstable::Request>,
) -> ApiResult<get_events::unstable::Response> {
    let body = &request.body;
    let found = services
        .dehydrated_device_events(
            &request.requester()?.user_id,
            &body.device_id,
            body.next_batch.as_deref(),
        )
        .await?;
    let mut response = get_events::unstable::Response::new(found.events);
    response.next_batch = Some(found.next_batch);
    Ok(RumaResponse(response))
}

//! Devices: list, get, rename, delete (with user-interactive authentication).

use axum::{Router, extract::State};
use rhizome_core::{Error, clock::ts_from_millis};
use rhizome_storage::DeviceRecord;
use ruma::api::client::device::{
    Device, delete_device, delete_devices, get_device, get_devices, update_device,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_devices::v3::Request, _, _>(router, list);
    let router = add::<get_device::v3::Request, _, _>(router, get);
    let router = add::<update_device::v3::Request, _, _>(router, rename);
    let router = add::<delete_device::v3::Request, _, _>(router, delete);
    add::<delete_devices::v3::Request, _, _>(router, delete_many)
}

fn device(record: DeviceRecord) -> Device {
    let mut device = Device::new(record.device_id);
    device.display_name = record.display_name;
    device.last_seen_ts = record.last_seen_ts.map(ts_from_millis);
    device
}

async fn list(
    State(services): State<AppState>,
    request: Ruma<get_devices::v3::Request>,
) -> ApiResult<get_devices::v3::Response> {
    let devices = services.store.list_devices(&request.requester()?.user_id).await?;
    Ok(RumaResponse(get_devices::v3::Response::new(devices.into_iter().map(device).collect())))
}

async fn get(
    State(services): State<AppState>,
    request: Ruma<get_device::v3::Request>,
) -> ApiResult<get_device::v3::Response> {
    let record = services
        .store
        .get_device(&request.requester()?.user_id, &request.body.device_id)
        .await?
        .ok_or_else(|| Error::not_found("No such device"))?;
    Ok(RumaResponse(get_device::v3::Response::new(device(record))))
}

async fn rename(
    State(services): State<AppState>,
    request: Ruma<update_device::v3::Request>,
) -> ApiResult<update_device::v3::Response> {
    let user_id = &request.requester()?.user_id;
    let renamed = services
        .store
        .rename_device(user_id, &request.body.device_id, request.body.display_name.as_deref())
        .await?;
    if !renamed {
        return Err(Error::not_found("No such device").into());
    }
    services.on_device_list_change(user_id).await?;
    Ok(RumaResponse(update_device::v3::Response::new()))
}

async fn delete(
    State(services): State<AppState>,
    request: Ruma<delete_device::v3::Request>,
) -> ApiResult<delete_device::v3::Response> {
    let requester = request.requester()?;
    if services.store.get_device(&requester.user_id, &request.body.device_id).await?.is_none() {
        return Err(Error::not_found("No such device").into());
    }
    services
        .delete_devices_with_uia(
            requester,
            std::slice::from_ref(&request.body.device_id),
            request.body.auth.as_ref(),
        )
        .await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

async fn delete_many(
    State(services): State<AppState>,
    request: Ruma<delete_devices::v3::Request>,
) -> ApiResult<delete_devices::v3::Response> {
    services
        .delete_devices_with_uia(
            request.requester()?,
            &request.body.devices,
            request.body.auth.as_ref(),
        )
        .await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}

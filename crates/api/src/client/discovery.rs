//! Discovery: `/versions`, `/.well-known/matrix/{client,server}` and `/capabilities`.

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use rhizome_core::Error;
use rhizome_room::versions::SUPPORTED_ROOM_VERSIONS;
use ruma::api::{
    client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{Capabilities, RoomVersionStability, RoomVersionsCapability},
        },
        get_supported_versions,
    },
    federation::discovery::discover_homeserver as discover_server,
};

use serde_json::json;

use crate::{ApiResult, AppState, Ruma, RumaResponse, error::ApiError, routes::add};

/// The Client-Server API versions Rhizome implements.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
    "v1.9", "v1.10", "v1.11",
];

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_supported_versions::Request, _, _>(router, versions);
    let router = add::<discover_homeserver::Request, _, _>(router, well_known_client);
    let router = add::<discover_server::Request, _, _>(router, well_known_server);
    add::<get_capabilities::v3::Request, _, _>(router, capabilities)
}

async fn versions(
    State(services): State<AppState>,
    _: Ruma<get_supported_versions::Request>,
) -> ApiResult<get_supported_versions::Response> {
    let mut response = get_supported_versions::Response::new(
        SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
    );
    response.unstable_features = BTreeMap::from([
        ("org.matrix.msc2285.stable".to_owned(), true),
        // Dehydrated devices, served on the MSC's unstable paths.
        ("org.matrix.msc3814".to_owned(), true),
        // Simplified sliding sync.
        ("org.matrix.simplified_msc3575".to_owned(), true),
        // Room reports (stable in v1.13, which is not advertised yet): clients offer
        // "Report room" on this flag.
        ("org.matrix.msc4151".to_owned(), true),
        // Deleting account data.
        ("org.matrix.msc3391".to_owned(), true),
        // Thread subscriptions, and their sliding sync extension.
        ("org.matrix.msc4306".to_owned(), true),
        ("org.matrix.msc4308".to_owned(), true),
        // Room summaries (stable in v1.15), on their unstable path too.
        ("im.nheko.summary".to_owned(), true),
        // Invite filtering and blocking, enforced by the server.
        ("org.matrix.msc4155".to_owned(), true),
        ("org.matrix.msc4380".to_owned(), true),
        // Delayed events, unless the organiser turned them off.
        ("org.matrix.msc4140".to_owned(), services.config.limits.max_event_delay_ms > 0),
    ]);
    Ok(RumaResponse(response))
}

async fn well_known_client(
    State(services): State<AppState>,
    _: Ruma<discover_homeserver::Request>,
) -> ApiResult<discover_homeserver::Response> {
    Ok(RumaResponse(discover_homeserver::Response::new(HomeserverInfo::new(
        services.config.client_base_url(),
    ))))
}

async fn well_known_server(
    State(services): State<AppState>,
    _: Ruma<discover_server::Request>,
) -> ApiResult<discover_server::Response> {
    let base = services.config.client_base_url();
    let authority = base.split("://").nth(1).unwrap_or(&base).trim_end_matches('/').to_owned();
    let server = ruma::OwnedServerName::try_from(authority)
        .map_err(|_| Error::bug("base URL is not a server name"))?;
    Ok(RumaResponse(discover_server::Response::new(server)))
}

async fn capabilities(
    State(services): State<AppState>,
    request: Ruma<get_capabilities::v3::Request>,
) -> Result<Response, ApiError> {
    request.requester()?;
    let mut capabilities = Capabilities::new();
    let available = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|version| (version.clone(), RoomVersionStability::Stable))
        .collect();
    capabilities.room_versions =
        RoomVersionsCapability::new(services.config.rooms.default_room_version.clone(), available);
    let mut body =
        serde_json::to_value(&capabilities).map_err(|_| Error::bug("capabilities serialise"))?;
    // Named even where they hold the defaults (ruma leaves those out): clients and test suites
    // look for them. Third-party identifiers are not managed here.
    body["m.change_password"] = json!({ "enabled": true });
    body["m.set_displayname"] = json!({ "enabled": true });
    body["m.set_avatar_url"] = json!({ "enabled": true });
    body["m.3pid_changes"] = json!({ "enabled": false });
    Ok(Json(json!({ "capabilities": body })).into_response())
}

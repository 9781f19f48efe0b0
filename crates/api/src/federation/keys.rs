//! Keys and identity: this server's key document (`/_matrix/key/v2/server`), the notary
//! service (`/_matrix/key/v2/query`), and `/_matrix/federation/v1/version`.

use std::collections::BTreeMap;

use axum::{Router, extract::State};
use rhizome_core::Error;
use ruma::{
    CanonicalJsonObject, OwnedServerName,
    api::federation::discovery::{
        ServerSigningKeys, get_remote_server_keys, get_remote_server_keys_batch, get_server_keys,
        get_server_version,
    },
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

/// The most servers one notary query may ask about.
const MAX_NOTARY_SERVERS: usize = 100;

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_server_keys::v2::Request, _, _>(router, server_keys);
    let router = add::<get_remote_server_keys::v2::Request, _, _>(router, notary_one);
    let router = add::<get_remote_server_keys_batch::v2::Request, _, _>(router, notary_batch);
    add::<get_server_version::v1::Request, _, _>(router, version)
}

fn raw_keys(document: CanonicalJsonObject) -> Result<Raw<ServerSigningKeys>, Error> {
    let json = serde_json::value::to_raw_value(&document).map_err(Error::internal)?;
    Ok(Raw::from_json(json))
}

async fn server_keys(
    State(services): State<AppState>,
    _: Ruma<get_server_keys::v2::Request>,
) -> ApiResult<get_server_keys::v2::Response> {
    let document = services.own_key_document().await?;
    Ok(RumaResponse(get_server_keys::v2::Response::new(raw_keys(document)?)))
}

async fn notary_one(
    State(services): State<AppState>,
    request: Ruma<get_remote_server_keys::v2::Request>,
) -> ApiResult<get_remote_server_keys::v2::Response> {
    let minimum = Some(i64::from(request.body.minimum_valid_until_ts.get()));
    let documents = services.notary_key_documents(&request.body.server_name, minimum).await?;
    let keys = documents.into_iter().map(raw_keys).collect::<Result<Vec<_>, _>>()?;
    Ok(RumaResponse(get_remote_server_keys::v2::Response::new(keys)))
}

async fn notary_batch(
    State(services): State<AppState>,
    request: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> ApiResult<get_remote_server_keys_batch::v2::Response> {
    let servers: &BTreeMap<
        OwnedServerName,
        BTreeMap<_, get_remote_server_keys_batch::v2::QueryCriteria>,
    > = &request.body.server_keys;
    if servers.len() > MAX_NOTARY_SERVERS {
        return Err(Error::invalid_param("Too many servers in one query").into());
    }
    let mut keys = Vec::new();
    for (server_name, criteria) in servers {
        let minimum = criteria
            .values()
            .filter_map(|criteria| criteria.minimum_valid_until_ts)
            .map(|ts| i64::from(ts.get()))
            .max();
        for document in services.notary_key_documents(server_name, minimum).await? {
            keys.push(raw_keys(document)?);
        }
    }
    Ok(RumaResponse(get_remote_server_keys_batch::v2::Response::new(keys)))
}

async fn version(
    _: Ruma<get_server_version::v1::Request>,
) -> ApiResult<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Rhizome".to_owned());
    server.version = Some(env!("CARGO_PKG_VERSION").to_owned());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(RumaResponse(response))
}

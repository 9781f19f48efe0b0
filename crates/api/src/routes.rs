//! Every route, registered from the ruma endpoint type it serves: each path of the endpoint's
//! version history (unstable, r0, v3, …) and its method come from ruma's metadata.

use axum::{
    Router,
    handler::Handler,
    routing::{MethodFilter, on},
};
use ruma::api::{Metadata, path_builder::PathBuilder};

use crate::{AppState, client, federation};

/// Registers a handler for every path of the endpoint `T`.
pub(crate) fn add<T, H, X>(mut router: Router<AppState>, handler: H) -> Router<AppState>
where
    T: Metadata,
    H: Handler<X, AppState> + Clone + Send + Sync + 'static,
    X: 'static,
{
    let filter =
        MethodFilter::try_from(T::METHOD).expect("invariant: ruma endpoints use standard methods");
    for path in T::PATH_BUILDER.all_paths() {
        router = router.route(path, on(filter, handler.clone()));
    }
    router
}

/// Registers a handler for extra paths of `T` (routes ruma's templates cannot express, such
/// as an empty last segment).
pub(crate) fn add_paths<T, H, X>(
    mut router: Router<AppState>,
    paths: &[&'static str],
    handler: H,
) -> Router<AppState>
where
    T: Metadata,
    H: Handler<X, AppState> + Clone + Send + Sync + 'static,
    X: 'static,
{
    let filter =
        MethodFilter::try_from(T::METHOD).expect("invariant: ruma endpoints use standard methods");
    for path in paths {
        router = router.route(path, on(filter, handler.clone()));
    }
    router
}

/// All routes.
pub(crate) fn all(router: Router<AppState>) -> Router<AppState> {
    let router = client::discovery::routes(router);
    let router = client::session::routes(router);
    let router = client::devices::routes(router);
    let router = client::profile::routes(router);
    let router = client::account_data::routes(router);
    let router = client::rooms::routes(router);
    let router = client::events::routes(router);
    let router = client::directory::routes(router);
    let router = client::ephemeral::routes(router);
    let router = client::push::routes(router);
    let router = client::sync::routes(router);
    let router = client::sliding_sync::routes(router);
    let router = client::keys::routes(router);
    let router = client::media::routes(router);
    let router = client::reporting::routes(router);
    let router = client::integrations::routes(router);
    let router = client::synapse_admin::routes(router);
    let router = client::thread_subscriptions::routes(router);
    let router = client::delayed_events::routes(router);
    let router = federation::routes(router);
    client::search::routes(router)
}

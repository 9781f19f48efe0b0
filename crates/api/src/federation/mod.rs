//! The Server-Server API: what other homeservers ask of this one. Every handler behind
//! `ServerSignatures` runs only after the request's `X-Matrix` signature is verified
//! ([`auth`]); the origin is then `Ruma::origin`.

pub(crate) mod auth;
mod devices;
mod directory;
mod history;
mod keys;
mod knock;
mod media;
mod membership;
mod openid;
mod query;
mod spaces;
mod transactions;

use axum::Router;

use crate::AppState;

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = keys::routes(router);
    let router = transactions::routes(router);
    let router = membership::routes(router);
    let router = query::routes(router);
    let router = directory::routes(router);
    let router = spaces::routes(router);
    let router = media::routes(router);
    let router = history::routes(router);
    let router = knock::routes(router);
    let router = devices::routes(router);
    openid::routes(router)
}

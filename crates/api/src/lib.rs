//! Rhizome's HTTP layer and the only crate that knows HTTP: the [`Ruma`] extractor, routes
//! registered from each ruma endpoint's metadata (so every spec version of a path is served and
//! no handler holds a path string), and the one mapping of errors to Matrix JSON.

pub mod client;
pub mod error;
pub mod federation;
mod routes;
pub mod ruma_wrapper;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    http::{HeaderName, Method, Request, header},
};
use rhizome_service::Services;
use tower_http::{
    cors::{AllowHeaders, AllowMethods, Any, CorsLayer},
    trace::TraceLayer,
};

pub use ruma_wrapper::{ApiResult, AppState, Ruma, RumaResponse};

/// The whole HTTP application: client API, discovery and key endpoints, with CORS and
/// privacy-preserving request logs (method, route template, status and time only: no
/// addresses, no query strings, no tokens, no bodies).
pub fn app(services: Arc<Services>) -> Router {
    let router = routes::all(Router::new())
        .fallback(error::unrecognized)
        .method_not_allowed_fallback(error::method_not_allowed);
    // The headers the spec recommends. Headers are listed, not `*`: browsers are ceasing to
    // let the wildcard cover `Authorization`, which every authenticated request carries.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(AllowMethods::list([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ]))
        .allow_headers(AllowHeaders::list([
            HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ]))
        .max_age(Duration::from_secs(86_400));
    // Each request's span names its route template, which only the router knows: the span is
    // made here, once around the router, and the route recorded into it by the `Ruma`
    // extractor. (A layer given to the router is copied onto each of its routes, for every path
    // of every spec version: CORS and the shutdown layer, so copied, held about 1 MiB.)
    let trace = TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
        tracing::debug_span!("request", method = %request.method(), route = tracing::field::Empty)
    });
    let routes = router.with_state(services);
    // Every `OPTIONS` request, on any path, is answered by the CORS layer with none of an
    // endpoint's work (the spec's "Web Browser Clients").
    Router::new().fallback_service(routes).layer(trace).layer(cors)
}

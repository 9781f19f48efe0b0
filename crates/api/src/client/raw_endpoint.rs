//! Endpoints ruma has no types for (Synapse's admin API), or whose ruma types refuse what the
//! spec allows (push rule IDs): `raw_endpoint!` declares a request type that `Ruma<T>` reads
//! and authenticates like any other, keeping the path arguments and query parameters; the
//! handler reads the JSON body from `Ruma::json_body` itself.

use std::collections::HashMap;

use ruma::api::error::DeserializationError;

/// Query parameters, percent-decoded.
pub(crate) fn query_parameters(
    uri: &http::Uri,
) -> Result<HashMap<String, String>, DeserializationError> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri).map(|query| query.0).map_err(
        |error| DeserializationError::Json(<serde_json::Error as serde::de::Error>::custom(error)),
    )
}

/// Declares a request type for one method and path.
macro_rules! raw_endpoint {
    ($(#[$doc:meta])* $name:ident, $method:ident, $auth:ty, $path:literal) => {
        $(#[$doc])*
        #[allow(dead_code)] // One macro for all: not every endpoint reads both.
        pub(crate) struct $name {
            /// The path arguments, percent-decoded, in order.
            pub(crate) path_args: Vec<String>,
            /// The query parameters.
            pub(crate) query: std::collections::HashMap<String, String>,
        }

        impl ruma::api::Metadata for $name {
            const METHOD: http::Method = http::Method::$method;
            const RATE_LIMITED: bool = false;
            type Authentication = $auth;
            type PathBuilder = ruma::api::path_builder::SinglePath;
            const PATH_BUILDER: ruma::api::path_builder::SinglePath =
                ruma::api::path_builder::SinglePath::new($path);
        }

        impl ruma::api::IncomingRequest for $name {
            type EndpointError = <ruma::api::client::account::whoami::v3::Request
                as ruma::api::IncomingRequest>::EndpointError;
            type OutgoingResponse = ruma::api::client::account::whoami::v3::Response;

            fn try_from_http_request_inner(
                request: http::Request<&[u8]>,
                path_args: &[&str],
            ) -> Result<Self, ruma::api::error::DeserializationError> {
                Ok(Self {
                    path_args: path_args.iter().map(|arg| (*arg).to_owned()).collect(),
                    query: $crate::client::raw_endpoint::query_parameters(request.uri())?,
                })
            }
        }
    };
}

pub(crate) use raw_endpoint;

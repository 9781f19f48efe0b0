//! Push rules (read and edit the ruleset, one rule at a time, with Synapse's checks of paths
//! and bodies), pushers and the list of notifications.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
    routing::{any, put},
};
use rhizome_core::{Error, clock::ts_from_millis};
use rhizome_service::push::rules::{Placement, RULE_KINDS};
use ruma::{
    api::{
        auth_scheme::AccessToken,
        client::push::{Pusher, get_notifications, get_pushers, set_pusher},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    ApiResult, AppState, Ruma, RumaResponse,
    client::raw_endpoint::raw_endpoint,
    error::ApiError,
    routes::{add, add_paths},
};

raw_endpoint!(
    /// `GET /pushrules/`: every rule.
    AllRules, GET, AccessToken, "/_matrix/client/v3/pushrules/"
);
raw_endpoint!(
    /// `GET /pushrules/{scope}/`: the rules of a scope.
    ScopeRules, GET, AccessToken, "/_matrix/client/v3/pushrules/{scope}/"
);
raw_endpoint!(
    /// `GET /pushrules/{scope}/{kind}/`: the rules of a kind.
    KindRules, GET, AccessToken, "/_matrix/client/v3/pushrules/{scope}/{kind}/"
);
raw_endpoint!(
    /// `GET /pushrules/{scope}/{kind}/{ruleId}`.
    GetRule, GET, AccessToken, "/_matrix/client/v3/pushrules/{scope}/{kind}/{rule_id}"
);
raw_endpoint!(
    /// `PUT /pushrules/{scope}/{kind}/{ruleId}`.
    SetRule, PUT, AccessToken, "/_matrix/client/v3/pushrules/{scope}/{kind}/{rule_id}"
);
raw_endpoint!(
    /// `DELETE /pushrules/{scope}/{kind}/{ruleId}`.
    DeleteRule, DELETE, AccessToken, "/_matrix/client/v3/pushrules/{scope}/{kind}/{rule_id}"
);
raw_endpoint!(
    /// `GET /pushrules/{scope}/{kind}/{ruleId}/{attr}` (`enabled` or `actions`).
    GetAttribute, GET, AccessToken, "/_matrix/client/v3/pushrules/{scope}/{kind}/{rule_id}/{attr}"
);
raw_endpoint!(
    /// `PUT /pushrules/{scope}/{kind}/{ruleId}/{attr}` (`enabled` or `actions`).
    SetAttribute, PUT, AccessToken, "/_matrix/client/v3/pushrules/{scope}/{kind}/{rule_id}/{attr}"
);

/// The same paths under `r0`, as clients long used them.
fn r0(path: &'static str) -> [&'static str; 1] {
    [match path {
        "/_matrix/client/v3/pushrules/" => "/_matrix/client/r0/pushrules/",
        "/_matrix/client/v3/pushrules/{scope}/" => "/_matrix/client/r0/pushrules/{scope}/",
        "/_matrix/client/v3/pushrules/{scope}/{kind}/" => {
            "/_matrix/client/r0/pushrules/{scope}/{kind}/"
        }
        "/_matrix/client/v3/pushrules/{scope}/{kind}/{rule_id}" => {
            "/_matrix/client/r0/pushrules/{scope}/{kind}/{rule_id}"
        }
        _ => "/_matrix/client/r0/pushrules/{scope}/{kind}/{rule_id}/{attr}",
    }]
}

/// Registers a push rule endpoint under `v3` and `r0`.
fn add_both<T, H, X>(router: Router<AppState>, handler: H) -> Router<AppState>
where
    T: ruma::api::Metadata,
    H: axum::handler::Handler<X, AppState> + Clone + Send + Sync + 'static,
    X: 'static,
{
    use ruma::api::path_builder::PathBuilder;
    let path = T::PATH_BUILDER.all_paths().next().unwrap_or_default();
    let router = add::<T, _, _>(router, handler.clone());
    add_paths::<T, _, _>(router, &r0(path), handler)
}

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add_both::<AllRules, _, _>(router, all_rules);
    let router = add_both::<ScopeRules, _, _>(router, scope_rules);
    let router = add_both::<KindRules, _, _>(router, kind_rules);
    let router = add_both::<GetRule, _, _>(router, rule);
    let router = add_both::<SetRule, _, _>(router, set_rule);
    let router = add_both::<DeleteRule, _, _>(router, delete_rule);
    let router = add_both::<GetAttribute, _, _>(router, rule_attribute);
    let router = add_both::<SetAttribute, _, _>(router, set_rule_attribute);
    // Paths that name no rule, or no scope and kind, are bad requests whatever the method.
    let mut router = router;
    for version in ["r0", "v3"] {
        for tail in ["{scope}", "{scope}/{kind}"] {
            let path = format!("/_matrix/client/{version}/pushrules/{tail}");
            router = router.route(&path, any(malformed_path));
        }
        for path in ["pushrules/", "pushrules/{scope}/", "pushrules/{scope}/{kind}/"] {
            let path = format!("/_matrix/client/{version}/{path}");
            router = router.route(&path, put(malformed_path).delete(malformed_path));
        }
    }
    let router = add::<get_pushers::v3::Request, _, _>(router, pushers);
    let router = add::<set_pusher::v3::Request, _, _>(router, set_pusher);
    add::<get_notifications::v3::Request, _, _>(router, notifications)
}

async fn malformed_path() -> ApiError {
    Error::invalid_param("A push rule path is /pushrules/global/{kind}/{ruleId}").into()
}

/// The scope, which must be `global`.
fn scope(path_args: &[String]) -> Result<(), Error> {
    match path_args.first().map(String::as_str) {
        Some("global") => Ok(()),
        _ => Err(Error::invalid_param("The only push rule scope is `global`")),
    }
}

/// The kind and rule ID of a rule's path.
fn kind_and_rule(path_args: &[String]) -> Result<(&str, &str), Error> {
    scope(path_args)?;
    match (path_args.get(1), path_args.get(2)) {
        (Some(kind), Some(rule_id)) => Ok((kind, rule_id)),
        _ => Err(Error::invalid_param("A push rule path names a kind and a rule")),
    }
}

async fn all_rules(
    State(services): State<AppState>,
    request: Ruma<AllRules>,
) -> Result<Response, ApiError> {
    let rules = services.push_rules(&request.requester()?.user_id).await?;
    Ok(Json(json!({ "global": rules })).into_response())
}

async fn scope_rules(
    State(services): State<AppState>,
    request: Ruma<ScopeRules>,
) -> Result<Response, ApiError> {
    scope(&request.body.path_args)?;
    Ok(Json(services.push_rules(&request.requester()?.user_id).await?).into_response())
}

async fn kind_rules(
    State(services): State<AppState>,
    request: Ruma<KindRules>,
) -> Result<Response, ApiError> {
    scope(&request.body.path_args)?;
    let kind = request.body.path_args.get(1).map(String::as_str).unwrap_or_default();
    if !RULE_KINDS.contains(&kind) {
        return Err(Error::invalid_param("Unknown kind of push rule").into());
    }
    let rules = services.push_rules(&request.requester()?.user_id).await?;
    Ok(Json(rules[kind].clone()).into_response())
}

async fn rule(
    State(services): State<AppState>,
    request: Ruma<GetRule>,
) -> Result<Response, ApiError> {
    let (kind, rule_id) = kind_and_rule(&request.body.path_args)?;
    let rule = services.push_rule(&request.requester()?.user_id, kind, rule_id).await?;
    Ok(Json(rule).into_response())
}

async fn set_rule(
    State(services): State<AppState>,
    request: Ruma<SetRule>,
) -> Result<Response, ApiError> {
    let (kind, rule_id) = kind_and_rule(&request.body.path_args)?;
    let body: Value = serde_json::from_slice(&request.json_body)
        .map_err(|_| Error::bad_json("The body must be a JSON object"))?;
    let query = &request.body.query;
    let placement = match (query.get("before"), query.get("after")) {
        (Some(before), _) => Placement::Before(before),
        (None, Some(after)) => Placement::After(after),
        (None, None) => Placement::First,
    };
    services.set_push_rule(&request.requester()?.user_id, kind, rule_id, &body, placement).await?;
    Ok(Json(json!({})).into_response())
}

async fn delete_rule(
    State(services): State<AppState>,
    request: Ruma<DeleteRule>,
) -> Result<Response, ApiError> {
    let (kind, rule_id) = kind_and_rule(&request.body.path_args)?;
    services.delete_push_rule(&request.requester()?.user_id, kind, rule_id).await?;
    Ok(Json(json!({})).into_response())
}

/// The attribute of a rule's path: `enabled` or `actions`.
fn attribute(path_args: &[String]) -> Result<&str, Error> {
    match path_args.get(3).map(String::as_str) {
        Some(attr @ ("enabled" | "actions")) => Ok(attr),
        _ => Err(Error::invalid_param("A push rule's attributes are `enabled` and `actions`")),
    }
}

async fn rule_attribute(
    State(services): State<AppState>,
    request: Ruma<GetAttribute>,
) -> Result<Response, ApiError> {
    let (kind, rule_id) = kind_and_rule(&request.body.path_args)?;
    let attr = attribute(&request.body.path_args)?;
    let rule = services.push_rule(&request.requester()?.user_id, kind, rule_id).await?;
    let value = rule.get(attr).cloned().unwrap_or(Value::Null);
    Ok(Json(json!({ attr: value })).into_response())
}

async fn set_rule_attribute(
    State(services): State<AppState>,
    request: Ruma<SetAttribute>,
) -> Result<Response, ApiError> {
    let (kind, rule_id) = kind_and_rule(&request.body.path_args)?;
    let attr = attribute(&request.body.path_args)?;
    let body: Value = serde_json::from_slice(&request.json_body)
        .map_err(|_| Error::bad_json("The body must be a JSON object"))?;
    let value =
        body.get(attr).cloned().ok_or_else(|| Error::bad_json(format!("{attr} is missing")))?;
    services.set_push_rule_field(&request.requester()?.user_id, kind, rule_id, attr, value).await?;
    Ok(Json(json!({})).into_response())
}

async fn pushers(
    State(services): State<AppState>,
    request: Ruma<get_pushers::v3::Request>,
) -> ApiResult<get_pushers::v3::Response> {
    let values = services.pushers(request.requester()?).await?;
    let pushers: Vec<Pusher> =
        values.into_iter().filter_map(|value| serde_json::from_value(value).ok()).collect();
    Ok(RumaResponse(get_pushers::v3::Response::new(pushers)))
}

async fn set_pusher(
    State(services): State<AppState>,
    request: Ruma<set_pusher::v3::Request>,
) -> ApiResult<set_pusher::v3::Response> {
    let value: serde_json::Value = serde_json::from_slice(&request.json_body)
        .map_err(|_| Error::bad_json("Invalid pusher"))?;
    services.set_pusher(request.requester()?, value).await?;
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}

async fn notifications(
    State(services): State<AppState>,
    request: Ruma<get_notifications::v3::Request>,
) -> ApiResult<get_notifications::v3::Response> {
    let body = &request.body;
    let limit = body.limit.map(|limit| usize::try_from(u64::from(limit)).unwrap_or(usize::MAX));
    let highlights_only = match body.only.as_deref() {
        None | Some("") => false,
        Some("highlight") => true,
        Some(_) => return Err(Error::invalid_param("`only` can only be `highlight`").into()),
    };
    let page = services
        .notifications(request.requester()?, body.from.as_deref(), limit, highlights_only)
        .await?;
    let notifications = page
        .notifications
        .into_iter()
        .map(|notification| {
            get_notifications::v3::Notification::new(
                notification.actions,
                Raw::from_json(notification.event),
                notification.read,
                notification.room_id,
                ts_from_millis(notification.ts),
            )
        })
        .collect();
    let mut response = get_notifications::v3::Response::new(notifications);
    response.next_token = page.next_token;
    Ok(RumaResponse(response))
}

//! Push rules (read and edit the ruleset), pushers and the list of notifications.

use axum::{Router, extract::State};
use rhizome_core::{Error, clock::ts_from_millis, error::MatrixErrorKind};
use ruma::{
    api::client::push::{
        PushRule, Pusher, delete_pushrule, get_notifications, get_pushers, get_pushrule,
        get_pushrule_actions, get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope,
        set_pusher, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    push::{InsertPushRuleError, RemovePushRuleError, RuleKind, Ruleset},
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_pushrules_all::v3::Request, _, _>(router, all_rules);
    let router = add::<get_pushrules_global_scope::v3::Request, _, _>(router, global_rules);
    let router = add::<get_pushrule::v3::Request, _, _>(router, rule);
    let router = add::<set_pushrule::v3::Request, _, _>(router, set_rule);
    let router = add::<delete_pushrule::v3::Request, _, _>(router, delete_rule);
    let router = add::<get_pushrule_enabled::v3::Request, _, _>(router, rule_enabled);
    let router = add::<set_pushrule_enabled::v3::Request, _, _>(router, set_rule_enabled);
    let router = add::<get_pushrule_actions::v3::Request, _, _>(router, rule_actions);
    let router = add::<set_pushrule_actions::v3::Request, _, _>(router, set_rule_actions);
    let router = add::<get_pushers::v3::Request, _, _>(router, pushers);
    let router = add::<set_pusher::v3::Request, _, _>(router, set_pusher);
    add::<get_notifications::v3::Request, _, _>(router, notifications)
}

fn not_found() -> Error {
    Error::not_found("No such push rule")
}

async fn all_rules(
    State(services): State<AppState>,
    request: Ruma<get_pushrules_all::v3::Request>,
) -> ApiResult<get_pushrules_all::v3::Response> {
    let rules = services.push_rules(&request.requester()?.user_id).await?;
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(rules)))
}

async fn global_rules(
    State(services): State<AppState>,
    request: Ruma<get_pushrules_global_scope::v3::Request>,
) -> ApiResult<get_pushrules_global_scope::v3::Response> {
    let rules = services.push_rules(&request.requester()?.user_id).await?;
    Ok(RumaResponse(get_pushrules_global_scope::v3::Response::new(rules)))
}

async fn find(
    services: &AppState,
    user_id: &ruma::UserId,
    kind: &RuleKind,
    rule_id: &str,
) -> Result<(Ruleset, PushRule), Error> {
    let rules = services.push_rules(user_id).await?;
    let rule = PushRule::from(rules.get(kind.clone(), rule_id).ok_or_else(not_found)?.to_owned());
    Ok((rules, rule))
}

async fn rule(
    State(services): State<AppState>,
    request: Ruma<get_pushrule::v3::Request>,
) -> ApiResult<get_pushrule::v3::Response> {
    let (_, rule) =
        find(&services, &request.requester()?.user_id, &request.body.kind, &request.body.rule_id)
            .await?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(rule)))
}

async fn set_rule(
    State(services): State<AppState>,
    request: Ruma<set_pushrule::v3::Request>,
) -> ApiResult<set_pushrule::v3::Response> {
    let body = request.body.clone();
    services
        .edit_push_rules(request.requester()?, move |rules| {
            rules.insert(body.rule, body.after.as_deref(), body.before.as_deref()).map_err(
                |error| match error {
                    InsertPushRuleError::UnknownRuleId => {
                        Error::not_found("The rule to place it next to does not exist")
                    }
                    other => Error::matrix(MatrixErrorKind::InvalidParam, other.to_string()),
                },
            )
        })
        .await?;
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

async fn delete_rule(
    State(services): State<AppState>,
    request: Ruma<delete_pushrule::v3::Request>,
) -> ApiResult<delete_pushrule::v3::Response> {
    let (kind, rule_id) = (request.body.kind.clone(), request.body.rule_id.clone());
    services
        .edit_push_rules(request.requester()?, move |rules| {
            rules.remove(kind, &rule_id).map_err(|error| match error {
                RemovePushRuleError::NotFound => not_found(),
                other => Error::matrix(MatrixErrorKind::InvalidParam, other.to_string()),
            })
        })
        .await?;
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

async fn rule_enabled(
    State(services): State<AppState>,
    request: Ruma<get_pushrule_enabled::v3::Request>,
) -> ApiResult<get_pushrule_enabled::v3::Response> {
    let (_, rule) =
        find(&services, &request.requester()?.user_id, &request.body.kind, &request.body.rule_id)
            .await?;
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(rule.enabled)))
}

async fn set_rule_enabled(
    State(services): State<AppState>,
    request: Ruma<set_pushrule_enabled::v3::Request>,
) -> ApiResult<set_pushrule_enabled::v3::Response> {
    let (kind, rule_id, enabled) =
        (request.body.kind.clone(), request.body.rule_id.clone(), request.body.enabled);
    services
        .edit_push_rules(request.requester()?, move |rules| {
            rules.set_enabled(kind, &rule_id, enabled).map_err(|_| not_found())
        })
        .await?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

async fn rule_actions(
    State(services): State<AppState>,
    request: Ruma<get_pushrule_actions::v3::Request>,
) -> ApiResult<get_pushrule_actions::v3::Response> {
    let (_, rule) =
        find(&services, &request.requester()?.user_id, &request.body.kind, &request.body.rule_id)
            .await?;
    Ok(RumaResponse(get_pushrule_actions::v3::Response::new(rule.actions)))
}

async fn set_rule_actions(
    State(services): State<AppState>,
    request: Ruma<set_pushrule_actions::v3::Request>,
) -> ApiResult<set_pushrule_actions::v3::Response> {
    let (kind, rule_id, actions) =
        (request.body.kind.clone(), request.body.rule_id.clone(), request.body.actions.clone());
    services
        .edit_push_rules(request.requester()?, move |rules| {
            rules.set_actions(kind, &rule_id, actions).map_err(|_| not_found())
        })
        .await?;
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
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

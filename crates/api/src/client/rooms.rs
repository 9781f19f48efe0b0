//! Rooms: `createRoom`, upgrades, and membership (join, invite, leave, forget, kick, ban,
//! unban, knock), joined rooms and members.

use std::collections::BTreeMap;

use axum::{Router, extract::State};
use rhizome_core::Error;
use rhizome_service::rooms::create::{CreateRoom, Preset};
use ruma::{
    api::client::{
        knock::knock_room,
        membership::{
            ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
            join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room,
            unban_user,
        },
        room::{Visibility, create_room, upgrade_room},
    },
    api::{IncomingRequest, Metadata, error::DeserializationError},
    room::RoomType,
    serde::Raw,
};
use serde_json::{Map, Value};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<create_room::v3::Request, _, _>(router, create);
    let router = add::<upgrade_room::v3::Request, _, _>(router, upgrade);
    let router = add::<join_room_by_id::v3::Request, _, _>(router, join_by_id);
    let router = add::<JoinByIdOrAlias, _, _>(router, join);
    let router = add::<invite_user::v3::Request, _, _>(router, invite);
    let router = add::<leave_room::v3::Request, _, _>(router, leave);
    let router = add::<forget_room::v3::Request, _, _>(router, forget);
    let router = add::<kick_user::v3::Request, _, _>(router, kick);
    let router = add::<ban_user::v3::Request, _, _>(router, ban);
    let router = add::<unban_user::v3::Request, _, _>(router, unban);
    let router = add::<knock_room::v3::Request, _, _>(router, knock);
    let router = add::<joined_rooms::v3::Request, _, _>(router, joined);
    let router = add::<joined_members::v3::Request, _, _>(router, members_joined);
    add::<get_member_events::v3::Request, _, _>(router, members)
}

fn object_of<T>(raw: &Raw<T>, what: &'static str) -> Result<Map<String, Value>, Error> {
    serde_json::from_str(raw.json().get()).map_err(|_| Error::bad_json(what))
}

async fn create(
    State(services): State<AppState>,
    request: Ruma<create_room::v3::Request>,
) -> ApiResult<create_room::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    let mut initial_state = Vec::with_capacity(body.initial_state.len());
    for event in &body.initial_state {
        let value: Value = serde_json::from_str(event.json().get())
            .map_err(|_| Error::bad_json("Invalid initial_state event"))?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        let state_key = value.get("state_key").and_then(Value::as_str).unwrap_or_default();
        let content = value
            .get("content")
            .cloned()
            .filter(Value::is_object)
            .ok_or_else(|| Error::bad_json("initial_state event without content"))?;
        initial_state.push((kind.to_owned(), state_key.to_owned(), content));
    }
    let preset = body.preset.as_ref().map(|preset| match preset.as_str() {
        "public_chat" => Ok(Preset::PublicChat),
        "trusted_private_chat" => Ok(Preset::TrustedPrivateChat),
        "private_chat" => Ok(Preset::PrivateChat),
        _ => Err(Error::bad_json("Unknown preset")),
    });
    let creation_content = match &body.creation_content {
        Some(raw) => {
            let mut content = object_of(raw, "creation_content must be an object")?;
            // Fields the server decides.
            content.remove("room_version");
            content.remove("creator");
            if content
                .get("type")
                .is_some_and(|kind| kind.as_str() == Some(RoomType::Space.as_str()))
            {
                content.insert("type".into(), Value::from("m.space"));
            }
            Some(content)
        }
        None => None,
    };
    let room_id = services
        .create_room(
            &requester.user_id,
            CreateRoom {
                preset: preset.transpose()?,
                publish: body.visibility == Visibility::Public,
                room_alias_name: body.room_alias_name.clone(),
                name: body.name.clone(),
                topic: body.topic.clone(),
                invite: body.invite.clone(),
                is_direct: body.is_direct,
                initial_state,
                power_level_content_override: body
                    .power_level_content_override
                    .as_ref()
                    .map(|raw| object_of(raw, "power_level_content_override must be an object"))
                    .transpose()?,
                room_version: body.room_version.clone(),
                creation_content,
            },
        )
        .await?;
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

async fn upgrade(
    State(services): State<AppState>,
    request: Ruma<upgrade_room::v3::Request>,
) -> ApiResult<upgrade_room::v3::Response> {
    let requester = request.requester()?;
    let room = services
        .upgrade_room(
            &requester.user_id,
            &request.body.room_id,
            &request.body.new_version,
            &request.body.additional_creators,
        )
        .await?;
    Ok(RumaResponse(upgrade_room::v3::Response::new(room)))
}

async fn join_by_id(
    State(services): State<AppState>,
    request: Ruma<join_room_by_id::v3::Request>,
) -> ApiResult<join_room_by_id::v3::Response> {
    let requester = request.requester()?;
    let room = <&ruma::RoomOrAliasId>::from(&*request.body.room_id);
    let content = join_content(&request.json_body)?;
    let room_id = services.join_room_with_content(&requester.user_id, room, content, &[]).await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(room_id)))
}

async fn join(
    State(services): State<AppState>,
    request: Ruma<JoinByIdOrAlias>,
) -> ApiResult<join_room_by_id_or_alias::v3::Response> {
    let requester = request.requester()?;
    let content = join_content(&request.json_body)?;
    let room_id = services
        .join_room_with_content(
            &requester.user_id,
            &request.body.0.room_id_or_alias,
            content,
            &request.body.0.via,
        )
        .await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(room_id)))
}

/// The keys of a join request's body, which go into the member event's content (ruma has
/// already checked the ones the spec names). An empty body is an empty object.
fn join_content(body: &[u8]) -> Result<Map<String, Value>, Error> {
    if body.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_slice(body).map_err(|_| Error::bad_json("The body must be a JSON object"))
}

/// `POST /join/{roomIdOrAlias}` as ruma defines it, except that an empty body counts as an
/// empty object, as it does for every endpoint whose body fields are all optional (ruma's
/// hand-written parser for this one insists on JSON).
struct JoinByIdOrAlias(join_room_by_id_or_alias::v3::Request);

impl Metadata for JoinByIdOrAlias {
    const METHOD: http::Method = <join_room_by_id_or_alias::v3::Request as Metadata>::METHOD;
    const RATE_LIMITED: bool = <join_room_by_id_or_alias::v3::Request as Metadata>::RATE_LIMITED;
    type Authentication = <join_room_by_id_or_alias::v3::Request as Metadata>::Authentication;
    type PathBuilder = <join_room_by_id_or_alias::v3::Request as Metadata>::PathBuilder;
    const PATH_BUILDER: Self::PathBuilder =
        <join_room_by_id_or_alias::v3::Request as Metadata>::PATH_BUILDER;
}

impl IncomingRequest for JoinByIdOrAlias {
    type EndpointError = <join_room_by_id_or_alias::v3::Request as IncomingRequest>::EndpointError;
    type OutgoingResponse = join_room_by_id_or_alias::v3::Response;

    fn try_from_http_request_inner(
        request: http::Request<&[u8]>,
        path_args: &[&str],
    ) -> Result<Self, DeserializationError> {
        let request =
            if request.body().is_empty() { request.map(|_| b"{}".as_slice()) } else { request };
        join_room_by_id_or_alias::v3::Request::try_from_http_request_inner(request, path_args)
            .map(Self)
    }
}

async fn invite(
    State(services): State<AppState>,
    request: Ruma<invite_user::v3::Request>,
) -> ApiResult<invite_user::v3::Response> {
    let requester = request.requester()?;
    match &request.body.recipient {
        invite_user::v3::InvitationRecipient::UserId(invitee) => {
            services
                .invite(
                    &requester.user_id,
                    &request.body.room_id,
                    &invitee.user_id,
                    invitee.reason.as_deref(),
                    false,
                )
                .await?;
        }
        _ => return Err(Error::forbidden("Third-party invites are not supported").into()),
    }
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

async fn leave(
    State(services): State<AppState>,
    request: Ruma<leave_room::v3::Request>,
) -> ApiResult<leave_room::v3::Response> {
    let requester = request.requester()?;
    services
        .leave_room(&requester.user_id, &request.body.room_id, request.body.reason.as_deref())
        .await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

async fn forget(
    State(services): State<AppState>,
    request: Ruma<forget_room::v3::Request>,
) -> ApiResult<forget_room::v3::Response> {
    services.forget_room(&request.requester()?.user_id, &request.body.room_id).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

async fn kick(
    State(services): State<AppState>,
    request: Ruma<kick_user::v3::Request>,
) -> ApiResult<kick_user::v3::Response> {
    let body = &request.body;
    services
        .kick(&request.requester()?.user_id, &body.room_id, &body.user_id, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

async fn ban(
    State(services): State<AppState>,
    request: Ruma<ban_user::v3::Request>,
) -> ApiResult<ban_user::v3::Response> {
    let body = &request.body;
    services
        .ban(&request.requester()?.user_id, &body.room_id, &body.user_id, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

async fn unban(
    State(services): State<AppState>,
    request: Ruma<unban_user::v3::Request>,
) -> ApiResult<unban_user::v3::Response> {
    let body = &request.body;
    services
        .unban(&request.requester()?.user_id, &body.room_id, &body.user_id, body.reason.as_deref())
        .await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

async fn knock(
    State(services): State<AppState>,
    request: Ruma<knock_room::v3::Request>,
) -> ApiResult<knock_room::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    let room_id = services
        .knock_room_via(
            &requester.user_id,
            &body.room_id_or_alias,
            body.reason.as_deref(),
            &body.via,
        )
        .await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

async fn joined(
    State(services): State<AppState>,
    request: Ruma<joined_rooms::v3::Request>,
) -> ApiResult<joined_rooms::v3::Response> {
    let rooms = services.store.rooms_of_user(&request.requester()?.user_id, &["join"]).await?;
    Ok(RumaResponse(joined_rooms::v3::Response::new(
        rooms.into_iter().map(|room| room.room_id).collect(),
    )))
}

async fn members_joined(
    State(services): State<AppState>,
    request: Ruma<joined_members::v3::Request>,
) -> ApiResult<joined_members::v3::Response> {
    let members = services.joined_members(request.requester()?, &request.body.room_id).await?;
    let mut joined = BTreeMap::new();
    for (user_id, displayname, avatar_url) in members {
        let mut member = joined_members::v3::RoomMember::new();
        member.display_name = displayname;
        member.avatar_url = avatar_url.map(Into::into);
        joined.insert(user_id, member);
    }
    Ok(RumaResponse(joined_members::v3::Response::new(joined)))
}

async fn members(
    State(services): State<AppState>,
    request: Ruma<get_member_events::v3::Request>,
) -> ApiResult<get_member_events::v3::Response> {
    let body = &request.body;
    let chunk = services
        .members(
            request.requester()?,
            &body.room_id,
            body.at.as_deref(),
            body.membership.as_ref().map(|membership| membership.as_str()),
            body.not_membership.as_ref().map(|membership| membership.as_str()),
        )
        .await?;
    Ok(RumaResponse(get_member_events::v3::Response::new(
        chunk.into_iter().map(Raw::from_json).collect(),
    )))
}

//! Room aliases, the public room directory, room summaries and the space hierarchy.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use rhizome_service::rooms::{
    directory::{DirectoryQuery, PublicRoomsPage, RoomSummary},
    spaces::HierarchyQuery,
};
use ruma::{
    EventEncryptionAlgorithm, RoomVersionId, UInt,
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{
            get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility,
        },
        room::{Visibility, get_summary},
        space::{SpaceHierarchyRoomsChunk, get_hierarchy},
    },
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::room::member::MembershipState,
    room::{JoinRuleKind, JoinRuleSummary, RestrictedSummary, RoomType},
    serde::Raw,
};

use rhizome_service::rate_limit::Action;
use serde_json::{Value, json};

use crate::{ApiResult, AppState, Ruma, RumaResponse, error::ApiError, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<create_alias::v3::Request, _, _>(router, set_alias);
    let router = add::<delete_alias::v3::Request, _, _>(router, remove_alias);
    let router = add::<get_alias::v3::Request, _, _>(router, alias);
    let router = add::<get_public_rooms::v3::Request, _, _>(router, public_rooms);
    let router = add::<get_public_rooms_filtered::v3::Request, _, _>(router, public_rooms_filtered);
    let router = add::<get_room_visibility::v3::Request, _, _>(router, visibility);
    let router = add::<set_room_visibility::v3::Request, _, _>(router, set_visibility);
    let router = add::<get_summary::v1::Request, _, _>(router, summary);
    add::<get_hierarchy::v1::Request, _, _>(router, hierarchy)
}

/// A room summary as the spec's summary and hierarchy endpoints show it.
pub(crate) fn summary_of(summary: RoomSummary) -> ruma::room::RoomSummary {
    let join_rule = match summary.join_rule.as_deref() {
        Some("restricted") => {
            JoinRuleSummary::Restricted(RestrictedSummary::new(summary.allowed_room_ids))
        }
        Some("knock_restricted") => {
            JoinRuleSummary::KnockRestricted(RestrictedSummary::new(summary.allowed_room_ids))
        }
        Some(rule) => JoinRuleKind::from(rule).into(),
        None => JoinRuleSummary::Public,
    };
    let mut out = ruma::room::RoomSummary::new(
        summary.room_id,
        join_rule,
        summary.guest_can_join,
        UInt::new_saturating(summary.joined_members),
        summary.world_readable,
    );
    out.canonical_alias = summary.canonical_alias;
    out.name = summary.name;
    out.topic = summary.topic;
    out.avatar_url = summary.avatar_url.map(Into::into);
    out.room_type = summary.room_type.as_deref().map(RoomType::from);
    out.encryption = summary.encryption.as_deref().map(EventEncryptionAlgorithm::from);
    out.room_version =
        summary.room_version.and_then(|version| RoomVersionId::try_from(version).ok());
    out
}

/// A room summary as the public room directory shows it.
pub(crate) fn chunk(summary: RoomSummary) -> PublicRoomsChunk {
    let mut chunk: PublicRoomsChunk = PublicRoomsChunkInit {
        num_joined_members: UInt::new_saturating(summary.joined_members),
        room_id: summary.room_id,
        world_readable: summary.world_readable,
        guest_can_join: summary.guest_can_join,
    }
    .into();
    chunk.canonical_alias = summary.canonical_alias;
    chunk.name = summary.name;
    chunk.topic = summary.topic;
    chunk.avatar_url = summary.avatar_url.map(Into::into);
    chunk.join_rule =
        summary.join_rule.as_deref().map(JoinRuleKind::from).unwrap_or(JoinRuleKind::Public);
    chunk.room_type = summary.room_type.as_deref().map(RoomType::from);
    chunk
}

async fn set_alias(
    State(services): State<AppState>,
    request: Ruma<create_alias::v3::Request>,
) -> ApiResult<create_alias::v3::Response> {
    services
        .set_alias(request.requester()?, &request.body.room_alias, &request.body.room_id)
        .await?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

async fn remove_alias(
    State(services): State<AppState>,
    request: Ruma<delete_alias::v3::Request>,
) -> ApiResult<delete_alias::v3::Response> {
    services.delete_alias(request.requester()?, &request.body.room_alias).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

async fn alias(
    State(services): State<AppState>,
    request: Ruma<get_alias::v3::Request>,
) -> ApiResult<get_alias::v3::Response> {
    let (room_id, servers) = services.lookup_alias(&request.body.room_alias).await?;
    Ok(RumaResponse(get_alias::v3::Response::new(room_id, servers)))
}

fn limit(limit: Option<UInt>) -> Option<usize> {
    limit.map(|limit| usize::try_from(u64::from(limit)).unwrap_or(usize::MAX))
}

async fn public_rooms(
    State(services): State<AppState>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<Response, ApiError> {
    // This endpoint takes no access token: asking another server is limited per address,
    // as sending an event is.
    if request.body.server.as_ref().is_some_and(|server| server != services.server_name()) {
        services.rate_limiter.check(Action::MessagePerAddress, &request.client_key)?;
    }
    let body = request.body;
    let query =
        DirectoryQuery { limit: limit(body.limit), since: body.since, ..DirectoryQuery::default() };
    let page = services.public_rooms_of(body.server.as_deref(), &query).await?;
    Ok(public_rooms_page(page))
}

async fn public_rooms_filtered(
    State(services): State<AppState>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<Response, ApiError> {
    request.requester()?;
    let body = request.body;
    let query = DirectoryQuery {
        limit: limit(body.limit),
        since: body.since,
        search_term: body.filter.generic_search_term,
        room_types: body
            .filter
            .room_types
            .iter()
            .map(|kind| kind.as_str().map(str::to_owned))
            .collect(),
    };
    let page = services.public_rooms_of(body.server.as_deref(), &query).await?;
    Ok(public_rooms_page(page))
}

/// A page of the directory. Built by hand, as ruma leaves a public room's `join_rule` out and
/// clients read it.
fn public_rooms_page(page: PublicRoomsPage) -> Response {
    let chunk: Vec<Value> = page
        .chunk
        .into_iter()
        .map(|summary| {
            let join_rule = summary.join_rule.clone().unwrap_or_else(|| "public".to_owned());
            let mut entry = serde_json::to_value(chunk(summary)).unwrap_or_else(|_| json!({}));
            entry["join_rule"] = json!(join_rule);
            entry
        })
        .collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": page.total });
    if let Some(next_batch) = page.next_batch {
        body["next_batch"] = json!(next_batch);
    }
    if let Some(prev_batch) = page.prev_batch {
        body["prev_batch"] = json!(prev_batch);
    }
    Json(body).into_response()
}

async fn visibility(
    State(services): State<AppState>,
    request: Ruma<get_room_visibility::v3::Request>,
) -> ApiResult<get_room_visibility::v3::Response> {
    let published = services.room_published(&request.body.room_id).await?;
    Ok(RumaResponse(get_room_visibility::v3::Response::new(if published {
        Visibility::Public
    } else {
        Visibility::Private
    })))
}

async fn set_visibility(
    State(services): State<AppState>,
    request: Ruma<set_room_visibility::v3::Request>,
) -> ApiResult<set_room_visibility::v3::Response> {
    let publish = request.body.visibility == Visibility::Public;
    services.set_room_published(request.requester()?, &request.body.room_id, publish).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

async fn summary(
    State(services): State<AppState>,
    request: Ruma<get_summary::v1::Request>,
) -> ApiResult<get_summary::v1::Response> {
    let user_id = request.requester.as_ref().map(|requester| requester.user_id.as_ref());
    let (summary, membership) =
        services.room_summary_for(user_id, &request.body.room_id_or_alias).await?;
    let mut response = get_summary::v1::Response::new(summary_of(summary));
    response.membership = membership.as_deref().map(MembershipState::from);
    Ok(RumaResponse(response))
}

async fn hierarchy(
    State(services): State<AppState>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<get_hierarchy::v1::Response> {
    let body = &request.body;
    let query = HierarchyQuery {
        from: body.from.as_deref(),
        limit: body.limit.map(u64::from),
        max_depth: body.max_depth.map(u64::from),
        suggested_only: body.suggested_only,
    };
    let page =
        services.space_hierarchy(&request.requester()?.user_id, &body.room_id, query).await?;
    let mut response = get_hierarchy::v1::Response::new();
    response.rooms = page
        .rooms
        .into_iter()
        .map(|room| {
            SpaceHierarchyRoomsChunk::new(
                summary_of(room.summary),
                room.children_state.into_iter().map(Raw::from_json).collect(),
            )
        })
        .collect();
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

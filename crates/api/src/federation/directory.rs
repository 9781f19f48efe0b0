//! The public room directory for other servers: `GET` and `POST /publicRooms`
//! ([spec](https://spec.matrix.org/v1.19/server-server-api/#public-room-directory)), the rooms
//! this server's users published, unless `federation.publish_room_directory` is off.
//! Third-party networks are not bridged: their parameters are ignored.

use axum::{Router, extract::State};
use rhizome_service::rooms::directory::{DirectoryQuery, PublicRoomsPage};
use ruma::{
    UInt,
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::PublicRoomsChunk,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, client::directory::chunk, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_public_rooms::v1::Request, _, _>(router, public_rooms);
    add::<get_public_rooms_filtered::v1::Request, _, _>(router, public_rooms_filtered)
}

fn limit(limit: Option<UInt>) -> Option<usize> {
    limit.map(|limit| usize::try_from(u64::from(limit)).unwrap_or(usize::MAX))
}

fn chunks(page: PublicRoomsPage) -> (Vec<PublicRoomsChunk>, Option<String>, Option<String>, UInt) {
    let total = UInt::new_saturating(page.total);
    (page.chunk.into_iter().map(chunk).collect(), page.next_batch, page.prev_batch, total)
}

async fn public_rooms(
    State(services): State<AppState>,
    request: Ruma<get_public_rooms::v1::Request>,
) -> ApiResult<get_public_rooms::v1::Response> {
    let origin = request.origin()?.clone();
    let query = DirectoryQuery {
        limit: limit(request.body.limit),
        since: request.body.since,
        ..DirectoryQuery::default()
    };
    let page = services.public_rooms_for_server(&origin, &query).await?;
    let (chunk, next_batch, prev_batch, total) = chunks(page);
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(total);
    Ok(RumaResponse(response))
}

async fn public_rooms_filtered(
    State(services): State<AppState>,
    request: Ruma<get_public_rooms_filtered::v1::Request>,
) -> ApiResult<get_public_rooms_filtered::v1::Response> {
    let origin = request.origin()?.clone();
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
    let page = services.public_rooms_for_server(&origin, &query).await?;
    let (chunk, next_batch, prev_batch, total) = chunks(page);
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next_batch;
    response.prev_batch = prev_batch;
    response.total_room_count_estimate = Some(total);
    Ok(RumaResponse(response))
}

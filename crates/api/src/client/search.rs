//! Server-side search of messages.

use axum::{Router, extract::State};
use rhizome_core::Error;
use ruma::{
    UInt,
    api::client::search::search_events::{
        self,
        v3::{ResultCategories, ResultRoomEvents, SearchResult},
    },
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<search_events::v3::Request, _, _>(router, search)
}

async fn search(
    State(services): State<AppState>,
    request: Ruma<search_events::v3::Request>,
) -> ApiResult<search_events::v3::Response> {
    let requester = request.requester()?;
    let criteria = request
        .body
        .search_categories
        .room_events
        .as_ref()
        .ok_or_else(|| Error::bad_json("Only room_events search is supported"))?;
    let page = services
        .search_messages(
            requester,
            &criteria.search_term,
            &criteria.filter,
            request.body.next_batch.as_deref(),
        )
        .await?;
    let mut room_events = ResultRoomEvents::new();
    room_events.count = Some(UInt::new_saturating(u64::try_from(page.results.len()).unwrap_or(0)));
    room_events.next_batch = page.next_batch;
    room_events.highlights = criteria.search_term.split_whitespace().map(str::to_owned).collect();
    room_events.results = page
        .results
        .into_iter()
        .map(|event| {
            let mut result = SearchResult::new();
            result.result = Some(Raw::from_json(event));
            result
        })
        .collect();
    let mut categories = ResultCategories::new();
    categories.room_events = room_events;
    Ok(RumaResponse(search_events::v3::Response::new(categories)))
}

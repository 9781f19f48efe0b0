//! Spaces for other servers: `GET /hierarchy/{roomId}`
//! ([spec](https://spec.matrix.org/v1.19/server-server-api/#get_matrixfederationv1hierarchyroomid)),
//! a space this server is in, with the children it can describe: those the asking server could
//! peek or join, and the others as `inaccessible_children`.

use axum::{Router, extract::State};
use ruma::{
    api::federation::space::{SpaceHierarchyParentSummary, get_hierarchy},
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, client::directory::summary_of, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<get_hierarchy::v1::Request, _, _>(router, hierarchy)
}

async fn hierarchy(
    State(services): State<AppState>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> ApiResult<get_hierarchy::v1::Response> {
    let origin = request.origin()?.clone();
    let body = &request.body;
    let answer = services.hierarchy_for_server(&origin, &body.room_id, body.suggested_only).await?;
    let room = SpaceHierarchyParentSummary::new(
        summary_of(answer.room),
        answer.children_state.into_iter().map(Raw::from_json).collect(),
    );
    let mut response = get_hierarchy::v1::Response::new(room);
    response.children = answer.children.into_iter().map(summary_of).collect();
    response.inaccessible_children = answer.inaccessible_children;
    Ok(RumaResponse(response))
}

//! Media endpoints: uploads, authenticated downloads and thumbnails, legacy downloads, URL
//! previews and the media configuration.

use axum::Router;

use crate::AppState;

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
}

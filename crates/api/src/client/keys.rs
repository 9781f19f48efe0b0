//! End-to-end encryption endpoints: keys, cross-signing, to-device messages, key backup and
//! dehydrated devices.

use axum::Router;

use crate::AppState;

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    router
}

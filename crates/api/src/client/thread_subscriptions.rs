//! Thread subscriptions (MSC4306) on their unstable paths, and the changes to them page by
//! page (MSC4308's companion to the sliding sync extension).

use axum::{Router, extract::State};
use rhizome_core::Error;
use ruma::{
    UInt,
    api::client::threads::{
        get_thread_subscription, get_thread_subscriptions_changes, subscribe_thread,
        unsubscribe_thread,
    },
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<subscribe_thread::unstable::Request, _, _>(router, subscribe);
    let router = add::<unsubscribe_thread::unstable::Request, _, _>(router, unsubscribe);
    let router = add::<get_thread_subscription::unstable::Request, _, _>(router, subscription);
    add::<get_thread_subscriptions_changes::unstable::Request, _, _>(router, changes)
}

async fn subscribe(
    State(services): State<AppState>,
    request: Ruma<subscribe_thread::unstable::Request>,
) -> ApiResult<subscribe_thread::unstable::Response> {
    let body = &request.body;
    services
        .subscribe_thread(
            request.requester()?,
            &body.room_id,
            &body.thread_root,
            body.automatic.as_deref(),
        )
        .await?;
    Ok(RumaResponse(subscribe_thread::unstable::Response::new()))
}

async fn unsubscribe(
    State(services): State<AppState>,
    request: Ruma<unsubscribe_thread::unstable::Request>,
) -> ApiResult<unsubscribe_thread::unstable::Response> {
    let body = &request.body;
    services.unsubscribe_thread(request.requester()?, &body.room_id, &body.thread_root).await?;
    Ok(RumaResponse(unsubscribe_thread::unstable::Response::new()))
}

async fn subscription(
    State(services): State<AppState>,
    request: Ruma<get_thread_subscription::unstable::Request>,
) -> ApiResult<get_thread_subscription::unstable::Response> {
    let body = &request.body;
    let automatic = services
        .thread_subscription(request.requester()?, &body.room_id, &body.thread_root)
        .await?;
    Ok(RumaResponse(get_thread_subscription::unstable::Response::new(automatic)))
}

fn position(token: Option<&str>) -> Result<Option<i64>, Error> {
    token
        .map(|token| token.parse().map_err(|_| Error::invalid_param("Invalid pagination token")))
        .transpose()
}

async fn changes(
    State(services): State<AppState>,
    request: Ruma<get_thread_subscriptions_changes::unstable::Request>,
) -> ApiResult<get_thread_subscriptions_changes::unstable::Response> {
    use get_thread_subscriptions_changes::unstable::{ThreadSubscription, ThreadUnsubscription};
    let body = &request.body;
    let limit = body.limit.map_or(100, |limit| usize::try_from(u64::from(limit)).unwrap_or(100));
    let page = services
        .thread_subscription_changes(
            &request.requester()?.user_id,
            position(body.from.as_deref())?,
            position(body.to.as_deref())?,
            limit,
        )
        .await?;
    let mut response = get_thread_subscriptions_changes::unstable::Response::new();
    for change in page.changes {
        let bump_stamp = UInt::new_saturating(change.stream_pos.unsigned_abs());
        if change.subscribed {
            response.subscribed.entry(change.room_id).or_default().insert(
                change.thread_root_id,
                ThreadSubscription::new(change.automatic, bump_stamp),
            );
        } else {
            response
                .unsubscribed
                .entry(change.room_id)
                .or_default()
                .insert(change.thread_root_id, ThreadUnsubscription::new(bump_stamp));
        }
    }
    response.end = page.more_from.map(|pos| pos.to_string());
    Ok(RumaResponse(response))
}

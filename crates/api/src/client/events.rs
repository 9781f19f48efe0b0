//! Room events: sending (transaction-idempotent), state, redaction, single events, `/context`,
//! `/messages`, relations, threads and `/timestamp_to_event`.

use axum::{
    Router,
    extract::{RawQuery, State},
    response::{IntoResponse, Response},
};
use rhizome_core::{Error, clock::millis_from_ts};
use rhizome_service::{
    Requester,
    rooms::{NewEvent, relations::RelationsQuery},
};
use rhizome_storage::{Direction, TxnRecord};
use ruma::{
    api::{
        Direction as RumaDirection,
        client::{
            context::get_context,
            delayed_events::{delayed_message_event, delayed_state_event},
            message::{get_message_events, send_message_event},
            redact::redact_event,
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            room::{aliases, get_event_by_timestamp, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
            threads::get_threads,
        },
    },
    events::TimelineEventType,
    serde::Raw,
};

use crate::{
    ApiResult, AppState, Ruma, RumaResponse,
    client::delayed_events::requested_delay,
    error::ApiError,
    routes::{add, add_paths},
};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<send_message_event::v3::Request, _, _>(router, send_message);
    let router = add::<send_state_event::v3::Request, _, _>(router, send_state);
    let router =
        add_paths::<send_state_event::v3::Request, _, _>(router, EMPTY_STATE_KEY_PATHS, send_state);
    let router = add::<get_state_events::v3::Request, _, _>(router, state);
    let router = add::<get_state_event_for_key::v3::Request, _, _>(router, state_event);
    let router = add_paths::<get_state_event_for_key::v3::Request, _, _>(
        router,
        EMPTY_STATE_KEY_PATHS,
        state_event,
    );
    let router = add::<redact_event::v3::Request, _, _>(router, redact);
    let router = add::<get_room_event::v3::Request, _, _>(router, event);
    let router = add::<get_context::v3::Request, _, _>(router, context);
    let router = add::<get_message_events::v3::Request, _, _>(router, messages);
    let router = add::<get_relating_events::v1::Request, _, _>(router, relations);
    let router =
        add::<get_relating_events_with_rel_type::v1::Request, _, _>(router, relations_of_type);
    let router = add::<get_relating_events_with_rel_type_and_event_type::v1::Request, _, _>(
        router,
        relations_of_types,
    );
    let router = add::<get_threads::v1::Request, _, _>(router, threads);
    let router = add::<get_event_by_timestamp::v1::Request, _, _>(router, timestamp_to_event);
    add::<aliases::v3::Request, _, _>(router, room_aliases)
}

/// State paths with an empty state key, which ruma's templates cannot express.
const EMPTY_STATE_KEY_PATHS: &[&str] = &[
    "/_matrix/client/v3/rooms/{room_id}/state/{event_type}",
    "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/",
    "/_matrix/client/r0/rooms/{room_id}/state/{event_type}",
    "/_matrix/client/r0/rooms/{room_id}/state/{event_type}/",
];

fn direction(dir: RumaDirection) -> Direction {
    match dir {
        RumaDirection::Backward => Direction::Backward,
        RumaDirection::Forward => Direction::Forward,
    }
}

pub(crate) fn content_of<T>(raw: &Raw<T>) -> Result<Box<serde_json::value::RawValue>, Error> {
    let value: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw.json().get())
        .map_err(|_| Error::bad_json("Event content must be a JSON object"))?;
    serde_json::value::to_raw_value(&value).map_err(Error::internal)
}

/// What the sending endpoints refuse outright, sent now or later: redactions, which have their
/// own endpoint, and another user's membership, which the membership endpoints change.
pub(crate) fn check_client_event(requester: &Requester, event: &NewEvent) -> Result<(), Error> {
    match &event.state_key {
        None if matches!(event.kind, TimelineEventType::RoomRedaction) => {
            Err(Error::bad_json("Redactions are sent through the redact endpoint"))
        }
        Some(state_key) if matches!(event.kind, TimelineEventType::RoomMember) => {
            // Profile updates and the like are allowed here, as the spec allows.
            let target = ruma::UserId::parse(state_key)
                .map_err(|_| Error::bad_json("Member state keys are user IDs"))?;
            if target != requester.user_id {
                return Err(Error::forbidden(
                    "Use the membership endpoints to change another user's membership",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

async fn send_message(
    State(services): State<AppState>,
    RawQuery(query): RawQuery,
    request: Ruma<send_message_event::v3::Request>,
) -> Result<Response, ApiError> {
    let requester = request.requester()?;
    let body = &request.body;
    services.rate_limiter.check_sending(requester.user_id.as_str(), &request.client_key)?;
    let kind = TimelineEventType::from(body.event_type.to_string());
    let event = NewEvent { kind, content: content_of(&body.body)?, state_key: None, redacts: None };
    check_client_event(requester, &event)?;
    if let Some(delay_ms) = requested_delay(query.as_deref())? {
        let txn = Some(body.txn_id.as_str());
        let delay_id =
            services.schedule_delayed_event(requester, &body.room_id, event, delay_ms, txn).await?;
        let response = delayed_message_event::unstable::Response::new(delay_id);
        return Ok(RumaResponse(response).into_response());
    }
    let txn = TxnRecord {
        user_id: requester.user_id.clone(),
        device_id: requester.device_id.clone(),
        txn_id: body.txn_id.to_string(),
    };
    let event_id = services.send_event(&requester.user_id, &body.room_id, event, Some(txn)).await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(event_id)).into_response())
}

async fn send_state(
    State(services): State<AppState>,
    RawQuery(query): RawQuery,
    request: Ruma<send_state_event::v3::Request>,
) -> Result<Response, ApiError> {
    let requester = request.requester()?;
    let body = &request.body;
    services.rate_limiter.check_sending(requester.user_id.as_str(), &request.client_key)?;
    let event = NewEvent {
        kind: TimelineEventType::from(body.event_type.to_string()),
        content: content_of(&body.body)?,
        state_key: Some(body.state_key.clone()),
        redacts: None,
    };
    check_client_event(requester, &event)?;
    if let Some(delay_ms) = requested_delay(query.as_deref())? {
        let delay_id = services
            .schedule_delayed_event(requester, &body.room_id, event, delay_ms, None)
            .await?;
        let response = delayed_state_event::unstable::Response::new(delay_id);
        return Ok(RumaResponse(response).into_response());
    }
    let event_id = services.send_state_event(&requester.user_id, &body.room_id, event).await?;
    Ok(RumaResponse(send_state_event::v3::Response::new(event_id)).into_response())
}

async fn state(
    State(services): State<AppState>,
    request: Ruma<get_state_events::v3::Request>,
) -> ApiResult<get_state_events::v3::Response> {
    let events =
        services.room_state_for_client(request.requester()?, &request.body.room_id).await?;
    Ok(RumaResponse(get_state_events::v3::Response::new(
        events.into_iter().map(Raw::from_json).collect(),
    )))
}

async fn state_event(
    State(services): State<AppState>,
    request: Ruma<get_state_event_for_key::v3::Request>,
) -> ApiResult<get_state_event_for_key::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    let event = services
        .room_state_event_for_client(requester, &body.room_id, &body.event_type, &body.state_key)
        .await?;
    if event.record.redacted_by.is_some() && event.pdu.content.get() == "{}" {
        return Err(Error::not_found("No such state").into());
    }
    let payload = match body.format {
        get_state_event_for_key::v3::StateEventFormat::Event => {
            let format = rhizome_service::rooms::format::Format {
                viewer: Some(requester),
                with_room_id: true,
                bundle_relations: false,
            };
            services.format_event(&event, format).await?
        }
        _ => event.pdu.content.clone(),
    };
    Ok(RumaResponse(get_state_event_for_key::v3::Response::new(payload)))
}

async fn redact(
    State(services): State<AppState>,
    request: Ruma<redact_event::v3::Request>,
) -> ApiResult<redact_event::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    services.rate_limiter.check_sending(requester.user_id.as_str(), &request.client_key)?;
    let txn = TxnRecord {
        user_id: requester.user_id.clone(),
        device_id: requester.device_id.clone(),
        txn_id: body.txn_id.to_string(),
    };
    let event_id = services
        .redact(requester, &body.room_id, &body.event_id, body.reason.as_deref(), txn)
        .await?;
    Ok(RumaResponse(redact_event::v3::Response::new(event_id)))
}

async fn event(
    State(services): State<AppState>,
    request: Ruma<get_room_event::v3::Request>,
) -> ApiResult<get_room_event::v3::Response> {
    let event = services
        .event_for_client(request.requester()?, &request.body.room_id, &request.body.event_id)
        .await?;
    Ok(RumaResponse(get_room_event::v3::Response::new(Raw::from_json(event))))
}

async fn context(
    State(services): State<AppState>,
    request: Ruma<get_context::v3::Request>,
) -> ApiResult<get_context::v3::Response> {
    let body = &request.body;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(10);
    let page = services
        .context(request.requester()?, &body.room_id, &body.event_id, limit, &body.filter)
        .await?;
    let mut response = get_context::v3::Response::new();
    response.start = Some(page.start);
    response.end = Some(page.end);
    response.event = Some(Raw::from_json(page.event));
    response.events_before = page.events_before.into_iter().map(Raw::from_json).collect();
    response.events_after = page.events_after.into_iter().map(Raw::from_json).collect();
    response.state = page.state.into_iter().map(Raw::from_json).collect();
    Ok(RumaResponse(response))
}

async fn messages(
    State(services): State<AppState>,
    request: Ruma<get_message_events::v3::Request>,
) -> ApiResult<get_message_events::v3::Response> {
    let body = &request.body;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(10);
    let page = services
        .messages(
            request.requester()?,
            &body.room_id,
            body.from.as_deref(),
            body.to.as_deref(),
            direction(body.dir),
            limit,
            &body.filter,
        )
        .await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = page.start;
    response.end = page.end;
    response.chunk = page.chunk.into_iter().map(Raw::from_json).collect();
    response.state = page.state.into_iter().map(Raw::from_json).collect();
    Ok(RumaResponse(response))
}

fn limit_of(limit: Option<ruma::UInt>) -> usize {
    limit.map(|limit| usize::try_from(u64::from(limit)).unwrap_or(100)).unwrap_or(50)
}

async fn relations(
    State(services): State<AppState>,
    request: Ruma<get_relating_events::v1::Request>,
) -> ApiResult<get_relating_events::v1::Response> {
    let body = &request.body;
    let rel_type = None::<String>;
    let event_type = None::<String>;
    let query = RelationsQuery {
        rel_type: rel_type.as_deref(),
        event_type: event_type.as_deref(),
        from: body.from.as_deref(),
        to: body.to.as_deref(),
        direction: direction(body.dir),
        limit: limit_of(body.limit),
    };
    let page =
        services.relations(request.requester()?, &body.room_id, &body.event_id, query).await?;
    let mut response = get_relating_events::v1::Response::new(
        page.chunk.into_iter().map(Raw::from_json).collect(),
    );
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

async fn relations_of_type(
    State(services): State<AppState>,
    request: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type::v1::Response> {
    let body = &request.body;
    let rel_type = Some(body.rel_type.to_string());
    let event_type = None::<String>;
    let query = RelationsQuery {
        rel_type: rel_type.as_deref(),
        event_type: event_type.as_deref(),
        from: body.from.as_deref(),
        to: body.to.as_deref(),
        direction: direction(body.dir),
        limit: limit_of(body.limit),
    };
    let page =
        services.relations(request.requester()?, &body.room_id, &body.event_id, query).await?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(
        page.chunk.into_iter().map(Raw::from_json).collect(),
    );
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

async fn relations_of_types(
    State(services): State<AppState>,
    request: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> ApiResult<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let body = &request.body;
    let rel_type = Some(body.rel_type.to_string());
    let event_type = Some(body.event_type.to_string());
    let query = RelationsQuery {
        rel_type: rel_type.as_deref(),
        event_type: event_type.as_deref(),
        from: body.from.as_deref(),
        to: body.to.as_deref(),
        direction: direction(body.dir),
        limit: limit_of(body.limit),
    };
    let page =
        services.relations(request.requester()?, &body.room_id, &body.event_id, query).await?;
    let mut response = get_relating_events_with_rel_type_and_event_type::v1::Response::new(
        page.chunk.into_iter().map(Raw::from_json).collect(),
    );
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

async fn threads(
    State(services): State<AppState>,
    request: Ruma<get_threads::v1::Request>,
) -> ApiResult<get_threads::v1::Response> {
    let body = &request.body;
    let only_participated = body.include == get_threads::v1::IncludeThreads::Participated;
    let page = services
        .threads(
            request.requester()?,
            &body.room_id,
            only_participated,
            body.from.as_deref(),
            limit_of(body.limit),
        )
        .await?;
    let mut response =
        get_threads::v1::Response::new(page.chunk.into_iter().map(Raw::from_json).collect());
    response.next_batch = page.next_batch;
    Ok(RumaResponse(response))
}

async fn timestamp_to_event(
    State(services): State<AppState>,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<get_event_by_timestamp::v1::Response> {
    let body = &request.body;
    let event = services
        .timestamp_to_event(
            request.requester()?,
            &body.room_id,
            millis_from_ts(body.ts),
            direction(body.dir),
        )
        .await?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(
        event.pdu.event_id.clone(),
        event.pdu.origin_server_ts,
    )))
}

async fn room_aliases(
    State(services): State<AppState>,
    request: Ruma<aliases::v3::Request>,
) -> ApiResult<aliases::v3::Response> {
    let aliases = services.room_aliases(request.requester()?, &request.body.room_id).await?;
    Ok(RumaResponse(aliases::v3::Response::new(aliases)))
}

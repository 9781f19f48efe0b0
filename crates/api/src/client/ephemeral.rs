//! Typing notifications, receipts, read markers and presence.

use std::time::Duration;

use axum::{Router, extract::State};
use rhizome_core::{Error, clock::now_millis};
use ruma::{
    api::client::{
        presence::{get_presence, set_presence},
        read_marker::set_read_marker,
        receipt::create_receipt,
        typing::create_typing_event,
    },
    api::{IncomingRequest, Metadata, error::DeserializationError},
    events::receipt::ReceiptThread,
    presence::PresenceState,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, client::account_data::own, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<TypingRequest, _, _>(router, typing);
    let router = add::<create_receipt::v3::Request, _, _>(router, receipt);
    let router = add::<set_read_marker::v3::Request, _, _>(router, read_markers);
    let router = add::<get_presence::v3::Request, _, _>(router, presence);
    add::<set_presence::v3::Request, _, _>(router, set_presence)
}

/// How long typing lasts when the client does not say.
const DEFAULT_TYPING_TIMEOUT_MS: u64 = 30_000;

/// `PUT /typing/{userId}` as ruma defines it, except that `timeout` may be left out when
/// typing starts (the spec marks it optional; ruma requires it): it is then 30 seconds.
struct TypingRequest(create_typing_event::v3::Request);

impl Metadata for TypingRequest {
    const METHOD: http::Method = <create_typing_event::v3::Request as Metadata>::METHOD;
    const RATE_LIMITED: bool = <create_typing_event::v3::Request as Metadata>::RATE_LIMITED;
    type Authentication = <create_typing_event::v3::Request as Metadata>::Authentication;
    type PathBuilder = <create_typing_event::v3::Request as Metadata>::PathBuilder;
    const PATH_BUILDER: Self::PathBuilder =
        <create_typing_event::v3::Request as Metadata>::PATH_BUILDER;
}

impl IncomingRequest for TypingRequest {
    type EndpointError = <create_typing_event::v3::Request as IncomingRequest>::EndpointError;
    type OutgoingResponse = create_typing_event::v3::Response;

    fn try_from_http_request_inner(
        request: http::Request<&[u8]>,
        path_args: &[&str],
    ) -> Result<Self, DeserializationError> {
        let mut body: serde_json::Value = serde_json::from_slice(request.body())?;
        if body.get("typing") == Some(&serde_json::Value::Bool(true))
            && body.get("timeout").is_none_or(serde_json::Value::is_null)
        {
            body["timeout"] = DEFAULT_TYPING_TIMEOUT_MS.into();
        }
        let bytes = serde_json::to_vec(&body)?;
        let request = request.map(|_| bytes.as_slice());
        create_typing_event::v3::Request::try_from_http_request_inner(request, path_args).map(Self)
    }
}

async fn typing(
    State(services): State<AppState>,
    request: Ruma<TypingRequest>,
) -> ApiResult<create_typing_event::v3::Response> {
    let requester = own(&request, &request.body.0.user_id)?;
    let (typing, timeout) = match &request.body.0.state {
        create_typing_event::v3::Typing::Yes(info) => (true, info.timeout),
        _ => (false, Duration::ZERO),
    };
    services.set_typing(requester, &request.body.0.room_id, typing, timeout).await?;
    Ok(RumaResponse(create_typing_event::v3::Response::new()))
}

async fn receipt(
    State(services): State<AppState>,
    request: Ruma<create_receipt::v3::Request>,
) -> ApiResult<create_receipt::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    let thread = match &body.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(event_id) => Some(event_id.to_string()),
        _ => return Err(Error::invalid_param("Unsupported thread ID").into()),
    };
    services
        .set_receipt(
            requester,
            &body.room_id,
            body.receipt_type.as_str(),
            &body.event_id,
            thread.as_deref(),
        )
        .await?;
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

async fn read_markers(
    State(services): State<AppState>,
    request: Ruma<set_read_marker::v3::Request>,
) -> ApiResult<set_read_marker::v3::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    if let Some(event_id) = &body.fully_read {
        services.set_receipt(requester, &body.room_id, "m.fully_read", event_id, None).await?;
    }
    if let Some(event_id) = &body.read_receipt {
        services.set_receipt(requester, &body.room_id, "m.read", event_id, None).await?;
    }
    if let Some(event_id) = &body.private_read_receipt {
        services.set_receipt(requester, &body.room_id, "m.read.private", event_id, None).await?;
    }
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}

async fn presence(
    State(services): State<AppState>,
    request: Ruma<get_presence::v3::Request>,
) -> ApiResult<get_presence::v3::Response> {
    let requester = request.requester()?;
    // Users of this server must exist; those of others are known through shared rooms.
    if request.body.user_id.server_name() == services.server_name() {
        services.profile(&request.body.user_id).await?;
    }
    if !services.may_see_presence(&requester.user_id, &request.body.user_id).await? {
        return Err(Error::forbidden("You do not share a room with this user").into());
    }
    let entry = services.presence(&request.body.user_id);
    let state = entry
        .as_ref()
        .map(|entry| PresenceState::from(entry.state.as_str()))
        .unwrap_or(PresenceState::Offline);
    let mut response = get_presence::v3::Response::new(state);
    if let Some(entry) = entry {
        response.status_msg = entry.status_msg;
        response.currently_active = Some(entry.state == "online");
        response.last_active_ago = Some(Duration::from_millis(
            u64::try_from(now_millis() - entry.last_active_ts).unwrap_or(0),
        ));
    }
    Ok(RumaResponse(response))
}

async fn set_presence(
    State(services): State<AppState>,
    request: Ruma<set_presence::v3::Request>,
) -> ApiResult<set_presence::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    services
        .set_presence(
            &requester.user_id,
            request.body.presence.as_str(),
            Some(request.body.status_msg.clone()),
        )
        .await?;
    Ok(RumaResponse(set_presence::v3::Response::new()))
}

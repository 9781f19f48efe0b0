//! This server's media for other servers: `GET /media/download/{mediaId}` and
//! `/media/thumbnail/{mediaId}`
//! ([spec](https://spec.matrix.org/v1.19/server-server-api/#content-repository), v1.11), as
//! `multipart/mixed` with empty metadata and the bytes, streamed. Only media of this server is
//! served (never copies of others'), and never as a redirect.

use axum::{
    Router,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http::{HeaderValue, header};
use rhizome_service::{
    federation::media::multipart,
    media::{MediaAccess, MediaBody, MediaDownload},
};
use ruma::{
    api::federation::authenticated_media::{get_content, get_content_thumbnail},
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{
    AppState, Ruma,
    client::media::{is_inline_safe, thumbnail_request},
    error::ApiError,
    routes::add,
};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_content::v1::Request, _, _>(router, download);
    add::<get_content_thumbnail::v1::Request, _, _>(router, thumbnail)
}

/// The `multipart/mixed` answer carrying a download.
fn multipart_response(download: MediaDownload) -> Response {
    let content_type = download
        .content_type
        .filter(|value| HeaderValue::from_str(value).is_ok())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let disposition_type = if is_inline_safe(&content_type) {
        ContentDispositionType::Inline
    } else {
        ContentDispositionType::Attachment
    };
    let disposition =
        ContentDisposition::new(disposition_type.clone()).with_filename(download.filename);
    let disposition = Some(disposition.to_string())
        .filter(|value| HeaderValue::from_str(value).is_ok())
        .unwrap_or_else(|| ContentDisposition::new(disposition_type).to_string());
    let framing = multipart::frame(&content_type, &disposition);
    let (media, size) = match download.body {
        MediaBody::Bytes(bytes) => {
            let size = bytes.len() as u64;
            (stream::once(async move { Ok(Bytes::from(bytes)) }).boxed(), size)
        }
        MediaBody::Stream { stream, size } => (stream, size),
    };
    let length = framing.head.len() as u64 + size + framing.tail.len() as u64;
    let head = stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(framing.head)) });
    let tail = stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(framing.tail)) });
    let mut response = Body::from_stream(head.chain(media).chain(tail)).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&framing.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

async fn download(
    State(services): State<AppState>,
    request: Ruma<get_content::v1::Request>,
) -> Result<Response, ApiError> {
    request.origin()?;
    let body = request.body;
    let download = services
        .download_media(
            services.server_name(),
            &body.media_id,
            body.timeout_ms,
            MediaAccess::Authenticated,
        )
        .await?;
    Ok(multipart_response(download))
}

async fn thumbnail(
    State(services): State<AppState>,
    request: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response, ApiError> {
    request.origin()?;
    let body = request.body;
    let wanted = thumbnail_request(body.width, body.height, body.method.as_ref(), body.animated);
    let thumbnail = services
        .media_thumbnail(
            services.server_name(),
            &body.media_id,
            wanted,
            body.timeout_ms,
            MediaAccess::Authenticated,
        )
        .await?;
    Ok(multipart_response(thumbnail))
}

//! Media endpoints: uploads, authenticated downloads and thumbnails, legacy downloads, URL
//! previews and the media configuration.
//!
//! Media responses are built here rather than by ruma, to carry the headers that make serving
//! user content safe: `Content-Disposition: attachment` for anything a browser would run or
//! render as active content (only a list of passive types is shown inline),
//! `Content-Security-Policy: sandbox`, `X-Content-Type-Options: nosniff` and
//! `Cross-Origin-Resource-Policy: cross-origin`.

#![allow(deprecated)] // The legacy `/_matrix/media/v3/` endpoints are deprecated since v1.11.

use axum::{
    Router,
    body::Body,
    extract::State,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header};
use rhizome_core::{Error, clock::ts_from_millis, config::ThumbnailMethod};
use rhizome_service::media::{MediaAccess, MediaBody, MediaDownload, ThumbnailRequest};
use ruma::{
    UInt,
    api::client::{
        authenticated_media::{
            get_content, get_content_as_filename, get_content_thumbnail, get_media_config,
            get_media_preview,
        },
        media::{
            self, create_content, create_content_async, create_mxc_uri,
            get_content as legacy_content, get_content_as_filename as legacy_content_as_filename,
            get_content_thumbnail as legacy_thumbnail,
        },
    },
    http_headers::{ContentDisposition, ContentDispositionType},
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, error::ApiError, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<create_content::v3::Request, _, _>(router, upload);
    let router = add::<create_mxc_uri::v1::Request, _, _>(router, create);
    let router = add::<create_content_async::v3::Request, _, _>(router, upload_async);
    let router = add::<get_media_config::v1::Request, _, _>(router, config);
    let router = add::<media::get_media_config::v3::Request, _, _>(router, legacy_config);
    let router = add::<get_content::v1::Request, _, _>(router, download);
    let router = add::<get_content_as_filename::v1::Request, _, _>(router, download_as);
    let router = add::<get_content_thumbnail::v1::Request, _, _>(router, thumbnail);
    let router = add::<legacy_content::v3::Request, _, _>(router, legacy_download);
    let router = add::<legacy_content_as_filename::v3::Request, _, _>(router, legacy_download_as);
    let router = add::<legacy_thumbnail::v3::Request, _, _>(router, legacy_thumbnail_handler);
    let router = add::<get_media_preview::v1::Request, _, _>(router, preview);
    add::<media::get_media_preview::v3::Request, _, _>(router, legacy_preview)
}

/// The `Content-Security-Policy` of every media response: no scripts, no plugins, a sandbox.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; \
     plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; \
     object-src 'self';";

/// Types a browser shows without running anything: served inline. Everything else (HTML,
/// SVG, XML, JavaScript, PDF, unknown types, …) is served as an attachment.
const INLINE_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Whether content of this `Content-Type` may be shown inline.
pub(crate) fn is_inline_safe(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// The response for a download or thumbnail.
fn media_response(download: MediaDownload, filename: Option<String>) -> Response {
    let content_type = download
        .content_type
        .and_then(|value| HeaderValue::from_str(&value).ok())
        .unwrap_or_else(|| HeaderValue::from_static("application/octet-stream"));
    let inline = content_type.to_str().is_ok_and(is_inline_safe);
    let disposition_type =
        if inline { ContentDispositionType::Inline } else { ContentDispositionType::Attachment };
    let disposition = ContentDisposition::new(disposition_type.clone())
        .with_filename(filename.or(download.filename));
    let disposition = HeaderValue::from_str(&disposition.to_string())
        .or_else(|_| HeaderValue::from_str(&ContentDisposition::new(disposition_type).to_string()))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    let (body, length) = match download.body {
        MediaBody::Bytes(bytes) => {
            let length = bytes.len() as u64;
            (Body::from(bytes), length)
        }
        MediaBody::Stream { stream, size } => (Body::from_stream(stream), size),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert("cross-origin-resource-policy", HeaderValue::from_static("cross-origin"));
    response
}

pub(crate) fn thumbnail_request(
    width: UInt,
    height: UInt,
    method: Option<&ruma::media::Method>,
    animated: Option<bool>,
) -> ThumbnailRequest {
    let dimension = |value: UInt| u32::try_from(u64::from(value)).unwrap_or(u32::MAX);
    let method = match method {
        Some(ruma::media::Method::Crop) => ThumbnailMethod::Crop,
        _ => ThumbnailMethod::Scale,
    };
    ThumbnailRequest {
        width: dimension(width),
        height: dimension(height),
        method,
        animated: animated.unwrap_or(false),
    }
}

async fn upload(
    State(services): State<AppState>,
    request: Ruma<create_content::v3::Request>,
) -> ApiResult<create_content::v3::Response> {
    let requester = request.requester()?.clone();
    let body = request.body;
    let uri = services
        .upload_media(&requester, body.content_type.as_deref(), body.filename.as_deref(), body.file)
        .await?;
    Ok(RumaResponse(create_content::v3::Response::new(uri)))
}

async fn create(
    State(services): State<AppState>,
    request: Ruma<create_mxc_uri::v1::Request>,
) -> ApiResult<create_mxc_uri::v1::Response> {
    let (uri, expires_ts) = services.create_media_id(request.requester()?).await?;
    let mut response = create_mxc_uri::v1::Response::new(uri);
    response.unused_expires_at = Some(ts_from_millis(expires_ts));
    Ok(RumaResponse(response))
}

async fn upload_async(
    State(services): State<AppState>,
    request: Ruma<create_content_async::v3::Request>,
) -> Result<Response, ApiError> {
    let requester = request.requester()?.clone();
    let body = request.body;
    services
        .upload_pending_media(
            &requester,
            &body.server_name,
            &body.media_id,
            body.content_type.as_deref(),
            body.filename.as_deref(),
            body.file,
        )
        .await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
}

fn upload_size(services: &AppState) -> UInt {
    UInt::try_from(services.media_upload_limit()).unwrap_or(UInt::MAX)
}

async fn config(
    State(services): State<AppState>,
    request: Ruma<get_media_config::v1::Request>,
) -> ApiResult<get_media_config::v1::Response> {
    request.requester()?;
    Ok(RumaResponse(get_media_config::v1::Response::new(upload_size(&services))))
}

async fn legacy_config(
    State(services): State<AppState>,
    request: Ruma<media::get_media_config::v3::Request>,
) -> ApiResult<media::get_media_config::v3::Response> {
    request.requester()?;
    Ok(RumaResponse(media::get_media_config::v3::Response::new(upload_size(&services))))
}

async fn download(
    State(services): State<AppState>,
    request: Ruma<get_content::v1::Request>,
) -> Result<Response, ApiError> {
    request.requester()?;
    let body = request.body;
    let download = services
        .download_media(
            &body.server_name,
            &body.media_id,
            body.timeout_ms,
            MediaAccess::Authenticated,
        )
        .await?;
    Ok(media_response(download, None))
}

async fn download_as(
    State(services): State<AppState>,
    request: Ruma<get_content_as_filename::v1::Request>,
) -> Result<Response, ApiError> {
    request.requester()?;
    let body = request.body;
    let download = services
        .download_media(
            &body.server_name,
            &body.media_id,
            body.timeout_ms,
            MediaAccess::Authenticated,
        )
        .await?;
    Ok(media_response(download, Some(body.filename)))
}

async fn thumbnail(
    State(services): State<AppState>,
    request: Ruma<get_content_thumbnail::v1::Request>,
) -> Result<Response, ApiError> {
    request.requester()?;
    let body = request.body;
    let wanted = thumbnail_request(body.width, body.height, body.method.as_ref(), body.animated);
    let thumbnail = services
        .media_thumbnail(
            &body.server_name,
            &body.media_id,
            wanted,
            body.timeout_ms,
            MediaAccess::Authenticated,
        )
        .await?;
    Ok(media_response(thumbnail, None))
}

async fn legacy_download(
    State(services): State<AppState>,
    request: Ruma<legacy_content::v3::Request>,
) -> Result<Response, ApiError> {
    let body = request.body;
    let download = services
        .download_media(&body.server_name, &body.media_id, body.timeout_ms, MediaAccess::Legacy)
        .await?;
    Ok(media_response(download, None))
}

async fn legacy_download_as(
    State(services): State<AppState>,
    request: Ruma<legacy_content_as_filename::v3::Request>,
) -> Result<Response, ApiError> {
    let body = request.body;
    let download = services
        .download_media(&body.server_name, &body.media_id, body.timeout_ms, MediaAccess::Legacy)
        .await?;
    Ok(media_response(download, Some(body.filename)))
}

async fn legacy_thumbnail_handler(
    State(services): State<AppState>,
    request: Ruma<legacy_thumbnail::v3::Request>,
) -> Result<Response, ApiError> {
    let body = request.body;
    let wanted = thumbnail_request(body.width, body.height, body.method.as_ref(), body.animated);
    let thumbnail = services
        .media_thumbnail(
            &body.server_name,
            &body.media_id,
            wanted,
            body.timeout_ms,
            MediaAccess::Legacy,
        )
        .await?;
    Ok(media_response(thumbnail, None))
}

async fn preview(
    State(services): State<AppState>,
    request: Ruma<get_media_preview::v1::Request>,
) -> ApiResult<get_media_preview::v1::Response> {
    let value = services.preview_url(request.requester()?, &request.body.url).await?;
    let response = get_media_preview::v1::Response::from_serialize(&value).map_err(Error::from)?;
    Ok(RumaResponse(response))
}

async fn legacy_preview(
    State(services): State<AppState>,
    request: Ruma<media::get_media_preview::v3::Request>,
) -> ApiResult<media::get_media_preview::v3::Response> {
    let value = services.preview_url(request.requester()?, &request.body.url).await?;
    let response =
        media::get_media_preview::v3::Response::from_serialize(&value).map_err(Error::from)?;
    Ok(RumaResponse(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passive_types_are_inline() {
        for inline in ["image/png", "IMAGE/JPEG", "text/plain; charset=utf-8", "video/mp4"] {
            assert!(is_inline_safe(inline), "{inline}");
        }
        for active in [
            "text/html",
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/javascript",
            "text/javascript",
            "application/xhtml+xml",
            "text/xml",
            "application/pdf",
            "application/octet-stream",
            "",
        ] {
            assert!(!is_inline_safe(active), "{active}");
        }
    }

    #[test]
    fn media_responses_carry_the_safety_headers() {
        let download = MediaDownload {
            content_type: Some("text/html".into()),
            filename: Some("page.html".into()),
            body: MediaBody::Bytes(b"<script>alert(1)</script>".to_vec()),
        };
        let response = media_response(download, None);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("content-type"), Some("text/html"));
        assert_eq!(header("content-disposition"), Some("attachment; filename=page.html"));
        assert!(header("content-security-policy").is_some_and(|csp| csp.starts_with("sandbox")));
        assert_eq!(header("x-content-type-options"), Some("nosniff"));
        assert_eq!(header("cross-origin-resource-policy"), Some("cross-origin"));
        assert_eq!(header("content-length"), Some("25"));

        let image = MediaDownload {
            content_type: Some("image/png".into()),
            filename: None,
            body: MediaBody::Bytes(vec![1, 2, 3]),
        };
        let response = media_response(image, Some("cat.png".into()));
        let disposition = response.headers().get("content-disposition").unwrap();
        assert_eq!(disposition, "inline; filename=cat.png");
    }
}

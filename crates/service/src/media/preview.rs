//! URL previews (`/_matrix/client/v1/media/preview_url`): off unless configured, fetched only
//! from public addresses (see [`fetch`](super::fetch)), bounded in size and time, and cached
//! by the hash of the URL (the URL itself is neither stored nor logged).
//!
//! A page's OpenGraph `<meta>` tags and `<title>` are read with a small scanner (no HTML
//! parser); its `og:image` is fetched under the same rules and stored as media of this server,
//! so clients load it from here rather than from the site.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use reqwest::Url;
use rhizome_core::{Error, Result, clock::now_millis};
use serde_json::{Map, Value};
use tokio::time::Instant;

use super::{fetch, files::sha256_hex, imaging};
use crate::{Requester, Services};

/// The longest URL previewed.
const MAX_URL_LENGTH: usize = 2048;
/// The most `og:` properties kept from one page.
const MAX_PROPERTIES: usize = 64;
/// The longest property value kept, in characters.
const MAX_VALUE_CHARS: usize = 1000;

impl Services {
    /// A preview of a URL, as the OpenGraph object clients expect.
    pub async fn preview_url(self: &Arc<Self>, requester: &Requester, url: &str) -> Result<Value> {
        let config = &self.config.media.url_preview;
        if !config.enabled {
            return Err(Error::forbidden("URL previews are disabled on this server"));
        }
        if url.len() > MAX_URL_LENGTH {
            return Err(Error::invalid_param("The URL is too long to preview"));
        }
        let parsed = Url::parse(url).map_err(|_| Error::invalid_param("Invalid URL"))?;
        let url_hash = sha256_hex(url.as_bytes());
        let now = now_millis();
        let max_age = i64::try_from(config.cache_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Some(json) =
            self.store.get_url_preview(&url_hash, now.saturating_sub(max_age)).await?
        {
            return Ok(serde_json::from_str(&json)?);
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let deadline = Instant::now() + timeout;
        let preview =
            tokio::time::timeout(timeout, self.fetch_preview(requester, parsed, deadline))
                .await
                .map_err(|_| Error::not_found("No preview could be fetched for that URL"))??;
        let value = Value::Object(preview);
        self.store.set_url_preview(&url_hash, &value.to_string(), now).await?;
        Ok(value)
    }

    async fn fetch_preview(
        self: &Arc<Self>,
        requester: &Requester,
        url: Url,
        deadline: Instant,
    ) -> Result<Map<String, Value>> {
        let max_bytes = self.config.media.url_preview.max_page_bytes;
        let allowed = &self.config.media.url_preview.allowed_addresses;
        let page =
            fetch::fetch_public(&self.outbound_tls, url, max_bytes, deadline, allowed).await?;
        let mut preview = Map::new();
        match page.content_type.as_deref() {
            Some(kind) if kind.starts_with("image/") => {
                self.add_preview_image(requester, &mut preview, page.body, kind).await;
            }
            Some("text/html" | "application/xhtml+xml") | None => {
                let html = String::from_utf8_lossy(&page.body);
                let properties = extract_properties(&html);
                for (key, value) in &properties {
                    if key != "og:image" {
                        preview.insert(key.clone(), Value::String(value.clone()));
                    }
                }
                let image = properties.get("og:image").and_then(|image| page.url.join(image).ok());
                if let Some(image) = image
                    && let Ok(fetched) =
                        fetch::fetch_public(&self.outbound_tls, image, max_bytes, deadline, allowed)
                            .await
                {
                    let kind = fetched.content_type.unwrap_or_default();
                    self.add_preview_image(requester, &mut preview, fetched.body, &kind).await;
                }
            }
            Some(_) => {}
        }
        Ok(preview)
    }

    /// Stores a fetched image as media and describes it in the preview (nothing is added when
    /// it is not a readable image or cannot be stored).
    async fn add_preview_image(
        self: &Arc<Self>,
        requester: &Requester,
        preview: &mut Map<String, Value>,
        bytes: Vec<u8>,
        content_type: &str,
    ) {
        let limits = imaging::DecodeLimits {
            max_pixels: self.config.media.max_image_pixels,
            max_alloc: self.config.media.max_decode_bytes,
        };
        let Ok((width, height)) = imaging::dimensions(&bytes, limits) else {
            return;
        };
        let size = bytes.len();
        let content_type =
            if content_type.starts_with("image/") { Some(content_type) } else { None };
        let stored =
            self.store_new_media(&requester.user_id, content_type, None, bytes, false).await;
        let Ok(media_id) = stored else {
            return;
        };
        preview.insert("og:image".into(), Value::String(self.mxc_uri(&media_id).to_string()));
        preview.insert("og:image:width".into(), Value::from(width));
        preview.insert("og:image:height".into(), Value::from(height));
        preview.insert("matrix:image:size".into(), Value::from(size));
        if let Some(kind) = content_type {
            preview.insert("og:image:type".into(), Value::String(kind.to_owned()));
        }
    }
}

/// The `og:` properties of a page, with `<title>` and `<meta name="description">` standing in
/// for a missing `og:title` and `og:description`.
pub(crate) fn extract_properties(html: &str) -> BTreeMap<String, String> {
    let mut properties = BTreeMap::new();
    let mut description = None;
    let mut title = None;
    let lower = html.to_ascii_lowercase();
    let mut position = 0;
    while let Some(offset) = lower.get(position..).and_then(|rest| rest.find('<')) {
        let start = position + offset;
        let tag_end = match lower.get(start..).and_then(|rest| rest.find('>')) {
            Some(end) => start + end,
            None => break,
        };
        let tag = html.get(start + 1..tag_end).unwrap_or_default();
        let tag_lower = lower.get(start + 1..tag_end).unwrap_or_default();
        position = tag_end + 1;
        if tag_lower.starts_with("meta")
            && tag_lower[4..].starts_with(|c: char| c.is_ascii_whitespace())
        {
            let attributes = parse_attributes(&tag[4..]);
            let key = attributes.get("property").or_else(|| attributes.get("name"));
            let (Some(key), Some(content)) = (key, attributes.get("content")) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key.starts_with("og:") && properties.len() < MAX_PROPERTIES {
                properties.entry(key).or_insert_with(|| clip(&decode_entities(content)));
            } else if key == "description" && description.is_none() {
                description = Some(clip(&decode_entities(content)));
            }
        } else if title.is_none()
            && tag_lower.starts_with("title")
            && tag_lower[5..].chars().next().is_none_or(|c| c.is_ascii_whitespace())
        {
            let text_end = lower
                .get(position..)
                .and_then(|rest| rest.find("</title"))
                .map(|end| position + end);
            if let Some(text) = text_end.and_then(|end| html.get(position..end)) {
                let text = decode_entities(text.trim());
                if !text.is_empty() {
                    title = Some(clip(&text));
                }
            }
        } else if tag_lower.starts_with("/head") || tag_lower.starts_with("body") {
            break;
        }
    }
    if let Some(title) = title {
        properties.entry("og:title".into()).or_insert(title);
    }
    if let Some(description) = description {
        properties.entry("og:description".into()).or_insert(description);
    }
    properties
}

/// The attributes of a tag (names lowercased), from the text after the tag name.
fn parse_attributes(text: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let mut rest = text.trim_end_matches('/');
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '/');
        let name_end =
            rest.find(|c: char| c.is_ascii_whitespace() || c == '=').unwrap_or(rest.len());
        if name_end == 0 {
            break;
        }
        let name = rest[..name_end].to_ascii_lowercase();
        rest = rest[name_end..].trim_start();
        let Some(after_equals) = rest.strip_prefix('=') else {
            attributes.entry(name).or_insert_with(String::new);
            continue;
        };
        let after_equals = after_equals.trim_start();
        let (value, remainder) = match after_equals.chars().next() {
            Some(quote @ ('"' | '\'')) => {
                let inner = &after_equals[1..];
                match inner.find(quote) {
                    Some(end) => (&inner[..end], &inner[end + 1..]),
                    None => (inner, ""),
                }
            }
            _ => {
                let end = after_equals
                    .find(|c: char| c.is_ascii_whitespace())
                    .unwrap_or(after_equals.len());
                (&after_equals[..end], &after_equals[end..])
            }
        };
        attributes.entry(name).or_insert_with(|| value.to_owned());
        rest = remainder;
    }
    attributes
}

/// Decodes the common named entities and numeric character references.
fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let Some(end) = rest.find(';').filter(|end| *end <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some('\u{a0}'),
            _ => entity
                .strip_prefix("#x")
                .or_else(|| entity.strip_prefix("#X"))
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|digits| digits.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Cuts a value to the longest kept length.
fn clip(text: &str) -> String {
    text.chars().take(MAX_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_tags_and_title_are_read() {
        let html = r#"<!doctype html><html><HEAD>
            <title> Fallback &amp; title </title>
            <META property="og:title" content="The &quot;real&quot; title">
            <meta property='og:description' content='It&#39;s &#x41;&#66;' />
            <meta name="description" content="ignored: og:description wins">
            <meta property=og:site_name content=Example>
            <meta content="https://example.org/a.png" property="og:image">
            <meta name="twitter:card" content="summary">
            </head><body><meta property="og:title" content="after head"></body></html>"#;
        let properties = extract_properties(html);
        assert_eq!(properties.get("og:title").map(String::as_str), Some("The \"real\" title"));
        assert_eq!(properties.get("og:description").map(String::as_str), Some("It's AB"));
        assert_eq!(properties.get("og:site_name").map(String::as_str), Some("Example"));
        assert_eq!(
            properties.get("og:image").map(String::as_str),
            Some("https://example.org/a.png")
        );
        assert!(!properties.contains_key("twitter:card"));
    }

    #[test]
    fn title_and_description_fill_in() {
        let html = "<html><head><title>Just a title</title>\
                    <meta name=\"Description\" content=\"Plain description\"></head></html>";
        let properties = extract_properties(html);
        assert_eq!(properties.get("og:title").map(String::as_str), Some("Just a title"));
        assert_eq!(properties.get("og:description").map(String::as_str), Some("Plain description"));
    }

    #[test]
    fn broken_markup_does_not_panic() {
        for html in [
            "<",
            "<meta",
            "<meta property=\"og:title\" content=\"unterminated",
            "<title>no end",
            "&",
            "<meta property=og:title content=\"&#xFFFFFFFF; &#99999999999; &bogus; &\">",
            "<title>é</title><meta\u{a0}x>",
            "<<>><meta/><meta =x>",
        ] {
            let _ = extract_properties(html);
        }
        let properties = extract_properties("<meta property=og:title content=\"&#xFFFFFFFF;\">");
        assert_eq!(properties.get("og:title").map(String::as_str), Some("&#xFFFFFFFF;"));
        let long = format!("<meta property=og:title content=\"{}\">", "x".repeat(5000));
        assert_eq!(extract_properties(&long).get("og:title").map(|title| title.len()), Some(1000));
    }
}

//! The `multipart/mixed` answer of the federation media endpoints (spec v1.11: exactly two
//! parts, JSON metadata then the media or a `Location`): written around this server's media
//! ([`Framing`]), and read from other servers strictly, without trusting a byte of it: every
//! delimiter, header block and part is checked, and anything else is a [`MultipartError`].

use ruma::http_headers::ContentDisposition;

/// The longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// The most header lines of one part.
const MAX_PART_HEADERS: usize = 32;

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The `Content-Type` is not `multipart/mixed` with a valid boundary.
    #[error("the answer is not multipart/mixed with a boundary")]
    NotMultipart,
    /// The body does not split into exactly two parts with headers.
    #[error("the answer's parts are malformed")]
    Malformed,
    /// The first part is not a JSON object.
    #[error("the answer's metadata is not a JSON object")]
    BadMetadata,
    /// The media part sends elsewhere (`Location`).
    #[error("the answer redirects to another location")]
    Redirect,
}

/// The media part of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPart {
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The file name of its `Content-Disposition`, if any.
    pub filename: Option<String>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// What goes around media bytes in an answer to another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// The answer's `Content-Type` (`multipart/mixed` with the boundary).
    pub content_type: String,
    /// Everything before the media bytes: the metadata part and the media part's headers.
    pub head: Vec<u8>,
    /// Everything after them: the close delimiter.
    pub tail: Vec<u8>,
}

/// Frames media with its `Content-Type` and `Content-Disposition` (both already safe as
/// header values), under a fresh random boundary.
pub fn frame(content_type: &str, content_disposition: &str) -> Framing {
    let boundary = crate::federation::random_string(32);
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\nContent-Disposition: {content_disposition}\r\n\r\n"
    );
    Framing {
        content_type: format!("multipart/mixed; boundary={boundary}"),
        head: head.into_bytes(),
        tail: format!("\r\n--{boundary}--\r\n").into_bytes(),
    }
}

/// The boundary of a `multipart/mixed` content type.
fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return Err(MultipartError::NotMultipart);
    }
    let boundary = params
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .ok_or(MultipartError::NotMultipart)?;
    let valid = !boundary.is_empty()
        && boundary.len() <= MAX_BOUNDARY
        && boundary.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ');
    valid.then_some(boundary).ok_or(MultipartError::NotMultipart)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The parts of a body, each as it lies between two delimiters.
fn split_parts<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, MultipartError> {
    let dash = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    // The first delimiter opens the body, or follows a preamble and a line break.
    let mut position = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        find(body, delimiter.as_bytes()).ok_or(MultipartError::Malformed)? + delimiter.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = body.get(position..).ok_or(MultipartError::Malformed)?;
        // The close delimiter (or, leniently, the end of the body) ends the parts.
        if rest.starts_with(b"--") || rest.iter().all(u8::is_ascii_whitespace) {
            break;
        }
        if parts.len() == 2 {
            return Err(MultipartError::Malformed);
        }
        // Transport padding, then the line break that ends the delimiter line.
        let line_end =
            rest.iter().position(|byte| *byte == b'\n').ok_or(MultipartError::Malformed)?;
        if !rest[..line_end].iter().all(|byte| matches!(byte, b' ' | b'\t' | b'\r')) {
            return Err(MultipartError::Malformed);
        }
        let start = position + line_end + 1;
        let part_length = body
            .get(start..)
            .and_then(|part| find(part, delimiter.as_bytes()))
            .ok_or(MultipartError::Malformed)?;
        parts.push(&body[start..start + part_length]);
        position = start + part_length + delimiter.len();
    }
    if parts.len() == 2 { Ok(parts) } else { Err(MultipartError::Malformed) }
}

/// A part's headers: names lowercased, values trimmed.
type Headers<'a> = Vec<(String, &'a [u8])>;

/// A part's headers and its body.
fn split_headers(part: &[u8]) -> Result<(Headers<'_>, &[u8]), MultipartError> {
    let mut headers = Vec::new();
    let mut position = 0;
    loop {
        let rest = &part[position..];
        let line_end =
            rest.iter().position(|byte| *byte == b'\n').ok_or(MultipartError::Malformed)?;
        let line = rest[..line_end].strip_suffix(b"\r").unwrap_or(&rest[..line_end]);
        position += line_end + 1;
        if line.is_empty() {
            return Ok((headers, &part[position..]));
        }
        if headers.len() == MAX_PART_HEADERS {
            return Err(MultipartError::Malformed);
        }
        let colon = line.iter().position(|byte| *byte == b':').ok_or(MultipartError::Malformed)?;
        let name = std::str::from_utf8(&line[..colon]).map_err(|_| MultipartError::Malformed)?;
        if name.is_empty() || !name.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(MultipartError::Malformed);
        }
        headers.push((name.to_ascii_lowercase(), line[colon + 1..].trim_ascii()));
    }
}

fn header<'a>(headers: &'a [(String, &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(header, _)| header == name).map(|(_, value)| *value)
}

/// Reads a federation media answer: its `Content-Type` header and body.
pub fn parse(content_type: &str, body: &[u8]) -> Result<MediaPart, MultipartError> {
    let boundary = boundary(content_type)?;
    let parts = split_parts(body, &boundary)?;
    let (_, metadata) = split_headers(parts[0])?;
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(metadata)
        .map_err(|_| MultipartError::BadMetadata)?;
    let (headers, bytes) = split_headers(parts[1])?;
    if header(&headers, "location").is_some() {
        return Err(MultipartError::Redirect);
    }
    let content_type = header(&headers, "content-type")
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(str::to_owned);
    let filename = header(&headers, "content-disposition")
        .and_then(|value| ContentDisposition::try_from(value).ok())
        .and_then(|disposition| disposition.filename);
    Ok(MediaPart { content_type, filename, bytes: bytes.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE: &str = "multipart/mixed; boundary=\"b0und\"";

    fn body(media: &[u8]) -> Vec<u8> {
        let mut body = b"--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und\r\n\
            Content-Type: image/png\r\nContent-Disposition: inline; filename=\"cat.png\"\r\n\r\n"
            .to_vec();
        body.extend_from_slice(media);
        body.extend_from_slice(b"\r\n--b0und--\r\n");
        body
    }

    #[test]
    fn a_well_formed_answer_gives_its_media() {
        let media = b"\x89PNG\r\n--b0un not quite\r\n";
        let part = parse(TYPE, &body(media)).unwrap();
        assert_eq!(part.bytes, media);
        assert_eq!(part.content_type.as_deref(), Some("image/png"));
        assert_eq!(part.filename.as_deref(), Some("cat.png"));
        // A preamble, no close delimiter and bare line feeds in headers are accepted.
        let lenient = b"preamble\r\n--b0und\n\n{}\r\n--b0und\r\n\r\nbytes\r\n--b0und";
        let part = parse("multipart/mixed; boundary=b0und", lenient).unwrap();
        assert_eq!(part.bytes, b"bytes");
        assert_eq!(part.content_type, None);
    }

    #[test]
    fn framed_media_reads_back() {
        let framing = frame("image/png", "inline; filename=cat.png");
        let mut body = framing.head.clone();
        body.extend_from_slice(b"\r\n--png bytes");
        body.extend_from_slice(&framing.tail);
        let part = parse(&framing.content_type, &body).unwrap();
        assert_eq!(part.bytes, b"\r\n--png bytes");
        assert_eq!(part.filename.as_deref(), Some("cat.png"));
        assert_ne!(frame("a/b", "inline").content_type, framing.content_type);
    }

    #[test]
    fn malformed_answers_are_refused() {
        assert_eq!(parse("application/json", &body(b"x")), Err(MultipartError::NotMultipart));
        assert_eq!(parse("multipart/mixed", &body(b"x")), Err(MultipartError::NotMultipart));
        let long = format!("multipart/mixed; boundary={}", "b".repeat(71));
        assert_eq!(parse(&long, &body(b"x")), Err(MultipartError::NotMultipart));
        for broken in [
            &b""[..],
            b"--b0und",
            b"--b0und\r\n--b0und\r\n--b0und",
            b"--b0und\r\n\r\n{}\r\n--b0und--",
            b"--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und\r\nX: y\r\n\r\nmedia",
            b"--b0und\r\n\r\n{}\r\n--b0und\r\n\r\na\r\n--b0und\r\n\r\nb\r\n--b0und--",
            b"--b0undX\r\n\r\n{}\r\n--b0und\r\n\r\na\r\n--b0und--",
            b"--b0und\r\nno colon\r\n\r\n{}\r\n--b0und\r\n\r\na\r\n--b0und--",
            b"--b0und\r\n\r\n{}",
        ] {
            assert_eq!(parse(TYPE, broken), Err(MultipartError::Malformed), "{broken:?}");
        }
        let not_json = b"--b0und\r\n\r\n[1]\r\n--b0und\r\n\r\na\r\n--b0und--";
        assert_eq!(parse(TYPE, not_json), Err(MultipartError::BadMetadata));
        let redirect =
            b"--b0und\r\n\r\n{}\r\n--b0und\r\nLocation: https://elsewhere/x\r\n\r\n\r\n--b0und--";
        assert_eq!(parse(TYPE, redirect), Err(MultipartError::Redirect));
    }
}

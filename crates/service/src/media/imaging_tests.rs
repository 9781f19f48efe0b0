//! Tests of thumbnail geometry, decoding bounds and animated thumbnails.

use std::io::Cursor;

use image::{Delay, GenericImageView, ImageFormat, Rgba, RgbaImage, codecs::gif::GifDecoder};

use super::*;

const LIMITS: DecodeLimits = DecodeLimits { max_pixels: 32_000_000, max_alloc: 256 * 1024 * 1024 };

fn encoded(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let image = RgbaImage::from_fn(width, height, |x, y| {
        Rgba([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8, 255])
    });
    let image = if format == ImageFormat::Jpeg {
        DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(image).to_rgb8())
    } else {
        DynamicImage::ImageRgba8(image)
    };
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
    bytes
}

fn spec(width: u32, height: u32, method: ThumbnailMethod) -> ThumbnailSpec {
    ThumbnailSpec { width, height, method }
}

fn decoded(thumbnail: &Thumbnail) -> DynamicImage {
    image::load_from_memory(&thumbnail.bytes).unwrap()
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut crc = 0xffff_ffffu32;
    for byte in kind.iter().chain(data) {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
}

/// A tiny PNG whose header claims `width` × `height` RGBA pixels.
pub(super) fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&width.to_be_bytes());
    header.extend_from_slice(&height.to_be_bytes());
    header.extend_from_slice(&[8, 6, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &header);
    // A zlib stream of a few zero bytes: it would inflate to much more if ever decoded.
    png_chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01]);
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn scale_fits_within_the_box_without_enlarging() {
    assert_eq!(scaled_size(640, 480, 100, 100), (100, 75));
    assert_eq!(scaled_size(480, 640, 100, 100), (75, 100));
    assert_eq!(scaled_size(4000, 3000, 800, 600), (800, 600));
    assert_eq!(scaled_size(50, 40, 100, 100), (50, 40));
    assert_eq!(scaled_size(10_000, 1, 32, 32), (32, 1));
}

#[test]
fn crop_takes_the_centre_at_the_box_ratio() {
    assert_eq!(crop_geometry(640, 480, 100, 100), ((80, 0, 480, 480), (100, 100)));
    assert_eq!(crop_geometry(480, 640, 320, 240), ((0, 140, 480, 360), (320, 240)));
    // Never enlarged: a small image gives the largest region of the box's ratio.
    assert_eq!(crop_geometry(100, 100, 320, 240), ((0, 12, 100, 75), (100, 75)));
    assert_eq!(crop_geometry(1, 1000, 32, 32), ((0, 499, 1, 1), (1, 1)));
}

#[test]
fn png_thumbnails_have_the_requested_size_and_method() {
    let source = encoded(640, 480, ImageFormat::Png);
    let specs = [spec(100, 100, ThumbnailMethod::Crop), spec(100, 100, ThumbnailMethod::Scale)];
    let thumbnails = make_thumbnails(Cursor::new(&source), &specs, LIMITS).unwrap();
    assert_eq!(thumbnails.len(), 2);
    assert_eq!(thumbnails[0].content_type, "image/png");
    assert_eq!(decoded(&thumbnails[0]).dimensions(), (100, 100));
    assert_eq!((thumbnails[0].width, thumbnails[0].height), (100, 100));
    assert_eq!(decoded(&thumbnails[1]).dimensions(), (100, 75));
    assert!(!thumbnails[0].animated);
    // The crop keeps the centre: its left column comes from x = 80 in the source.
    let cropped = decoded(&thumbnails[0]).to_rgba8();
    let left = cropped.get_pixel(0, 50)[0];
    assert!((75..=90).contains(&left), "left column red {left}");
}

#[test]
fn jpeg_gif_and_webp_are_thumbnailed() {
    for (format, content_type) in [
        (ImageFormat::Jpeg, "image/jpeg"),
        (ImageFormat::Gif, "image/png"),
        (ImageFormat::WebP, "image/png"),
    ] {
        let source = encoded(300, 200, format);
        assert_eq!(supported_format(&source), Some(format));
        let specs = [spec(64, 64, ThumbnailMethod::Crop)];
        let thumbnail = make_thumbnails(Cursor::new(&source), &specs, LIMITS).unwrap().remove(0);
        assert_eq!(thumbnail.content_type, content_type, "{format:?}");
        assert_eq!(decoded(&thumbnail).dimensions(), (64, 64), "{format:?}");
        assert_eq!(dimensions(&source, LIMITS).unwrap(), (300, 200));
    }
}

#[test]
fn decompression_bombs_are_refused_before_decoding() {
    let bomb = png_bomb(100_000, 100_000);
    assert!(bomb.len() < 100);
    let started = std::time::Instant::now();
    let specs = [spec(32, 32, ThumbnailMethod::Crop)];
    assert!(matches!(
        make_thumbnails(Cursor::new(&bomb), &specs, LIMITS),
        Err(ThumbnailError::TooLarge)
    ));
    assert!(matches!(dimensions(&bomb, LIMITS), Err(ThumbnailError::TooLarge)));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    // Within the pixel limit but over the memory limit.
    let tight = DecodeLimits { max_pixels: 32_000_000, max_alloc: 1024 * 1024 };
    let wide = png_bomb(4000, 4000);
    assert!(matches!(
        make_thumbnails(Cursor::new(&wide), &specs, tight),
        Err(ThumbnailError::TooLarge)
    ));
    // A GIF claiming 65535 × 65535 pixels.
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    gif.extend_from_slice(&[0x2c, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0]);
    gif.extend_from_slice(&[2, 2, 0x4c, 0x01, 0, 0x3b]);
    assert!(matches!(
        make_thumbnails(Cursor::new(&gif), &specs, LIMITS),
        Err(ThumbnailError::TooLarge)
    ));
}

#[test]
fn damaged_and_foreign_content_gives_errors() {
    let specs = [spec(32, 32, ThumbnailMethod::Scale)];
    let text = b"<html><script>alert(1)</script></html>".to_vec();
    assert!(matches!(
        make_thumbnails(Cursor::new(&text), &specs, LIMITS),
        Err(ThumbnailError::NotAnImage)
    ));
    assert_eq!(supported_format(&text), None);
    let mut truncated = encoded(200, 200, ImageFormat::Png);
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        make_thumbnails(Cursor::new(&truncated), &specs, LIMITS),
        Err(ThumbnailError::Corrupt(_))
    ));
    let mut garbage = encoded(200, 200, ImageFormat::Jpeg);
    for byte in garbage.iter_mut().skip(200) {
        *byte = byte.wrapping_mul(31).wrapping_add(7);
    }
    // Garbled JPEG data may decode to noise or fail, but never panics.
    let _ = make_thumbnails(Cursor::new(&garbage), &specs, LIMITS);
    let zero = png_bomb(0, 10);
    assert!(make_thumbnails(Cursor::new(&zero), &specs, LIMITS).is_err());
}

fn animated_gif(frames: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.set_repeat(Repeat::Infinite).unwrap();
        for index in 0..frames {
            let image = RgbaImage::from_pixel(120, 80, Rgba([(index * 60) as u8, 0, 0, 255]));
            encoder
                .encode_frame(Frame::from_parts(image, 0, 0, Delay::from_numer_denom_ms(100, 1)))
                .unwrap();
        }
    }
    bytes
}

/// The frames of an animated thumbnail, which must be a GIF.
fn gif_frames(thumbnail: &Thumbnail) -> Vec<Frame> {
    assert!(thumbnail.animated);
    assert_eq!(thumbnail.content_type, "image/gif");
    GifDecoder::new(Cursor::new(&thumbnail.bytes)).unwrap().into_frames().collect_frames().unwrap()
}

#[test]
fn animated_gifs_get_animated_thumbnails() {
    let source = animated_gif(3);
    let thumbnail =
        make_animated_thumbnail(Cursor::new(&source), spec(60, 60, ThumbnailMethod::Crop), LIMITS)
            .unwrap()
            .unwrap();
    let frames = gif_frames(&thumbnail);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].buffer().dimensions(), (60, 60));
    // A still image has no animated thumbnail; a one-frame GIF neither.
    let still = encoded(50, 50, ImageFormat::Png);
    assert!(
        make_animated_thumbnail(Cursor::new(&still), spec(20, 20, ThumbnailMethod::Scale), LIMITS)
            .unwrap()
            .is_none()
    );
    let single = animated_gif(1);
    assert!(
        make_animated_thumbnail(Cursor::new(&single), spec(20, 20, ThumbnailMethod::Scale), LIMITS)
            .unwrap()
            .is_none()
    );
    // The still thumbnail of an animation is its first frame.
    let first =
        make_thumbnails(Cursor::new(&source), &[spec(30, 20, ThumbnailMethod::Scale)], LIMITS)
            .unwrap();
    assert_eq!(decoded(&first[0]).dimensions(), (30, 20));
}

fn riff_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(kind);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
}

fn u24(value: u32) -> [u8; 3] {
    let [a, b, c, _] = value.to_le_bytes();
    [a, b, c]
}

/// An animated WebP of `frames` lossless frames, each `width` × `height`, assembled by hand
/// (the `image` crate only writes still WebP): a VP8X header with the animation flag, an ANIM
/// chunk and one ANMF chunk per frame around the VP8L chunk of a still encoding.
fn animated_webp(frames: u32, width: u32, height: u32) -> Vec<u8> {
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0];
    vp8x.extend_from_slice(&u24(width - 1));
    vp8x.extend_from_slice(&u24(height - 1));
    riff_chunk(&mut body, b"VP8X", &vp8x);
    riff_chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    for index in 0..frames {
        let image = RgbaImage::from_pixel(width, height, Rgba([(index * 70) as u8, 90, 20, 255]));
        let mut still = Vec::new();
        DynamicImage::ImageRgba8(image)
            .write_to(&mut Cursor::new(&mut still), ImageFormat::WebP)
            .unwrap();
        // A still lossless WebP is RIFF, size, WEBP, then one VP8L chunk.
        assert_eq!(&still[12..16], b"VP8L");
        let mut frame = Vec::new();
        frame.extend_from_slice(&u24(0));
        frame.extend_from_slice(&u24(0));
        frame.extend_from_slice(&u24(width - 1));
        frame.extend_from_slice(&u24(height - 1));
        frame.extend_from_slice(&u24(100));
        frame.push(0);
        frame.extend_from_slice(&still[12..]);
        riff_chunk(&mut body, b"ANMF", &frame);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

#[test]
fn animated_webp_gets_animated_gif_thumbnails() {
    let source = animated_webp(3, 120, 80);
    let thumbnail =
        make_animated_thumbnail(Cursor::new(&source), spec(60, 40, ThumbnailMethod::Scale), LIMITS)
            .unwrap()
            .expect("an animated thumbnail of an animated WebP");
    let frames = gif_frames(&thumbnail);
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].buffer().dimensions(), (60, 40));
    // Frames differ, as the source's do.
    assert_ne!(frames[0].buffer().get_pixel(5, 5), frames[2].buffer().get_pixel(5, 5));
    // A still thumbnail of it is its first frame, as a PNG.
    let still =
        make_thumbnails(Cursor::new(&source), &[spec(30, 20, ThumbnailMethod::Scale)], LIMITS)
            .unwrap();
    assert_eq!(decoded(&still[0]).dimensions(), (30, 20));
}

#[test]
fn jpeg_and_webp_bombs_are_refused_before_decoding() {
    let specs = [spec(32, 32, ThumbnailMethod::Crop)];
    // A baseline JPEG whose frame header claims 65500 × 65500 pixels (4.3 gigapixels).
    let mut jpeg = encoded(16, 16, ImageFormat::Jpeg);
    let sof = jpeg.windows(2).position(|pair| pair == [0xff, 0xc0]).expect("a SOF0 marker");
    jpeg[sof + 5..sof + 7].copy_from_slice(&65500u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&65500u16.to_be_bytes());
    let started = std::time::Instant::now();
    assert!(matches!(
        make_thumbnails(Cursor::new(&jpeg), &specs, LIMITS),
        Err(ThumbnailError::TooLarge)
    ));
    assert!(matches!(dimensions(&jpeg, LIMITS), Err(ThumbnailError::TooLarge)));
    // An animated WebP whose canvas claims 16384 × 16384 pixels, frames of 8 × 8.
    let mut webp = animated_webp(2, 8, 8);
    webp[24..27].copy_from_slice(&u24(16383));
    webp[27..30].copy_from_slice(&u24(16383));
    assert!(matches!(
        make_thumbnails(Cursor::new(&webp), &specs, LIMITS),
        Err(ThumbnailError::TooLarge)
    ));
    assert!(
        make_animated_thumbnail(Cursor::new(&webp), spec(32, 32, ThumbnailMethod::Scale), LIMITS)
            .is_err()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}

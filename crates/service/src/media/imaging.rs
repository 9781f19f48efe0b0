//! Thumbnails, free of I/O beyond the reader they are given: decoding PNG, JPEG, GIF and WebP
//! within bounds (the header is read first, and an image over the pixel or memory limit is
//! refused before any pixel is decoded), `crop` and `scale` resizing, EXIF orientation, and
//! animated GIF thumbnails of animated GIF and WebP images.
//!
//! Everything here is synchronous and CPU-bound: callers run it on a blocking thread.

use std::io::{BufRead, Cursor, Seek};

use image::{
    AnimationDecoder, DynamicImage, Frame, ImageBuffer, ImageDecoder, ImageEncoder, ImageFormat,
    ImageReader, Limits, Pixel, RgbaImage,
    codecs::{
        gif::{GifDecoder, GifEncoder, Repeat},
        jpeg::JpegEncoder,
        png::PngEncoder,
        webp::WebPDecoder,
    },
    imageops,
    metadata::Orientation,
};
pub use rhizome_core::config::ThumbnailMethod;

/// Bounds on decoding one image.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// The most pixels (width × height) an image may have.
    pub max_pixels: u64,
    /// The most bytes a decoder may allocate.
    pub max_alloc: u64,
}

/// A thumbnail to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThumbnailSpec {
    /// The width asked for.
    pub width: u32,
    /// The height asked for.
    pub height: u32,
    /// How to fit the image.
    pub method: ThumbnailMethod,
}

/// A finished thumbnail.
#[derive(Clone, Debug)]
pub struct Thumbnail {
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its width.
    pub width: u32,
    /// Its height.
    pub height: u32,
    /// Whether it is animated.
    pub animated: bool,
}

/// Why no thumbnail could be made.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// The content is not a PNG, JPEG, GIF or WebP image.
    #[error("not a supported image")]
    NotAnImage,
    /// The image is over the pixel or memory limit.
    #[error("the image is too large to thumbnail")]
    TooLarge,
    /// The image is damaged.
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
    /// Encoding or reading failed.
    #[error("thumbnailing failed: {0}")]
    Failed(String),
}

impl From<image::ImageError> for ThumbnailError {
    fn from(error: image::ImageError) -> Self {
        use image::ImageError as E;
        match error {
            E::Limits(_) => Self::TooLarge,
            E::Unsupported(_) => Self::NotAnImage,
            E::Decoding(_) | E::Parameter(_) => Self::Corrupt(error.to_string()),
            // The source is a local file that opened: reading it fails on damaged data.
            E::IoError(_) => Self::Corrupt(error.to_string()),
            E::Encoding(_) => Self::Failed(error.to_string()),
        }
    }
}

impl From<std::io::Error> for ThumbnailError {
    fn from(error: std::io::Error) -> Self {
        Self::Failed(error.to_string())
    }
}

/// The largest side of an animated thumbnail (every frame is quantised to a palette, which is
/// slow for large frames).
pub const MAX_ANIMATED_DIMENSION: u32 = 640;
/// The most frames of an animation that are thumbnailed.
const MAX_FRAMES: usize = 200;
/// The most source pixels, summed over frames, decoded for one animated thumbnail, as a
/// multiple of the pixel limit of one image.
const ANIMATION_PIXEL_BUDGET_FACTOR: u64 = 4;

/// The image formats thumbnails are made from.
pub fn supported_format(bytes: &[u8]) -> Option<ImageFormat> {
    image::guess_format(bytes).ok().filter(|format| {
        matches!(
            format,
            ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
        )
    })
}

fn image_limits(limits: DecodeLimits) -> Limits {
    let mut bounds = Limits::default();
    bounds.max_alloc = Some(limits.max_alloc);
    let side = u32::try_from(limits.max_pixels).unwrap_or(u32::MAX);
    bounds.max_image_width = Some(side);
    bounds.max_image_height = Some(side);
    bounds
}

fn check_dimensions(width: u32, height: u32, limits: DecodeLimits) -> Result<(), ThumbnailError> {
    if width == 0 || height == 0 {
        return Err(ThumbnailError::Corrupt("the image has no pixels".into()));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ThumbnailError::TooLarge);
    }
    Ok(())
}

/// The width and height of an image, read from its header only.
pub fn dimensions(bytes: &[u8], limits: DecodeLimits) -> Result<(u32, u32), ThumbnailError> {
    let mut reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?;
    if reader.format().is_none_or(|format| !supported(format)) {
        return Err(ThumbnailError::NotAnImage);
    }
    reader.limits(image_limits(limits));
    let (width, height) = reader.into_dimensions()?;
    check_dimensions(width, height, limits)?;
    Ok((width, height))
}

fn supported(format: ImageFormat) -> bool {
    matches!(format, ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP)
}

/// Makes still thumbnails of every spec from one decode of the image.
pub fn make_thumbnails<R: BufRead + Seek>(
    reader: R,
    specs: &[ThumbnailSpec],
    limits: DecodeLimits,
) -> Result<Vec<Thumbnail>, ThumbnailError> {
    let mut reader = ImageReader::new(reader).with_guessed_format()?;
    let format =
        reader.format().filter(|format| supported(*format)).ok_or(ThumbnailError::NotAnImage)?;
    reader.limits(image_limits(limits));
    let mut decoder = reader.into_decoder()?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    if decoder.total_bytes() > limits.max_alloc {
        return Err(ThumbnailError::TooLarge);
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder)?;
    let as_jpeg = format == ImageFormat::Jpeg;
    specs
        .iter()
        .map(|spec| {
            let spec = oriented_spec(*spec, orientation);
            let mut small = resize(&image, spec);
            small.apply_orientation(orientation);
            encode_still(&small, as_jpeg)
        })
        .collect()
}

/// Makes an animated GIF thumbnail of an animated GIF or WebP image; `None` when the image is
/// not animated (or not a GIF or WebP), so a still thumbnail should be made instead.
pub fn make_animated_thumbnail<R: BufRead + Seek>(
    reader: R,
    spec: ThumbnailSpec,
    limits: DecodeLimits,
) -> Result<Option<Thumbnail>, ThumbnailError> {
    let reader = ImageReader::new(reader).with_guessed_format()?;
    let format = reader.format();
    let inner = reader.into_inner();
    let frames = match format {
        Some(ImageFormat::Gif) => {
            let mut decoder = GifDecoder::new(inner)?;
            let (width, height) = decoder.dimensions();
            check_dimensions(width, height, limits)?;
            decoder.set_limits(image_limits(limits))?;
            decoder.into_frames()
        }
        Some(ImageFormat::WebP) => {
            let mut decoder = WebPDecoder::new(inner)?;
            if !decoder.has_animation() {
                return Ok(None);
            }
            let (width, height) = decoder.dimensions();
            check_dimensions(width, height, limits)?;
            decoder.set_limits(image_limits(limits))?;
            decoder.into_frames()
        }
        _ => return Ok(None),
    };
    let spec = ThumbnailSpec {
        width: spec.width.min(MAX_ANIMATED_DIMENSION),
        height: spec.height.min(MAX_ANIMATED_DIMENSION),
        method: spec.method,
    };
    let budget = limits.max_pixels.saturating_mul(ANIMATION_PIXEL_BUDGET_FACTOR);
    let mut spent = 0u64;
    let mut thumbnails = Vec::new();
    for frame in frames.take(MAX_FRAMES) {
        let frame = frame?;
        let delay = frame.delay();
        let canvas = frame.into_buffer();
        spent = spent.saturating_add(u64::from(canvas.width()) * u64::from(canvas.height()));
        if spent > budget {
            break;
        }
        let small = resize(&DynamicImage::ImageRgba8(canvas), spec).into_rgba8();
        thumbnails.push(Frame::from_parts(small, 0, 0, delay));
    }
    if thumbnails.len() < 2 {
        return Ok(None);
    }
    let (width, height) = thumbnails.first().map_or((0, 0), |frame| frame.buffer().dimensions());
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut bytes, 20);
        encoder.set_repeat(Repeat::Infinite)?;
        encoder.encode_frames(thumbnails)?;
    }
    Ok(Some(Thumbnail { bytes, content_type: "image/gif", width, height, animated: true }))
}

/// The spec in the stored image's orientation: a quarter turn swaps width and height.
fn oriented_spec(spec: ThumbnailSpec, orientation: Orientation) -> ThumbnailSpec {
    match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => {
            ThumbnailSpec { width: spec.height, height: spec.width, method: spec.method }
        }
        _ => spec,
    }
}

/// The size of a `scale` thumbnail: the image fitted within the box, never enlarged.
pub fn scaled_size(width: u32, height: u32, box_width: u32, box_height: u32) -> (u32, u32) {
    if width <= box_width && height <= box_height {
        return (width, height);
    }
    let (width, height) = (u64::from(width), u64::from(height));
    let (box_width, box_height) = (u64::from(box_width.max(1)), u64::from(box_height.max(1)));
    // Compare width / box_width with height / box_height without floating point.
    let (new_width, new_height) = if width * box_height >= height * box_width {
        (box_width, (height * box_width + width / 2) / width)
    } else {
        ((width * box_height + height / 2) / height, box_height)
    };
    (clamp_u32(new_width.max(1)), clamp_u32(new_height.max(1)))
}

/// The centred region of a `crop` thumbnail (x, y, width, height) and its final size: the
/// largest part of the image with the box's aspect ratio, shrunk to the box, never enlarged.
pub fn crop_geometry(
    width: u32,
    height: u32,
    box_width: u32,
    box_height: u32,
) -> ((u32, u32, u32, u32), (u32, u32)) {
    let (w, h) = (u64::from(width), u64::from(height));
    let (bw, bh) = (u64::from(box_width.max(1)), u64::from(box_height.max(1)));
    let (crop_w, crop_h) = if w * bh > h * bw {
        (((h * bw + bh / 2) / bh).clamp(1, w), h)
    } else {
        (w, ((w * bh + bw / 2) / bw).clamp(1, h))
    };
    let (x, y) = ((w - crop_w) / 2, (h - crop_h) / 2);
    let size = if crop_w > bw || crop_h > bh { (bw, bh) } else { (crop_w, crop_h) };
    let region = (clamp_u32(x), clamp_u32(y), clamp_u32(crop_w), clamp_u32(crop_h));
    (region, (clamp_u32(size.0), clamp_u32(size.1)))
}

fn clamp_u32(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// Crops a region and shrinks it, for 8- and 16-bit pixel types (the crate's bound on
/// subpixels is not nameable, so one function per subpixel type).
macro_rules! shrink_fn {
    ($name:ident, $subpixel:ty) => {
        fn $name<P>(
            image: &ImageBuffer<P, Vec<$subpixel>>,
            region: (u32, u32, u32, u32),
            size: (u32, u32),
        ) -> ImageBuffer<P, Vec<$subpixel>>
        where
            P: Pixel<Subpixel = $subpixel> + 'static,
        {
            let (x, y, width, height) = region;
            let view = imageops::crop_imm(image, x, y, width, height);
            imageops::thumbnail(&*view, size.0, size.1)
        }
    };
}
shrink_fn!(shrink, u8);
shrink_fn!(shrink16, u16);

/// Resizes by the spec's method (area averaging, fast and good for shrinking).
fn resize(image: &DynamicImage, spec: ThumbnailSpec) -> DynamicImage {
    let (width, height) = (image.width(), image.height());
    let (region, size) = match spec.method {
        ThumbnailMethod::Scale => {
            ((0, 0, width, height), scaled_size(width, height, spec.width, spec.height))
        }
        ThumbnailMethod::Crop => crop_geometry(width, height, spec.width, spec.height),
    };
    match image {
        DynamicImage::ImageLuma8(buffer) => shrink(buffer, region, size).into(),
        DynamicImage::ImageLumaA8(buffer) => shrink(buffer, region, size).into(),
        DynamicImage::ImageRgb8(buffer) => shrink(buffer, region, size).into(),
        DynamicImage::ImageRgba8(buffer) => shrink(buffer, region, size).into(),
        DynamicImage::ImageLuma16(buffer) => {
            DynamicImage::from(shrink16(buffer, region, size)).into_rgba8().into()
        }
        DynamicImage::ImageLumaA16(buffer) => {
            DynamicImage::from(shrink16(buffer, region, size)).into_rgba8().into()
        }
        DynamicImage::ImageRgb16(buffer) => {
            DynamicImage::from(shrink16(buffer, region, size)).into_rgb8().into()
        }
        DynamicImage::ImageRgba16(buffer) => {
            DynamicImage::from(shrink16(buffer, region, size)).into_rgba8().into()
        }
        other => {
            let rgba: RgbaImage = other.to_rgba8();
            shrink(&rgba, region, size).into()
        }
    }
}

fn encode_still(image: &DynamicImage, as_jpeg: bool) -> Result<Thumbnail, ThumbnailError> {
    let mut bytes = Vec::new();
    let content_type = if as_jpeg {
        let rgb = image.to_rgb8();
        JpegEncoder::new_with_quality(&mut bytes, 82).write_image(
            rgb.as_raw(),
            rgb.width(),
            rgb.height(),
            image::ExtendedColorType::Rgb8,
        )?;
        "image/jpeg"
    } else {
        image.write_with_encoder(PngEncoder::new(&mut bytes))?;
        "image/png"
    };
    Ok(Thumbnail {
        bytes,
        content_type,
        width: image.width(),
        height: image.height(),
        animated: false,
    })
}

#[cfg(test)]
#[path = "imaging_tests.rs"]
mod tests;

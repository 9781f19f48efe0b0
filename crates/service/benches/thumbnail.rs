//! Thumbnail generation time and peak memory for a 12-megapixel JPEG (4000 × 3000), made in
//! memory: one `scale` thumbnail per decode, then every configured size from one decode.
//! Peak RSS is the kernel's high-water mark (VmHWM in /proc/self/status), reset after the test
//! image is made so it measures thumbnailing alone. Run with
//! `cargo bench -p rhizome-service --bench thumbnail`.

use std::{io::Cursor, time::Instant};

use image::{ImageEncoder, RgbImage, codecs::jpeg::JpegEncoder};
use rhizome_core::config::MediaConfig;
use rhizome_service::media::imaging::{self, DecodeLimits, ThumbnailMethod, ThumbnailSpec};

const WIDTH: u32 = 4000;
const HEIGHT: u32 = 3000;
const RUNS: usize = 5;

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets VmHWM to the current RSS (Linux: writing 5 to clear_refs).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// A photo-like test image: smooth gradients with noise, so it compresses like a photo.
fn photo_jpeg() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let image = RgbImage::from_fn(WIDTH, HEIGHT, |x, y| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let noise = (state % 24) as u32;
        let r = (x * 255 / WIDTH + noise) % 256;
        let g = (y * 255 / HEIGHT + noise) % 256;
        let b = ((x + y) / 30 % 256 + noise) % 256;
        image::Rgb([r as u8, g as u8, b as u8])
    });
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 90)
        .write_image(image.as_raw(), WIDTH, HEIGHT, image::ExtendedColorType::Rgb8)
        .expect("the test image encodes");
    bytes
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let jpeg = photo_jpeg();
    let config = MediaConfig::default();
    let limits =
        DecodeLimits { max_pixels: config.max_image_pixels, max_alloc: config.max_decode_bytes };
    let baseline = status_kib("VmRSS:").unwrap_or(0);
    let reset = reset_peak();
    println!(
        "source: {WIDTH}x{HEIGHT} JPEG ({:.1} MP), {:.2} MiB; RSS before thumbnailing {:.1} MiB",
        f64::from(WIDTH * HEIGHT) / 1e6,
        jpeg.len() as f64 / 1048576.0,
        baseline as f64 / 1024.0
    );

    let spec = ThumbnailSpec { width: 800, height: 600, method: ThumbnailMethod::Scale };
    let mut single = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let thumbnails = imaging::make_thumbnails(Cursor::new(&jpeg), &[spec], limits)
            .expect("the thumbnail is made");
        single.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!((thumbnails[0].width, thumbnails[0].height), (800, 600));
    }
    let peak_single = status_kib("VmHWM:").unwrap_or(0);

    let specs: Vec<ThumbnailSpec> = config
        .thumbnail_sizes
        .iter()
        .map(|size| ThumbnailSpec { width: size.width, height: size.height, method: size.method })
        .collect();
    let mut all = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let thumbnails =
            imaging::make_thumbnails(Cursor::new(&jpeg), &specs, limits).expect("thumbnails");
        all.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(thumbnails.len(), specs.len());
    }
    let peak_all = status_kib("VmHWM:").unwrap_or(0);

    println!(
        "one 800x600 scale thumbnail (decode + resize + encode): median {:.0} ms, min {:.0} ms \
         over {RUNS} runs",
        median(single.clone()),
        single.iter().copied().fold(f64::INFINITY, f64::min)
    );
    println!(
        "all {} configured sizes from one decode: median {:.0} ms over {RUNS} runs",
        specs.len(),
        median(all)
    );
    let note = if reset { "" } else { " (peak reset unavailable: includes making the source)" };
    println!(
        "peak RSS (VmHWM) while thumbnailing: {:.1} MiB for one size, {:.1} MiB for all sizes; \
         {:.1} MiB above the RSS before{note}",
        peak_single as f64 / 1024.0,
        peak_all as f64 / 1024.0,
        peak_all.saturating_sub(baseline) as f64 / 1024.0
    );
}

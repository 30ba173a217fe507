//! Picture decoding and CLIP preprocessing, exactly as `visual/preprocess_cfg.json` says.
//!
//! Decoding is bounded (image crate limits: dimensions and allocation) and applies the EXIF
//! orientation, which the image crate does not do by itself; the orientation comes from the
//! one parse of the EXIF block ([`crate::metadata::Exif`]), which also gives the capture time. Preprocessing follows open_clip /
//! torchvision on PIL: resize (bicubic by default) so the shortest side equals `size`, centre
//! crop with Python's rounding, RGB, `/255`, minus mean, over std, NCHW. Alpha is dropped
//! before resizing, as Immich does (open_clip on a raw RGBA picture would resize it
//! premultiplied first; transparent photos are rare and the difference is at their edges).
//!
//! [`PreprocessCfg::picture`] is the whole path from file bytes to model input. A JPEG much
//! larger than the model input is decoded at 1/2, 1/4 or 1/8 of its size by the decoder's DCT
//! scaling (the pixels it would throw away are never reconstructed), keeping at least twice
//! the resize target so the bicubic filter still does the final, antialiased reduction; the
//! resize target and crop are computed from the full size, so the geometry is the same as a
//! full decode's.

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use fast_image_resize as fir;
use fir::{FilterType, ResizeAlg};
use image::metadata::Orientation;
use image::{DynamicImage, ImageReader, Limits};
use serde::Deserialize;

use crate::error::DeviceError;
use crate::metadata::Exif;

/// How the picture is fitted into the square input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Shortest side to `size`, then centre crop (CLIP's default).
    Shortest,
    /// Longest side to `size`, then pad with `fill_color`.
    Longest,
    /// Both sides to `size`, ignoring the aspect ratio.
    Squash,
}

/// `visual/preprocess_cfg.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessCfg {
    /// Side of the square input.
    #[serde(deserialize_with = "size_from_int_or_pair")]
    pub size: u32,
    /// Colour mode; only `RGB` is supported.
    #[serde(default = "rgb")]
    pub mode: String,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// `bicubic`, `bilinear`, `nearest` or `lanczos`.
    #[serde(default = "bicubic")]
    pub interpolation: String,
    /// How the picture is fitted.
    #[serde(default = "shortest")]
    pub resize_mode: ResizeMode,
    /// Padding value for `longest`.
    #[serde(default)]
    pub fill_color: u8,
}

fn rgb() -> String {
    "RGB".into()
}
fn bicubic() -> String {
    "bicubic".into()
}
fn shortest() -> ResizeMode {
    ResizeMode::Shortest
}

fn size_from_int_or_pair<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(u32),
        Pair([u32; 2]),
    }
    match Size::deserialize(d)? {
        Size::One(s) => Ok(s),
        Size::Pair([h, w]) if h == w => Ok(h),
        Size::Pair(_) => Err(serde::de::Error::custom(
            "only square input sizes are supported",
        )),
    }
}

impl PreprocessCfg {
    /// Parses and checks a `preprocess_cfg.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DeviceError> {
        let bad = DeviceError::Invalid;
        let cfg: PreprocessCfg = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if !(16..=2048).contains(&cfg.size) {
            return Err(bad(format!("size {} is out of 16..=2048", cfg.size)));
        }
        if cfg.mode != "RGB" {
            return Err(bad(format!(
                "mode {} is not supported (only RGB)",
                cfg.mode
            )));
        }
        if cfg.std.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || cfg.mean.iter().any(|m| !m.is_finite())
        {
            return Err(bad("mean must be finite and std positive".into()));
        }
        cfg.filter()?;
        Ok(cfg)
    }

    fn filter(&self) -> Result<ResizeAlg, DeviceError> {
        match self.interpolation.as_str() {
            "bicubic" => Ok(ResizeAlg::Convolution(FilterType::CatmullRom)),
            "bilinear" => Ok(ResizeAlg::Convolution(FilterType::Bilinear)),
            "nearest" => Ok(ResizeAlg::Nearest),
            "lanczos" => Ok(ResizeAlg::Convolution(FilterType::Lanczos3)),
            other => Err(DeviceError::Invalid(format!(
                "interpolation {other} is not supported"
            ))),
        }
    }

    /// Number of f32 values in one preprocessed picture (`3 * size * size`).
    pub fn tensor_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Turns a decoded picture into the model's input, NCHW with N = 1.
    pub fn tensor(&self, img: &DynamicImage) -> Vec<f32> {
        self.tensor_for_size(img, (img.width(), img.height()))
    }

    /// Decodes a picture file's bytes (bounded by `limits`, EXIF orientation applied) and
    /// turns it into the model's input; also returns the picture's full width and height
    /// (oriented). Large JPEGs are decoded at a reduced scale (see the module documentation);
    /// everything else as [`decode_bytes`] does.
    pub fn picture(
        &self,
        bytes: &[u8],
        limits: DecodeLimits,
    ) -> Result<(Vec<f32>, (u32, u32)), DeviceError> {
        self.picture_oriented(bytes, limits, Exif::read(bytes).orientation)
    }

    /// [`PreprocessCfg::picture`] with the orientation already read from the picture's EXIF
    /// (by a caller that also wants its capture time).
    pub fn picture_oriented(
        &self,
        bytes: &[u8],
        limits: DecodeLimits,
        orientation: Orientation,
    ) -> Result<(Vec<f32>, (u32, u32)), DeviceError> {
        if bytes.starts_with(&[0xff, 0xd8]) && jpeg_is_complete(bytes) {
            if let Some((img, full)) =
                decode_jpeg_scaled(bytes, limits, orientation, |w, h| self.reduction(w, h))
            {
                return Ok((self.tensor_for_size(&img, full), full));
            }
        }
        let img = decode_oriented(bytes, limits, orientation)?;
        Ok((self.tensor(&img), (img.width(), img.height())))
    }

    /// The largest DCT reduction (1, 2, 4 or 8) of a `w`x`h` picture that keeps the side the
    /// resize is computed from at least twice the target.
    fn reduction(&self, w: u32, h: u32) -> u32 {
        let side = match self.resize_mode {
            ResizeMode::Shortest | ResizeMode::Squash => w.min(h),
            ResizeMode::Longest => w.max(h),
        };
        dct_reduction(side, 2 * self.size)
    }

    /// [`PreprocessCfg::tensor`] of a picture decoded at a reduced scale from one of `full`
    /// (width, height, oriented): the resize target and crop are those of the full size.
    fn tensor_for_size(&self, img: &DynamicImage, full: (u32, u32)) -> Vec<f32> {
        let size = self.size;
        let filter = self
            .filter()
            .unwrap_or(ResizeAlg::Convolution(FilterType::CatmullRom));
        let (w, h) = (full.0.max(1), full.1.max(1));
        let (nw, nh) = match self.resize_mode {
            ResizeMode::Squash => (size, size),
            ResizeMode::Shortest => scale_side(w, h, size, w <= h),
            ResizeMode::Longest => scale_side(w, h, size, w >= h),
        };
        // Offsets of the output window in the resized picture (crop) or of the picture in the
        // output (pad), as torchvision computes them.
        let (crop_x, crop_y) = (centre_offset(nw, size), centre_offset(nh, size));
        let (pad_x, pad_y) = (centre_offset(size, nw), centre_offset(size, nh));
        // Only the part of the resized picture that the output shows is computed: a cropped
        // mode never resizes what it crops away (nor allocates it: a 16384x10 panorama would
        // otherwise be resized to 367,001x224 pixels first).
        let window = match self.resize_mode {
            ResizeMode::Longest => Window {
                x: 0,
                y: 0,
                w: nw,
                h: nh,
            },
            _ => Window {
                x: crop_x,
                y: crop_y,
                w: size.min(nw - crop_x),
                h: size.min(nh - crop_y),
            },
        };
        let rgb = resize_rgb(img, (nw, nh), window, filter);
        let mut out = vec![0.0f32; self.tensor_len()];
        let plane = (size * size) as usize;
        for c in 0..3 {
            let fill = (self.fill_color as f32 / 255.0 - self.mean[c]) / self.std[c];
            let channel = &mut out[c * plane..(c + 1) * plane];
            for y in 0..size {
                for x in 0..size {
                    let (sx, sy) = match self.resize_mode {
                        ResizeMode::Longest => (x as i64 - pad_x as i64, y as i64 - pad_y as i64),
                        _ => ((x + crop_x) as i64, (y + crop_y) as i64),
                    };
                    // Coordinates in the resized picture, then in the computed window of it.
                    let (wx, wy) = (sx - window.x as i64, sy - window.y as i64);
                    let v = if wx >= 0 && wy >= 0 && wx < window.w as i64 && wy < window.h as i64 {
                        let p = rgb.get_pixel(wx as u32, wy as u32).0[c];
                        (p as f32 / 255.0 - self.mean[c]) / self.std[c]
                    } else {
                        fill
                    };
                    channel[(y * size + x) as usize] = v;
                }
            }
        }
        out
    }
}

/// New size with the chosen side set to `target` and the other scaled, truncated like
/// torchvision's `int(size * long / short)`.
fn scale_side(w: u32, h: u32, target: u32, width_is_the_side: bool) -> (u32, u32) {
    if width_is_the_side {
        (
            target,
            ((target as u64 * h as u64) / w as u64).max(1) as u32,
        )
    } else {
        (
            ((target as u64 * w as u64) / h as u64).max(1) as u32,
            target,
        )
    }
}

/// `int(round((outer - inner) / 2))` with Python's round-half-to-even; 0 when inner >= outer.
fn centre_offset(outer: u32, inner: u32) -> u32 {
    if inner >= outer {
        return 0;
    }
    let twice = outer - inner;
    let half = twice / 2;
    if twice % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// A rectangle of the resized picture, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    x: u32,
    y: u32,
    w: u32,
    h: u32,
}

/// The `window` of the picture resized to `size` (width, height), as RGB8: the same pixels as
/// resizing the whole picture and cropping, computed for the window only (the filter still
/// reads the source pixels around it). fast_image_resize: SIMD convolution (SSE4.1/AVX2 on
/// x86, NEON on arm64) with fixed-point coefficients like PIL's, whose resize open_clip's
/// preprocessing uses. Alpha is dropped before resizing (not composited), as Immich does; the
/// colour under transparent pixels is kept.
fn resize_rgb(
    img: &DynamicImage,
    size: (u32, u32),
    window: Window,
    alg: ResizeAlg,
) -> image::RgbImage {
    let rgb = img.to_rgb8();
    let (sw, sh) = rgb.dimensions();
    if (sw, sh) == size {
        if window
            == (Window {
                x: 0,
                y: 0,
                w: sw,
                h: sh,
            })
        {
            return rgb;
        }
        return image::imageops::crop_imm(&rgb, window.x, window.y, window.w, window.h).to_image();
    }
    // The window in source pixels.
    let (fx, fy) = (sw as f64 / size.0 as f64, sh as f64 / size.1 as f64);
    let crop = (
        window.x as f64 * fx,
        window.y as f64 * fy,
        window.w as f64 * fx,
        window.h as f64 * fy,
    );
    let mut out = image::RgbImage::new(window.w, window.h);
    if let Err(e) = fir_resize(
        rgb.into_raw(),
        (sw, sh),
        crop,
        &mut out,
        (window.w, window.h),
        alg,
    ) {
        // Both sizes are at least 1x1 and the buffers are made for them, so this is not
        // reached; should it be, the picture gets a wrong (black) input, not a crash.
        tracing::error!(error = %e, "resize failed");
    }
    out
}

fn fir_resize(
    src: Vec<u8>,
    (sw, sh): (u32, u32),
    crop: (f64, f64, f64, f64),
    dst: &mut [u8],
    (w, h): (u32, u32),
    alg: ResizeAlg,
) -> Result<(), DeviceError> {
    let src = fir::images::Image::from_vec_u8(sw, sh, src, fir::PixelType::U8x3)
        .map_err(|e| DeviceError::Decode(e.to_string()))?;
    let mut dst = fir::images::Image::from_slice_u8(w, h, dst, fir::PixelType::U8x3)
        .map_err(|e| DeviceError::Decode(e.to_string()))?;
    let options = fir::ResizeOptions::new()
        .resize_alg(alg)
        .crop(crop.0, crop.1, crop.2, crop.3);
    fir::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| DeviceError::Decode(e.to_string()))
}

/// Bounds on what a picture may cost to decode.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest accepted width or height, in pixels.
    pub max_side: u32,
    /// Largest allocation the decoder may make, in bytes.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        // 16384 px covers 100+ megapixel cameras and panoramas; 512 MiB bounds memory per worker.
        Self {
            max_side: 16_384,
            max_alloc: 512 << 20,
        }
    }
}

/// Decodes a picture file, bounded by `limits`, with its EXIF orientation applied.
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<DynamicImage, DeviceError> {
    let bytes = std::fs::read(path).map_err(|e| DeviceError::io(path, e))?;
    decode_bytes(&bytes, limits)
}

/// Decodes a picture held in memory, bounded by `limits`, with its EXIF orientation applied.
/// A JPEG cut short (a copy or upload that did not finish) is refused, although the decoder
/// would fill in the missing part: indexing half a picture would give a wrong vector.
pub fn decode_bytes(bytes: &[u8], limits: DecodeLimits) -> Result<DynamicImage, DeviceError> {
    decode_oriented(bytes, limits, Exif::read(bytes).orientation)
}

/// [`decode_bytes`] with the orientation already read.
fn decode_oriented(
    bytes: &[u8],
    limits: DecodeLimits,
    orientation: Orientation,
) -> Result<DynamicImage, DeviceError> {
    if bytes.starts_with(&[0xff, 0xd8]) && !jpeg_is_complete(bytes) {
        return Err(DeviceError::Decode(
            "truncated JPEG (no end-of-image marker after the last scan)".into(),
        ));
    }
    decode_reader(Cursor::new(bytes), limits, orientation)
}

/// The largest DCT reduction (1, 2, 4 or 8) that keeps `side` pixels at least `keep`.
fn dct_reduction(side: u32, keep: u32) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|&f| side / f >= keep)
        .unwrap_or(1)
}

/// [`decode_bytes`] for showing the picture at most `side` pixels on its longer side: a large
/// JPEG is decoded at the DCT reduction that keeps its longer side at least twice `side` (a
/// 12-megapixel photo for a 256-pixel thumbnail at 1/4 of its size: a fraction of the time,
/// 2 MB of pixels instead of 36).
pub fn decode_for_side(
    bytes: &[u8],
    limits: DecodeLimits,
    side: u32,
) -> Result<DynamicImage, DeviceError> {
    let orientation = Exif::read(bytes).orientation;
    if bytes.starts_with(&[0xff, 0xd8]) && jpeg_is_complete(bytes) {
        if let Some((img, _)) = decode_jpeg_scaled(bytes, limits, orientation, |w, h| {
            dct_reduction(w.max(h), 2 * side.max(1))
        }) {
            return Ok(img);
        }
    }
    decode_oriented(bytes, limits, orientation)
}

/// Decodes a complete baseline or progressive RGB or greyscale JPEG at the DCT reduction
/// `reduction(width, height)` chooses (1, 2, 4 or 8), with `orientation` applied.
/// Returns the picture and its full size (oriented), or `None` when the reduction is 1 or
/// this decoder cannot take the file (CMYK, 16-bit, an error): the caller then decodes it
/// the ordinary way, which also reports the errors.
fn decode_jpeg_scaled(
    bytes: &[u8],
    limits: DecodeLimits,
    orientation: Orientation,
    reduction: impl Fn(u32, u32) -> u32,
) -> Option<(DynamicImage, (u32, u32))> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w == 0 || h == 0 || w > limits.max_side || h > limits.max_side {
        return None;
    }
    if !matches!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
    ) {
        return None;
    }
    let f = reduction(w, h);
    if f <= 1 {
        return None;
    }
    let (sw, sh) = decoder
        .scale(w.div_ceil(f) as u16, h.div_ceil(f) as u16)
        .ok()?;
    let pixels = decoder.decode().ok()?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    let mut img = match decoder.info()?.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(sw, sh, pixels)?)
        }
        jpeg_decoder::PixelFormat::L8 => {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(sw, sh, pixels)?)
        }
        _ => return None,
    };
    img.apply_orientation(orientation);
    let full = if (img.width(), img.height()) == (sw, sh) {
        (w, h)
    } else {
        (h, w)
    };
    Some((img, full))
}

/// Whether an end-of-image marker follows the last start-of-scan. Inside entropy-coded data
/// every 0xFF byte is followed by 0x00 or a restart marker, so `FF D9` there is the real end.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xff, 0xd9]),
        None => false,
    }
}

fn decode_reader<R: BufRead + Seek>(
    reader: R,
    limits: DecodeLimits,
    orientation: Orientation,
) -> Result<DynamicImage, DeviceError> {
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| DeviceError::Decode(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DeviceError::Decode(
            "not a picture format edgeclip reads".into(),
        ));
    }
    let mut image_limits = Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| DeviceError::Decode(e.to_string()))?;
    let mut img =
        DynamicImage::from_decoder(decoder).map_err(|e| DeviceError::Decode(e.to_string()))?;
    img.apply_orientation(orientation);
    if img.width() == 0 || img.height() == 0 {
        return Err(DeviceError::Decode("picture has no pixels".into()));
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip_cfg(size: u32) -> PreprocessCfg {
        PreprocessCfg::from_json(
            format!(
                r#"{{"size": {size}, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                "resize_mode": "shortest", "fill_color": 0}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn centre_offsets_round_half_to_even_like_python() {
        assert_eq!(centre_offset(224, 224), 0);
        assert_eq!(centre_offset(225, 224), 0); // round(0.5) == 0
        assert_eq!(centre_offset(227, 224), 2); // round(1.5) == 2
        assert_eq!(centre_offset(229, 224), 2); // round(2.5) == 2
        assert_eq!(centre_offset(298, 224), 37);
    }

    #[test]
    fn shortest_side_scaling_truncates_like_torchvision() {
        assert_eq!(scale_side(4000, 3000, 224, false), (298, 224));
        assert_eq!(scale_side(200, 300, 224, true), (224, 336));
    }

    #[test]
    fn a_uniform_picture_normalises_to_the_expected_constant() {
        let cfg = clip_cfg(32);
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            50,
            40,
            image::Rgb([255, 0, 128]),
        ));
        let t = cfg.tensor(&img);
        assert_eq!(t.len(), 3 * 32 * 32);
        let expect = |c: usize, v: f32| (v / 255.0 - cfg.mean[c]) / cfg.std[c];
        assert!((t[0] - expect(0, 255.0)).abs() < 1e-5);
        assert!((t[32 * 32] - expect(1, 0.0)).abs() < 1e-5);
        assert!((t[2 * 32 * 32 + 5] - expect(2, 128.0)).abs() < 1e-5);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(
            PreprocessCfg::from_json(br#"{"size": 224, "mean": [0,0,0], "std": [0,1,1]}"#).is_err()
        );
        assert!(PreprocessCfg::from_json(
            br#"{"size": 224, "mean": [0,0,0], "std": [1,1,1], "interpolation": "magic"}"#
        )
        .is_err());
        assert!(PreprocessCfg::from_json(
            br#"{"size": [224, 200], "mean": [0,0,0], "std": [1,1,1]}"#
        )
        .is_err());
        assert!(PreprocessCfg::from_json(
            br#"{"size": [224, 224], "mean": [0,0,0], "std": [1,1,1]}"#
        )
        .is_ok());
    }

    #[test]
    fn garbage_and_empty_files_are_errors_not_panics() {
        let limits = DecodeLimits::default();
        assert!(decode_bytes(b"", limits).is_err());
        assert!(decode_bytes(b"this is not a jpeg", limits).is_err());
        assert!(decode_bytes(&[0xff, 0xd8, 0xff, 0xe0, 0, 16], limits).is_err());
    }

    /// `jpeg` with an EXIF block whose Orientation is `orientation` inserted after SOI.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let exif: Vec<u8> = {
            let mut e = b"Exif\0\0".to_vec();
            e.extend_from_slice(b"II*\0\x08\0\0\0"); // TIFF header, IFD at 8
            e.extend_from_slice(&1u16.to_le_bytes()); // one entry
            e.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
            e.extend_from_slice(&3u16.to_le_bytes()); // SHORT
            e.extend_from_slice(&1u32.to_le_bytes()); // count
            e.extend_from_slice(&orientation.to_le_bytes());
            e.extend_from_slice(&[0, 0]);
            e.extend_from_slice(&0u32.to_le_bytes()); // next IFD
            e
        };
        let mut with_exif = jpeg[..2].to_vec();
        with_exif.extend_from_slice(&[0xff, 0xe1]);
        with_exif.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        with_exif.extend_from_slice(&exif);
        with_exif.extend_from_slice(&jpeg[2..]);
        with_exif
    }

    #[test]
    fn exif_orientation_is_applied() {
        // A 4x2 JPEG with Orientation=6 (rotate 90 degrees clockwise) decodes as 2x4.
        let img =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 2, image::Rgb([10, 20, 30])));
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        let decoded =
            decode_bytes(&with_exif_orientation(&jpeg, 6), DecodeLimits::default()).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (2, 4));
    }

    /// A photo-like JPEG: smooth gradients, a few hard edges, some texture.
    fn photo_like_jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
            let disc = ((fx - 0.3).powi(2) + (fy - 0.6).powi(2)) < 0.04;
            let stripe = (x / 37 + y / 53) % 5 == 0;
            let texture =
                ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 13) as f32 % 23.0;
            let r = if disc {
                230.0
            } else {
                40.0 + 150.0 * fx + texture
            };
            let g = if stripe {
                200.0
            } else {
                60.0 + 120.0 * fy + texture
            };
            let b = 90.0 + 80.0 * (fx * 9.0).sin() * (fy * 7.0).cos();
            image::Rgb([
                r.clamp(0.0, 255.0) as u8,
                g.clamp(0.0, 255.0) as u8,
                b.clamp(0.0, 255.0) as u8,
            ])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        jpeg
    }

    #[test]
    fn a_resized_window_is_the_crop_of_the_whole_resize() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(400, 300, |x, y| {
            image::Rgb([
                ((x * 7 + y * 3) % 256) as u8,
                ((x * x + y) % 251) as u8,
                ((x / 3 + y * y / 5) % 256) as u8,
            ])
        }));
        let alg = ResizeAlg::Convolution(FilterType::CatmullRom);
        for (size, window) in [
            (
                (298, 224),
                Window {
                    x: 37,
                    y: 0,
                    w: 224,
                    h: 224,
                },
            ),
            (
                (224, 170),
                Window {
                    x: 0,
                    y: 23,
                    w: 224,
                    h: 100,
                },
            ),
        ] {
            let whole = resize_rgb(
                &img,
                size,
                Window {
                    x: 0,
                    y: 0,
                    w: size.0,
                    h: size.1,
                },
                alg,
            );
            assert_eq!(whole.dimensions(), size);
            let expect = image::imageops::crop_imm(&whole, window.x, window.y, window.w, window.h)
                .to_image();
            let got = resize_rgb(&img, size, window, alg);
            assert_eq!(got.dimensions(), (window.w, window.h));
            let diffs: Vec<u8> = got
                .as_raw()
                .iter()
                .zip(expect.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            assert!(
                diffs.iter().all(|&d| d <= 1),
                "largest difference {:?}",
                diffs.iter().max()
            );
            assert!(
                diffs.iter().filter(|&&d| d > 0).count() * 100 <= diffs.len(),
                "more than 1% of values differ"
            );
        }
    }

    #[test]
    fn an_extreme_panorama_is_resized_only_where_the_crop_shows_it() {
        let cfg = clip_cfg(224);
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            16_384,
            10,
            image::Rgb([200, 100, 50]),
        ));
        // Shortest side to 224 would make it 367,001 pixels wide; only the 224x224 centre is made.
        let (nw, nh) = scale_side(16_384, 10, 224, false);
        assert_eq!((nw, nh), (367_001, 224));
        let window = Window {
            x: centre_offset(nw, 224),
            y: 0,
            w: 224,
            h: 224,
        };
        assert_eq!(
            resize_rgb(&img, (nw, nh), window, cfg.filter().unwrap()).dimensions(),
            (224, 224)
        );
        let tensor = cfg.tensor(&img);
        assert_eq!(tensor.len(), cfg.tensor_len());
        let red = (200.0 / 255.0 - cfg.mean[0]) / cfg.std[0];
        assert!(
            tensor[..224 * 224].iter().all(|v| (v - red).abs() < 0.02),
            "a uniform picture stays uniform"
        );
    }

    #[test]
    fn dct_reduction_keeps_twice_the_resize_target() {
        let cfg = clip_cfg(224);
        assert_eq!(cfg.reduction(4000, 3000), 4);
        assert_eq!(cfg.reduction(3000, 4000), 4);
        assert_eq!(cfg.reduction(1000, 896), 2);
        assert_eq!(cfg.reduction(1000, 895), 1);
        assert_eq!(cfg.reduction(600, 447), 1);
        assert_eq!(cfg.reduction(300, 200), 1);
    }

    #[test]
    fn large_jpegs_decoded_at_reduced_scale_give_nearly_the_full_decodes_input() {
        let cfg = clip_cfg(224);
        let jpeg = photo_like_jpeg(1920, 1080);
        for orientation in [1u16, 6, 3] {
            let bytes = with_exif_orientation(&jpeg, orientation);
            let (scaled, full) = decode_jpeg_scaled(
                &bytes,
                DecodeLimits::default(),
                Exif::read(&bytes).orientation,
                |w, h| cfg.reduction(w, h),
            )
            .unwrap();
            let reference_img = decode_bytes(&bytes, DecodeLimits::default()).unwrap();
            assert_eq!(
                full,
                (reference_img.width(), reference_img.height()),
                "orientation {orientation}"
            );
            assert_eq!(
                (scaled.width() * 2, scaled.height() * 2),
                full,
                "orientation {orientation}: decoded at 1/2"
            );
            let (fast, size) = cfg.picture(&bytes, DecodeLimits::default()).unwrap();
            assert_eq!(size, full);
            let reference = cfg.tensor(&reference_img);
            assert_eq!(fast.len(), reference.len());
            let diffs: Vec<f32> = fast
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .collect();
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            let max = diffs.iter().cloned().fold(0.0, f32::max);
            // Normalised units: 0.04 is about 2.7/255 of a pixel value.
            assert!(
                mean < 0.04,
                "orientation {orientation}: mean abs diff {mean}"
            );
            assert!(max < 1.0, "orientation {orientation}: max abs diff {max}");
        }
    }

    #[test]
    fn small_jpegs_and_other_formats_take_the_ordinary_path() {
        let cfg = clip_cfg(224);
        let jpeg = photo_like_jpeg(400, 300);
        assert!(decode_jpeg_scaled(
            &jpeg,
            DecodeLimits::default(),
            Orientation::NoTransforms,
            |w, h| cfg.reduction(w, h),
        )
        .is_none());
        assert_eq!(
            cfg.picture(&jpeg, DecodeLimits::default()).unwrap(),
            (
                cfg.tensor(&decode_bytes(&jpeg, DecodeLimits::default()).unwrap()),
                (400, 300)
            )
        );
        assert!(cfg
            .picture(&jpeg[..jpeg.len() / 2], DecodeLimits::default())
            .is_err());
        assert!(cfg
            .picture(b"not a picture", DecodeLimits::default())
            .is_err());
        let tight = DecodeLimits {
            max_side: 1000,
            max_alloc: 512 << 20,
        };
        assert!(cfg.picture(&photo_like_jpeg(1920, 1080), tight).is_err());
    }

    #[test]
    fn truncated_jpegs_are_refused_and_complete_ones_accepted() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([x as u8 * 3, y as u8 * 5, 90])
        }));
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        assert!(decode_bytes(&jpeg, DecodeLimits::default()).is_ok());
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"camera maker trailer");
        assert!(decode_bytes(&trailer, DecodeLimits::default()).is_ok());
        for cut in [jpeg.len() - 2, jpeg.len() / 2, 300] {
            let err = decode_bytes(&jpeg[..cut], DecodeLimits::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("truncated"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn pictures_over_the_limits_are_refused() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(64, 64));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let tight = DecodeLimits {
            max_side: 32,
            max_alloc: 1 << 20,
        };
        assert!(decode_bytes(&png, tight).is_err());
        assert!(decode_bytes(&png, DecodeLimits::default()).is_ok());
    }
}

//! Picture decoding and CLIP preprocessing, exactly as `visual/preprocess_cfg.json` says and
//! as Immich's machine-learning service applies it (its `decode_pil`, `resize_pil`,
//! `crop_pil` and `to_numpy`, with PIL underneath).
//!
//! Decoding is bounded (image crate limits: dimensions and allocation) and applies the EXIF
//! orientation first, which the image crate does not do by itself; the orientation comes from
//! the one parse of the EXIF block ([`crate::metadata::Exif`]), which also gives the capture
//! time. Pixels become 8-bit RGB the way PIL's `convert("RGB")` makes them: alpha is dropped
//! (not composited), grey is replicated, 16-bit samples keep their high byte, and CMYK JPEGs
//! go through PIL's own CMYK formula ([`cmyk_to_rgb`]).
//!
//! The geometry is Immich's ([`Geometry`]): `shortest` resizes the short side to `size` and
//! the long side to `int(long / short * size)` (a float ratio, truncated), then crops
//! `size`x`size` at `int(w / 2 - size / 2)`, `int(h / 2 - size / 2)`; `squash` resizes
//! straight to `size`x`size`. (`longest`, open_clip's letterbox, which Immich never uses, pads
//! with `fill_color` at torchvision's offsets.) The resize is PIL's antialiased convolution
//! with the file's filter (bicubic, bilinear, ...), run by fast_image_resize, whose fixed-point
//! coefficients round a little differently from PIL's at some pixels (the families' test
//! measures what that costs). The values are Immich's `x * (1 / std) - mean / std` in f32, in
//! that order, so a tensor whose resize matches PIL's is bit-identical to Immich's.
//!
//! JPEGs are decoded by jpeg-decoder, whose upsampling of the colour planes and conversion to
//! RGB are libjpeg's, which PIL uses (the image crate's decoder rounds differently, enough to
//! move a SigLIP vector measurably); a JPEG it refuses goes to the image crate.
//!
//! [`PreprocessCfg::picture`] is the whole path from file bytes to model input. A JPEG much
//! larger than the model input is decoded at 1/2, 1/4 or 1/8 of its size by the decoder's DCT
//! scaling (the pixels it would throw away are never reconstructed), keeping at least twice
//! the resize target so the filter still does the final, antialiased reduction; the resize
//! target and crop are computed from the full size, so the geometry is the same as a full
//! decode's (the pixels differ slightly from PIL's full decode: the one deliberate departure
//! from Immich, bought for a several-fold faster decode of camera photos).
//!
//! Every step that can fail returns an error: a picture is never encoded from a wrong input.

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use fast_image_resize as fir;
use fir::{FilterType, ResizeAlg};
use image::metadata::Orientation;
use image::{DynamicImage, ImageReader, Limits};
use serde::Deserialize;

use crate::error::DeviceError;
use crate::metadata::Exif;

/// How the picture is fitted into the square input (`resize_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Shortest side to `size`, then centre crop (CLIP's default, Immich's `resize_pil` +
    /// `crop_pil`).
    Shortest,
    /// Longest side to `size`, then pad with `fill_color` (open_clip's letterbox; Immich does
    /// not use it).
    Longest,
    /// Both sides to `size`, ignoring the aspect ratio (SigLIP, NLLB-CLIP).
    Squash,
}

/// The resampling filter (`interpolation`), by PIL's names (`Image.Resampling`), which are the
/// ones open_clip writes and Immich looks up; case does not matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// PIL NEAREST.
    Nearest,
    /// PIL BOX.
    Box,
    /// PIL BILINEAR (triangle filter, antialiased).
    Bilinear,
    /// PIL HAMMING.
    Hamming,
    /// PIL BICUBIC (Keys cubic, a = -0.5, antialiased).
    Bicubic,
    /// PIL LANCZOS (3 lobes).
    Lanczos,
}

impl Interpolation {
    /// Every name, as an error message lists them.
    pub const NAMES: &'static str = "bicubic, bilinear, nearest, box, hamming, lanczos";

    /// The filter named `name` (any case), if PIL has it.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "nearest" => Self::Nearest,
            "box" => Self::Box,
            "bilinear" => Self::Bilinear,
            "hamming" => Self::Hamming,
            "bicubic" => Self::Bicubic,
            "lanczos" => Self::Lanczos,
            _ => return None,
        })
    }

    /// fast_image_resize's algorithm for it: the same kernels, support and antialiasing
    /// (the kernel widened by the reduction factor) as PIL's `ImagingResample`.
    fn alg(self) -> ResizeAlg {
        match self {
            Self::Nearest => ResizeAlg::Nearest,
            Self::Box => ResizeAlg::Convolution(FilterType::Box),
            Self::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Self::Hamming => ResizeAlg::Convolution(FilterType::Hamming),
            Self::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
            Self::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
        }
    }
}

impl<'de> Deserialize<'de> for Interpolation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown interpolation {name:?} (PIL's filters: {})",
                Self::NAMES
            ))
        })
    }
}

/// `visual/preprocess_cfg.json` as written (open_clip's `get_model_preprocess_cfg`).
#[derive(Deserialize)]
struct RawCfg {
    #[serde(deserialize_with = "size_from_int_or_pair")]
    size: u32,
    #[serde(default = "rgb")]
    mode: String,
    // f64 first, then f32, as NumPy makes its float32 arrays from Python's floats.
    mean: [f64; 3],
    std: [f64; 3],
    #[serde(default = "bicubic")]
    interpolation: Interpolation,
    #[serde(default = "shortest")]
    resize_mode: ResizeMode,
    #[serde(default)]
    fill_color: u8,
}

/// `visual/preprocess_cfg.json`, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessCfg {
    /// Side of the square input.
    pub size: u32,
    /// Colour mode; only `RGB` is supported.
    pub mode: String,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// The resampling filter.
    pub interpolation: Interpolation,
    /// How the picture is fitted.
    pub resize_mode: ResizeMode,
    /// Padding value for `longest`.
    pub fill_color: u8,
}

fn rgb() -> String {
    "RGB".into()
}
fn bicubic() -> Interpolation {
    Interpolation::Bicubic
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
        Size::Pair([h, w]) => Err(serde::de::Error::custom(format!(
            "size [{h}, {w}]: only square input sizes are supported"
        ))),
    }
}

/// Where the model input comes from in a picture of a given size: the size the whole picture
/// is resized to, and the window of that resized picture that fills the input (`shortest`,
/// `squash`) or the place of the resized picture in the input (`longest`, padded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Width and height of the whole resized picture.
    pub resized: (u32, u32),
    /// The part of the resized picture that is computed and shown.
    pub window: Window,
    /// Offset of that part in the input (non-zero only when padding).
    pub pad: (u32, u32),
}

/// A rectangle of the resized picture, in its pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}

impl PreprocessCfg {
    /// Parses and checks a `preprocess_cfg.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DeviceError> {
        let bad = DeviceError::Invalid;
        let raw: RawCfg = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let cfg = PreprocessCfg {
            size: raw.size,
            mode: raw.mode,
            mean: raw.mean.map(|m| m as f32),
            std: raw.std.map(|s| s as f32),
            interpolation: raw.interpolation,
            resize_mode: raw.resize_mode,
            fill_color: raw.fill_color,
        };
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
        Ok(cfg)
    }

    /// Number of f32 values in one preprocessed picture (`3 * size * size`).
    pub fn tensor_len(&self) -> usize {
        3 * self.size as usize * self.size as usize
    }

    /// Where the input comes from in a picture of `width`x`height` (oriented) pixels.
    pub fn geometry(&self, (width, height): (u32, u32)) -> Geometry {
        let s = self.size;
        let (w, h) = (width.max(1), height.max(1));
        match self.resize_mode {
            ResizeMode::Squash => Geometry {
                resized: (s, s),
                window: Window {
                    x: 0,
                    y: 0,
                    w: s,
                    h: s,
                },
                pad: (0, 0),
            },
            ResizeMode::Shortest => {
                // Immich's resize_pil: `int((h / w) * size)` with Python's floats (f64), the
                // width side when the picture is narrower than tall.
                let long = |long: u32, short: u32| ((long as f64 / short as f64) * s as f64) as u32;
                let (nw, nh) = if w < h {
                    (s, long(h, w).max(s))
                } else {
                    (long(w, h).max(s), s)
                };
                // Immich's crop_pil: `int(w / 2 - size / 2)`, truncated.
                let offset = |side: u32| (side as f64 / 2.0 - s as f64 / 2.0) as u32;
                Geometry {
                    resized: (nw, nh),
                    window: Window {
                        x: offset(nw),
                        y: offset(nh),
                        w: s,
                        h: s,
                    },
                    pad: (0, 0),
                }
            }
            ResizeMode::Longest => {
                let (nw, nh) = scale_side(w, h, s, w >= h);
                Geometry {
                    resized: (nw, nh),
                    window: Window {
                        x: 0,
                        y: 0,
                        w: nw,
                        h: nh,
                    },
                    pad: (centre_offset(s, nw), centre_offset(s, nh)),
                }
            }
        }
    }

    /// Turns a decoded picture into the model's input, NCHW with N = 1.
    pub fn tensor(&self, img: &DynamicImage) -> Result<Vec<f32>, DeviceError> {
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
                return Ok((self.tensor_for_size(&img, full)?, full));
            }
        }
        let img = decode_oriented(bytes, limits, orientation)?;
        Ok((self.tensor(&img)?, (img.width(), img.height())))
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
    fn tensor_for_size(
        &self,
        img: &DynamicImage,
        full: (u32, u32),
    ) -> Result<Vec<f32>, DeviceError> {
        let size = self.size;
        let geometry = self.geometry(full);
        // Only the part of the resized picture that the input shows is computed: a cropped
        // mode never resizes what it crops away (nor allocates it: a 16384x10 panorama would
        // otherwise be resized to 367,001x224 pixels first).
        let window = geometry.window;
        let rgb = resize_rgb(
            &rgb8_like_pil(img),
            geometry.resized,
            window,
            self.interpolation.alg(),
        )?;
        // Immich's order of operations, in f32: x / 255, then x * (1 / std) - mean / std.
        let scale = self.std.map(|s| 1.0f32 / s);
        let shift: [f32; 3] = std::array::from_fn(|c| self.mean[c] / self.std[c]);
        let mut out = vec![0.0f32; self.tensor_len()];
        let plane = (size * size) as usize;
        let (pad_x, pad_y) = geometry.pad;
        for c in 0..3 {
            let fill = (self.fill_color as f32 / 255.0) * scale[c] - shift[c];
            let channel = &mut out[c * plane..(c + 1) * plane];
            channel.fill(fill);
            for wy in 0..window.h.min(size) {
                for wx in 0..window.w.min(size) {
                    let (x, y) = (wx + pad_x, wy + pad_y);
                    if x >= size || y >= size {
                        continue;
                    }
                    let p = rgb.get_pixel(wx, wy).0[c];
                    channel[(y * size + x) as usize] = (p as f32 / 255.0) * scale[c] - shift[c];
                }
            }
        }
        Ok(out)
    }
}

/// New size with the chosen side set to `target` and the other scaled, truncated like
/// torchvision's `int(size * long / short)` (the `longest` mode).
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

/// `int(round((outer - inner) / 2))` with Python's round-half-to-even; 0 when inner >= outer
/// (torchvision's padding offset, for `longest`).
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

/// The picture as 8-bit RGB, as PIL's `convert("RGB")` gives it: alpha dropped (not
/// composited: the colour under transparent pixels is kept), grey replicated, 16-bit RGB
/// samples reduced to their high byte (PIL reads 16-bit PNGs as `RGB;16B`). 16-bit grey also
/// keeps its high byte, where PIL (mode `I;16`) would clip every value above 255 to white: the
/// picture's true content is encoded rather than a white square.
pub fn rgb8_like_pil(img: &DynamicImage) -> image::RgbImage {
    fn high<const N: usize>(
        img: &image::ImageBuffer<impl image::Pixel<Subpixel = u16>, Vec<u16>>,
        pick: impl Fn(&[u16]) -> [u16; 3],
    ) -> image::RgbImage {
        let (w, h) = img.dimensions();
        let raw: Vec<u8> = img
            .as_raw()
            .chunks_exact(N)
            .flat_map(|p| pick(p).map(|v| (v >> 8) as u8))
            .collect();
        image::RgbImage::from_raw(w, h, raw).expect("3 bytes for every pixel")
    }
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb.clone(),
        DynamicImage::ImageRgb16(i) => high::<3>(i, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageRgba16(i) => high::<4>(i, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma16(i) => high::<1>(i, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA16(i) => high::<2>(i, |p| [p[0]; 3]),
        // 8-bit RGBA, grey and grey+alpha: channels copied, alpha dropped; float pictures
        // clamped and rounded.
        other => other.to_rgb8(),
    }
}

/// The `window` of the picture resized to `size` (width, height), as RGB8: the same pixels as
/// resizing the whole picture and cropping, computed for the window only (the filter still
/// reads the source pixels around it). fast_image_resize: SIMD convolution (SSE4.1/AVX2 on
/// x86, NEON on arm64) with PIL's kernels and fixed-point arithmetic.
fn resize_rgb(
    rgb: &image::RgbImage,
    size: (u32, u32),
    window: Window,
    alg: ResizeAlg,
) -> Result<image::RgbImage, DeviceError> {
    let (sw, sh) = rgb.dimensions();
    if window.w == 0
        || window.h == 0
        || window.x + window.w > size.0
        || window.y + window.h > size.1
    {
        return Err(DeviceError::Decode(format!(
            "preprocessing: window {window:?} outside the resized {}x{}",
            size.0, size.1
        )));
    }
    if (sw, sh) == size {
        return Ok(
            image::imageops::crop_imm(rgb, window.x, window.y, window.w, window.h).to_image(),
        );
    }
    // The window in source pixels: `a * side / resized`, which is exact where the true value
    // is an integer (a window that ends at the resized picture's edge ends at the source's
    // edge, where `a * (side / resized)` could overshoot it by a rounding error).
    let at = |a: u32, side: u32, resized: u32| {
        (a as f64 * side as f64 / resized as f64).min(side as f64)
    };
    let (x0, x1) = (
        at(window.x, sw, size.0),
        at(window.x + window.w, sw, size.0),
    );
    let (y0, y1) = (
        at(window.y, sh, size.1),
        at(window.y + window.h, sh, size.1),
    );
    let mut out = image::RgbImage::new(window.w, window.h);
    fir_resize(
        rgb.as_raw(),
        (sw, sh),
        (x0, y0, x1 - x0, y1 - y0),
        &mut out,
        (window.w, window.h),
        alg,
    )?;
    Ok(out)
}

fn fir_resize(
    src: &[u8],
    (sw, sh): (u32, u32),
    crop: (f64, f64, f64, f64),
    dst: &mut [u8],
    (w, h): (u32, u32),
    alg: ResizeAlg,
) -> Result<(), DeviceError> {
    let failed = |e: &dyn std::fmt::Display| DeviceError::Decode(format!("resize: {e}"));
    let src =
        fir::images::ImageRef::new(sw, sh, src, fir::PixelType::U8x3).map_err(|e| failed(&e))?;
    let mut dst = fir::images::Image::from_slice_u8(w, h, dst, fir::PixelType::U8x3)
        .map_err(|e| failed(&e))?;
    let options = fir::ResizeOptions::new()
        .resize_alg(alg)
        .crop(crop.0, crop.1, crop.2, crop.3);
    fir::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| failed(&e))
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
    if bytes.starts_with(&[0xff, 0xd8]) {
        if let Some(img) = decode_cmyk_jpeg(bytes, limits, orientation)? {
            return Ok(img);
        }
        // jpeg-decoder at full scale: libjpeg's upsampling and colour conversion, as PIL
        // decodes; a JPEG it refuses goes to the image crate, which says what is wrong.
        if let Some((img, _)) = decode_jpeg_scaled(bytes, limits, orientation, |_, _| 1) {
            return Ok(img);
        }
    }
    decode_reader(Cursor::new(bytes), limits, orientation)
}

/// A CMYK (or YCCK) JPEG decoded to RGB the way PIL does it, `None` for any other JPEG.
/// The decoder gives inverted CMYK (`255 - stored`), which is what PIL reads from a file with
/// Adobe's marker (`CMYK;I`, as Photoshop writes them); without the marker PIL takes the
/// stored values, so they are inverted back. Then PIL's `cmyk2rgb` ([`cmyk_to_rgb`]).
fn decode_cmyk_jpeg(
    bytes: &[u8],
    limits: DecodeLimits,
    orientation: Orientation,
) -> Result<Option<DynamicImage>, DeviceError> {
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    decoder.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    if decoder.read_info().is_err() {
        // Not for this path to judge: the ordinary decoder reports what is wrong.
        return Ok(None);
    }
    let Some(info) = decoder.info() else {
        return Ok(None);
    };
    if info.pixel_format != jpeg_decoder::PixelFormat::CMYK32 {
        return Ok(None);
    }
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w == 0 || h == 0 || w > limits.max_side || h > limits.max_side {
        return Err(DeviceError::Decode(format!(
            "a {w}x{h} picture is outside the limits (largest side {})",
            limits.max_side
        )));
    }
    let cmyk = decoder
        .decode()
        .map_err(|e| DeviceError::Decode(e.to_string()))?;
    let invert = !has_adobe_marker(bytes);
    let rgb: Vec<u8> = cmyk
        .chunks_exact(4)
        .flat_map(|p| {
            let p = [p[0], p[1], p[2], p[3]];
            cmyk_to_rgb(if invert { p.map(|v| 255 - v) } else { p })
        })
        .collect();
    let mut img = DynamicImage::ImageRgb8(
        image::RgbImage::from_raw(w, h, rgb)
            .ok_or_else(|| DeviceError::Decode("CMYK JPEG: short pixel data".into()))?,
    );
    img.apply_orientation(orientation);
    Ok(Some(img))
}

/// PIL's CMYK to RGB (`cmyk2rgb` in its Convert.c): each colour is `(255 - k)` less the
/// colourant's share of it, `nk - c * nk / 255` rounded as PIL's `MULDIV255`.
pub fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let nk = 255 - u32::from(k);
    let muldiv255 = |a: u8| {
        let t = u32::from(a) * nk + 128;
        ((t >> 8) + t) >> 8
    };
    [c, m, y].map(|v| nk.saturating_sub(muldiv255(v)).min(255) as u8)
}

/// Whether the JPEG's header segments (before the first scan) hold Adobe's APP14 marker.
fn has_adobe_marker(bytes: &[u8]) -> bool {
    let mut at = 2;
    while at + 4 <= bytes.len() && bytes[at] == 0xff {
        let marker = bytes[at + 1];
        if marker == 0xda || marker == 0xd9 {
            return false;
        }
        let len = usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]));
        if marker == 0xee && bytes.get(at + 4..at + 9) == Some(b"Adobe".as_slice()) {
            return true;
        }
        at += 2 + len;
    }
    false
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
/// Returns the picture and its full size (oriented), or `None` when this decoder cannot take
/// the file (CMYK, 16-bit, an error): the caller then decodes it with the image crate, which
/// also reports the errors.
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
    let f = reduction(w, h).max(1);
    let (sw, sh) = if f > 1 {
        decoder
            .scale(w.div_ceil(f) as u16, h.div_ceil(f) as u16)
            .ok()?
    } else {
        (info.width, info.height)
    };
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

    fn window(x: u32, y: u32, s: u32) -> Window {
        Window { x, y, w: s, h: s }
    }

    #[test]
    fn the_geometry_is_immichs() {
        let cfg = clip_cfg(224);
        let g = |w, h| {
            let g = cfg.geometry((w, h));
            (g.resized, g.window)
        };
        // A square: no crop.
        assert_eq!(g(257, 257), ((224, 224), window(0, 0, 224)));
        // int(405 / 304 * 224) = int(298.42) and int(298 / 2 - 112) = 37.
        assert_eq!(g(405, 304), ((298, 224), window(37, 0, 224)));
        // Portrait: the width is the short side.
        assert_eq!(g(211, 307), ((224, 325), window(0, 50, 224)));
        // An odd excess is cut on the right (int truncates), where open_clip's round() would
        // cut on the left every other time.
        assert_eq!(g(331, 223), ((332, 224), window(54, 0, 224)));
        // One pixel wide: int(97 / 1 * 224) = 21728.
        assert_eq!(g(1, 97), ((224, 21_728), window(0, 10_752, 224)));
        assert_eq!(g(97, 1), ((21_728, 224), window(10_752, 0, 224)));
        // Float ratio, as Python computes it: (3 / 7) ... the long side from `long / short`.
        assert_eq!(g(7, 3).0, ((7.0f64 / 3.0 * 224.0) as u32, 224));
        let squash = PreprocessCfg {
            resize_mode: ResizeMode::Squash,
            ..clip_cfg(384)
        };
        let s = squash.geometry((331, 223));
        assert_eq!((s.resized, s.window), ((384, 384), window(0, 0, 384)));
    }

    #[test]
    fn a_window_ending_at_the_resized_edge_ends_at_the_source_edge() {
        // 257 -> 224 (models/samples): 224 * (257 / 224) is 257.00000000000003 in f64, which
        // fast_image_resize refused as a crop box out of the picture; the picture got a black
        // input. Every size from 225 to 1000, both sides, now resizes.
        let cfg = clip_cfg(224);
        for side in 225..1000u32 {
            let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
                side,
                side + 3,
                image::Rgb([200, 100, 50]),
            ));
            let t = cfg.tensor(&img).unwrap_or_else(|e| panic!("{side}: {e}"));
            let red = (200.0 / 255.0) * (1.0 / cfg.std[0]) - cfg.mean[0] / cfg.std[0];
            assert!(
                (t[0] - red).abs() < 1e-3 && (t[224 * 224 - 1] - red).abs() < 1e-3,
                "{side}"
            );
        }
    }

    #[test]
    fn unknown_resize_modes_and_filters_are_named() {
        let err = |json: &str| {
            PreprocessCfg::from_json(json.as_bytes())
                .unwrap_err()
                .to_string()
        };
        let e = err(r#"{"size": 224, "mean": [0,0,0], "std": [1,1,1], "resize_mode": "fit"}"#);
        assert!(e.contains("fit") && e.contains("shortest"), "{e}");
        let e = err(r#"{"size": 224, "mean": [0,0,0], "std": [1,1,1], "interpolation": "spline"}"#);
        assert!(e.contains("spline") && e.contains("bicubic"), "{e}");
        for (name, want) in [
            ("BICUBIC", Interpolation::Bicubic),
            ("bilinear", Interpolation::Bilinear),
            ("Lanczos", Interpolation::Lanczos),
            ("nearest", Interpolation::Nearest),
            ("box", Interpolation::Box),
            ("hamming", Interpolation::Hamming),
        ] {
            let cfg = PreprocessCfg::from_json(
                format!(r#"{{"size": [256, 256], "mean": [0,0,0], "std": [1,1,1], "interpolation": "{name}", "resize_mode": "squash"}}"#)
                    .as_bytes(),
            )
            .unwrap();
            assert_eq!(
                (cfg.interpolation, cfg.size, cfg.resize_mode),
                (want, 256, ResizeMode::Squash)
            );
        }
    }

    #[test]
    fn normalisation_is_immichs_order_in_f32() {
        let cfg = clip_cfg(16);
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            16,
            16,
            image::Rgb([1, 128, 254]),
        ));
        let t = cfg.tensor(&img).unwrap();
        for (c, v) in [1u8, 128, 254].into_iter().enumerate() {
            let want = (v as f32 / 255.0) * (1.0f32 / cfg.std[c]) - cfg.mean[c] / cfg.std[c];
            assert_eq!(t[c * 256].to_bits(), want.to_bits(), "channel {c}");
        }
        // The mean and std go through f64 first, as NumPy's float32 arrays of Python floats.
        assert_eq!(cfg.mean[0], 0.48145466f64 as f32);
    }

    #[test]
    fn pixels_become_rgb_as_pil_converts_them() {
        let rgb16 =
            image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(1, 1, vec![0x12ff, 0x0080, 0xffff])
                .unwrap();
        assert_eq!(
            rgb8_like_pil(&DynamicImage::ImageRgb16(rgb16)).as_raw(),
            &vec![0x12, 0x00, 0xff]
        );
        let rgba = image::RgbaImage::from_raw(1, 1, vec![10, 20, 30, 0]).unwrap();
        assert_eq!(
            rgb8_like_pil(&DynamicImage::ImageRgba8(rgba)).as_raw(),
            &vec![10, 20, 30]
        );
        let grey = image::GrayImage::from_raw(1, 1, vec![77]).unwrap();
        assert_eq!(
            rgb8_like_pil(&DynamicImage::ImageLuma8(grey)).as_raw(),
            &vec![77, 77, 77]
        );
        // PIL's cmyk2rgb, values checked against Pillow 13.
        assert_eq!(cmyk_to_rgb([252, 250, 133, 0]), [3, 5, 122]);
        assert_eq!(cmyk_to_rgb([0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(cmyk_to_rgb([0, 0, 0, 0]), [255, 255, 255]);
        assert_eq!(cmyk_to_rgb([128, 64, 200, 100]), {
            let nk = 155u32;
            let m = |a: u32| {
                let t = a * nk + 128;
                (((t >> 8) + t) >> 8) as u8
            };
            [155 - m(128), 155 - m(64), 155 - m(200)]
        });
    }

    #[test]
    fn a_uniform_picture_normalises_to_the_expected_constant() {
        let cfg = clip_cfg(32);
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            50,
            40,
            image::Rgb([255, 0, 128]),
        ));
        let t = cfg.tensor(&img).unwrap();
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
                &img.to_rgb8(),
                size,
                Window {
                    x: 0,
                    y: 0,
                    w: size.0,
                    h: size.1,
                },
                alg,
            )
            .unwrap();
            assert_eq!(whole.dimensions(), size);
            let expect = image::imageops::crop_imm(&whole, window.x, window.y, window.w, window.h)
                .to_image();
            let got = resize_rgb(&img.to_rgb8(), size, window, alg).unwrap();
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
        let Geometry {
            resized: (nw, nh),
            window,
            ..
        } = cfg.geometry((16_384, 10));
        assert_eq!((nw, nh), (367_001, 224));
        assert_eq!((window.x, window.w, window.h), (183_388, 224, 224));
        assert_eq!(
            resize_rgb(&img.to_rgb8(), (nw, nh), window, cfg.interpolation.alg())
                .unwrap()
                .dimensions(),
            (224, 224)
        );
        let tensor = cfg.tensor(&img).unwrap();
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
            let reference = cfg.tensor(&reference_img).unwrap();
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
    fn small_jpegs_are_decoded_at_full_scale_as_decode_bytes_does() {
        let cfg = clip_cfg(224);
        let jpeg = photo_like_jpeg(400, 300);
        let (img, full) = decode_jpeg_scaled(
            &jpeg,
            DecodeLimits::default(),
            Orientation::NoTransforms,
            |w, h| cfg.reduction(w, h),
        )
        .unwrap();
        assert_eq!((img.width(), img.height(), full), (400, 300, (400, 300)));
        assert_eq!(
            cfg.picture(&jpeg, DecodeLimits::default()).unwrap(),
            (
                cfg.tensor(&decode_bytes(&jpeg, DecodeLimits::default()).unwrap())
                    .unwrap(),
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

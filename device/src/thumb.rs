//! Thumbnails: picture bytes in, a small EXIF-oriented JPEG out. A pure function, so the HTTP
//! endpoint only reads files, calls it on a blocking thread and caches what it returns.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;

use crate::error::DeviceError;
use crate::preprocess::{decode_for_side, DecodeLimits};

/// JPEG quality of thumbnails: small files, no visible blocks at grid size.
const QUALITY: u8 = 80;

/// A JPEG of the picture in `bytes` whose longer side is at most `max_side` pixels (never
/// enlarged), with the picture's EXIF orientation applied (a JPEG without EXIF is then shown
/// the way up the camera meant by any browser). Corrupt, truncated or oversized pictures are
/// errors, never panics.
pub fn make_thumbnail(
    bytes: &[u8],
    max_side: u32,
    limits: DecodeLimits,
) -> Result<Vec<u8>, DeviceError> {
    let side = max_side.max(1);
    // Large JPEGs are decoded at a reduced scale that still leaves twice the thumbnail's side.
    let img = decode_for_side(bytes, limits, side)?;
    let small = if img.width() > side || img.height() > side {
        img.thumbnail(side, side)
    } else {
        img
    };
    let rgb = small.to_rgb8();
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(Cursor::new(&mut out), QUALITY)
        .encode_image(&rgb)
        .map_err(|e| DeviceError::Decode(format!("thumbnail not encodable: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::decode_bytes;
    use image::{DynamicImage, GenericImageView};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
        }));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    /// `jpeg` with an EXIF block saying Orientation = `orientation`.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut exif = b"Exif\0\0II*\0\x08\0\0\0".to_vec();
        exif.extend_from_slice(&1u16.to_le_bytes());
        exif.extend_from_slice(&0x0112u16.to_le_bytes());
        exif.extend_from_slice(&3u16.to_le_bytes());
        exif.extend_from_slice(&1u32.to_le_bytes());
        exif.extend_from_slice(&orientation.to_le_bytes());
        exif.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xff, 0xe1]);
        out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&exif);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn size_of(thumb: &[u8]) -> (u32, u32) {
        assert!(thumb.starts_with(&[0xff, 0xd8]), "not a JPEG");
        image::load_from_memory(thumb).unwrap().dimensions()
    }

    #[test]
    fn large_pictures_shrink_to_the_side_keeping_their_shape() {
        let thumb = make_thumbnail(&jpeg(800, 400), 200, DecodeLimits::default()).unwrap();
        assert_eq!(size_of(&thumb), (200, 100));
    }

    #[test]
    fn small_pictures_are_not_enlarged() {
        let thumb = make_thumbnail(&jpeg(64, 48), 200, DecodeLimits::default()).unwrap();
        assert_eq!(size_of(&thumb), (64, 48));
    }

    #[test]
    fn exif_orientation_turns_the_thumbnail() {
        let rotated = with_orientation(&jpeg(400, 200), 6);
        let thumb = make_thumbnail(&rotated, 100, DecodeLimits::default()).unwrap();
        assert_eq!(size_of(&thumb), (50, 100));
    }

    #[test]
    fn large_jpegs_are_thumbnailed_from_a_reduced_decode_that_looks_the_same() {
        // Smooth content, as photos are at thumbnail scale.
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(2400, 1600, |x, y| {
            image::Rgb([
                (x / 10 % 256) as u8,
                (y / 7 % 256) as u8,
                ((x + y) / 20 % 256) as u8,
            ])
        }));
        let mut big = Vec::new();
        img.write_to(&mut Cursor::new(&mut big), image::ImageFormat::Jpeg)
            .unwrap();
        let thumb =
            image::load_from_memory(&make_thumbnail(&big, 200, DecodeLimits::default()).unwrap())
                .unwrap()
                .to_rgb8();
        assert_eq!(thumb.dimensions(), (200, 133));
        // Decoded at a quarter of its size (600 px keeps twice 200; an eighth would not).
        assert_eq!(
            decode_for_side(&big, DecodeLimits::default(), 200)
                .unwrap()
                .width(),
            600
        );
        // The thumbnail of the full decode, made the same way.
        let full = decode_bytes(&big, DecodeLimits::default())
            .unwrap()
            .thumbnail(200, 200)
            .to_rgb8();
        let diff: u64 = thumb
            .as_raw()
            .iter()
            .zip(full.as_raw())
            .map(|(a, b)| a.abs_diff(*b) as u64)
            .sum();
        let mean = diff as f64 / thumb.as_raw().len() as f64;
        assert!(mean < 4.0, "mean difference {mean} levels");
    }

    #[test]
    fn png_pictures_give_jpeg_thumbnails() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            30,
            20,
            image::Rgba([1, 2, 3, 128]),
        ));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(
            size_of(&make_thumbnail(&png, 10, DecodeLimits::default()).unwrap()),
            (10, 7)
        );
    }

    #[test]
    fn corrupt_and_truncated_pictures_are_errors() {
        let limits = DecodeLimits::default();
        assert!(make_thumbnail(b"", 64, limits).is_err());
        assert!(make_thumbnail(b"not a picture at all", 64, limits).is_err());
        let good = jpeg(64, 64);
        assert!(make_thumbnail(&good[..good.len() / 2], 64, limits).is_err());
        let tight = DecodeLimits {
            max_side: 32,
            max_alloc: 1 << 20,
        };
        assert!(make_thumbnail(&good, 16, tight).is_err());
    }
}

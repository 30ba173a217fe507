//! Picture metadata besides pixels, from one parse of the EXIF block (kamadak-exif): the
//! orientation the decoders apply, and the capture time (`DateTimeOriginal`).

use std::io::Cursor;

use image::metadata::Orientation;

/// What the EXIF block of a picture says, as the device uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exif {
    /// How to turn the stored pixels upright (no rotation when absent or unusable).
    pub orientation: Orientation,
    /// Capture time (seconds since the epoch, camera-local time taken as UTC, as EXIF stores
    /// no zone): `DateTimeOriginal`, else `DateTime`; `None` when absent or malformed.
    pub taken_s: Option<i64>,
}

impl Exif {
    /// Parses the EXIF block of a JPEG, PNG, WebP or TIFF once. A damaged block costs only
    /// what is damaged: the parse goes on past broken fields, and a picture without a usable
    /// block is upright with no capture time.
    pub fn read(bytes: &[u8]) -> Exif {
        let parsed = exif::Reader::new()
            .continue_on_error(true)
            .read_from_container(&mut Cursor::new(bytes))
            .or_else(|e| e.distill_partial_result(|_| {}));
        let Ok(exif) = parsed else {
            return Exif {
                orientation: Orientation::NoTransforms,
                taken_s: None,
            };
        };
        let orientation = exif
            .get_field(exif::Tag::Orientation, exif::In::PRIMARY)
            .and_then(|f| f.value.get_uint(0))
            .and_then(|v| u8::try_from(v).ok())
            .and_then(Orientation::from_exif)
            .unwrap_or(Orientation::NoTransforms);
        let taken_s = exif
            .get_field(exif::Tag::DateTimeOriginal, exif::In::PRIMARY)
            .or_else(|| exif.get_field(exif::Tag::DateTime, exif::In::PRIMARY))
            .and_then(|field| match &field.value {
                exif::Value::Ascii(parts) => parse_exif_datetime(parts.first()?),
                _ => None,
            });
        Exif {
            orientation,
            taken_s,
        }
    }
}

/// Parses `YYYY:MM:DD HH:MM:SS`.
fn parse_exif_datetime(raw: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(raw).ok()?.trim_end_matches('\0');
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if s.len() < 19 {
        return None;
    }
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 || y < 1800
    {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG-like file: SOI, an APP1 EXIF block with IFD0 entries (tag, type, count, value or
    /// offset), then EOI. Values that do not fit 4 bytes follow the IFD.
    fn with_exif(orientation: u16, datetime: Option<&str>) -> Vec<u8> {
        let mut tiff = b"II*\0\x08\0\0\0".to_vec();
        let entries = 1 + u16::from(datetime.is_some());
        tiff.extend_from_slice(&entries.to_le_bytes());
        tiff.extend_from_slice(&0x0112u16.to_le_bytes());
        tiff.extend_from_slice(&3u16.to_le_bytes());
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        let data_at = 8 + 2 + 12 * u32::from(entries) + 4;
        if let Some(dt) = datetime {
            tiff.extend_from_slice(&0x0132u16.to_le_bytes()); // DateTime
            tiff.extend_from_slice(&2u16.to_le_bytes()); // ASCII
            tiff.extend_from_slice(&(dt.len() as u32 + 1).to_le_bytes());
            tiff.extend_from_slice(&data_at.to_le_bytes());
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        if let Some(dt) = datetime {
            tiff.extend_from_slice(dt.as_bytes());
            tiff.push(0);
        }
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = vec![0xff, 0xd8, 0xff, 0xe1];
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&[0xff, 0xd9]);
        out
    }

    #[test]
    fn parses_exif_datetimes() {
        assert_eq!(parse_exif_datetime(b"1970:01:01 00:00:00"), Some(0));
        assert_eq!(
            parse_exif_datetime(b"2024:02:29 12:34:56"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_exif_datetime(b"0000:00:00 00:00:00"), None);
        assert_eq!(parse_exif_datetime(b"garbage"), None);
    }

    #[test]
    fn one_parse_gives_the_orientation_and_the_capture_time() {
        let exif = Exif::read(&with_exif(6, Some("2024:02:29 12:34:56")));
        assert_eq!(exif.orientation, Orientation::Rotate90);
        assert_eq!(exif.taken_s, Some(1_709_210_096));
        let exif = Exif::read(&with_exif(3, None));
        assert_eq!(
            (exif.orientation, exif.taken_s),
            (Orientation::Rotate180, None)
        );
        // Out-of-range orientations and files without EXIF are upright, without a time.
        assert_eq!(
            Exif::read(&with_exif(42, None)).orientation,
            Orientation::NoTransforms
        );
        let none = Exif::read(b"not a picture");
        assert_eq!(
            (none.orientation, none.taken_s),
            (Orientation::NoTransforms, None)
        );
    }
}

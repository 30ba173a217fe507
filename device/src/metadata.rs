//! Picture metadata besides pixels: the capture time from EXIF `DateTimeOriginal`.

use std::io::Cursor;

/// Capture time (seconds since the epoch, camera-local time taken as UTC, as EXIF stores no
/// zone) from the EXIF block of a JPEG, PNG, WebP or TIFF; `None` when absent or malformed.
pub fn exif_capture_time(bytes: &[u8]) -> Option<i64> {
    let exif = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok()?;
    let field = exif
        .get_field(exif::Tag::DateTimeOriginal, exif::In::PRIMARY)
        .or_else(|| exif.get_field(exif::Tag::DateTime, exif::In::PRIMARY))?;
    let exif::Value::Ascii(ref parts) = field.value else {
        return None;
    };
    parse_exif_datetime(parts.first()?)
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

    #[test]
    fn parses_exif_datetimes() {
        assert_eq!(parse_exif_datetime(b"1970:01:01 00:00:00"), Some(0));
        assert_eq!(
            parse_exif_datetime(b"2024:02:29 12:34:56"),
            Some(1_709_210_096)
        );
        assert_eq!(parse_exif_datetime(b"0000:00:00 00:00:00"), None);
        assert_eq!(parse_exif_datetime(b"garbage"), None);
        assert_eq!(exif_capture_time(b"not a picture"), None);
    }
}

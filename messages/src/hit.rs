//! [`Hit`]: one ranked picture, the one result type of every search: a device's own answer
//! (JSON), a device's fleet answer to the cloud (rkyv) and the fleet's merged answer (JSON).

use rkyv::{Archive, Deserialize as RkyvDeserialize, Serialize as RkyvSerialize};
use serde::{Deserialize, Serialize};

/// One ranked picture.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    Archive,
    RkyvSerialize,
    RkyvDeserialize,
)]
#[rkyv(derive(Debug))]
pub struct Hit {
    /// Path of the picture on its device.
    pub path: String,
    /// Cosine similarity between the query and the picture.
    pub score: f32,
    /// When the picture was taken (EXIF DateTimeOriginal, else its modification time),
    /// seconds since the epoch.
    pub taken_s: i64,
    /// Stable id of the picture on its device (16 hex digits derived from its path): the key
    /// of `GET /thumb/<id>` and of "more like this" from a dashboard.
    #[serde(default)]
    pub id: String,
    /// File size in bytes when it was indexed.
    #[serde(default)]
    pub bytes: u64,
    /// Width in pixels, EXIF orientation applied (0 when unknown).
    #[serde(default)]
    pub width: u32,
    /// Height in pixels, EXIF orientation applied (0 when unknown).
    #[serde(default)]
    pub height: u32,
    /// Source id: the camera whose frame this is (absent for library pictures).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// URL of a small JPEG of the picture, served by the device itself on the home network
    /// (absent when the device's HTTP endpoint is off). The picture never leaves the device
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumb_url: Option<String>,
    /// The device holding the picture, in a fleet search's merged answer (absent in a
    /// device's own answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl Hit {
    /// Orders hits best first; ties by device, then path, so merged answers are stable.
    pub fn best_first(a: &Hit, b: &Hit) -> std::cmp::Ordering {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.device.cmp(&b.device))
            .then_with(|| a.path.cmp(&b.path))
    }
}

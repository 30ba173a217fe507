//! MQTT topic names: the one place that spells them.
//!
//! Dashboard-facing (JSON or plain text):
//! - `edgeclip/<device>/search` <- a search text, or a JSON [`crate::dashboard::SearchRequest`]
//! - `edgeclip/<device>/results` -> JSON results or error
//! - `edgeclip/<device>/status` (retained) -> JSON status
//! - `edgeclip/<device>/availability` (retained) -> `online` / `offline` (last will)
//! - `edgeclip/<device>/command` <- `rescan` / `reindex`
//! - `edgeclip/<device>/best/url` (retained) -> thumbnail URL of the last search's best match
//! - `edgeclip/<device>/best/image` (retained, only if enabled) -> its thumbnail as JPEG bytes
//! - `<prefix>/…/config` (retained) -> Home Assistant discovery, see [`crate::homeassistant`]
//!
//! Device <-> cloud (rkyv frames):
//! - `edgeclip/cloud/encode` <- [`crate::wire::EncodeRequest`], consumed by the cloud through the
//!   shared subscription [`CLOUD_ENCODE_SHARED`] so several cloud workers split the load.
//! - `edgeclip/<device>/cloud/reply` -> [`crate::wire::EncodeReply`], the reply topic a device
//!   names in its requests.
//!
//! Fleet search (every device on the broker):
//! - `edgeclip/fleet/search` <- a search text or a JSON [`crate::dashboard::FleetSearchRequest`],
//!   taken by one cloud worker through [`FLEET_SEARCH_SHARED`].
//! - `edgeclip/fleet/results/<id>` (or the request's `reply_to`) -> JSON
//!   [`crate::dashboard::FleetResponse`].
//! - `edgeclip/<device>/fleet/query` <- [`crate::wire::FleetQuery`]: the text vector, from the
//!   worker that encoded it.
//! - `edgeclip/fleet/answers/<worker>` -> [`crate::wire::FleetAnswer`]: one device's hits, to the
//!   worker that asked.
//!
//! Cloud workers:
//! - `edgeclip/cloud/workers/<worker>` (retained) -> the model id the worker serves while it is
//!   connected, empty once it is gone (its last will).
//!
//! [`route`] tells either program what an incoming message is, and [`subscriptions`] lists
//! what it subscribes to: the two always agree.

use crate::WireError;

/// First level of every edgeclip topic.
pub const ROOT: &str = "edgeclip";
/// Where devices publish text-encoding requests.
pub const CLOUD_ENCODE: &str = "edgeclip/cloud/encode";
/// Name of the shared-subscription group of the cloud workers for encode requests. Each
/// filter gets its own group name: rumqttd keys shared groups by name alone, so two filters in
/// one group would share one delivery cursor.
pub const CLOUD_SHARE_GROUP: &str = "edgeclip-cloud";
/// The filter cloud workers subscribe to: one request goes to one worker of the group.
pub const CLOUD_ENCODE_SHARED: &str = "$share/edgeclip-cloud/edgeclip/cloud/encode";
/// Where devices publish server-ranked searches (method B).
pub const CLOUD_RANK: &str = "edgeclip/cloud/rank";
/// The filter cloud workers subscribe to for server-ranked searches.
pub const CLOUD_RANK_SHARED: &str = "$share/edgeclip-cloud-rank/edgeclip/cloud/rank";
/// Where dashboards and `edgeclip search --all` publish fleet searches.
pub const FLEET_SEARCH: &str = "edgeclip/fleet/search";
/// The filter cloud workers subscribe to for fleet searches (one worker takes each search).
pub const FLEET_SEARCH_SHARED: &str = "$share/edgeclip-cloud-fleet/edgeclip/fleet/search";
/// Prefix of the default reply topics of fleet searches.
pub const FLEET_RESULTS_PREFIX: &str = "edgeclip/fleet/results/";
/// Prefix of the topics on which a worker collects the devices' fleet answers.
pub const FLEET_ANSWERS_PREFIX: &str = "edgeclip/fleet/answers/";
/// Filter matching every device's availability topic.
pub const ALL_AVAILABILITY: &str = "edgeclip/+/availability";
/// Payload of the availability topic while the device is connected.
pub const ONLINE: &str = "online";
/// Payload of the availability topic once the device is gone (also its last will).
pub const OFFLINE: &str = "offline";

/// Filter matching every cloud worker's presence topic.
pub const ALL_WORKERS: &str = "edgeclip/cloud/workers/+";

/// Presence topic of cloud worker `worker` (retained: the model id it serves, or empty).
pub fn worker_presence(worker: &str) -> String {
    format!("{ROOT}/cloud/workers/{worker}")
}

/// Who receives a message: a device, with its id and Home Assistant discovery prefix if
/// discovery is on, or a cloud worker with its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener<'a> {
    /// A device.
    Device {
        /// Its id.
        id: &'a str,
        /// Home Assistant's discovery prefix, when the device announces itself there.
        homeassistant: Option<&'a str>,
    },
    /// A cloud worker.
    Worker {
        /// Its id.
        id: &'a str,
    },
}

/// What an incoming message is, from its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'t> {
    /// Device: a search from a dashboard (text or JSON).
    Search,
    /// Device: the cloud's reply to one of its requests (rkyv frame).
    CloudReply,
    /// Device: a command (`rescan`, `reindex`).
    Command,
    /// Device: a fleet search's text vector (rkyv frame).
    FleetQuery,
    /// Device: Home Assistant's own status (`online` after it restarts).
    HomeAssistantStatus,
    /// Worker: a text to encode (rkyv frame).
    Encode,
    /// Worker: a server-ranked search chunk (rkyv frame).
    Rank,
    /// Worker: a fleet search (text or JSON).
    FleetSearch,
    /// Worker: a device's answer to one of this worker's fleet queries (rkyv frame).
    FleetAnswer,
    /// Worker: a device's availability (retained `online` / `offline`).
    Availability {
        /// The device.
        device: &'t str,
    },
}

/// What `topic` is for `listener`, or `None` when it is none of its topics.
pub fn route<'t>(topic: &'t str, listener: &Listener<'_>) -> Option<Route<'t>> {
    match *listener {
        Listener::Device { id, homeassistant } => {
            if let Some(prefix) = homeassistant {
                if topic.strip_prefix(prefix) == Some("/status") {
                    return Some(Route::HomeAssistantStatus);
                }
            }
            let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
            let rest = rest.strip_prefix(id)?.strip_prefix('/')?;
            match rest {
                "search" => Some(Route::Search),
                "cloud/reply" => Some(Route::CloudReply),
                "command" => Some(Route::Command),
                "fleet/query" => Some(Route::FleetQuery),
                _ => None,
            }
        }
        Listener::Worker { id } => match topic {
            CLOUD_ENCODE => Some(Route::Encode),
            CLOUD_RANK => Some(Route::Rank),
            FLEET_SEARCH => Some(Route::FleetSearch),
            _ if topic.strip_prefix(FLEET_ANSWERS_PREFIX) == Some(id) => Some(Route::FleetAnswer),
            _ => device_of_availability(topic).map(|device| Route::Availability { device }),
        },
    }
}

/// The topic filters `listener` subscribes to: exactly those [`route`] recognises.
pub fn subscriptions(listener: &Listener<'_>) -> Vec<String> {
    match *listener {
        Listener::Device { id, homeassistant } => {
            let mut filters = vec![search(id), cloud_reply(id), command(id), fleet_query(id)];
            filters.extend(homeassistant.map(crate::homeassistant::ha_status));
            filters
        }
        // The availability filter is a plain subscription: every worker learns the whole
        // fleet from the retained messages.
        Listener::Worker { id } => vec![
            CLOUD_ENCODE_SHARED.to_string(),
            CLOUD_RANK_SHARED.to_string(),
            FLEET_SEARCH_SHARED.to_string(),
            ALL_AVAILABILITY.to_string(),
            fleet_answers(id),
        ],
    }
}

/// Topic a dashboard publishes searches to.
pub fn search(device: &str) -> String {
    format!("{ROOT}/{device}/search")
}
/// Topic the device answers searches on.
pub fn results(device: &str) -> String {
    format!("{ROOT}/{device}/results")
}
/// Retained status topic of a device.
pub fn status(device: &str) -> String {
    format!("{ROOT}/{device}/status")
}
/// Retained availability topic of a device (`online` / `offline`).
pub fn availability(device: &str) -> String {
    format!("{ROOT}/{device}/availability")
}
/// Topic a dashboard sends commands to (`rescan`, `reindex`).
pub fn command(device: &str) -> String {
    format!("{ROOT}/{device}/command")
}
/// Retained topic with the thumbnail URL of the last search's best match.
pub fn best_url(device: &str) -> String {
    format!("{ROOT}/{device}/best/url")
}
/// Retained topic with the last search's best match as JPEG bytes (only when enabled).
pub fn best_image(device: &str) -> String {
    format!("{ROOT}/{device}/best/image")
}
/// Topic on which a device receives the cloud's replies.
pub fn cloud_reply(device: &str) -> String {
    format!("{ROOT}/{device}/cloud/reply")
}

/// Where the worker running a fleet search sends the text vector to `device`.
pub fn fleet_query(device: &str) -> String {
    format!("{ROOT}/{device}/fleet/query")
}
/// Default reply topic of the fleet search with correlation id `id`.
pub fn fleet_results(id: &str) -> String {
    format!("{FLEET_RESULTS_PREFIX}{id}")
}
/// Where devices answer the fleet queries of cloud worker `worker`.
pub fn fleet_answers(worker: &str) -> String {
    format!("{FLEET_ANSWERS_PREFIX}{worker}")
}

/// Checks the reply topic a device is given in a fleet query: a concrete
/// `edgeclip/fleet/answers/<worker>`, so a query cannot make a device publish anywhere else.
pub fn validate_fleet_answer_topic(topic: &str) -> Result<(), WireError> {
    let worker = topic.strip_prefix(FLEET_ANSWERS_PREFIX).unwrap_or_default();
    if worker.is_empty()
        || worker.len() > 64
        || !worker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(WireError::Field {
            field: "reply_to",
            reason: "must be edgeclip/fleet/answers/<worker id>".into(),
        });
    }
    Ok(())
}

/// Checks the reply topic a requester names in a fleet search: a concrete topic (no
/// wildcards, not a `$` system topic), at most 256 bytes, and inside `edgeclip/` only under
/// `edgeclip/fleet/results/`, so a request cannot make the cloud publish searches to devices
/// or requests to the cloud.
pub fn validate_fleet_reply_topic(topic: &str) -> Result<(), WireError> {
    let bad = |reason: &str| {
        Err(WireError::Field {
            field: "reply_to",
            reason: reason.to_string(),
        })
    };
    if topic.is_empty() || topic.len() > 256 {
        return bad("must be 1 to 256 bytes");
    }
    if topic.contains(['+', '#', '\0']) || topic.starts_with('$') {
        return bad("must be a concrete topic (no wildcards, NUL or $)");
    }
    if topic.starts_with("edgeclip/")
        && !(topic.starts_with(FLEET_RESULTS_PREFIX) && topic.len() > FLEET_RESULTS_PREFIX.len())
    {
        return bad("inside edgeclip/ only edgeclip/fleet/results/<...> may be used");
    }
    Ok(())
}

/// The device id in an availability topic, if the topic is one.
pub fn device_of_availability(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("edgeclip/")?;
    let device = rest.strip_suffix("/availability")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// Checks that a device id can stand as one topic level: 1..=64 characters of
/// `[A-Za-z0-9._-]` (no `/`, `+`, `#`, spaces or control characters), and not `cloud`.
pub fn validate_device_id(id: &str) -> Result<(), WireError> {
    let bad = |reason: &str| WireError::Field {
        field: "device_id",
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(bad("may only hold letters, digits, '.', '_' and '-'"));
    }
    if id == "cloud" || id == "fleet" {
        return Err(bad(
            "'cloud' and 'fleet' are reserved for the cloud's and the fleet's topics",
        ));
    }
    Ok(())
}

/// Checks a reply topic named in a request: a concrete topic under `edgeclip/<device>/`, so
/// that a request cannot make the cloud publish into wildcards or other applications' topics.
pub fn validate_reply_topic(topic: &str) -> Result<(), WireError> {
    let bad = |reason: &str| WireError::Field {
        field: "reply_to",
        reason: reason.to_string(),
    };
    if topic.len() > 256 {
        return Err(bad("longer than 256 bytes"));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err(bad("must not contain wildcards or NUL"));
    }
    let mut levels = topic.split('/');
    if levels.next() != Some(ROOT) {
        return Err(bad("must start with 'edgeclip/'"));
    }
    match levels.next() {
        Some(device) => {
            validate_device_id(device).map_err(|_| bad("second level must be a device id"))?
        }
        None => return Err(bad("must name a device")),
    }
    if levels.next().is_none() {
        return Err(bad("must be below the device's level"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_device_topics() {
        assert_eq!(search("cam1"), "edgeclip/cam1/search");
        assert_eq!(results("cam1"), "edgeclip/cam1/results");
        assert_eq!(status("cam1"), "edgeclip/cam1/status");
        assert_eq!(availability("cam1"), "edgeclip/cam1/availability");
        assert_eq!(cloud_reply("cam1"), "edgeclip/cam1/cloud/reply");
        assert_eq!(command("cam1"), "edgeclip/cam1/command");
        assert_eq!(best_url("cam1"), "edgeclip/cam1/best/url");
        assert_eq!(best_image("cam1"), "edgeclip/cam1/best/image");
        assert!(CLOUD_ENCODE_SHARED.ends_with(CLOUD_ENCODE));
        assert!(CLOUD_ENCODE_SHARED.contains(CLOUD_SHARE_GROUP));
    }

    #[test]
    fn every_subscription_routes_and_foreign_topics_do_not() {
        let device = Listener::Device {
            id: "cam1",
            homeassistant: Some("homeassistant"),
        };
        let worker = Listener::Worker { id: "w1" };
        fn routed<'t>(topic: &'t str, who: Listener<'_>) -> Option<Route<'t>> {
            route(topic, &who)
        }
        assert_eq!(routed("edgeclip/cam1/search", device), Some(Route::Search));
        assert_eq!(
            routed("edgeclip/cam1/cloud/reply", device),
            Some(Route::CloudReply)
        );
        assert_eq!(
            routed("edgeclip/cam1/command", device),
            Some(Route::Command)
        );
        assert_eq!(
            routed("edgeclip/cam1/fleet/query", device),
            Some(Route::FleetQuery)
        );
        assert_eq!(
            routed("homeassistant/status", device),
            Some(Route::HomeAssistantStatus)
        );
        for foreign in [
            "edgeclip/cam2/search",
            "edgeclip/cam1x/search",
            "edgeclip/cam1/results",
            "edgeclip/cam1/search/x",
            "homeassistant/statusx",
            "edgeclip/cloud/encode",
        ] {
            assert_eq!(routed(foreign, device), None, "{foreign}");
        }
        assert_eq!(routed(CLOUD_ENCODE, worker), Some(Route::Encode));
        assert_eq!(routed(CLOUD_RANK, worker), Some(Route::Rank));
        assert_eq!(routed(FLEET_SEARCH, worker), Some(Route::FleetSearch));
        assert_eq!(
            routed("edgeclip/fleet/answers/w1", worker),
            Some(Route::FleetAnswer)
        );
        assert_eq!(routed("edgeclip/fleet/answers/w2", worker), None);
        assert_eq!(
            routed("edgeclip/nas/availability", worker),
            Some(Route::Availability { device: "nas" })
        );
        assert_eq!(routed("edgeclip/cam1/search", worker), None);
        // Every concrete subscription routes (shared ones deliver their plain topic).
        for who in [device, worker] {
            for filter in subscriptions(&who) {
                let topic = filter
                    .strip_prefix("$share/")
                    .and_then(|t| t.split_once('/'))
                    .map_or(filter.as_str(), |(_, t)| t)
                    .replace('+', "dev");
                assert!(
                    route(&topic, &who).is_some(),
                    "{filter} does not route for {who:?}"
                );
            }
        }
        assert_eq!(worker_presence("w1"), "edgeclip/cloud/workers/w1");
    }

    #[test]
    fn finds_the_device_in_an_availability_topic() {
        assert_eq!(
            device_of_availability("edgeclip/nas-2/availability"),
            Some("nas-2")
        );
        assert_eq!(device_of_availability("edgeclip/a/b/availability"), None);
        assert_eq!(device_of_availability("edgeclip//availability"), None);
        assert_eq!(device_of_availability("other/nas/availability"), None);
    }

    #[test]
    fn rejects_device_ids_that_would_break_topics() {
        for ok in ["nas", "cam-1", "pi_4.local", "A9"] {
            assert!(validate_device_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a/b",
            "a+",
            "#",
            "with space",
            "cloud",
            "fleet",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_device_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fleet_topics_are_built_and_their_reply_topics_checked() {
        assert_eq!(fleet_query("cam1"), "edgeclip/cam1/fleet/query");
        assert_eq!(fleet_results("q1"), "edgeclip/fleet/results/q1");
        assert!(FLEET_SEARCH_SHARED.ends_with(FLEET_SEARCH));
        assert!(validate_fleet_answer_topic(&fleet_answers("w-1")).is_ok());
        for bad in [
            "edgeclip/fleet/answers/",
            "edgeclip/fleet/answers/+",
            "edgeclip/fleet/answers/a/b",
            "edgeclip/cam/search",
        ] {
            assert!(validate_fleet_answer_topic(bad).is_err(), "{bad}");
        }
        for ok in [
            "edgeclip/fleet/results/q1",
            "home/edgeclip/answer",
            "nodered/fleet",
        ] {
            assert!(validate_fleet_reply_topic(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "edgeclip/cam/search",
            "edgeclip/cloud/encode",
            "edgeclip/fleet/results/",
            "a/+",
            "$SYS/x",
            "a/#",
        ] {
            assert!(validate_fleet_reply_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reply_topics_must_stay_under_a_device() {
        assert!(validate_reply_topic("edgeclip/cam1/cloud/reply").is_ok());
        for bad in [
            "edgeclip/cam1",
            "edgeclip/+/x",
            "other/cam1/x",
            "edgeclip/cloud/encode",
            "edgeclip/#",
        ] {
            assert!(validate_reply_topic(bad).is_err(), "{bad}");
        }
    }
}

//! Home Assistant MQTT discovery: the retained config messages that make a device appear in
//! Home Assistant with a search box, its last results, index progress, rescan and re-index
//! buttons and the best match as a picture. Pure: builds (topic, JSON) pairs; the device's
//! discovery actor publishes them.

use serde_json::{json, Value};

use crate::topics;
use crate::WireError;

/// The default discovery prefix of Home Assistant.
pub const DEFAULT_PREFIX: &str = "homeassistant";
/// Payload Home Assistant publishes on `<prefix>/status` when it (re)starts.
pub const HA_ONLINE: &str = "online";
/// Payload of the device's command topic that rescans the folders.
pub const RESCAN: &str = "rescan";
/// Payload of the device's command topic that encodes every picture again.
pub const REINDEX: &str = "reindex";
/// Where edgeclip's source and documentation are (the `origin` of discovery messages).
pub const SUPPORT_URL: &str = "https://example.invalid/edgeclip";

/// The topic on which Home Assistant announces itself.
pub fn ha_status(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// What the device offers beyond its topics.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryOptions {
    /// Discovery prefix (Home Assistant's `discovery_prefix`).
    pub prefix: String,
    /// Device id (the `edgeclip/<device>/…` level).
    pub device_id: String,
    /// edgeclip version of the device.
    pub version: String,
    /// The best match is published as a thumbnail URL on [`topics::best_url`] (the HTTP
    /// endpoint is on).
    pub image_url: bool,
    /// The best match is published as JPEG bytes on [`topics::best_image`] (off by default).
    pub image_bytes: bool,
}

/// One discovered entity: the component and the object id in its config topic.
const ENTITIES: [(&str, &str); 7] = [
    ("text", "search"),
    ("sensor", "last_hits"),
    ("sensor", "indexed"),
    ("button", "rescan"),
    ("button", "reindex"),
    ("image", "best_match"),
    ("image", "best_match_bytes"),
];

/// Node id of the device in discovery topics: the device id with what Home Assistant does not
/// accept there (`.`) replaced.
fn node_id(device_id: &str) -> String {
    let id: String = device_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("edgeclip_{id}")
}

/// `<prefix>/<component>/<node>/<object>/config`.
pub fn config_topic(prefix: &str, device_id: &str, component: &str, object: &str) -> String {
    format!(
        "{prefix}/{component}/{}/{object}/config",
        node_id(device_id)
    )
}

/// Every config topic the device may publish (for removal, whichever options were on).
pub fn all_config_topics(prefix: &str, device_id: &str) -> Vec<String> {
    ENTITIES
        .iter()
        .map(|(c, o)| config_topic(prefix, device_id, c, o))
        .collect()
}

/// The discovery configs for `options`: (retained topic, JSON payload).
pub fn discovery_configs(o: &DiscoveryOptions) -> Vec<(String, Value)> {
    let dev = o.device_id.as_str();
    let node = node_id(dev);
    let device = json!({
        "identifiers": [node],
        "name": format!("edgeclip {dev}"),
        "manufacturer": "edgeclip",
        "model": "edgeclip-device",
        "sw_version": o.version,
    });
    let origin = json!({ "name": "edgeclip", "sw_version": o.version, "support_url": SUPPORT_URL });
    let availability = json!([{
        "topic": topics::availability(dev),
        "payload_available": topics::ONLINE,
        "payload_not_available": topics::OFFLINE,
    }]);
    let base = |object: &str, name: &str, icon: &str| {
        json!({
            "name": name,
            "unique_id": format!("{node}_{object}"),
            "icon": icon,
            "device": device,
            "origin": origin,
            "availability": availability,
        })
    };
    let with = |mut v: Value, extra: Value| {
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        v
    };
    let results = topics::results(dev);
    let status = topics::status(dev);
    let mut out = vec![
        (
            config_topic(&o.prefix, dev, "text", "search"),
            with(
                base("search", "Search pictures", "mdi:image-search"),
                json!({
                    // The search topic takes plain text: what is typed is the search.
                    "command_topic": topics::search(dev),
                    "mode": "text",
                    "min": 1,
                    "max": 255,
                }),
            ),
        ),
        (
            config_topic(&o.prefix, dev, "sensor", "last_hits"),
            with(
                base("last_hits", "Last search hits", "mdi:counter"),
                json!({
                    // Home Assistant keeps at most 255 characters of state: the state is the count,
                    // the hits go to the attributes.
                    "state_topic": results,
                    "value_template": "{{ value_json.hits | count if value_json.hits is defined else 0 }}",
                    "json_attributes_topic": results,
                    "json_attributes_template": "{{ {'text': value_json.text | default(''), 'error': value_json.error | default(''), 'hits': value_json.hits | default([]) | map(attribute='path') | list, 'scores': value_json.hits | default([]) | map(attribute='score') | list, 'taken_s': value_json.hits | default([]) | map(attribute='taken_s') | list} | tojson }}",
                    "unit_of_measurement": "hits",
                }),
            ),
        ),
        (
            config_topic(&o.prefix, dev, "sensor", "indexed"),
            with(
                base("indexed", "Pictures indexed", "mdi:image-multiple"),
                json!({
                    "state_topic": status,
                    "value_template": "{{ value_json.indexed }}",
                    "json_attributes_topic": status,
                    "json_attributes_template": "{{ {'status': value_json.state, 'pending': value_json.pending, 'failed': value_json.failed, 'rate_per_s': value_json.rate_per_s, 'eta_s': value_json.eta_s | default(none), 'model': value_json.model} | tojson }}",
                    "unit_of_measurement": "pictures",
                    "state_class": "measurement",
                }),
            ),
        ),
        (
            config_topic(&o.prefix, dev, "button", "rescan"),
            with(
                base("rescan", "Rescan folders", "mdi:folder-refresh"),
                json!({
                    "command_topic": topics::command(dev),
                    "payload_press": RESCAN,
                }),
            ),
        ),
        (
            config_topic(&o.prefix, dev, "button", "reindex"),
            with(
                base("reindex", "Re-index all pictures", "mdi:database-refresh"),
                json!({
                    "command_topic": topics::command(dev),
                    "payload_press": REINDEX,
                }),
            ),
        ),
    ];
    if o.image_url {
        out.push((
            config_topic(&o.prefix, dev, "image", "best_match"),
            with(
                base("best_match", "Best match", "mdi:image"),
                json!({ "url_topic": topics::best_url(dev) }),
            ),
        ));
    }
    if o.image_bytes {
        out.push((
            config_topic(&o.prefix, dev, "image", "best_match_bytes"),
            with(
                base("best_match_bytes", "Best match (picture)", "mdi:image"),
                json!({
                    "image_topic": topics::best_image(dev),
                    "content_type": "image/jpeg",
                }),
            ),
        ));
    }
    out
}

/// Why a discovery config would not be accepted by Home Assistant, if it would not: the fields
/// each component requires, and the ones every edgeclip entity must carry.
pub fn check_config(component: &str, config: &Value) -> Result<(), WireError> {
    let refuse = |reason: String| {
        Err(WireError::Discovery {
            component: component.to_string(),
            reason,
        })
    };
    let has = |field: &str| {
        config
            .get(field)
            .is_some_and(|v| !v.is_null() && v.as_str() != Some(""))
    };
    for field in ["unique_id", "name", "device", "origin", "availability"] {
        if !has(field) {
            return refuse(format!("no {field}"));
        }
    }
    let identifiers = config["device"]["identifiers"]
        .as_array()
        .map_or(0, Vec::len);
    if identifiers == 0 {
        return refuse("device without identifiers".into());
    }
    if !config["origin"]["name"].is_string() {
        return refuse("origin without name".into());
    }
    let available = config["availability"]
        .as_array()
        .is_some_and(|a| !a.is_empty() && a.iter().all(|x| x["topic"].is_string()));
    if !available {
        return refuse("availability without topic".into());
    }
    let required: &[&str] = match component {
        "text" | "button" => &["command_topic"],
        "sensor" => &["state_topic"],
        "image" if has("url_topic") || has("image_topic") => &[],
        "image" => return refuse("neither url_topic nor image_topic".into()),
        _ => return refuse("not a component edgeclip publishes".into()),
    };
    for field in required {
        if !has(field) {
            return refuse(format!("no {field}"));
        }
    }
    for (key, value) in config.as_object().into_iter().flatten() {
        if key.ends_with("_topic")
            && value
                .as_str()
                .is_none_or(|t| t.is_empty() || t.contains(['+', '#']))
        {
            return refuse(format!("{key} is not a concrete topic"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(image_bytes: bool) -> DiscoveryOptions {
        DiscoveryOptions {
            prefix: DEFAULT_PREFIX.into(),
            device_id: "nas.local".into(),
            version: "0.1.0".into(),
            image_url: true,
            image_bytes,
        }
    }

    #[test]
    fn every_config_is_valid_for_its_component_and_unique() {
        let configs = discovery_configs(&options(true));
        assert_eq!(configs.len(), 7);
        let mut ids = std::collections::HashSet::new();
        for (topic, config) in &configs {
            let component = topic.split('/').nth(1).unwrap();
            check_config(component, config).unwrap_or_else(|e| panic!("{topic}: {e}"));
            assert!(
                ids.insert(config["unique_id"].as_str().unwrap().to_string()),
                "{topic}"
            );
            assert!(
                topic.starts_with("homeassistant/")
                    && topic.ends_with("/config")
                    && !topic.contains("nas.local"),
                "{topic}"
            );
        }
        assert_eq!(configs[0].1["command_topic"], "edgeclip/nas.local/search");
        assert_eq!(discovery_configs(&options(false)).len(), 6);
        assert_eq!(all_config_topics("ha", "x").len(), 7);
    }

    #[test]
    fn configs_missing_what_home_assistant_requires_are_refused() {
        let (_, text) = discovery_configs(&options(false)).remove(0);
        let mut no_command = text.clone();
        no_command.as_object_mut().unwrap().remove("command_topic");
        assert!(check_config("text", &no_command)
            .unwrap_err()
            .to_string()
            .contains("command_topic"));
        let mut no_id = text.clone();
        no_id.as_object_mut().unwrap().remove("unique_id");
        assert!(check_config("text", &no_id).is_err());
        assert!(check_config("sensor", &text)
            .unwrap_err()
            .to_string()
            .contains("state_topic"));
        assert!(check_config("image", &text).is_err());
        let mut wildcard = text;
        wildcard["command_topic"] = "edgeclip/+/search".into();
        assert!(check_config("text", &wildcard).is_err());
    }
}

//! Multilingual search end to end: a device indexes its pictures once with the ViT-B-32
//! fixture (`tests/data/families/vit`, Immich's layout), and a cloud worker serves two text
//! towers for that embedding space, ViT-B-32's English one and M-CLIP's (whose folder ships
//! ViT-B-32's `config.json` and image tower, so the space is shared without configuration).
//! English searches go to the English tower, searches with a language to M-CLIP, and every
//! score equals what the fixtures' reference pipeline (Immich's, on onnxruntime) gives for the
//! same picture and text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use edgeclip::client::Client;
use edgeclip_cloud::config::TextTowerConfig;
use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::{FleetResults, FleetSearchRequest, SearchRequest};
use serde_json::Value;

use crate::util::*;

/// Largest difference between a score of the system and the reference's.
const SCORE_TOLERANCE: f32 = 0.002;

/// Pictures of the family fixtures the device indexes: the samples and the prime sizes.
const PICTURES: [&str; 4] = [
    "sample_IMG_0001.jpg",
    "sample_IMG_0002.jpg",
    "prime_331x223.png",
    "prime_211x307.jpg",
];

fn family(name: &str) -> PathBuf {
    data("families").join(name)
}

/// A family's `reference.json`.
struct FamilyReference(Value);

impl FamilyReference {
    fn new(name: &str) -> Self {
        let bytes = std::fs::read(family(name).join("reference.json")).expect("reference.json");
        Self(serde_json::from_slice(&bytes).expect("json"))
    }

    fn embedding(list: &Value, key: &str, value: &str) -> Vec<f32> {
        list.as_array()
            .expect("list")
            .iter()
            .find(|e| e[key].as_str() == Some(value))
            .unwrap_or_else(|| panic!("{value:?} in the reference"))["embedding"]
            .as_array()
            .expect("embedding")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    }

    fn text(&self, text: &str) -> Vec<f32> {
        Self::embedding(&self.0["texts"], "text", text)
    }

    fn picture(&self, file: &str) -> Vec<f32> {
        Self::embedding(&self.0["pictures"], "file", file)
    }

    /// The score of each picture for a text vector, as the reference's image tower gives it.
    fn scores(&self, text_vector: &[f32]) -> BTreeMap<String, f32> {
        PICTURES
            .iter()
            .map(|p| {
                let v = self.picture(p);
                let dot = v.iter().zip(text_vector).map(|(a, b)| a * b).sum();
                (p.to_string(), dot)
            })
            .collect()
    }
}

/// Every picture is among the hits with the reference's score, within [`SCORE_TOLERANCE`].
fn assert_scores(hits: &[(String, f32)], expected: &BTreeMap<String, f32>, what: &str) {
    let got: BTreeMap<String, f32> = hits.iter().cloned().collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: {hits:?}"
    );
    for (name, want) in expected {
        let score = got[name];
        assert!(
            (score - want).abs() <= SCORE_TOLERANCE,
            "{what}: {name} scores {score}, the reference {want}"
        );
    }
    assert!(
        hits.windows(2).all(|w| w[0].1 >= w[1].1),
        "{what}: best first: {hits:?}"
    );
}

async fn fleet(client: &mut Client, text: &str, lang: Option<&str>) -> FleetResults {
    let request = FleetSearchRequest {
        k: Some(PICTURES.len()),
        lang: lang.map(str::to_string),
        ..FleetSearchRequest::text(text)
    };
    fleet_search(client, request).await
}

fn fleet_scores(r: &FleetResults) -> Vec<(String, f32)> {
    r.hits
        .iter()
        .map(|h| (file_name(&h.path), h.score))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_indexed_once_with_vit_b_32_is_searched_in_english_german_and_chinese() {
    let pictures = tempfile::tempdir().expect("pictures");
    for p in PICTURES {
        std::fs::copy(family("pictures").join(p), pictures.path().join(p)).expect("copy");
    }
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let url = broker.url();
    let mut cloud_config = cloud_config(&url, "polyglot-w");
    cloud_config.model.dir = family("vit");
    cloud_config.model.text = vec![TextTowerConfig {
        dir: family("mclip"),
        space: String::new(),
        languages: Vec::new(),
    }];
    let cloud = bounded("cloud start", Cloud::start(cloud_config))
        .await
        .expect("cloud");
    let state = tempfile::tempdir().expect("state");
    let mut device_config = device_config(&url, "polyglot", &[pictures.path()], state.path());
    device_config.model.dir = family("vit");
    // Immich's image towers are traced at batch 1
    device_config.encoder.batch = 1;
    let device = bounded("device start", Device::start(device_config))
        .await
        .expect("device");
    let status = wait_idle(&device).await;
    assert_eq!(
        (status.indexed, status.failed),
        (PICTURES.len() as u64, 0),
        "{status:?}"
    );
    let vit = FamilyReference::new("vit");
    let mclip = FamilyReference::new("mclip");

    // English, through the device: the English text tower, the device ranks.
    let english = "a photo of a dog";
    let request = SearchRequest {
        k: Some(PICTURES.len()),
        ..SearchRequest::text(english)
    };
    let response = bounded("search", device.search(request))
        .await
        .expect("answer");
    assert_scores(
        &scored(&response),
        &vit.scores(&vit.text(english)),
        "English on the device",
    );

    // Other languages, as fleet searches (the cloud encodes, the device ranks the vector it
    // is sent) and as the device's own searches: M-CLIP's vector, in the space the device
    // indexed with.
    let mut client = bounded("connect", Client::connect(&url, Duration::from_secs(5)))
        .await
        .expect("connect");
    let mut wait = Wait::new("the worker to know the device is online", TEST_TIMEOUT);
    loop {
        let r = fleet(&mut client, english, None).await;
        if r.answered == ["polyglot"] {
            assert_eq!(r.model, status.model, "the space the device indexed with");
            assert_scores(
                &fleet_scores(&r),
                &vit.scores(&vit.text(english)),
                "English as a fleet search",
            );
            break;
        }
        wait.again(&r).await;
    }
    let (english_tower, _) =
        edgeclip_cloud::model::load(&edgeclip_cloud::model::TowerSpec::folder(&family("vit")))
            .expect("vit text tower");
    for (text, lang) in [
        ("ein Hund am Strand bei Sonnenuntergang", "de"),
        ("海滩上的狗", "zh-CN"),
    ] {
        let r = fleet(&mut client, text, Some(lang)).await;
        assert_eq!(r.model, status.model);
        let expected = mclip.scores(&mclip.text(text));
        assert_scores(&fleet_scores(&r), &expected, &format!("{text} ({lang})"));
        // The same through the device's own search: its session passes the language on.
        let request = SearchRequest {
            k: Some(PICTURES.len()),
            lang: Some(lang.to_string()),
            ..SearchRequest::text(text)
        };
        let response = bounded("search", device.search(request))
            .await
            .expect("answer");
        assert_scores(
            &scored(&response),
            &expected,
            &format!("{text} ({lang}) on the device"),
        );
        // without its language the text goes to the English tower: other scores
        let r = fleet(&mut client, text, None).await;
        let english_vector = english_tower.encode(text, None).expect("English tower");
        let as_english = vit.scores(&english_vector);
        assert_scores(
            &fleet_scores(&r),
            &as_english,
            &format!("{text} (no language)"),
        );
        assert!(
            expected
                .iter()
                .any(|(p, s)| (s - as_english[p]).abs() > 10.0 * SCORE_TOLERANCE),
            "{text}: the two towers must give different scores to tell them apart"
        );
    }

    bounded("device shutdown", device.shutdown())
        .await
        .expect("device shutdown");
    bounded("cloud shutdown", cloud.shutdown())
        .await
        .expect("cloud shutdown");
}

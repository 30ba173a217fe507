//! Method B: the cloud ranks the device's vectors, with the same ranking as the device.

use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_messages::dashboard::{SearchRequest, SearchResponse};
use edgeclip_messages::topics;

use crate::util::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_ranked_searches_give_the_same_ranking_as_device_ranked_ones() {
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let recorder = Recorder::start(&broker.url(), topics::CLOUD_RANK).await;
    let cloud = Cloud::start(cloud_config(&broker.url(), "ranker-w"))
        .await
        .expect("cloud");
    let mut config = device_config(&broker.url(), "weak", &[pictures.path()], state.path());
    config.search.server_chunk_vectors = 5; // several chunks, merged on the device

    // By default a search cannot make the device send its vectors: refused over MQTT, with
    // the reason, and nothing published to the cloud's rank topic.
    assert!(!config.search.allow_server_mode, "off by default");
    let device = Device::start(config.clone()).await.expect("device");
    wait_idle(&device).await;
    let asker = Recorder::start(&broker.url(), &topics::results("weak")).await;
    asker
        .publish(
            &topics::search("weak"),
            r#"{"text":"a red circle","mode":"server","id":"b1"}"#,
        )
        .await;
    let answer = asker
        .wait_for(&topics::results("weak"), |p| {
            String::from_utf8_lossy(p).contains("\"b1\"")
        })
        .await;
    let answer: SearchResponse = serde_json::from_slice(&answer).expect("an answer");
    let SearchResponse::Error(e) = answer else {
        panic!("a server-ranked search was answered: {answer:?}")
    };
    assert!(e.error.contains("search.allow_server_mode"), "{}", e.error);
    device.shutdown().await.expect("shutdown");
    assert!(recorder.all().is_empty(), "no vector left the device");

    // The owner turns it on.
    config.search.allow_server_mode = true;
    let device = Device::start(config).await.expect("device");
    wait_idle(&device).await;
    for text in [
        "a red circle",
        "a blue square",
        "a yellow star and a purple square",
    ] {
        let device_ranked = device
            .search(SearchRequest {
                k: Some(5),
                ..SearchRequest::text(text)
            })
            .await
            .expect("answer");
        let server_ranked = device
            .search(SearchRequest {
                k: Some(5),
                mode: Some(edgeclip_messages::dashboard::SearchMode::Server),
                ..SearchRequest::text(text)
            })
            .await
            .expect("answer");
        let (SearchResponse::Results(a), SearchResponse::Results(b)) =
            (&device_ranked, &server_ranked)
        else {
            panic!("{device_ranked:?} / {server_ranked:?}")
        };
        // int8 quantisation moves scores by ~0.01: the top hits agree, near-ties may swap.
        assert_eq!(hits(&device_ranked)[0], hits(&server_ranked)[0], "{text}");
        let common = hits(&device_ranked)
            .iter()
            .filter(|h| hits(&server_ranked).contains(h))
            .count();
        assert!(common >= 4, "{text}: {a:?} vs {b:?}");
        for (x, y) in a.hits.iter().zip(&b.hits) {
            if x.path == y.path {
                assert!(
                    (x.score - y.score).abs() < 0.03,
                    "{text}: {} vs {}",
                    x.score,
                    y.score
                );
            }
        }
    }
    // 16 pictures in chunks of 5: 4 rank messages per search, none carrying picture bytes.
    let sent = recorder.all();
    assert_eq!(sent.len(), 3 * 4);
    assert!(sent.iter().all(|(_, p)| p.len() < 5 * (64 + 16) + 512));
    device.shutdown().await.expect("shutdown");
    cloud.shutdown().await.expect("cloud shutdown");
}

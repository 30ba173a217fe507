//! Broker security, end to end: a real Mosquitto with TLS only, a password per client and the
//! access rules of docs/mosquitto/edgeclip.acl; two devices, the cloud and two owners on it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use edgeclip::client::Client;
use edgeclip_cloud::Cloud;
use edgeclip_device::Device;
use edgeclip_link::Security;
use edgeclip_messages::dashboard::{SearchRequest, SearchResponse};
use edgeclip_messages::topics;

use crate::util::*;

/// A CA, and a server certificate for `localhost` signed by it: (ca.pem, server.pem, server.key).
fn certificates(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("edgeclip test CA {name}"),
    );
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let server_key = rcgen::KeyPair::generate().expect("key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    let server_cert = server
        .signed_by(&server_key, &ca_cert, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-server.pem")),
        dir.join(format!("{name}-server.key")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write");
    std::fs::write(&paths.1, server_cert.pem()).expect("write");
    std::fs::write(&paths.2, server_key.serialize_pem()).expect("write");
    paths
}

fn readable_by_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // Mosquitto started as root drops to its own user before reading some of its files.
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(if path.is_dir() { 0o755 } else { 0o644 }),
    )
    .expect("chmod");
}

const USERS: [(&str, &str); 6] = [
    ("cam-a", "pw-cam-a"),
    ("cam-b", "pw-cam-b"),
    ("edgeclip-cloud", "pw-cloud"),
    ("owner-a", "pw-owner-a"),
    ("owner-b", "pw-owner-b"),
    ("monitor", "pw-monitor"),
];

fn password(user: &str) -> String {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .expect("known user")
        .1
        .to_string()
}

fn security(user: &str, ca: &Path) -> Security {
    Security {
        username: user.into(),
        password: password(user),
        ca_file: Some(ca.to_path_buf()),
        client_cert: None,
    }
}

/// Mosquitto on a free port: TLS, passwords, the documented ACL plus the test's owners.
fn secure_mosquitto(dir: &Path, port: u16) -> (Killed, PathBuf) {
    readable_by_all(dir);
    let (ca, cert, key) = certificates(dir, "broker");
    let passwd = dir.join("passwd");
    for (i, (user, pw)) in USERS.iter().enumerate() {
        let mut cmd = Command::new(mosquitto_bin("mosquitto_passwd"));
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&passwd)
            .arg(user)
            .arg(pw)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("mosquitto_passwd");
        assert!(status.success(), "mosquitto_passwd failed");
    }
    let mut acl = std::fs::read_to_string(repo().join("docs/mosquitto/edgeclip.acl"))
        .expect("the documented ACL");
    for (owner, device) in [("owner-a", "cam-a"), ("owner-b", "cam-b")] {
        acl.push_str(&format!(
            "\nuser {owner}\ntopic write edgeclip/{device}/search\ntopic read edgeclip/{device}/results\ntopic read edgeclip/{device}/status\ntopic read edgeclip/{device}/availability\n"
        ));
    }
    acl.push_str("\nuser monitor\ntopic read #\n");
    let acl_path = dir.join("edgeclip.acl");
    std::fs::write(&acl_path, acl).expect("acl");
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "per_listener_settings false\nallow_anonymous false\npassword_file {}\nacl_file {}\npersistence false\nlog_dest stderr\n\
             listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwd.display(),
            acl_path.display(),
            ca.display(),
            cert.display(),
            key.display()
        ),
    )
    .expect("conf");
    for p in [&passwd, &acl_path, &conf, &ca, &cert, &key] {
        readable_by_all(p);
    }
    (mosquitto_with(&conf, port), ca)
}

fn seen_on(recorder: &Recorder, topic: &str) -> Vec<Vec<u8>> {
    recorder
        .all()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_passwords_and_per_device_rules_keep_devices_apart() {
    let tmp = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let (_broker, ca) = secure_mosquitto(tmp.path(), port);
    let url = format!("mqtts://localhost:{port}");

    let mut cloud_config = cloud_config(&url, "secure-w");
    cloud_config.broker.username = "edgeclip-cloud".into();
    cloud_config.broker.password = password("edgeclip-cloud");
    cloud_config.broker.ca_file = ca.display().to_string();
    let cloud = bounded("cloud start", Cloud::start(cloud_config))
        .await
        .expect("cloud");

    let shapes = data("shapes");
    let pictures = copy_pictures(&shapes);
    let mut devices = Vec::new();
    let mut states = Vec::new();
    for id in ["cam-a", "cam-b"] {
        let state = tempfile::tempdir().expect("state");
        let mut config = device_config(&url, id, &[pictures.path()], state.path());
        config.broker.username = id.into();
        config.broker.password_file = {
            let f = tmp.path().join(format!("{id}.password"));
            std::fs::write(&f, format!("{}\n", password(id))).expect("password file");
            f.display().to_string()
        };
        config.broker.ca_file = ca.display().to_string();
        let device = bounded("device start", Device::start(config))
            .await
            .expect("device");
        wait_idle(&device).await;
        devices.push(device);
        states.push(state);
    }

    // A monitor allowed to read everything sees what the broker lets through.
    let monitor = Recorder::start_with(&url, &security("monitor", &ca), "#").await;

    // The system works for both households, over TLS with passwords.
    for (owner, device) in [("owner-a", "cam-a"), ("owner-b", "cam-b")] {
        let mut client = bounded(
            "connect",
            Client::connect_with(&url, &security(owner, &ca), Duration::from_secs(5)),
        )
        .await
        .expect("owner connects");
        let response = bounded(
            "search",
            client.search(device, "a red circle", Some(3), Duration::from_secs(20)),
        )
        .await
        .expect("search answered");
        match &response {
            SearchResponse::Results(r) => assert_eq!(r.hits.len(), 3, "{owner}: {response:?}"),
            SearchResponse::Error(e) => panic!("{owner}: search failed: {}", e.error),
        }
        client.disconnect().await;
    }

    // Device A tries to read B's results and B's cloud replies, and to act as B's owner and as
    // the cloud towards B. (It also reads its own search topic, where a marker comes later.)
    let own_search = topics::search("cam-a");
    let intruder = Recorder::start_filters(
        &url,
        &security("cam-a", &ca),
        &["edgeclip/cam-b/#", &own_search],
    )
    .await;
    let forged = SearchRequest {
        id: Some("forged-by-a".into()),
        ..SearchRequest::text("a blue square")
    };
    intruder
        .publish(
            &topics::search("cam-b"),
            serde_json::to_vec(&forged).expect("json"),
        )
        .await;
    intruder
        .publish(&topics::cloud_reply("cam-b"), b"not a reply".to_vec())
        .await;
    intruder
        .publish(&topics::results("cam-b"), b"{\"fake\": true}".to_vec())
        .await;
    // The broker handles one client's packets in order and delivers to one subscriber in
    // order: once the monitor has a marker A publishes where it may (its own results), every
    // attempt above has been refused, or the monitor has it too.
    let marker = format!("marker-{}", rand_suffix());
    intruder
        .publish(&topics::results("cam-a"), marker.clone())
        .await;
    monitor
        .wait_for(&topics::results("cam-a"), |p| p == marker.as_bytes())
        .await;
    // Owner B searches meanwhile: the monitor sees it and its answer, the intruder does not.
    let mut owner_b = bounded(
        "connect",
        Client::connect_with(&url, &security("owner-b", &ca), Duration::from_secs(5)),
    )
    .await
    .expect("connect");
    let legit = bounded(
        "search",
        owner_b.search("cam-b", "a blue square", Some(2), Duration::from_secs(20)),
    )
    .await
    .expect("answered");
    owner_b.disconnect().await;
    monitor
        .wait_for(&topics::results("cam-b"), |p| {
            String::from_utf8_lossy(p).contains(legit.id())
        })
        .await;
    // Owner A searches its own device: its search reaches A's intruding client after anything
    // of B's the broker would have let it read.
    let mut owner_a = bounded(
        "connect",
        Client::connect_with(&url, &security("owner-a", &ca), Duration::from_secs(5)),
    )
    .await
    .expect("connect");
    let own = bounded(
        "search",
        owner_a.search("cam-a", "a red circle", Some(1), Duration::from_secs(20)),
    )
    .await
    .expect("answered");
    owner_a.disconnect().await;
    intruder
        .wait_for(&own_search, |p| {
            String::from_utf8_lossy(p).contains(own.id())
        })
        .await;

    let results_b = seen_on(&monitor, &topics::results("cam-b"));
    assert!(
        results_b
            .iter()
            .any(|p| String::from_utf8_lossy(p).contains(legit.id())),
        "the monitor saw B's real answer"
    );
    assert!(
        !results_b
            .iter()
            .any(|p| String::from_utf8_lossy(p).contains("forged-by-a")
                || String::from_utf8_lossy(p).contains("fake")),
        "device A made device B search, or published results as B"
    );
    assert!(
        seen_on(&monitor, &topics::cloud_reply("cam-b"))
            .iter()
            .all(|p| p != b"not a reply"),
        "device A replied as the cloud to B"
    );
    assert!(!seen_on(&monitor, &topics::search("cam-b"))
        .iter()
        .any(|p| String::from_utf8_lossy(p).contains("forged-by-a")));
    let leaked: Vec<String> = intruder
        .all()
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t != own_search)
        .collect();
    assert!(leaked.is_empty(), "device A read B's topics: {leaked:?}");

    // No password, a wrong password, or a CA that did not sign the broker: no connection.
    let (other_ca, _, _) = certificates(tmp.path(), "other");
    for (what, sec) in [
        (
            "anonymous",
            Security {
                ca_file: Some(ca.clone()),
                ..Security::default()
            },
        ),
        (
            "wrong password",
            Security {
                password: "guess".into(),
                ..security("owner-a", &ca)
            },
        ),
        ("unknown CA", security("owner-a", &other_ca)),
    ] {
        let got = Client::connect_with(&url, &sec, Duration::from_secs(5)).await;
        assert!(got.is_err(), "{what} connected");
    }
    // Plain MQTT on the TLS port is not MQTT the broker answers.
    assert!(
        Client::connect(&format!("mqtt://127.0.0.1:{port}"), Duration::from_secs(3))
            .await
            .is_err()
    );

    for device in devices {
        bounded("device shutdown", device.shutdown())
            .await
            .expect("shutdown");
    }
    bounded("cloud shutdown", cloud.shutdown())
        .await
        .expect("cloud shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cloud_bounds_each_requester_and_says_which_limit() {
    use edgeclip_messages::wire::{
        self, ArchivedErrorCode, ArchivedReplyBody, EncodeReply, EncodeRequest, Received,
    };
    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let url = broker.url();
    let mut config = cloud_config(&url, "bounded-w");
    config.limits.requests_per_s = 0.5;
    config.limits.burst = 2;
    let cloud = bounded("cloud start", Cloud::start(config))
        .await
        .expect("cloud");
    let model = edgeclip_cloud::model::TextModelFolder::open(&model_dir(), None)
        .expect("model")
        .id;
    // The worker publishes its presence after subscribing, on the same connection: once it is
    // seen, requests are no longer published before the worker listens.
    let presence_topic = edgeclip_messages::topics::worker_presence("bounded-w");
    let presence = Recorder::start(&url, &presence_topic).await;
    presence
        .wait_for(&presence_topic, |p| p == model.as_bytes())
        .await;
    let replies = Recorder::start(&url, "edgeclip/+/cloud/reply").await;
    let request = |device: &str, id: u64| {
        wire::encode(&EncodeRequest {
            request_id: id,
            reply_to: topics::cloud_reply(device),
            model: model.clone(),
            text: format!("a red circle number {id}"),
            lang: None,
        })
        .expect("frame")
    };
    // A flood of 8 requests from one device, and one request from a quiet one.
    for id in 0..8 {
        replies
            .publish(topics::CLOUD_ENCODE, request("flooder", id))
            .await;
    }
    replies
        .publish(topics::CLOUD_ENCODE, request("quiet", 100))
        .await;

    let answers = |device: &str| -> Vec<(u64, Result<usize, String>)> {
        replies
            .all()
            .into_iter()
            .filter(|(t, _)| *t == topics::cloud_reply(device))
            .map(|(_, p)| {
                let reply = Received::<EncodeReply>::decode(&p, 1 << 20).expect("a valid reply");
                let r = reply.get();
                let body = match &r.body {
                    ArchivedReplyBody::Vector(v) => Ok(v.vector.len()),
                    ArchivedReplyBody::Error(f) => {
                        assert_eq!(f.code, ArchivedErrorCode::Busy, "{}", f.message);
                        Err(f.message.to_string())
                    }
                };
                (r.request_id.to_native(), body)
            })
            .collect()
    };
    wait_until(
        "an answer to every request",
        Duration::from_secs(30),
        || async {
            let (flood, quiet) = (answers("flooder"), answers("quiet"));
            if flood.len() >= 8 && !quiet.is_empty() {
                Ok(())
            } else {
                Err((flood, quiet))
            }
        },
    )
    .await;
    let flood = answers("flooder");
    let served = flood.iter().filter(|(_, b)| b.is_ok()).count();
    let refused: Vec<&String> = flood.iter().filter_map(|(_, b)| b.as_ref().err()).collect();
    assert!(
        (2..=4).contains(&served),
        "the burst of 2 (plus what the rate refills) is served: {flood:?}"
    );
    assert!(
        refused.iter().all(|m| m.contains("limits.requests_per_s")),
        "{refused:?}"
    );
    assert!(
        matches!(answers("quiet")[..], [(100, Ok(_))]),
        "another device is not held back: {:?}",
        answers("quiet")
    );
    bounded("cloud shutdown", cloud.shutdown())
        .await
        .expect("cloud shutdown");
}

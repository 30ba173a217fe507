//! A real deployment: the separate `edgeclip-device` and `edgeclip-cloud` programs against
//! Mosquitto.

use std::process::{Command, Stdio};

use edgeclip_messages::dashboard::SearchResponse;

use crate::util::*;

#[test]
fn device_and_cloud_programs_work_against_mosquitto_and_a_killed_device_goes_offline() {
    let tmp = tempfile::tempdir().expect("tmp");
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let pictures = copy_pictures(&shapes);
    let port = free_port();
    let _broker = mosquitto(port, tmp.path());
    let url = format!("mqtt://127.0.0.1:{port}");
    let model = model_dir();
    std::fs::write(
        tmp.path().join("cloud.toml"),
        format!(
            "worker_id = \"w1\"\n[model]\ndir = {:?}\n[broker]\nurl = {url:?}\n",
            model.display().to_string()
        ),
    )
    .expect("cloud.toml");
    std::fs::write(
        tmp.path().join("device.toml"),
        format!(
            "device_id = \"pi\"\nfolders = [{:?}]\nstate_dir = {:?}\n[model]\ndir = {:?}\n[broker]\nurl = {url:?}\n",
            pictures.path().display().to_string(),
            tmp.path().join("state").display().to_string(),
            model.display().to_string()
        ),
    )
    .expect("device.toml");
    let _cloud = Killed(
        Command::new(sibling_binary("edgeclip-cloud"))
            .arg("--config")
            .arg(tmp.path().join("cloud.toml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("cloud"),
    );
    let mut device = Killed(
        Command::new(sibling_binary("edgeclip-device"))
            .arg("--config")
            .arg(tmp.path().join("device.toml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("device"),
    );

    // Wait until the device reports everything indexed, through its retained status.
    wait_until_blocking("the device to index everything", TEST_TIMEOUT, || {
        let out = edgeclip()
            .args(["status", "--json", "--broker", &url, "--device", "pi"])
            .output()
            .expect("status");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if s["state"] == "idle" && s["indexed"] == labels.len() {
            Ok(())
        } else {
            Err(s.to_string())
        }
    });
    let out = edgeclip()
        .args(["search", "a red circle", "--json", "--broker", &url])
        .output()
        .expect("search");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: SearchResponse = serde_json::from_slice(&out.stdout).expect("json");
    assert_same_ranking(
        &scored(&parsed),
        &Reference::new(&shapes).rank("a red circle", 10),
        "edgeclip-device under Mosquitto",
    );

    // A power cut: no clean disconnect; the broker publishes the device's last will.
    let _ = device.0.kill();
    let _ = device.0.wait();
    wait_until_blocking(
        "the killed device to be listed offline",
        TEST_TIMEOUT,
        || {
            let out = edgeclip()
                .args(["status", "--timeout", "2", "--broker", &url])
                .output()
                .expect("status");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if !out.status.success() && err.contains("no edgeclip device is online") {
                Ok(())
            } else {
                Err((out.status, err))
            }
        },
    );
}

//! The command line, as a user runs it: `edgeclip up`, `search`, `status`, and their failures.

use std::io::Write;
use std::time::Duration;

use edgeclip_messages::dashboard::SearchResponse;

use crate::util::*;

#[test]
fn up_search_and_status_work_from_the_command_line() {
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let pictures = copy_pictures(&shapes);
    let state = tempfile::tempdir().expect("state");
    let port = free_port();
    let broker = format!("mqtt://127.0.0.1:{port}");
    let mut up = edgeclip_up(port, pictures.path(), state.path())
        .args(["--device-id", "cli-dev"])
        .spawn()
        .expect("edgeclip up starts");
    let out = line_reader(up.stdout.take().expect("stdout"));
    let banner = wait_line(&out, |l| l.starts_with("indexed "));
    assert!(
        banner.iter().any(|l| l.contains("edgeclip search")),
        "{banner:#?}"
    );
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with("Search page in a browser:") && l.contains("http://127.0.0.1:")),
        "{banner:#?}"
    );
    assert!(
        banner
            .last()
            .expect("line")
            .starts_with(&format!("indexed {} pictures (0 skipped)", labels.len())),
        "{banner:#?}"
    );

    // `search` without --device finds the only device online.
    let search = edgeclip()
        .args(["search", "a red circle", "-k", "3", "--broker", &broker])
        .output()
        .expect("search runs");
    assert!(
        search.status.success(),
        "{}",
        String::from_utf8_lossy(&search.stderr)
    );
    let table = String::from_utf8_lossy(&search.stdout).to_string();
    let first = table
        .lines()
        .nth(1)
        .expect("a first hit")
        .split_whitespace()
        .last()
        .expect("path")
        .to_string();
    let expected = Reference::new(&shapes).rank("a red circle", 3);
    let tied = expected[1].1 > expected[0].1 - 1e-4;
    assert!(
        tied || file_name(&first) == expected[0].0,
        "{table} vs {expected:?}"
    );

    let json = edgeclip()
        .args([
            "search",
            "a blue square",
            "--json",
            "--device",
            "cli-dev",
            "--broker",
            &broker,
        ])
        .output()
        .expect("runs");
    assert!(json.status.success());
    let parsed: SearchResponse =
        serde_json::from_slice(&json.stdout).expect("--json prints the result message");
    assert_eq!(hits(&parsed).len(), 10);

    let status = edgeclip()
        .args(["status", "--json", "--broker", &broker])
        .output()
        .expect("status runs");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["indexed"], labels.len());
    assert_eq!(status["device_id"], "cli-dev");
    let human = edgeclip()
        .args(["status", "--broker", &broker])
        .output()
        .expect("status runs");
    assert!(String::from_utf8_lossy(&human.stdout)
        .contains(&format!("indexed  {} pictures", labels.len())));

    // The prompt answers with a ranked table; end of input stops everything cleanly.
    let mut stdin = up.stdin.take().expect("stdin");
    writeln!(stdin, "a yellow star").expect("type");
    let answer = wait_line(&out, |l| l.contains("hits for"));
    assert!(
        answer.iter().any(|l| l.trim_start().starts_with("1 ")),
        "{answer:#?}"
    );
    drop(stdin);
    let end = wait_line(&out, |l| l.contains("shutting down"));
    assert!(!end.is_empty());
    let code = wait_until_blocking("edgeclip up to exit", Duration::from_secs(30), || {
        up.try_wait().expect("wait").ok_or("running")
    });
    assert!(code.success());
}

#[test]
fn command_line_failures_exit_non_zero_with_a_one_line_reason() {
    let port = free_port();
    let unreachable = edgeclip()
        .args([
            "search",
            "a red circle",
            "--timeout",
            "2",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
        ])
        .output()
        .expect("runs");
    assert!(!unreachable.status.success());
    let err = String::from_utf8_lossy(&unreachable.stderr);
    assert!(err.contains("broker unreachable"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port().expect("broker");
    let nobody = edgeclip()
        .args(["status", "--timeout", "2", "--broker", &broker.url()])
        .output()
        .expect("runs");
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("no edgeclip device is online"));

    let bad = edgeclip()
        .args(["search", "x", "--device", "a/b", "--broker", &broker.url()])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--device"));
}

#[test]
fn model_check_reports_both_towers_of_an_immich_folder_and_one_line_for_a_broken_one() {
    let vit = data("families/vit");
    let ok = edgeclip()
        .args(["model", "check"])
        .arg(&vit)
        .output()
        .expect("model check runs");
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    for part in [
        "batch fixed at 1",
        "ok: the device can index pictures with this model",
        "text tower",
        "ok: the cloud can encode searches with this model",
    ] {
        assert!(out.contains(part), "{part:?} missing in\n{out}");
    }

    // A truncated image tower: a non-zero exit and one line naming the file.
    let broken = tempfile::tempdir().expect("folder");
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        for entry in walk(from) {
            let target = to.join(entry.strip_prefix(from).expect("inside"));
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::copy(&entry, &target).expect("copy");
        }
    };
    copy(&vit, broken.path());
    let onnx = broken.path().join("visual/model.onnx");
    let bytes = std::fs::read(&onnx).expect("tower");
    std::fs::write(&onnx, &bytes[..bytes.len() / 2]).expect("truncate");
    let bad = edgeclip()
        .args(["model", "check"])
        .arg(broken.path())
        .output()
        .expect("model check runs");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("model.onnx"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

//! The device's HTTP endpoint through the real `edgeclip up`, with raw HTTP so every header is
//! the test's own: it refuses what another web page could make a browser send (a foreign
//! `Origin`, a foreign `Host` through DNS rebinding, a search not sent as JSON), and serves its
//! status to Prometheus.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::*;

/// Status code and body of one raw HTTP/1.1 request to `addr`.
async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = bounded("connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    bounded("answer", stream.read_to_end(&mut answer))
        .await
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).to_string();
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_answers_its_own_origin_only() {
    let pictures = copy_pictures(&data("shapes"));
    let state = tempfile::tempdir().expect("state");
    let port = free_port();
    let mut up = Killed(
        edgeclip_up(port, pictures.path(), state.path())
            .args(["--device-id", "web-dev"])
            .spawn()
            .expect("edgeclip up starts"),
    );
    let out = line_reader(up.0.stdout.take().expect("stdout"));
    let banner = wait_line(&out, |l| l.starts_with("indexed "));
    let url = banner
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://127.0.0.1:"))
        })
        .unwrap_or_else(|| panic!("no page URL in {banner:#?}"))
        .trim_end_matches('/')
        .to_string();
    let own = url.trim_start_matches("http://").to_string();
    let search = r#"{"text":"a red circle","k":3}"#;
    let json = ("Content-Type", "application/json");

    // The page's own request: its Host, its Origin, JSON.
    let (code, body) = raw(
        &own,
        "POST",
        "/api/search",
        &[("Host", &own), ("Origin", &url), json],
        search,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    let id = answer["hits"][0]["id"]
        .as_str()
        .expect("a hit with an id")
        .to_string();
    let thumb = format!("/thumb/{id}");
    let (code, _) = raw(&own, "GET", &thumb, &[("Host", &own)], "").await;
    assert_eq!(code, 200, "the page's own thumbnail");

    // A search a foreign page can send without a preflight: text/plain from its origin.
    let plain = ("Content-Type", "text/plain");
    let (code, body) = raw(
        &own,
        "POST",
        "/api/search",
        &[("Host", &own), ("Origin", "http://evil.example"), plain],
        search,
    )
    .await;
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains("hits"), "{body}");
    let (code, body) = raw(
        &own,
        "POST",
        "/api/search",
        &[("Host", &own), plain],
        search,
    )
    .await;
    assert_eq!(code, 415, "{body}");

    // DNS rebinding: a foreign name that resolves to the device; same-origin for the browser.
    let evil = "evil.example".to_string() + &own[own.rfind(':').expect("port")..];
    let evil_origin = format!("http://{evil}");
    for (method, path, body) in [
        ("POST", "/api/search", search),
        ("GET", thumb.as_str(), ""),
        ("GET", "/", ""),
        ("GET", "/api/status", ""),
    ] {
        let (code, answer) = raw(
            &own,
            method,
            path,
            &[("Host", &evil), ("Origin", &evil_origin), json],
            body,
        )
        .await;
        assert_eq!(code, 403, "{method} {path}: {answer}");
        assert!(answer.contains("Host"), "the refusal says why: {answer}");
    }
    let (code, _) = raw(&own, "GET", &thumb, &[], "").await;
    assert_eq!(code, 403, "no Host at all");

    // The status for Prometheus, read back by a text-format parser; same rules for its Host.
    let indexed: f64 = banner
        .iter()
        .find_map(|l| {
            l.strip_prefix("indexed ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the banner says how many pictures were indexed");
    let (code, text) = raw(&own, "GET", "/metrics", &[("Host", &own)], "").await;
    assert_eq!(code, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format");
    let sample = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("device") == Some("web-dev"))
            .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
            .value
            .clone()
    };
    assert_eq!(
        sample("edgeclip_pictures_indexed"),
        prometheus_parse::Value::Gauge(indexed)
    );
    assert_eq!(
        sample("edgeclip_pictures_failed"),
        prometheus_parse::Value::Gauge(0.0)
    );
    assert!(
        matches!(sample("edgeclip_pictures_encoded_total"), prometheus_parse::Value::Counter(n) if n >= indexed),
        "{text}"
    );
    let (code, _) = raw(&own, "GET", "/metrics", &[("Host", &evil)], "").await;
    assert_eq!(code, 403);

    // localhost is this device too, and the device kept serving.
    let local = format!("localhost{}", &own[own.rfind(':').expect("port")..]);
    let (code, body) = raw(
        &own,
        "POST",
        "/api/search",
        &[("Host", &local), json],
        search,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    drop(up);
}

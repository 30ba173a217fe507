//! Which requests the HTTP endpoint answers: only those a page of its own origin could make.
//!
//! The endpoint has no login, so the browser's same-origin rule is what keeps other web pages
//! out, and that rule holds only if the device refuses what a foreign page can still send:
//! - a request whose `Host` is a name the device does not go by: through DNS rebinding a
//!   foreign name can point at the device, and the browser then treats the device's answers
//!   (search hits, thumbnails) as that foreign page's own. An IP literal cannot be rebound, so
//!   it is accepted; names are `localhost` and the host of `http.public_url`;
//! - a request whose `Origin` is another origin than the one it is sent to (a cross-site
//!   `fetch` or form post: the browser sends it without asking first when the content type is
//!   `text/plain` or a form's);
//! - a search whose body is not declared `application/json`, which a form cannot send.

use axum::http::header;
use axum::http::HeaderMap;

/// The host names the device answers to, besides IP literals.
#[derive(Debug, Clone, Default)]
pub struct Hosts {
    names: Vec<String>,
}

/// Why a request was refused, in the words of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Host` header, or one the device does not go by.
    Host,
    /// An `Origin` other than the request's own.
    Origin,
    /// A search body not declared as JSON.
    ContentType,
}

impl Refusal {
    /// The message of the refusal.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Host => {
                "refused: the Host header names no address of this device (use its IP address, \
                 localhost, or set http.public_url)"
            }
            Refusal::Origin => "refused: a request from another web page",
            Refusal::ContentType => "refused: a search must be sent as application/json",
        }
    }
}

impl Hosts {
    /// `localhost` and the host of `public_url` (when it names one).
    pub fn new(public_url: &str) -> Self {
        let mut names = vec!["localhost".to_string()];
        if let Some(host) = public_url
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default())
            .and_then(host_of)
        {
            if host.parse::<std::net::IpAddr>().is_err() {
                names.push(host.to_ascii_lowercase());
            }
        }
        Hosts { names }
    }

    /// Whether an authority (`host[:port]`, as in `Host`) names this device.
    pub fn allows(&self, authority: &str) -> bool {
        let Some(host) = host_of(authority) else {
            return false;
        };
        if host.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.contains(&host) || host.ends_with(".localhost")
    }

    /// Checks a request's headers; `json_body`: the request carries a search.
    pub fn check(&self, headers: &HeaderMap, json_body: bool) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| self.allows(h))
            .ok_or(Refusal::Host)?;
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .is_some_and(|(scheme, authority)| {
                    matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
                });
            if !same {
                return Err(Refusal::Origin);
            }
        }
        if json_body {
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .and_then(|c| c.split(';').next())
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Err(Refusal::ContentType);
            }
        }
        Ok(())
    }
}

/// The host of an authority `host[:port]` or `[v6][:port]`; `None` when malformed.
fn host_of(authority: &str) -> Option<&str> {
    if authority.is_empty() || authority.contains(['@', '/', ' ']) {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        return (after.is_empty() || port_ok(after.strip_prefix(':')?)).then_some(v6);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => port_ok(port).then_some(host),
        Some(_) => None,
        None => Some(authority),
    }
}

fn port_ok(port: &str) -> bool {
    port.parse::<u16>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn ip_literals_localhost_and_the_public_name_are_this_device_and_nothing_else_is() {
        let hosts = Hosts::new("http://nas.home.arpa:8080/edgeclip");
        for ok in [
            "192.168.1.5:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[fe80::1]",
            "localhost:9000",
            "LocalHost",
            "nas.home.arpa:8080",
            "NAS.home.arpa.",
            "app.localhost:1",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "nas.home.arpa.evil.example",
            "localhost.evil.example",
            "",
            "127.0.0.1:99999",
            "user@127.0.0.1",
            "[::1",
            "::1",
        ] {
            assert!(!hosts.allows(bad), "{bad}");
        }
        // An IP public URL adds no name.
        assert!(!Hosts::new("http://10.0.0.2:80").allows("10.0.0.2.nip.io"));
    }

    #[test]
    fn a_foreign_origin_a_missing_host_and_a_non_json_search_are_refused() {
        let hosts = Hosts::new("");
        let own = [
            (header::HOST, "127.0.0.1:8080"),
            (header::ORIGIN, "http://127.0.0.1:8080"),
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
        ];
        assert_eq!(hosts.check(&headers(&own), true), Ok(()));
        // A same-origin GET carries no Origin and no content type.
        assert_eq!(
            hosts.check(&headers(&[(header::HOST, "127.0.0.1:8080")]), false),
            Ok(())
        );
        assert_eq!(
            hosts.check(&headers(&[(header::HOST, "127.0.0.1:8080")]), true),
            Err(Refusal::ContentType)
        );
        assert_eq!(
            hosts.check(&headers(&own[1..]), true),
            Err(Refusal::Host),
            "no Host"
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8081",
            "file://127.0.0.1:8080",
        ] {
            let h = headers(&[(header::HOST, "127.0.0.1:8080"), (header::ORIGIN, origin)]);
            assert_eq!(hosts.check(&h, false), Err(Refusal::Origin), "{origin}");
        }
        let h = headers(&[
            (header::HOST, "evil.example:8080"),
            (header::ORIGIN, "http://evil.example:8080"),
            (header::CONTENT_TYPE, "application/json"),
        ]);
        assert_eq!(hosts.check(&h, true), Err(Refusal::Host), "DNS rebinding");
        let h = headers(&[
            (header::HOST, "127.0.0.1:8080"),
            (header::CONTENT_TYPE, "text/plain"),
        ]);
        assert_eq!(hosts.check(&h, true), Err(Refusal::ContentType));
    }
}

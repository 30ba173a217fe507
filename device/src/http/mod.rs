//! The device's HTTP endpoint, a thin shell over the actors: `GET /thumb/<id>` (the picture
//! looked up in the catalog directly; thumbnails made by [`crate::thumb`] on a blocking thread
//! and cached on disk), `GET /` (the search page), `POST /api/search` (a [`SearchRequest`]
//! through the search actor, exactly as an MQTT search), `GET /api/status` and `GET /metrics`
//! (the status in Prometheus' text format, [`metrics`]). Every request
//! passes [`guard`] first: only the device's own page may use it.

pub mod guard;
pub mod metrics;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edgeclip_messages::dashboard::{DeviceStatus, SearchError, SearchRequest, SearchResponse};
use ractor::ActorRef;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actors::index::IndexMsg;
use crate::actors::search::SearchMsg;
use crate::config::HttpConfig;
use crate::error::DeviceError;
use crate::index::CatalogReader;
use crate::preprocess::DecodeLimits;
use crate::thumb::make_thumbnail;

/// The search page: plain HTML and a little JavaScript, no external resources.
const PAGE: &str = include_str!("page.html");
/// How long the index actor may take to answer a status request: it answers from memory at
/// once, so this only guards against a stuck actor.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a search request body (the JSON of a [`SearchRequest`]).
const MAX_BODY: usize = 16 << 10;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpContext {
    /// The search coordinator (the same one MQTT searches go through).
    pub search: ActorRef<SearchMsg>,
    /// The index actor (status).
    pub index: ActorRef<IndexMsg>,
    /// The pictures, looked up by id for thumbnails.
    pub catalog: CatalogReader,
    /// Thumbnail cache folder.
    pub cache_dir: PathBuf,
    /// Longest side of thumbnails.
    pub thumb_side: u32,
    /// Decoder bounds for thumbnails (the encoder's).
    pub limits: DecodeLimits,
    /// Largest picture file read.
    pub max_file_bytes: u64,
    /// Longest search text.
    pub max_text_bytes: usize,
    /// How long a search may take (the cloud's timeout and some slack).
    pub search_timeout: Duration,
}

/// The address `bind` names: an IP address, or `lan`: the source address of the default route.
pub fn resolve_bind(bind: &str) -> IpAddr {
    if let Ok(ip) = bind.parse() {
        return ip;
    }
    match default_route_address() {
        Some(ip) => ip,
        None => {
            warn!("no default route: the HTTP endpoint listens on 127.0.0.1 only (set http.bind)");
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
    }
}

/// The local address the kernel would use for traffic to the outside (the interface of the
/// default route). Connecting a UDP socket only looks the route up; nothing is sent.
fn default_route_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    // TEST-NET-3 (RFC 5737): never a real host; only its route matters.
    socket.connect((Ipv4Addr::new(203, 0, 113, 1), 9)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// A bound but not yet serving listener, with the URL dashboards use to reach it.
pub struct Bound {
    listener: TcpListener,
    /// The address listened on.
    pub addr: SocketAddr,
    /// Base URL (no trailing slash).
    pub base_url: String,
}

/// Binds the endpoint's socket as `config` says.
pub async fn bind(config: &HttpConfig) -> Result<Bound, DeviceError> {
    let ip = resolve_bind(&config.bind);
    let listener = TcpListener::bind((ip, config.port)).await.map_err(|e| {
        DeviceError::Config(format!("http: cannot listen on {ip}:{}: {e}", config.port))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| DeviceError::Config(format!("http: {e}")))?;
    let base_url = if config.public_url.is_empty() {
        format!("http://{addr}")
    } else {
        config.public_url.clone()
    };
    Ok(Bound {
        listener,
        addr,
        base_url,
    })
}

/// The running endpoint.
pub struct HttpServer {
    /// The address listened on.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves `bound` until [`HttpServer::shutdown`].
    pub fn start(bound: Bound, context: HttpContext) -> HttpServer {
        let (stop, stopped) = oneshot::channel::<()>();
        let addr = bound.addr;
        let app = router(context, guard::Hosts::new(&bound.base_url));
        let task = tokio::spawn(async move {
            let served = axum::serve(bound.listener, app).with_graceful_shutdown(async {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                warn!(error = %e, "HTTP endpoint stopped");
            }
        });
        info!(%addr, url = %bound.base_url, "HTTP endpoint: search page and thumbnails");
        HttpServer { addr, stop, task }
    }

    /// Stops accepting, lets running requests finish (bounded), and returns.
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(timeout, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// The routes, behind the guard of `hosts`.
pub fn router(context: HttpContext, hosts: guard::Hosts) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/thumb/:id", get(thumb))
        .route("/api/search", post(search))
        .route("/api/status", get(status))
        .route("/metrics", get(prometheus))
        .with_state(Arc::new(context))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(hosts),
            guarded,
        ))
}

/// Answers a request only if [`guard::Hosts::check`] lets it through (403 otherwise; 415 for
/// a search not sent as JSON).
async fn guarded(
    State(hosts): State<Arc<guard::Hosts>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let search = request.method() == axum::http::Method::POST;
    match hosts.check(request.headers(), search) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            warn!(?refusal, uri = %request.uri(), "HTTP request refused");
            let code = match refusal {
                guard::Refusal::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                _ => StatusCode::FORBIDDEN,
            };
            plain(code, refusal.message())
        }
    }
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE))
}

fn plain(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

async fn search(State(ctx): State<Arc<HttpContext>>, body: Bytes) -> Response {
    if body.len() > MAX_BODY {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "search request too large");
    }
    let request = match SearchRequest::parse(&body, ctx.max_text_bytes) {
        Ok(r) => r,
        Err(e) => {
            let answer = SearchResponse::Error(SearchError {
                id: String::new(),
                error: format!("bad search: {e}"),
            });
            return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
        }
    };
    let timeout = ctx.search_timeout.as_millis() as u64;
    match ractor::call_t!(
        ctx.search,
        |port| SearchMsg::Search(request, Some(port)),
        timeout
    ) {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the device did not answer: {e}"),
        ),
    }
}

/// The device's status from the index actor, or the answer saying it did not come.
async fn current_status(ctx: &HttpContext) -> Result<DeviceStatus, Response> {
    ractor::call_t!(
        ctx.index,
        IndexMsg::Status,
        STATUS_TIMEOUT.as_millis() as u64
    )
    .map_err(|e| {
        plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the device did not answer: {e}"),
        )
    })
}

async fn prometheus(State(ctx): State<Arc<HttpContext>>) -> Response {
    match current_status(&ctx).await {
        Ok(status) => (
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            metrics::render(&status),
        )
            .into_response(),
        Err(answer) => answer,
    }
}

async fn status(State(ctx): State<Arc<HttpContext>>) -> Response {
    match current_status(&ctx).await {
        Ok(status) => Json(status).into_response(),
        Err(answer) => answer,
    }
}

async fn thumb(State(ctx): State<Arc<HttpContext>>, UrlPath(id): UrlPath<String>) -> Response {
    let context = ctx.clone();
    // The lookup (a read lock on the catalog) and the thumbnail on a blocking thread.
    let made = tokio::task::spawn_blocking(move || {
        let Some(entry) = context.catalog.picture(&id) else {
            return Err(ThumbError::Unknown(format!(
                "no indexed picture has id {id:?}"
            )));
        };
        // Keyed by content and size: an edited picture gets a new thumbnail, a renamed one
        // keeps it.
        let hash: String = entry.hash[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let cached = context
            .cache_dir
            .join(format!("{hash}-{}.jpg", context.thumb_side));
        cached_thumbnail(
            &entry.path,
            &cached,
            &context.cache_dir,
            context.thumb_side,
            context.limits,
            context.max_file_bytes,
        )
    })
    .await;
    match made {
        Ok(Ok(jpeg)) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "private, max-age=300"),
            ],
            jpeg,
        )
            .into_response(),
        Ok(Err(ThumbError::Unknown(reason) | ThumbError::Gone(reason))) => {
            plain(StatusCode::NOT_FOUND, reason)
        }
        Ok(Err(ThumbError::Unreadable(reason))) => plain(StatusCode::UNPROCESSABLE_ENTITY, reason),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("thumbnail failed: {e}"),
        ),
    }
}

enum ThumbError {
    /// No indexed picture has this id.
    Unknown(String),
    /// The file is no longer there.
    Gone(String),
    /// The file cannot be made into a thumbnail.
    Unreadable(String),
}

/// The cached thumbnail, or a new one (written to the cache by temp file and rename, so a
/// crash never leaves half a JPEG there). A cache that cannot be written only costs time.
fn cached_thumbnail(
    picture: &Path,
    cached: &Path,
    dir: &Path,
    side: u32,
    limits: DecodeLimits,
    max_bytes: u64,
) -> Result<Vec<u8>, ThumbError> {
    if let Ok(jpeg) = std::fs::read(cached) {
        return Ok(jpeg);
    }
    let size = std::fs::metadata(picture)
        .map_err(|e| ThumbError::Gone(format!("{}: {e}", picture.display())))?
        .len();
    if size > max_bytes {
        return Err(ThumbError::Unreadable(format!(
            "{}: {size} bytes is over encoder.max_file_mib",
            picture.display()
        )));
    }
    let bytes = std::fs::read(picture)
        .map_err(|e| ThumbError::Gone(format!("{}: {e}", picture.display())))?;
    let jpeg = make_thumbnail(&bytes, side, limits)
        .map_err(|e| ThumbError::Unreadable(format!("{}: {e}", picture.display())))?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cached.with_extension(format!("tmp-{}-{n}", std::process::id()));
    let written = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(&tmp, &jpeg))
        .and_then(|_| std::fs::rename(&tmp, cached));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        warn!(dir = %dir.display(), error = %e, "thumbnail not cached");
    }
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_are_taken_as_given_and_lan_is_never_every_interface() {
        assert_eq!(resolve_bind("127.0.0.1"), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(resolve_bind("::1"), "::1".parse::<IpAddr>().unwrap());
        // "lan" is one concrete address (the default route's, else loopback), never 0.0.0.0.
        let lan = resolve_bind("lan");
        assert!(!lan.is_unspecified(), "{lan}");
        assert_eq!(lan, resolve_bind("lan"), "stable");
    }
}

//! An MQTT broker inside the process: rumqttd on one TCP listener, for `edgeclip up` and the
//! whole-system tests. A real deployment uses any broker (Mosquitto, EMQX, ...).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::Error;

/// The largest MQTT payload the embedded broker accepts: a device's search answer or a batch
/// of vectors is far smaller; pictures never travel.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// How long the broker may take to listen after its thread starts: rumqttd binds at once, so
/// only a machine too loaded to run it takes this long.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One attempt of the readiness probe: a loopback connect is answered at once once the broker
/// listens, and refused at once before.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// Pause between two readiness probes: short beside a start, long enough not to spin.
const PROBE_PAUSE: Duration = Duration::from_millis(20);

/// How long rumqttd waits for a new connection's CONNECT packet before closing it (rumqttd's
/// `connection_timeout_ms`): a client sends it right after connecting, so only a stuck or
/// hostile client reaches it.
const CONNECT_PACKET_TIMEOUT_MS: u64 = 60_000;

/// rumqttd's pause between two accepted connections (`next_connection_delay_ms`): the least it
/// takes, as the whole-system tests connect many clients at once.
const NEXT_CONNECTION_DELAY_MS: u64 = 1;

/// A running embedded broker. rumqttd has no stop: it ends with the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd on `listen` and waits until it accepts connections.
    pub fn start(listen: SocketAddr) -> Result<Self, Error> {
        // rumqttd reports a busy port only in its log; check first for a clear error.
        drop(TcpListener::bind(listen).map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?);
        let toml = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 10000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = {NEXT_CONNECTION_DELAY_MS}
[v4.1.connections]
connection_timeout_ms = {CONNECT_PACKET_TIMEOUT_MS}
max_payload_size = {MAX_PAYLOAD}
max_inflight_count = 100
dynamic_filters = true
"#
        );
        let config: rumqttd::Config = config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(Error::BrokerConfig)?;
        std::thread::Builder::new()
            .name("rumqttd".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&listen, PROBE_TIMEOUT).is_err() {
            if Instant::now() > deadline {
                return Err(Error::BrokerSilent(listen));
            }
            std::thread::sleep(PROBE_PAUSE);
        }
        match nodelay_on_listener(listen) {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(%listen, "embedded broker: listening socket not found; TCP_NODELAY not set (searches may wait for delayed ACKs)")
            }
            Err(e) => {
                tracing::warn!(%listen, error = %e, "embedded broker: cannot set TCP_NODELAY")
            }
        }
        Ok(Self { addr: listen })
    }

    /// Starts a broker on a free loopback port.
    pub fn start_on_free_port() -> Result<Self, Error> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `mqtt://host:port` of the broker.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }
}

/// Sets `TCP_NODELAY` on rumqttd's listening socket for `listen`, found among this process's
/// file descriptors; returns whether it was found.
///
/// rumqttd 0.20 never sets `TCP_NODELAY` on the connections it accepts, so each small reply
/// it forwards waits behind the previous one's delayed ACK (Nagle), which makes a search over
/// loopback many times slower (BENCHMARKS.md). Linux copies the option from a listening socket to every socket
/// it accepts, and rumqttd gives no access to its listener, so it is set on the listener here
/// before any client connects (the readiness probe above is the only earlier connection). An fd
/// is touched only if it is a listening socket bound to exactly `listen`, which only the broker's
/// can be: [`EmbeddedBroker::start`] checked that the address was free.
#[cfg(target_os = "linux")]
fn nodelay_on_listener(listen: SocketAddr) -> std::io::Result<bool> {
    let found = find_socket(|socket| {
        let is_it = socket.is_listener().unwrap_or(false)
            && socket.local_addr().ok().and_then(|a| a.as_socket()) == Some(listen);
        is_it.then(|| socket.set_tcp_nodelay(true))
    })?;
    found.transpose().map(|set| set.is_some())
}

/// The first `Some` that `pick` returns for one of this process's sockets (its file
/// descriptors, as listed in `/proc/self/fd`).
#[cfg(target_os = "linux")]
fn find_socket<T>(
    mut pick: impl FnMut(socket2::SockRef<'_>) -> Option<T>,
) -> std::io::Result<Option<T>> {
    use std::os::fd::{BorrowedFd, RawFd};
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        // SAFETY: the fd is only borrowed for `pick`'s calls; if another thread closed it
        // meanwhile they fail with EBADF (or, if the number was reused, inspect another fd,
        // which `pick` leaves alone unless it is the socket it looks for).
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        if let Some(found) = pick(socket2::SockRef::from(&fd)) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

#[cfg(not(target_os = "linux"))]
fn nodelay_on_listener(_listen: SocketAddr) -> std::io::Result<bool> {
    // Elsewhere accepted sockets may not inherit the option; the embedded broker is for
    // trying edgeclip out and for tests, a deployment uses its own broker.
    Ok(false)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Whether the socket rumqttd accepted for a client whose local address is `client` has
    /// `TCP_NODELAY`, once it exists.
    fn accepted_nodelay(client: SocketAddr) -> Option<bool> {
        find_socket(|socket| {
            (socket.peer_addr().ok().and_then(|a| a.as_socket()) == Some(client))
                .then(|| socket.tcp_nodelay().ok())
                .flatten()
        })
        .ok()
        .flatten()
    }

    #[test]
    fn accepted_connections_do_not_wait_for_delayed_acks() {
        let broker = EmbeddedBroker::start_on_free_port().unwrap();
        let client = TcpStream::connect(broker.addr()).unwrap();
        let local = client.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let nodelay = loop {
            if let Some(n) = accepted_nodelay(local) {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "the broker never accepted the connection"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            nodelay,
            "TCP_NODELAY is off on the broker's side of the connection"
        );
    }
}

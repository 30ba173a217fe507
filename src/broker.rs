//! An MQTT broker inside the process: rumqttd on one TCP listener, for `edgeclip up` and the
//! whole-system tests. A real deployment uses any broker (Mosquitto, EMQX, ...).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The largest MQTT payload the embedded broker accepts: a device's search answer or a batch
/// of vectors is far smaller; pictures never travel.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// A running embedded broker. rumqttd has no stop: it ends with the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd on `listen` and waits until it accepts connections.
    pub fn start(listen: SocketAddr) -> anyhow::Result<Self> {
        // rumqttd reports a busy port only in its log; check first for a clear error.
        drop(TcpListener::bind(listen).with_context(|| {
            format!("cannot listen on {listen} (another MQTT broker running? choose another address with --listen)")
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
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {MAX_PAYLOAD}
max_inflight_count = 100
dynamic_filters = true
"#
        );
        let config: rumqttd::Config = config::Config::builder()
            .add_source(config::File::from_str(&toml, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .context("embedded broker configuration")?;
        std::thread::Builder::new().name("rumqttd".into()).spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("embedded broker did not start listening on {listen}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self { addr: listen })
    }

    /// Starts a broker on a free loopback port.
    pub fn start_on_free_port() -> anyhow::Result<Self> {
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

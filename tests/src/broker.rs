//! The MQTT broker under test: a real mosquitto, or Ferry's own [`ferry_broker`] in-process (the
//! broker `ferry demo` runs).
//!
//! A test whose subject holds for any MQTT 5 broker takes a [`BrokerKind`] and runs once per
//! broker: the mosquitto run is `#[ignore = "needs mosquitto"]`, the ferry-broker run needs
//! nothing. A test that needs what only mosquitto has (its state across a broker restart, TLS,
//! passwords, its log) uses [`Mosquitto`] directly.
//!
//! Invariants: the broker listens on an ephemeral loopback port from [`TestBroker::start`] until
//! the handle is dropped (mosquitto is killed; ferry-broker is told to shut down and closes every
//! connection). ferry-broker runs on the caller's tokio runtime.
use std::fmt;
use std::net::SocketAddr;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::mosquitto::{Mosquitto, MosquittoOptions};

/// Which broker a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// A `mosquitto` process with default [`MosquittoOptions`] (needs the tool).
    Mosquitto,
    /// [`ferry_broker::Broker`] with default settings, in-process.
    FerryBroker,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::FerryBroker => "ferry-broker",
        })
    }
}

/// A running broker of either kind.
pub struct TestBroker {
    kind: BrokerKind,
    addr: SocketAddr,
    _running: Running,
}

/// Held for its `Drop`: kills mosquitto, or shuts ferry-broker down.
#[allow(dead_code)]
enum Running {
    Mosquitto(Mosquitto),
    FerryBroker(DropGuard),
}

impl TestBroker {
    /// Starts a broker of `kind` on an ephemeral loopback port. Panics when it cannot (for
    /// mosquitto: with the install step when it is not installed).
    pub async fn start(kind: BrokerKind) -> TestBroker {
        let (addr, running) = match kind {
            BrokerKind::Mosquitto => {
                let m = Mosquitto::start(MosquittoOptions::default());
                let addr = SocketAddr::from(([127, 0, 0, 1], m.port()));
                (addr, Running::Mosquitto(m))
            }
            BrokerKind::FerryBroker => {
                let broker = ferry_broker::Broker::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await
                    .expect("bind ferry-broker on loopback");
                let addr = broker.local_addr();
                let stop = CancellationToken::new();
                tokio::spawn(broker.run(stop.clone()));
                (addr, Running::FerryBroker(stop.drop_guard()))
            }
        };
        TestBroker {
            kind,
            addr,
            _running: running,
        }
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The listener's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
}

//! A free loopback port, shared by the agent's benches and its integration tests.

/// A loopback port free right now (bound and released; good enough on loopback).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

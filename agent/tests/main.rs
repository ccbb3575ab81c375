//! Agent integration tests: real ptys, real TCP, real SQLite files, the real `ferry` binary where a
//! process must be killed. One binary; one module per scenario.
mod ack_budget;
mod api;
mod api_contract;
mod api_hostile;
mod api_tls;
mod api_values;
mod cli;
mod common;
mod config;
mod crash;
mod demo;
mod firmware;
mod full_disk;
mod garbage;
mod odd_device;
// The Python device and the one wait-until helper of ferry-tests, by path: ferry-tests depends
// on this crate.
#[path = "../../tests/src/peer.rs"]
mod peer;
#[path = "../../tests/src/pki.rs"]
#[allow(dead_code)]
mod pki;
#[path = "../../tests/src/poll.rs"]
#[allow(dead_code)]
mod poll;
mod power_cut;
mod reboots;
mod serial;
mod sync;

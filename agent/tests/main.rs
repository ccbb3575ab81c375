//! Agent integration tests: real ptys, real TCP, real SQLite files, the real `ferry` binary where a
//! process must be killed. One binary; one module per scenario.
mod api;
mod api_hostile;
mod cli;
mod common;
mod config;
mod crash;
mod demo;
mod full_disk;
mod garbage;
mod odd_device;
mod reboots;
mod serial;
mod sync;

//! The command line's client side: `ferry devices|latest|query|tail|status|replay` over the local API
//! (contract: `agent/API.md`).
//!
//! Layout: [`types`] (the API's JSON shapes, tolerant of unknown fields), [`sse`] (a Server-Sent
//! Events parser over raw bytes), [`format`] (table, JSON and CSV text; pure), [`client`] (HTTP,
//! error mapping), [`commands`] (one function per command, the only place that writes stdout).
//!
//! Invariants:
//! - stdout carries only data; notes, reconnects and errors go to stderr. Output is written as it
//!   arrives: `query events` prints each page (at most 1,000 rows) before fetching the next, so
//!   memory stays flat however many rows match; `tail` flushes every sample.
//! - Exit codes ([`CliError::exit_code`]): 0 ok (also when stdout is closed early, e.g. `| head`),
//!   1 the agent is unreachable or failed, 2 the request was refused as a client mistake (4xx) or
//!   the command line is wrong.
//! - `tail` never skips or repeats a sample across a reconnect: it resumes with `Last-Event-ID`
//!   set to the last id it printed, and drops any event at or below that id.

pub mod client;
pub mod commands;
pub mod firmware;
pub mod format;
pub mod replay;
pub mod sse;
pub mod types;

pub use client::{ApiClient, CliError, Endpoint};
pub use commands::{EventsQuery, SeriesQuery, TailOptions};
pub use format::Format;

/// Default API address when neither `--api` nor `FERRY_API_URL` is given.
pub const DEFAULT_API_URL: &str = "http://127.0.0.1:7878";
/// Environment variable for the API address.
pub const ENV_API_URL: &str = "FERRY_API_URL";
/// Environment variable for the API token.
pub const ENV_API_TOKEN: &str = "FERRY_API_TOKEN";
/// Environment variable for the CA file of an HTTPS API.
pub const ENV_API_CA_FILE: &str = "FERRY_API_CA_FILE";

//! End-to-end tests across Ferry components (one binary, one module per scenario).
mod bridge;
mod firmware_qemu;
mod pipeline;
mod uplink;

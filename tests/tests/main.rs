//! End-to-end tests across Ferry components (one binary, one module per scenario).
mod arm;
mod bridge;
mod command_statuses;
mod contract;
mod dashboard;
mod firmware_mqtt;
mod firmware_pipeline;
mod firmware_qemu;
mod firmware_update_qemu;
mod metrics_names;
mod package;
mod pipeline;
mod power_cut;
mod service;
mod uplink;
mod uplink_tls;
mod values;

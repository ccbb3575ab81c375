//! Shared harness for Ferry's end-to-end tests (QEMU firmware, agent, broker, database).

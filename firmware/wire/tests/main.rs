//! ferry-wire integration tests: golden vectors from PROTOCOL.md, property tests of the codec and
//! the streaming decoder.
mod decoder;
mod golden;
mod roundtrip;
mod strategies;

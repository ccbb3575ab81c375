//! The agent's config file (`ferry.toml`) and its environment overrides.
//!
//! Input: the file's text, then optionally a NUL byte and `NAME=value` lines for the environment
//! (only variables the agent reads matter; libFuzzer finds their names from the comparisons).
//! Invalid UTF-8 never reaches the parser (`Settings::load` refuses it when reading the file).
//!
//! Checked: `Settings::from_toml` returns instead of panicking or hanging, and every error names
//! where it came from: a parse error names the file and has a message; a validation error names
//! the dotted key, a message, and either the file or the environment variable that set the key.
#![no_main]

use ferry_agent::config::{ConfigError, Settings};
use libfuzzer_sys::fuzz_target;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env = String::from_utf8_lossy(env);
    let lookup = |name: &str| {
        env.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    match Settings::from_toml(text, FILE, lookup) {
        Ok(s) => {
            assert_eq!(s.source, FILE, "settings name their file");
            assert!(!s.gateway_id.is_empty(), "a gateway id is always set");
        }
        Err(ConfigError::Parse { file, message }) => {
            assert_eq!(file, FILE);
            assert!(
                !message.trim().is_empty(),
                "a parse error says what is wrong"
            );
        }
        Err(ConfigError::Invalid { file, key, message }) => {
            assert!(!key.is_empty(), "an invalid value names its key");
            assert!(!message.trim().is_empty(), "{key}: no message");
            assert!(
                file == FILE || file.starts_with("environment variable FERRY_"),
                "{key}: the error names {file:?}, neither the file nor a variable"
            );
        }
        Err(e @ ConfigError::Read { .. }) => panic!("from_toml reads no file: {e}"),
    }
});

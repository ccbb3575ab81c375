//! Topic names of the contract, and parsing them back.
//!
//! Invariants:
//! - Every id is one topic level: [`segment`] percent-encodes `%`, `/`, `+`, `#` and NUL, and
//!   [`unsegment`] reverses exactly those five escapes (anything else is refused), so an id is
//!   never a wildcard and round-trips whatever it holds.
//! - [`try_parse_topic`] knows exactly the shapes the `*_topic` functions build. A device may be
//!   called `firmware`: `ferry/v1/{gateway}/firmware/commands` is that device's commands, while
//!   the firmware topics end in `bundle`, `update` or `result` after `firmware`. A gateway
//!   subscribes to its two firmware topics by name, never with `firmware/+`, which would also
//!   match such a device's own events.

/// Shared subscription the cloud-side bridges use, so replicas split the load.
pub const EVENTS_SHARED_FILTER: &str = "$share/ferry-bridge/ferry/v1/+/+/events";

/// `ferry/v1/{gateway}/{device}/events`
pub fn events_topic(gateway: &str, device: &str) -> String {
    format!("ferry/v1/{}/{}/events", segment(gateway), segment(device))
}

/// `ferry/v1/{gateway}/status` (retained birth message and last will)
pub fn status_topic(gateway: &str) -> String {
    format!("ferry/v1/{}/status", segment(gateway))
}

/// `ferry/v1/{gateway}/{device}/commands`
pub fn commands_topic(gateway: &str, device: &str) -> String {
    format!("ferry/v1/{}/{}/commands", segment(gateway), segment(device))
}

/// The filter a gateway subscribes to for its downlink: `ferry/v1/{gateway}/+/commands`.
pub fn commands_filter(gateway: &str) -> String {
    format!("ferry/v1/{}/+/commands", segment(gateway))
}

/// `ferry/v1/{gateway}/{device}/commands/result`
pub fn command_result_topic(gateway: &str, device: &str) -> String {
    format!(
        "ferry/v1/{}/{}/commands/result",
        segment(gateway),
        segment(device)
    )
}

/// `ferry/v1/{gateway}/firmware/bundle`: a signed bundle for the gateway (cloud → gateway).
pub fn firmware_bundle_topic(gateway: &str) -> String {
    format!("ferry/v1/{}/firmware/bundle", segment(gateway))
}

/// `ferry/v1/{gateway}/firmware/update`: an update request (cloud → gateway).
pub fn firmware_update_topic(gateway: &str) -> String {
    format!("ferry/v1/{}/firmware/update", segment(gateway))
}

/// `ferry/v1/{gateway}/firmware/{bundle|update}/result` (gateway → cloud).
pub fn firmware_result_topic(gateway: &str, what: FirmwareTopic) -> String {
    let what = match what {
        FirmwareTopic::Bundle => "bundle",
        FirmwareTopic::Update => "update",
    };
    format!("ferry/v1/{}/firmware/{what}/result", segment(gateway))
}

/// The two firmware message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareTopic {
    /// A bundle.
    Bundle,
    /// An update request.
    Update,
}

/// What a `ferry/v1/...` topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `ferry/v1/{gateway}/{device}/events`
    Events {
        /// Gateway id (decoded).
        gateway: String,
        /// Device id (decoded).
        device: String,
    },
    /// `ferry/v1/{gateway}/{device}/commands`
    Commands {
        /// Gateway id (decoded).
        gateway: String,
        /// Device id (decoded).
        device: String,
    },
    /// `ferry/v1/{gateway}/{device}/commands/result`
    CommandResult {
        /// Gateway id (decoded).
        gateway: String,
        /// Device id (decoded).
        device: String,
    },
    /// `ferry/v1/{gateway}/status`
    Status {
        /// Gateway id (decoded).
        gateway: String,
    },
    /// `ferry/v1/{gateway}/firmware/{bundle|update}`
    Firmware {
        /// Gateway id (decoded).
        gateway: String,
        /// Which.
        what: FirmwareTopic,
    },
    /// `ferry/v1/{gateway}/firmware/{bundle|update}/result`
    FirmwareResult {
        /// Gateway id (decoded).
        gateway: String,
        /// Which.
        what: FirmwareTopic,
    },
}

/// Parses a topic of this contract; `None` for anything else ([`try_parse_topic`] says why).
pub fn parse_topic(topic: &str) -> Option<Topic> {
    try_parse_topic(topic).ok()
}

/// Parses a topic of this contract, or says what is wrong with it: not one of the four shapes,
/// or an id level that is empty or holds a `%` sequence other than the five escapes.
pub fn try_parse_topic(topic: &str) -> Result<Topic, String> {
    let parts: Vec<&str> = topic.split('/').collect();
    let s = |i: usize| {
        unsegment(parts[i]).ok_or_else(|| {
            format!(
                "topic level {} ({:?}) is not a percent-encoded id",
                i + 1,
                parts[i]
            )
        })
    };
    match parts.as_slice() {
        ["ferry", "v1", _, "status"] => Ok(Topic::Status { gateway: s(2)? }),
        ["ferry", "v1", _, "firmware", w @ ("bundle" | "update")] => Ok(Topic::Firmware {
            gateway: s(2)?,
            what: if *w == "bundle" {
                FirmwareTopic::Bundle
            } else {
                FirmwareTopic::Update
            },
        }),
        ["ferry", "v1", _, "firmware", w @ ("bundle" | "update"), "result"] => {
            Ok(Topic::FirmwareResult {
                gateway: s(2)?,
                what: if *w == "bundle" {
                    FirmwareTopic::Bundle
                } else {
                    FirmwareTopic::Update
                },
            })
        }
        ["ferry", "v1", _, _, "events"] => Ok(Topic::Events {
            gateway: s(2)?,
            device: s(3)?,
        }),
        ["ferry", "v1", _, _, "commands"] => Ok(Topic::Commands {
            gateway: s(2)?,
            device: s(3)?,
        }),
        ["ferry", "v1", _, _, "commands", "result"] => Ok(Topic::CommandResult {
            gateway: s(2)?,
            device: s(3)?,
        }),
        _ => Err("not a ferry/v1 topic of this contract".into()),
    }
}

/// A topic level for an id: `%`, `/`, `+`, `#` and NUL are percent-encoded so any id stays one
/// level and never a wildcard. Ids without them (the usual case) are unchanged.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '+' => out.push_str("%2B"),
            '#' => out.push_str("%23"),
            '\0' => out.push_str("%00"),
            c => out.push(c),
        }
    }
    out
}

/// Reverses [`segment`]; `None` for an empty level or a bad escape.
pub fn unsegment(level: &str) -> Option<String> {
    if level.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(level.len());
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "2B" => '+',
            "23" => '#',
            "00" => '\0',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_escape_ids_and_parse_back() {
        let t = events_topic("gw", "a/b+c#d%e");
        assert_eq!(t, "ferry/v1/gw/a%2Fb%2Bc%23d%25e/events");
        assert_eq!(
            parse_topic(&t),
            Some(Topic::Events {
                gateway: "gw".into(),
                device: "a/b+c#d%e".into()
            })
        );
        assert_eq!(
            parse_topic(&command_result_topic("g", "d")),
            Some(Topic::CommandResult {
                gateway: "g".into(),
                device: "d".into()
            })
        );
        assert_eq!(
            parse_topic(&status_topic("g")),
            Some(Topic::Status {
                gateway: "g".into()
            })
        );
        assert_eq!(parse_topic("ferry/v1/g/d/other"), None);
        assert_eq!(parse_topic("ferry/v1/g/%zz/events"), None);
        assert_eq!(commands_filter("g"), "ferry/v1/g/+/commands");
    }

    #[test]
    fn invalid_topics_say_why() {
        assert_eq!(
            try_parse_topic("ferry/v1/gw/%2f/commands"),
            Err("topic level 4 (\"%2f\") is not a percent-encoded id".into())
        );
        assert_eq!(
            try_parse_topic("ferry/v1//status"),
            Err("topic level 3 (\"\") is not a percent-encoded id".into())
        );
        assert_eq!(
            try_parse_topic("ferry/v2/g/d/events"),
            Err("not a ferry/v1 topic of this contract".into())
        );
        assert!(try_parse_topic("ferry/v1/g/d%00/commands").is_ok());
    }
}

//! Topic names, topic filters and shared-subscription names (pure; MQTT 3.1.1 and 5 §4.7-4.8).
//!
//! Invariants:
//! - A topic name that passes [`valid_topic_name`] has no wildcard and no NUL, so it can never
//!   be mistaken for a filter.
//! - [`matches`] follows the specification: `+` matches exactly one level (an empty one too),
//!   `#` matches the parent level and everything below it, and a filter that starts with a
//!   wildcard never matches a topic that starts with `$` (`$SYS/...`, `$share` is not a topic).
//! - A subscription string is either a plain filter or `$share/{group}/{filter}`; the group is
//!   one non-empty level without wildcards.

/// Longest topic or filter (the length prefix is 16 bits).
const MAX_LEN: usize = 65_535;

/// Whether `t` may be published to: non-empty, no `+`, `#` or NUL, at most 65,535 bytes.
pub fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_LEN && !t.contains(['+', '#', '\0'])
}

/// Whether `f` is a valid topic filter: wildcards only as whole levels, `#` only last.
pub fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > MAX_LEN || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == last,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether `filter` (valid) matches `topic` (a valid topic name).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(l)) if f == l => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// A parsed subscription string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscription<'a> {
    /// Every matching message goes to this subscriber.
    Plain(&'a str),
    /// `$share/{group}/{filter}`: each matching message goes to one member of the group.
    Shared {
        /// Group name.
        group: &'a str,
        /// The filter.
        filter: &'a str,
    },
}

impl<'a> Subscription<'a> {
    /// Parses and validates; `None` for an invalid filter or share name.
    pub fn parse(s: &'a str) -> Option<Subscription<'a>> {
        match s.strip_prefix("$share/") {
            Some(rest) => {
                let (group, filter) = rest.split_once('/')?;
                let group_ok = !group.is_empty() && !group.contains(['+', '#']);
                (group_ok && valid_filter(filter)).then_some(Subscription::Shared { group, filter })
            }
            None if s == "$share" || s.starts_with("$share/") => None,
            None => valid_filter(s).then_some(Subscription::Plain(s)),
        }
    }

    /// The filter part.
    pub fn filter(&self) -> &'a str {
        match self {
            Subscription::Plain(f) | Subscription::Shared { filter: f, .. } => f,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_specified() {
        let yes = [
            ("a/b/c", "a/b/c"),
            ("a/+/c", "a/b/c"),
            ("a/+/c", "a//c"),
            ("a/#", "a"),
            ("a/#", "a/b/c"),
            ("#", "a/b"),
            ("+/+", "/a"),
            ("ferry/v1/+/+/events", "ferry/v1/gw/dev-1/events"),
            ("$SYS/#", "$SYS/x"),
        ];
        for (f, t) in yes {
            assert!(valid_filter(f), "{f}");
            assert!(matches(f, t), "{f} should match {t}");
        }
        let no = [
            ("a/b", "a/b/c"),
            ("a/+", "a/b/c"),
            ("a/+/c", "a/b/d"),
            ("a/b/c", "a/b"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("ferry/v1/+/+/events", "ferry/v1/gw/status"),
        ];
        for (f, t) in no {
            assert!(!matches(f, t), "{f} should not match {t}");
        }
    }

    #[test]
    fn invalid_names_and_filters_are_refused() {
        for f in ["", "a/#/b", "a+", "a/b#", "#/a", "a\0b"] {
            assert!(!valid_filter(f), "{f:?}");
        }
        for t in ["", "a/+", "a/#", "a\0"] {
            assert!(!valid_topic_name(t), "{t:?}");
        }
        assert!(valid_topic_name("ferry/v1/g/d/events"));
    }

    #[test]
    fn shared_subscriptions_parse() {
        assert_eq!(
            Subscription::parse(ferry_contract::EVENTS_SHARED_FILTER),
            Some(Subscription::Shared {
                group: "ferry-bridge",
                filter: "ferry/v1/+/+/events"
            })
        );
        assert_eq!(Subscription::parse("a/+"), Some(Subscription::Plain("a/+")));
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/g/a/#/b",
            "$share",
        ] {
            assert_eq!(Subscription::parse(bad), None, "{bad}");
        }
    }
}

//! Broker addresses as both ends write them: `HOST:PORT`, `[v6]:PORT` for an IPv6 literal.
//!
//! The one parser of a broker address: the agent's `uplink.broker` and the bridge's `--broker`
//! use it, each wrapping its error in its own message. It checks the form only (a host, a `u16`
//! port); a caller with a policy on top (the bridge refuses port 0) applies it itself.

/// Splits `HOST:PORT` (`[v6]:PORT` for IPv6 literals) into host and port.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("expected HOST:PORT, got {s:?} (no host)"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_parses_and_names_the_problem() {
        assert_eq!(
            parse_host_port("127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(parse_host_port("[::1]:8883"), Ok(("::1".into(), 8883)));
        assert_eq!(
            parse_host_port("broker.example:1"),
            Ok(("broker.example".into(), 1))
        );
        assert!(parse_host_port("localhost")
            .unwrap_err()
            .contains("HOST:PORT"));
        assert!(parse_host_port("h:99999")
            .unwrap_err()
            .contains("not a port"));
        assert!(parse_host_port(":1883").unwrap_err().contains("no host"));
        assert!(parse_host_port("[]:1883").unwrap_err().contains("no host"));
    }
}

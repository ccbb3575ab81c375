//! HTTP to the agent's local API, and what a failure means for the person at the terminal.
//!
//! Every request carries `Authorization: Bearer <token>` when a token is set. System proxy
//! settings are ignored: the API is the agent on this machine (or one named by `--api`), and an
//! `http_proxy` meant for the internet must not capture it. Plain HTTP only (the API has no TLS).
//!
//! Errors by meaning ([`CliError`]), each with its exit code: unreachable (1, with the hint that the
//! agent may not be running), rejected as a client mistake (4xx: 2, the agent's `detail`), failed
//! on the agent's side (5xx: 1), an answer that is not the API's (1), a broken connection or a
//! timeout (1), a bad command line (2), and output that cannot be written (a closed pipe: 0,
//! silently).
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

use super::types::ApiErrorBody;
use super::{DEFAULT_API_URL, ENV_API_CA_FILE, ENV_API_TOKEN, ENV_API_URL};

/// How long a TCP connect to the agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one JSON request may take (a page is at most 1,000 events).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of an unexpected body an error message quotes.
const QUOTE_LIMIT: usize = 200;

/// A CLI command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Nothing answers at the API address (refused, no route, connect timeout).
    #[error("cannot reach the agent at {url} ({reason}); is `ferry run` running? (--api / FERRY_API_URL)")]
    Unreachable {
        /// The API base address.
        url: String,
        /// Why the connect failed.
        reason: String,
    },
    /// The agent refused the request as a client mistake (4xx).
    #[error("{detail}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The API's error kind (`bad_request`, `not_found`, ...).
        kind: String,
        /// The API's explanation, naming the parameter.
        detail: String,
    },
    /// The agent could not do it (5xx, e.g. `503 too_many_streams`).
    #[error("the agent answered {status}: {detail}")]
    Failed {
        /// HTTP status.
        status: u16,
        /// The API's error kind, if it gave one.
        kind: String,
        /// The API's explanation (or the start of the body).
        detail: String,
    },
    /// The answer is not what the API documents.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The request.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The connection broke or timed out after it was made.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The request.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The TLS connection failed: an untrusted or wrong certificate, or no HTTPS at that port.
    #[error("no HTTPS connection to the agent at {url}: {reason}")]
    Tls {
        /// The API base address.
        url: String,
        /// What failed and what to do about it.
        reason: String,
    },
    /// A bad command line (e.g. an unusable `--api`).
    #[error("{0}")]
    Usage(String),
    /// Writing stdout failed.
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Rejected { .. } | CliError::Usage(_) => 2,
            CliError::Output(_) if self.is_quiet() => 0,
            _ => 1,
        }
    }

    /// A failure to say nothing about: the reader of stdout went away (`ferry ... | head`).
    pub fn is_quiet(&self) -> bool {
        matches!(self, CliError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Base address, path ending in `/`.
    pub base: Url,
    /// Bearer token.
    pub token: Option<String>,
    /// CA certificates (PEM) that sign the agent's HTTPS certificate, besides the system's.
    pub ca_file: Option<std::path::PathBuf>,
}

impl Endpoint {
    /// From the flags, else the environment (`FERRY_API_URL`, `FERRY_API_TOKEN`,
    /// `FERRY_API_CA_FILE`; empty counts as unset), else the default address. An address without
    /// a scheme gets `http://`; `https://` is for an agent with `[api] tls_cert`.
    pub fn resolve(
        api: Option<&str>,
        token: Option<&str>,
        ca_file: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, CliError> {
        let nonempty = |s: String| Some(s).filter(|s| !s.trim().is_empty());
        let api = api
            .map(str::to_owned)
            .or_else(|| env(ENV_API_URL).and_then(nonempty))
            .unwrap_or_else(|| DEFAULT_API_URL.to_owned());
        let token = token
            .map(str::to_owned)
            .or_else(|| env(ENV_API_TOKEN).and_then(nonempty))
            .filter(|t| !t.is_empty());
        let text = api.trim();
        let with_scheme = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let mut base = Url::parse(&with_scheme)
            .map_err(|e| CliError::Usage(format!("--api {api:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!(
                "--api {api:?}: the local API speaks http:// (or https:// with [api] tls_cert)"
            )));
        }
        // A CA file from the flag goes only with https://; one from the environment is for
        // whichever agent speaks HTTPS, and left aside for an http:// one.
        if ca_file.is_some() && base.scheme() != "https" {
            return Err(CliError::Usage(format!(
                "--ca-file is for an https:// address, and --api is {api:?}"
            )));
        }
        let ca_file = ca_file
            .map(str::to_owned)
            .or_else(|| env(ENV_API_CA_FILE).and_then(nonempty))
            .filter(|f| !f.trim().is_empty() && base.scheme() == "https")
            .map(std::path::PathBuf::from);
        if base.host_str().is_none_or(str::is_empty) {
            return Err(CliError::Usage(format!("--api {api:?} has no host")));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        Ok(Endpoint {
            base,
            token,
            ca_file,
        })
    }

    /// The base address as people write it (no trailing `/` on a bare host).
    pub fn display(&self) -> String {
        let s = self.base.as_str();
        if self.base.path() == "/" {
            s.trim_end_matches('/').to_owned()
        } else {
            s.to_owned()
        }
    }

    /// `base` + path segments (each percent-encoded) + query pairs (skipping `None`s).
    pub fn url(&self, segments: &[&str], query: &[(&str, Option<String>)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let pairs: Vec<(&str, &str)> = query
            .iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(pairs);
        }
        url
    }
}

/// The innermost cause of an error, which is the one that says what happened ("Connection
/// refused (os error 111)" rather than "error sending request").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// `views` as pretty JSON, or `empty` when there are none, else each through `line`.
pub fn write_views<T: serde::Serialize>(
    out: &mut impl std::io::Write,
    json: bool,
    views: &[T],
    empty: &str,
    mut line: impl FnMut(&T, &mut dyn std::io::Write) -> Result<(), CliError>,
) -> Result<(), CliError> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(views).unwrap_or_default()
        )?;
        return Ok(());
    }
    if views.is_empty() {
        writeln!(out, "{empty}")?;
    }
    for v in views {
        line(v, out)?;
    }
    Ok(())
}

/// What a TLS failure (rustls's words in `cause`) means for the user, if it is one.
fn tls_failure(cause: &str, host: &str) -> Option<String> {
    // rustls's words (0.23: Debug names for some certificate errors, sentences for others).
    let fix = if cause.contains("UnknownIssuer") {
        "its certificate is not signed by a CA the CLI trusts: pass that CA with --ca-file (or FERRY_API_CA_FILE)".to_owned()
    } else if cause.contains("BadSignature") {
        "its certificate's signature does not verify (a damaged or forged certificate)".to_owned()
    } else if cause.contains("NotValidForName") || cause.contains("not valid for name") {
        format!("its certificate does not name {host:?}: use a host name the certificate names in --api")
    } else if cause.contains("Expired")
        || cause.contains("certificate expired")
        || cause.contains("NotValidYet")
        || cause.contains("not valid yet")
    {
        "its certificate is expired or not valid yet (check its dates and the clocks)".to_owned()
    } else if cause.contains("InvalidContentType") || cause.contains("corrupt message") {
        "it does not speak HTTPS on that port: use http:// (or set [api] tls_cert and tls_key on the agent)".to_owned()
    } else if cause.contains("invalid peer certificate") || cause.contains("HandshakeFailure") {
        "the TLS handshake failed".to_owned()
    } else {
        return None;
    };
    Some(format!("{fix} ({cause})"))
}

fn quote(body: &str) -> String {
    let t = body.trim();
    match t.char_indices().nth(QUOTE_LIMIT) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_owned(),
    }
}

/// The error for a non-2xx answer; pure so the mapping is tested.
pub fn status_error(status: StatusCode, body: &str) -> CliError {
    let parsed: Option<ApiErrorBody> = serde_json::from_str(body).ok();
    let (kind, mut detail) = match parsed {
        Some(b) if !b.detail.is_empty() => (b.error, b.detail),
        Some(b) => {
            let d = format!("HTTP {status} ({})", b.error);
            (b.error, d)
        }
        None if body.trim().is_empty() => (String::new(), format!("HTTP {status}")),
        None => (String::new(), format!("HTTP {status}: {}", quote(body))),
    };
    if status == StatusCode::UNAUTHORIZED {
        detail.push_str(" (set --token or FERRY_API_TOKEN)");
    }
    if status.is_client_error() {
        CliError::Rejected {
            status: status.as_u16(),
            kind,
            detail,
        }
    } else {
        CliError::Failed {
            status: status.as_u16(),
            kind,
            detail,
        }
    }
}

/// A client of one agent's API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    endpoint: Endpoint,
}

impl ApiClient {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Result<ApiClient, CliError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &endpoint.ca_file {
            let bad =
                |what: String| CliError::Usage(format!("--ca-file {}: {what}", path.display()));
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("not PEM certificates: {}", root_cause(&e))))?;
            if certs.is_empty() {
                return Err(bad(
                    "no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)".into(),
                ));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Usage(format!("cannot set up HTTP: {}", root_cause(&e))))?;
        Ok(ApiClient { http, endpoint })
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn send_error(&self, url: &Url, e: reqwest::Error) -> CliError {
        let cause = root_cause(&e);
        if let Some(reason) = tls_failure(&cause, self.endpoint.base.host_str().unwrap_or("")) {
            return CliError::Tls {
                url: self.endpoint.display(),
                reason,
            };
        }
        if e.is_connect() {
            CliError::Unreachable {
                url: self.endpoint.display(),
                reason: root_cause(&e),
            }
        } else if e.is_timeout() {
            CliError::Transport {
                url: url.to_string(),
                reason: "timed out".into(),
            }
        } else {
            CliError::Transport {
                url: url.to_string(),
                reason: root_cause(&e),
            }
        }
    }

    async fn send(
        &self,
        url: Url,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, CliError> {
        let req = match &self.endpoint.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.send_error(&url, e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        Err(status_error(status, &body))
    }

    /// `GET` a JSON answer as raw JSON.
    pub async fn get_value(
        &self,
        segments: &[&str],
        query: &[(&str, Option<String>)],
    ) -> Result<serde_json::Value, CliError> {
        self.get(segments, query).await
    }

    /// `GET` a JSON answer.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, Option<String>)],
    ) -> Result<T, CliError> {
        let url = self.endpoint.url(segments, query);
        let req = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(REQUEST_TIMEOUT);
        let resp = self.send(url.clone(), req).await?;
        self.json_answer(&url, resp).await
    }

    /// The JSON of an answer, or what was wrong with it (quoting its start).
    async fn json_answer<T: DeserializeOwned>(
        &self,
        url: &Url,
        resp: reqwest::Response,
    ) -> Result<T, CliError> {
        let body = resp.bytes().await.map_err(|e| self.send_error(url, e))?;
        serde_json::from_slice(&body).map_err(|e| CliError::BadAnswer {
            url: url.to_string(),
            reason: format!(
                "{e} in {:?}",
                quote(&String::from_utf8_lossy(
                    &body[..body.len().min(4 * QUOTE_LIMIT)]
                ))
            ),
        })
    }

    /// One item at `path/{id}`, or with no id the list in field `field` of `path`'s answer.
    pub async fn one_or_list<T: DeserializeOwned>(
        &self,
        path: &[&str],
        id: Option<String>,
        field: &str,
    ) -> Result<Vec<T>, CliError> {
        match id {
            Some(id) => {
                let mut one = path.to_vec();
                one.push(&id);
                Ok(vec![self.get(&one, &[]).await?])
            }
            None => {
                let v = self.get_value(path, &[]).await?;
                serde_json::from_value(v[field].clone()).map_err(|e| CliError::BadAnswer {
                    url: format!("/{}", path.join("/")),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// `POST` a body (`content_type`), a JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: Vec<u8>,
        content_type: &str,
        timeout: std::time::Duration,
    ) -> Result<T, CliError> {
        let url = self.endpoint.url(segments, &[]);
        let req = self
            .http
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .timeout(timeout)
            .body(body);
        let resp = self.send(url.clone(), req).await?;
        self.json_answer(&url, resp).await
    }

    /// Opens the event stream (`GET /api/v1/stream`), resuming after `last_event_id` if given.
    pub async fn stream(
        &self,
        query: &[(&str, Option<String>)],
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, CliError> {
        let url = self.endpoint.url(&["api", "v1", "stream"], query);
        let mut req = self
            .http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = self.send(url.clone(), req).await?;
        let ctype = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ctype.starts_with("text/event-stream") {
            return Err(CliError::BadAnswer {
                url: url.to_string(),
                reason: format!("content type {ctype:?}, not text/event-stream"),
            });
        }
        Ok(resp)
    }
}

/// What a broken stream read means (for `tail`'s reconnect note).
pub fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else {
        root_cause(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn flags_then_environment_then_default() {
        let e = Endpoint::resolve(None, None, None, env(&[])).unwrap();
        assert_eq!(e.base.as_str(), "http://127.0.0.1:7878/");
        assert_eq!(e.display(), "http://127.0.0.1:7878");
        assert_eq!(e.token, None);
        let vars = env(&[
            ("FERRY_API_URL", "http://10.0.0.5:9000"),
            ("FERRY_API_TOKEN", "s3cret"),
        ]);
        let e = Endpoint::resolve(None, None, None, &vars).unwrap();
        assert_eq!(e.display(), "http://10.0.0.5:9000");
        assert_eq!(e.token.as_deref(), Some("s3cret"));
        let e = Endpoint::resolve(Some("localhost:1"), Some("t"), None, &vars).unwrap();
        assert_eq!(e.display(), "http://localhost:1");
        assert_eq!(e.token.as_deref(), Some("t"));
        // Empty environment values count as unset.
        let e = Endpoint::resolve(
            None,
            None,
            None,
            env(&[("FERRY_API_URL", ""), ("FERRY_API_TOKEN", "")]),
        )
        .unwrap();
        assert_eq!(e.display(), "http://127.0.0.1:7878");
        assert_eq!(e.token, None);
    }

    #[test]
    fn a_ca_file_goes_with_https_and_one_from_the_environment_is_left_aside_for_http() {
        let vars = env(&[("FERRY_API_CA_FILE", "/etc/ferry/ca.pem")]);
        let e = Endpoint::resolve(Some("https://gw:7878"), None, None, &vars).unwrap();
        assert_eq!(
            e.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ferry/ca.pem"))
        );
        let e = Endpoint::resolve(Some("http://gw:7878"), None, None, &vars).unwrap();
        assert_eq!(e.ca_file, None);
        let e = Endpoint::resolve(Some("http://gw:7878"), None, Some("ca.pem"), &vars).unwrap_err();
        assert!(
            e.to_string()
                .contains("--ca-file is for an https:// address"),
            "{e}"
        );
        let e = Endpoint::resolve(Some("https://gw:7878"), None, Some("mine.pem"), &vars).unwrap();
        assert_eq!(
            e.ca_file.as_deref(),
            Some(std::path::Path::new("mine.pem")),
            "the flag wins"
        );
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        for bad in ["http://", "ftp://x", "http://[::1"] {
            let e = Endpoint::resolve(Some(bad), None, None, env(&[])).unwrap_err();
            assert!(matches!(e, CliError::Usage(_)), "{bad}: {e}");
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn urls_encode_segments_and_skip_absent_parameters() {
        let e = Endpoint::resolve(Some("http://h:1/prefix"), None, None, env(&[])).unwrap();
        let u = e.url(
            &["api", "v1", "devices", "a b/c", "latest"],
            &[
                ("since", Some("-15m".into())),
                ("device", None),
                ("until", Some("2026-11-24T10:00:00+01:00".into())),
            ],
        );
        assert_eq!(
            u.as_str(),
            "http://h:1/prefix/api/v1/devices/a%20b%2Fc/latest?since=-15m&until=2026-11-24T10%3A00%3A00%2B01%3A00"
        );
        let e = Endpoint::resolve(None, None, None, env(&[])).unwrap();
        assert_eq!(
            e.url(&["api", "v1", "status"], &[]).as_str(),
            "http://127.0.0.1:7878/api/v1/status"
        );
    }

    #[test]
    fn status_errors_by_meaning() {
        let e = status_error(
            StatusCode::BAD_REQUEST,
            r#"{"error":"bad_request","detail":"since: not a time: \"yesterday\""}"#,
        );
        assert_eq!(e.to_string(), "since: not a time: \"yesterday\"");
        assert_eq!(e.exit_code(), 2);
        let e = status_error(
            StatusCode::UNAUTHORIZED,
            r#"{"error":"unauthorized","detail":"missing token"}"#,
        );
        assert_eq!(
            e.to_string(),
            "missing token (set --token or FERRY_API_TOKEN)"
        );
        let e = status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"too_many_streams","detail":"64 streams are open"}"#,
        );
        assert_eq!(e.to_string(), "the agent answered 503: 64 streams are open");
        assert_eq!(e.exit_code(), 1);
        let e = status_error(StatusCode::NOT_FOUND, "no such route");
        assert_eq!(e.to_string(), "HTTP 404 Not Found: no such route");
        assert_eq!(e.exit_code(), 2);
        let e = status_error(StatusCode::METHOD_NOT_ALLOWED, "");
        assert_eq!(e.to_string(), "HTTP 405 Method Not Allowed");
    }

    #[test]
    fn a_closed_pipe_is_quiet_and_successful() {
        let e = CliError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(e.is_quiet());
        assert_eq!(e.exit_code(), 0);
        let e = CliError::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!e.is_quiet());
        assert_eq!(e.exit_code(), 1);
    }
}

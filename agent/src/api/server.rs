//! The HTTP/1.1 server under the router: accepts connections and serves each with hyper.
//!
//! Hand-written instead of `axum::serve` for two things it cannot do:
//! - **A header-read timeout.** A connection that has not sent a complete request head within
//!   [`HEADER_READ_TIMEOUT`] of connecting, or of its previous response (an idle keep-alive
//!   connection), is closed, so half-open and idle connections cannot pile up.
//! - **JSON bodies on hyper's own errors.** hyper answers a request it cannot parse itself (400
//!   malformed, 414 target too long, 431 head too large) with an empty body, before any handler
//!   runs, and offers no hook. [`JsonErrors`] sits between hyper and the socket and replaces that
//!   reply, which is exactly a status line with `content-length: 0` and `date` (and nothing
//!   else), by the same status with the API's `{"error", "detail"}` body and `connection: close`.
//!   No response of the API has that shape: every other 4xx/5xx carries a JSON body (the
//!   `json_errors` layer), and no body contains a bare CR LF (JSON, SSE and metrics text never do),
//!   so a reply cannot be mistaken for one. hyper writes through it unvectored (the wrapper does
//!   not claim vectored writes), so its reply arrives whole at the end of one write buffer; the
//!   API's tests pin the exact bytes hyper sends for each status.
//!
//! With `[api] tls_cert`/`tls_key` every connection is HTTPS ([`super::tls`]): the TLS handshake
//! must finish within [`HEADER_READ_TIMEOUT`] too, and a plain HTTP request on the HTTPS port (its
//! first byte is a letter, never a TLS record's 0x16) gets a plain `400` whose JSON body says to
//! use `https://`, instead of a dropped connection.
//!
//! On `stop`: no new connections; open ones finish their request in flight and close (streams end
//! at `stop` by themselves); [`serve`] returns when all are closed.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest wait for a complete request head (from accept, or from the previous response).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers) hyper buffers; more is `431`.
pub const MAX_HEAD_BYTES: usize = 96 * 1024;
/// Most headers in a request; more is `431`.
pub const MAX_HEADERS: usize = 100;
/// Longest request target hyper takes (its own limit); more is `414`.
pub const MAX_TARGET_BYTES: usize = 65_534;

/// Serves `app` on `listener` (HTTPS with `tls`) until `stop`, then waits for open connections
/// to close.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    stop: CancellationToken,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .writev(false);
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !is_per_connection(&e) {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "The local API could not accept a connection.");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let (http, stop) = (http.clone(), stop.clone());
        match &tls {
            None => connections.spawn(serve_connection(http, tcp, service, peer, stop)),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let Some(stream) = handshake(&acceptor, tcp, peer, &stop).await else {
                        return;
                    };
                    serve_connection(http, stream, service, peer, stop).await;
                })
            }
        };
    }
    connections.close();
    connections.wait().await;
}

/// One connection, HTTP/1.1 over `io`, until it closes or `stop`.
async fn serve_connection<I>(
    http: hyper::server::conn::http1::Builder,
    io: I,
    service: TowerToHyperService<Router>,
    peer: std::net::SocketAddr,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = http.serve_connection(TokioIo::new(JsonErrors::new(io)), service);
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "API connection ended on an error.");
    }
}

/// The TLS handshake on `tcp`, within [`HEADER_READ_TIMEOUT`]; a plain HTTP request is answered
/// with a `400` saying to use HTTPS. `None`: the connection is done.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    stop: &CancellationToken,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let accept = async {
        let mut first = [0u8; 1];
        let n = tcp.peek(&mut first).await?;
        if n == 1 && first[0].is_ascii_alphabetic() {
            plain_http_refusal(tcp).await?;
            return Err(io::Error::other("a plain HTTP request on the HTTPS port"));
        }
        acceptor.accept(tcp).await
    };
    tokio::select! {
        r = tokio::time::timeout(HEADER_READ_TIMEOUT, accept) => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "API TLS handshake failed.");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "API TLS handshake timed out.");
                None
            }
        },
        _ = stop.cancelled() => None,
    }
}

/// The body of the answer to plain HTTP on the HTTPS port.
pub const PLAIN_HTTP_DETAIL: &str =
    "this port speaks HTTPS ([api] tls_cert is set): use an https:// address";

/// Reads the request head (so closing does not reset the connection over unread bytes), answers
/// `400` and closes, draining what else comes for a moment.
async fn plain_http_refusal(mut tcp: tokio::net::TcpStream) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_HEAD_BYTES {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let body = serde_json::to_vec(&super::error::ErrorDoc {
        error: "bad_request".into(),
        detail: PLAIN_HTTP_DETAIL.into(),
    })
    .expect("an error document serializes");
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await?;
    tcp.write_all(&body).await?;
    tcp.shutdown().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The API's reply for a request hyper refused to parse: `(kind, detail)` by status.
fn refusal(status: StatusCode) -> (&'static str, String) {
    let detail = match status.as_u16() {
        414 => format!("the request target is longer than {MAX_TARGET_BYTES} bytes"),
        431 => format!(
            "the request head is larger than {MAX_HEAD_BYTES} bytes or has more than {MAX_HEADERS} headers"
        ),
        _ => "the request line or a header is malformed (see RFC 9112)".to_owned(),
    };
    ("bad_request", detail)
}

/// The complete bytes of the JSON reply that replaces hyper's empty one.
fn json_reply(status: StatusCode) -> Vec<u8> {
    let (kind, detail) = refusal(status);
    let body = serde_json::to_vec(&super::error::ErrorDoc {
        error: kind.into(),
        detail,
    })
    .expect("an error document serializes");
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Where hyper's own error reply starts in `buf` and its status, if `buf` ends with one: a
/// status line `HTTP/1.x 400|414|431 ...`, then only `content-length: 0`, `date` and `connection`
/// headers, then the blank line.
fn hyper_refusal(buf: &[u8]) -> Option<(usize, StatusCode)> {
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let start = buf.windows(7).rposition(|w| w == b"HTTP/1.")?;
    let head = std::str::from_utf8(&buf[start..buf.len() - 4]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code = status_line.get(9..12)?;
    if !matches!(status_line.get(8..9), Some(" ")) || !matches!(code, "400" | "414" | "431") {
        return None;
    }
    let mut empty_body = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" if value.trim() == "0" => empty_body = true,
            "date" | "connection" => {}
            _ => return None,
        }
    }
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    empty_body.then_some((start, status))
}

/// A connection's socket as hyper sees it: reads pass through; hyper's own empty error replies
/// are replaced on the way out (see the module header).
pub struct JsonErrors<T> {
    inner: T,
    /// A replacement reply not yet written, and how much of it is.
    pending: Vec<u8>,
    written: usize,
}

impl<T> JsonErrors<T> {
    /// Wraps a socket.
    pub fn new(inner: T) -> Self {
        JsonErrors {
            inner,
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        match hyper_refusal(buf) {
            // Bytes before the reply (the end of an earlier response) go out unchanged first.
            Some((start, _)) if start > 0 => {
                Pin::new(&mut this.inner).poll_write(cx, &buf[..start])
            }
            Some((_, status)) => {
                tracing::debug!(status = status.as_u16(), "Refused an unparseable request.");
                this.pending = json_reply(status);
                this.written = 0;
                // Written now if the socket takes it, else on the flush hyper sends next.
                if let Poll::Ready(Err(e)) = this.poll_pending(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_hyper_s_empty_refusals() {
        let date = "date: Tue, 15 Nov 1994 08:12:31 GMT";
        for code in [
            "400 Bad Request",
            "414 URI Too Long",
            "431 Request Header Fields Too Large",
        ] {
            let reply = format!("HTTP/1.1 {code}\r\ncontent-length: 0\r\n{date}\r\n\r\n");
            let (at, status) = hyper_refusal(reply.as_bytes()).unwrap();
            assert_eq!((at, status.as_str()), (0, &code[..3]));
            // After the tail of an earlier response in the same buffer.
            let both = format!("{{\"a\":1}}{reply}");
            assert_eq!(hyper_refusal(both.as_bytes()).unwrap().0, 7);
        }
        for not in [
            // The API's own errors carry a JSON body.
            format!("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 52\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n{date}\r\n"),
            "{\"HTTP/1.1 400\"}".to_owned(),
        ] {
            assert_eq!(hyper_refusal(not.as_bytes()), None, "{not:?}");
        }
    }

    #[test]
    fn the_reply_is_a_complete_json_error() {
        let r = String::from_utf8(json_reply(StatusCode::URI_TOO_LONG)).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "bad_request");
        assert!(v["detail"].as_str().unwrap().contains("65534"));
    }
}

//! TLS to PostgreSQL: libpq's `sslmode` values, a CA file, and messages that say what to fix.
//!
//! | mode | TLS | server certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default without a CA file) | if the server offers it, else plain | not checked |
//! | `require` | always | not checked: encryption only, no protection from an impostor |
//! | `verify-ca` | always | signed by a CA in the CA file |
//! | `verify-full` (default with a CA file) | always | signed by a CA in the CA file and names the host |
//!
//! Differences from libpq, on purpose: a CA file goes only with `verify-ca`/`verify-full` (libpq
//! quietly upgrades `require` to `verify-ca` when a root certificate exists; here that
//! combination is refused), there is no default CA file (`~/.postgresql/root.crt`) and no
//! `sslrootcert=system` (give `/etc/ssl/certs/ca-certificates.crt` instead), and `prefer` falls
//! back to plain only when the server declines TLS, not after a failed handshake. Certificates
//! are checked by webpki: a host name must be in the subjectAltName (the Common Name is not
//! used, as libpq still does), a self-signed certificate marked CA:TRUE cannot be the server's
//! own (libpq's "copy server.crt to root.crt" recipe; sign a server certificate with a CA
//! instead), and even `prefer`/`require` need an X.509 v3 certificate rustls can parse. No client
//! certificates. `sslmode` may also come from the connection string (tokio-postgres alone
//! knows only `disable`/`prefer`/`require`): [`PgConnection::new`] takes it out before
//! tokio-postgres parses the rest, and a different `--pg-sslmode` is refused.
//!
//! Pure logic (splitting the connection string, settling the mode, checking a certificate,
//! explaining an error) is apart from the connection; rustls with the ring provider does the
//! handshake through `tokio-postgres-rustls`.
use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::BridgeError;

/// How the flags are named in messages (the packaged service sets the environment variables).
pub(crate) const SSLMODE_FLAG: &str = "--pg-sslmode (FERRY_BRIDGE_PG_SSLMODE)";
pub(crate) const CA_FLAG: &str = "--pg-ca-file (FERRY_BRIDGE_PG_CA_FILE)";

/// libpq's `sslmode`: whether to use TLS and what to check (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connection only.
    Disable,
    /// TLS if the server offers it, no certificate check.
    Prefer,
    /// TLS, no certificate check (encryption only).
    Require,
    /// TLS, the certificate signed by a CA from the CA file.
    VerifyCa,
    /// TLS, the certificate signed by a CA from the CA file and valid for the host name.
    VerifyFull,
}

impl SslMode {
    /// All values, as written.
    pub const NAMES: [&'static str; 5] =
        ["disable", "prefer", "require", "verify-ca", "verify-full"];

    /// The value as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(format!(
                    "{s:?} is not an sslmode (one of {})",
                    SslMode::NAMES.join(", ")
                ))
            }
        })
    }
}

/// A connection string with the parameters this module handles taken out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitConnStr {
    /// The rest, for tokio-postgres.
    pub rest: String,
    /// The last `sslmode` value, as written.
    pub sslmode: Option<String>,
    /// Whether it names `sslrootcert` (not supported there: the CA file is a flag).
    pub sslrootcert: bool,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string, a URL
/// (`postgres[ql]://...?sslmode=...`) or libpq's `key=value` pairs, following tokio-postgres's
/// grammar. A string that does not parse is returned whole, for tokio-postgres to report.
pub(crate) fn split_conn_str(s: &str) -> SplitConnStr {
    let unchanged = || SplitConnStr {
        rest: s.to_owned(),
        sslmode: None,
        sslrootcert: false,
    };
    let mut out = SplitConnStr {
        rest: String::new(),
        sslmode: None,
        sslrootcert: false,
    };
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            out.sslmode = Some(value);
            true
        }
        "sslrootcert" => {
            out.sslrootcert = true;
            true
        }
        _ => false,
    };
    let is_url = s.starts_with("postgres://") || s.starts_with("postgresql://");
    if is_url {
        // As tokio-postgres reads it: the credentials run to the first '@' (a password may hold
        // a '?'), the query starts at the first '?' after them.
        let after_creds = s.find('@').map_or(0, |i| i + 1);
        let Some(q) = s[after_creds..].find('?').map(|i| after_creds + i) else {
            return unchanged();
        };
        let (head, query) = (&s[..q], &s[q + 1..]);
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value)) {
                kept.push(pair);
            }
        }
        out.rest = if kept.is_empty() {
            head.to_owned()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        return out;
    }
    // key = value pairs; values quoted with '...' or plain, backslash escapes either way.
    let b = s.as_bytes();
    let mut i = 0;
    let mut rest = String::new();
    loop {
        let start = i;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            break;
        }
        let key_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = &s[key_start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b.get(i) != Some(&b'=') {
            return unchanged();
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let quoted = b.get(i) == Some(&b'\'');
        if quoted {
            i += 1;
        }
        let mut value = Vec::new();
        loop {
            match b.get(i) {
                None if quoted => return unchanged(),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') => {
                    if let Some(&c) = b.get(i + 1) {
                        value.push(c);
                    }
                    i += 2;
                }
                Some(&c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        i = i.min(b.len());
        if !take(key, String::from_utf8_lossy(&value).into_owned()) {
            rest.push_str(&s[start..i]);
        }
    }
    out.rest = rest.trim_start().to_owned();
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Settles the mode from `--pg-sslmode`, the connection string's `sslmode` and whether a CA file
/// is given; refuses combinations that would not do what they seem to.
pub(crate) fn settle_mode(
    flag: Option<SslMode>,
    in_conn_str: Option<SslMode>,
    has_ca: bool,
) -> Result<SslMode, BridgeError> {
    let setting = |flag, message: String| BridgeError::Setting { flag, message };
    let mode = match (flag, in_conn_str) {
        (Some(f), Some(c)) if f != c => {
            return Err(setting(
                "--pg-sslmode",
                format!(
                "is {f} (FERRY_BRIDGE_PG_SSLMODE) but --database says sslmode={c}; set it in one place (or make them agree)"
            ),
            ))
        }
        (Some(m), _) | (None, Some(m)) => m,
        (None, None) if has_ca => SslMode::VerifyFull,
        (None, None) => SslMode::Prefer,
    };
    if mode.verifies() && !has_ca {
        return Err(setting(
            "--pg-ca-file",
            format!(
                "sslmode {mode} checks the server's certificate against a CA: give the CA \
                 certificate(s) that signed it (PEM) as {CA_FLAG}"
            ),
        ));
    }
    if !mode.verifies() && has_ca {
        return Err(setting(
            "--pg-ca-file",
            format!(
                "is only used with sslmode verify-full or verify-ca, but sslmode is {mode}, which \
                 does not check the server's certificate: use {SSLMODE_FLAG} verify-full, or \
                 leave out the CA file"
            ),
        ));
    }
    Ok(mode)
}

/// Parses a PEM CA file (one or more certificates) into a root store; the error says what is
/// wrong with the file.
pub(crate) fn root_store(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| format!("is not valid PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} is not usable as a CA: {e}", i + 1))?;
    }
    if roots.is_empty() {
        return Err("holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".into());
    }
    Ok(roots)
}

/// TLS to PostgreSQL, settled at start-up.
#[derive(Clone)]
pub struct PgTlsSettings {
    mode: SslMode,
    /// The CA file (named in messages) and its certificates.
    ca: Option<(PathBuf, Arc<RootCertStore>)>,
}

impl fmt::Debug for PgTlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTlsSettings")
            .field("mode", &self.mode)
            .field("ca_file", &self.ca.as_ref().map(|(p, _)| p))
            .finish()
    }
}

impl PgTlsSettings {
    /// The mode in force.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The connector for tokio-postgres (used for every mode but `disable`, where tokio-postgres
    /// never calls it).
    pub(crate) fn connector(&self) -> tokio_postgres_rustls::MakeRustlsConnect {
        let provider = Arc::new(ring_provider());
        let verifier = Verifier {
            check: match self.mode {
                SslMode::VerifyFull => Check::ChainAndName,
                SslMode::VerifyCa => Check::Chain,
                _ => Check::Nothing,
            },
            roots: self
                .ca
                .as_ref()
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| Arc::new(RootCertStore::empty())),
            algorithms: provider.signature_verification_algorithms,
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tokio_postgres_rustls::MakeRustlsConnect::new(config)
    }

    /// What an operator should do about `error` (a failed connection attempt to `hosts`), if it
    /// is about TLS; `None` for anything else.
    pub(crate) fn explain(&self, error: &(dyn StdError + 'static), hosts: &str) -> Option<String> {
        let mode = self.mode;
        let ca = || match &self.ca {
            Some((path, _)) => format!("{CA_FLAG}, {}", path.display()),
            None => CA_FLAG.to_owned(),
        };
        if let Some(e) = find_rustls_error(error) {
            let fix = match e {
                rustls::Error::InvalidCertificate(c) => match c {
                    CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                        "the server's certificate is not signed by a CA in {}: give the CA that \
                         signed the server's certificate (PostgreSQL's ssl_cert_file)",
                        ca()
                    ),
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. } => format!(
                        "the server's certificate is not valid for host {hosts}: connect by a \
                         name in its subjectAltName (the Common Name is not used), or set \
                         {SSLMODE_FLAG} verify-ca to check only the CA"
                    ),
                    CertificateError::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => {
                        format!(
                            "the server presents a CA certificate as its own (a self-signed \
                             certificate marked CA:TRUE, as libpq's root.crt recipe makes): give \
                             PostgreSQL a server certificate signed by the CA in {}",
                            ca()
                        )
                    }
                    CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                        "the server's certificate has expired (or this machine's clock is wrong): \
                         renew PostgreSQL's ssl_cert_file"
                            .to_owned()
                    }
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                        "the server's certificate is not valid yet (or this machine's clock is \
                         wrong)"
                            .to_owned()
                    }
                    _ if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => format!(
                        "the server's certificate was refused: check it against {}",
                        ca()
                    ),
                    _ => format!(
                        "the server's certificate could not be read (sslmode {mode} does not check \
                         whom it names, but it must still be an X.509 v3 certificate with a key \
                         rustls accepts)"
                    ),
                },
                _ => format!(
                    "the TLS handshake with the server failed (sslmode {mode}): check the server's \
                     ssl settings and its log"
                ),
            };
            return Some(format!("{fix} ({e})"));
        }
        let mut cur = Some(error);
        while let Some(e) = cur {
            // tokio-postgres's words when the server answers the SSLRequest with 'N'.
            if e.to_string() == "server does not support TLS" {
                return Some(format!(
                    "the server does not offer TLS but sslmode is {mode}: turn on ssl in \
                     postgresql.conf (ssl = on, ssl_cert_file, ssl_key_file), or set \
                     {SSLMODE_FLAG} prefer or disable to connect without it (a unix socket \
                     never has TLS)"
                ));
            }
            if let Some(db) = e.downcast_ref::<tokio_postgres::error::DbError>() {
                // 28000: the server's pg_hba.conf has no entry for this (plain) connection.
                if mode == SslMode::Disable && db.code().code() == "28000" {
                    return Some(format!(
                        "{} ({}): the server takes only TLS connections here, but sslmode is \
                         disable: set {SSLMODE_FLAG} verify-full with {CA_FLAG}",
                        db.message(),
                        db.code().code()
                    ));
                }
            }
            cur = e.source();
        }
        None
    }
}

/// rustls's ring provider. Deprecated since rustls 0.23.48 for lacking post-quantum key
/// exchange (aws-lc-rs has it); ring is kept on purpose: aws-lc-rs costs minutes of build time
/// and a C toolchain, and PostgreSQL (OpenSSL) negotiates the classic groups ring has.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The rustls error behind `e`, looking inside `io::Error`s (whose `source` skips the error
/// they wrap).
fn find_rustls_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
        }
        cur = e.source();
    }
    None
}

/// The connection settings for the PostgreSQL sink, from `--database`, `--pg-sslmode` and
/// `--pg-ca-file`.
#[derive(Debug, Clone)]
pub struct PgConnection {
    /// tokio-postgres's settings (its `ssl_mode` follows the settled mode).
    pub config: tokio_postgres::Config,
    /// TLS.
    pub tls: PgTlsSettings,
}

impl PgConnection {
    /// Parses the connection string (`--database`), settles the mode with `sslmode` (from
    /// `--pg-sslmode`) and reads the CA certificates (`ca`: the file's name and contents). Every
    /// error names the flag to fix.
    pub fn new(
        database: &str,
        sslmode: Option<SslMode>,
        ca: Option<(&Path, &[u8])>,
    ) -> Result<PgConnection, BridgeError> {
        let setting = |flag, message: String| BridgeError::Setting { flag, message };
        let split = split_conn_str(database);
        if split.sslrootcert {
            return Err(setting(
                "--database",
                format!("sslrootcert is not read from the connection string: give the CA file as {CA_FLAG}"),
            ));
        }
        let in_conn_str = split
            .sslmode
            .as_deref()
            .map(SslMode::from_str)
            .transpose()
            .map_err(|e| setting("--database", format!("sslmode: {e}")))?;
        // tokio-postgres's own words start "invalid connection string".
        let mut config = tokio_postgres::Config::from_str(&split.rest)
            .map_err(|e| setting("--database", chain(&e)))?;
        if config.get_hosts().is_empty() {
            return Err(setting(
                "--database",
                "names no host (add host=... or a URL host)".into(),
            ));
        }
        let mode = settle_mode(sslmode, in_conn_str, ca.is_some())?;
        let ca = match ca {
            None => None,
            Some((path, pem)) => {
                let roots = root_store(pem)
                    .map_err(|e| setting("--pg-ca-file", format!("{} {e}", path.display())))?;
                Some((path.to_owned(), Arc::new(roots)))
            }
        };
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Ok(PgConnection {
            config,
            tls: PgTlsSettings { mode, ca },
        })
    }
}

/// An error and its sources, `: `-separated (tokio-postgres's `Display` leaves the cause out).
pub(crate) fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cur = s.source();
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

/// Checks the server's certificate as the mode says. The handshake signature is always checked
/// (it proves the server holds the key of the certificate it sent).
#[derive(Debug)]
struct Verifier {
    check: Check,
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.check == Check::Nothing {
            return Ok(ServerCertVerified::assertion());
        }
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if self.check == Check::ChainAndName {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;

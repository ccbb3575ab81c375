//! HTTPS for the local API: `[api] tls_cert` (the certificate chain, PEM) and `tls_key` (its
//! private key, PEM: PKCS#8, PKCS#1 or SEC1), served with rustls and its ring provider.
//!
//! Invariants: the files are read and checked when the config is validated (so `ferry config
//! check` and the unit's `ExecStartPre` catch a missing file, a file without a certificate, or a
//! key that does not belong to the certificate), naming the key and the file; the server then
//! only accepts. Only TLS 1.2 and 1.3 (rustls has nothing older).
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS setup from the two files; an error is `(config key, message)`.
pub fn server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    let read = |name: &'static str, p: &Path| {
        std::fs::read(p).map_err(|e| (name, format!("{}: {e}", p.display())))
    };
    let cert_pem = read("api.tls_cert", cert)?;
    let key_pem = read("api.tls_key", key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ("api.tls_cert", format!("{}: not PEM: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err((
            "api.tls_cert",
            format!(
                "{}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                cert.display()
            ),
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "api.tls_key",
            format!(
                "{}: no private key in it (expected PEM: PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            ),
        )
    })?;
    // ring on purpose (build time on gateways and CI); rustls 0.23.48 deprecates its default
    // provider only for lacking post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("api.tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            (
                "api.tls_key",
                format!(
                    "{} does not fit the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ),
            )
        })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.key_pair.serialize_pem())
    }

    #[test]
    fn files_are_checked_and_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let (cert, key) = pair("gw.local");
        let (_, other_key) = pair("other");
        std::fs::write(p("c.pem"), &cert).unwrap();
        std::fs::write(p("k.pem"), &key).unwrap();
        std::fs::write(p("other.pem"), &other_key).unwrap();
        std::fs::write(p("empty.pem"), "").unwrap();
        assert!(server_config(&p("c.pem"), &p("k.pem")).is_ok());

        let e = server_config(&p("missing.pem"), &p("k.pem")).unwrap_err();
        assert_eq!(e.0, "api.tls_cert");
        assert!(e.1.contains("missing.pem"), "{e:?}");
        let e = server_config(&p("empty.pem"), &p("k.pem")).unwrap_err();
        assert_eq!(e.0, "api.tls_cert");
        assert!(e.1.contains("no certificate in it"), "{e:?}");
        let e = server_config(&p("c.pem"), &p("c.pem")).unwrap_err();
        assert_eq!(e.0, "api.tls_key");
        assert!(e.1.contains("no private key in it"), "{e:?}");
        let e = server_config(&p("c.pem"), &p("other.pem")).unwrap_err();
        assert_eq!(e.0, "api.tls_key");
        assert!(e.1.contains("does not fit the certificate"), "{e:?}");
    }
}

//! A throwaway PKI for TLS tests (MQTT, PostgreSQL, the local API over HTTPS).
//!
//! This file uses only std and rcgen: the agent's integration tests include it by path
//! (`#[path]`), because they cannot depend on ferry-tests, which depends on them.
use std::path::{Path, PathBuf};

/// A throwaway PKI made in-process with rcgen (no `openssl` CLI): a CA, a server certificate for
/// `127.0.0.1`/`localhost` and a client certificate signed by it, plus a second, unrelated CA
/// with its own server certificate (for "not signed by the configured CA" cases). All PEM,
/// EC P-256, keys in PKCS#8.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate (SAN IP:127.0.0.1, DNS:localhost), signed by `ca`.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate (CN=ferry-client), signed by `ca`.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// A second CA that nobody is configured to trust.
    pub other_ca: PathBuf,
    /// Server certificate for the same names, signed by `other_ca`.
    pub other_server_cert: PathBuf,
    /// Its key.
    pub other_server_key: PathBuf,
    /// A server certificate signed by `ca` naming only `gw.invalid` (for "wrong name" cases).
    pub misnamed_server_cert: PathBuf,
    /// Its key.
    pub misnamed_server_key: PathBuf,
}

impl TestPki {
    /// Generates into `dir`.
    pub fn generate(dir: &Path) -> TestPki {
        use rcgen::{
            BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let ca = |cn: &str| -> (Certificate, KeyPair) {
            let key = KeyPair::generate().expect("CA key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            (p.self_signed(&key).expect("self-signed CA"), key)
        };
        let leaf = |cn: &str,
                    names: &[&str],
                    eku: ExtendedKeyUsagePurpose,
                    (issuer, issuer_key): &(Certificate, KeyPair)|
         -> (String, String) {
            let key = KeyPair::generate().expect("leaf key");
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut p = CertificateParams::new(names).expect("leaf params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![eku];
            p.use_authority_key_identifier_extension = true;
            let cert = p.signed_by(&key, issuer, issuer_key).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let server_names = ["127.0.0.1", "localhost"];
        let main = ca("ferry-test-ca");
        let other = ca("ferry-untrusted-ca");
        let (server_cert, server_key) = leaf(
            "127.0.0.1",
            &server_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            &main,
        );
        let (client_cert, client_key) = leaf(
            "ferry-client",
            &["ferry-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &main,
        );
        let (misnamed_cert, misnamed_key) = leaf(
            "gw.invalid",
            &["gw.invalid"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &main,
        );
        let (other_cert, other_key) = leaf(
            "127.0.0.1",
            &server_names,
            ExtendedKeyUsagePurpose::ServerAuth,
            &other,
        );
        TestPki {
            ca: write("ca.pem", main.0.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other.0.pem()),
            other_server_cert: write("other-server.pem", other_cert),
            other_server_key: write("other-server.key", other_key),
            misnamed_server_cert: write("misnamed-server.pem", misnamed_cert),
            misnamed_server_key: write("misnamed-server.key", misnamed_key),
        }
    }
}

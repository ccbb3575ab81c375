use super::*;

fn split(s: &str) -> (String, Option<String>, bool) {
    let r = split_conn_str(s);
    (r.rest, r.sslmode, r.sslrootcert)
}

#[test]
fn sslmode_is_taken_out_of_urls_and_key_value_strings() {
    assert_eq!(
        split("postgresql://u@h:5432/db?sslmode=verify-full&application_name=x"),
        (
            "postgresql://u@h:5432/db?application_name=x".into(),
            Some("verify-full".into()),
            false
        )
    );
    assert_eq!(
        split("postgres://h/db?sslmode=require"),
        ("postgres://h/db".into(), Some("require".into()), false)
    );
    assert_eq!(
        split("postgres://h/db"),
        ("postgres://h/db".into(), None, false)
    );
    assert_eq!(
        split("host=h sslmode = 'verify-ca' password='a b\\'c' dbname=d"),
        (
            "host=h password='a b\\'c' dbname=d".into(),
            Some("verify-ca".into()),
            false
        )
    );
    assert_eq!(
        split("sslmode=disable host=h sslrootcert=/x.pem"),
        ("host=h".into(), Some("disable".into()), true)
    );
    // A password may hold a '?' (tokio-postgres reads credentials up to the first '@').
    assert_eq!(
        split("postgresql://u:p?x@h/db?sslmode=require"),
        (
            "postgresql://u:p?x@h/db".into(),
            Some("require".into()),
            false
        )
    );
    assert_eq!(
        split("postgresql://u:x?sslmode=y@h/db"),
        ("postgresql://u:x?sslmode=y@h/db".into(), None, false)
    );
    // Not parseable: left whole for tokio-postgres to report.
    assert_eq!(
        split("host=h password='open"),
        ("host=h password='open".into(), None, false)
    );
    // What is left still parses, and means the same.
    let rest = split_conn_str("host=h port=5 sslmode=verify-full user=u").rest;
    let c = tokio_postgres::Config::from_str(&rest).unwrap();
    assert_eq!(c.get_ports(), &[5]);
    assert_eq!(c.get_user(), Some("u"));
}

#[test]
fn mode_defaults_follow_the_ca_file_and_conflicts_are_refused() {
    use SslMode::*;
    assert_eq!(settle_mode(None, None, false).unwrap(), Prefer);
    assert_eq!(settle_mode(None, None, true).unwrap(), VerifyFull);
    assert_eq!(settle_mode(None, Some(VerifyCa), true).unwrap(), VerifyCa);
    assert_eq!(
        settle_mode(Some(Require), Some(Require), false).unwrap(),
        Require
    );
    assert_eq!(settle_mode(Some(Disable), None, false).unwrap(), Disable);
    let err = |f, c, ca| settle_mode(f, c, ca).unwrap_err().to_string();
    assert_eq!(
        err(Some(VerifyFull), Some(Require), true),
        "--pg-sslmode: is verify-full (FERRY_BRIDGE_PG_SSLMODE) but --database says \
         sslmode=require; set it in one place (or make them agree)"
    );
    assert!(err(Some(VerifyFull), None, false).starts_with(
        "--pg-ca-file: sslmode verify-full checks the server's certificate against a CA"
    ));
    assert!(err(None, Some(Require), true)
        .starts_with("--pg-ca-file: is only used with sslmode verify-full or verify-ca"));
    assert_eq!(
        "verify-Full".parse::<SslMode>().unwrap_err(),
        "\"verify-Full\" is not an sslmode (one of disable, prefer, require, verify-ca, \
         verify-full)"
    );
    for name in SslMode::NAMES {
        assert_eq!(name.parse::<SslMode>().unwrap().as_str(), name);
    }
}

struct Pki {
    ca: String,
    server: CertificateDer<'static>,
    other_ca: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (p.self_signed(&key).unwrap(), key)
    };
    let (ca_cert, ca_key) = ca("test-ca");
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["db.example".to_string()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    Pki {
        ca: ca_cert.pem(),
        server: server.der().clone(),
        other_ca: ca("other-ca").0.pem(),
    }
}

fn settings(mode: SslMode, ca_pem: &str) -> PgTlsSettings {
    PgTlsSettings {
        mode,
        ca: Some((
            PathBuf::from("/etc/ferry/pg-ca.pem"),
            Arc::new(root_store(ca_pem.as_bytes()).unwrap()),
        )),
    }
}

fn verify(s: &PgTlsSettings, cert: &CertificateDer<'_>, host: &str) -> Result<(), rustls::Error> {
    let v = Verifier {
        check: match s.mode {
            SslMode::VerifyFull => Check::ChainAndName,
            SslMode::VerifyCa => Check::Chain,
            _ => Check::Nothing,
        },
        roots: s.ca.as_ref().unwrap().1.clone(),
        algorithms: ring_provider().signature_verification_algorithms,
    };
    let name = ServerName::try_from(host.to_owned()).unwrap();
    v.verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[test]
fn each_mode_checks_what_it_says() {
    let p = pki();
    let full = settings(SslMode::VerifyFull, &p.ca);
    verify(&full, &p.server, "db.example").unwrap();
    let wrong_name = verify(&full, &p.server, "other.example").unwrap_err();
    assert!(matches!(
        wrong_name,
        rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })
    ));
    verify(
        &settings(SslMode::VerifyCa, &p.ca),
        &p.server,
        "other.example",
    )
    .unwrap();
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
        assert_eq!(
            verify(&settings(mode, &p.other_ca), &p.server, "db.example").unwrap_err(),
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        );
    }
    verify(
        &settings(SslMode::Require, &p.other_ca),
        &p.server,
        "x.example",
    )
    .unwrap();
}

#[test]
fn ca_files_with_several_certificates_load_and_bad_ones_say_why() {
    let p = pki();
    let both = format!("{}\n# a comment\n{}", p.ca, p.other_ca);
    assert_eq!(root_store(both.as_bytes()).unwrap().len(), 2);
    assert_eq!(
        root_store(b"").unwrap_err(),
        "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)"
    );
    let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    assert!(root_store(key_only.as_bytes())
        .unwrap_err()
        .starts_with("holds no certificate"));
    let junk = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(root_store(junk.as_bytes())
        .unwrap_err()
        .starts_with("certificate 1 is not usable as a CA"));
}

#[test]
fn tls_errors_say_what_to_fix() {
    let p = pki();
    let s = settings(SslMode::VerifyFull, &p.other_ca);
    // As tokio-rustls reports it: an io::Error wrapping the rustls error.
    let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let untrusted = io(rustls::Error::InvalidCertificate(
        CertificateError::UnknownIssuer,
    ));
    assert_eq!(
        s.explain(&untrusted, "127.0.0.1").unwrap(),
        "the server's certificate is not signed by a CA in --pg-ca-file \
         (FERRY_BRIDGE_PG_CA_FILE), /etc/ferry/pg-ca.pem: give the CA that signed the \
         server's certificate (PostgreSQL's ssl_cert_file) (invalid peer certificate: \
         UnknownIssuer)"
    );
    let name = io(rustls::Error::InvalidCertificate(
        CertificateError::NotValidForName,
    ));
    assert!(s
        .explain(&name, "db.example")
        .unwrap()
        .contains("not valid for host db.example"));
    #[derive(Debug)]
    struct Plain(&'static str);
    impl fmt::Display for Plain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl StdError for Plain {}
    assert!(s
        .explain(&Plain("server does not support TLS"), "h")
        .unwrap()
        .starts_with("the server does not offer TLS but sslmode is verify-full"));
    assert_eq!(s.explain(&Plain("connection refused"), "h"), None);
}

#[test]
fn connection_settings_come_together() {
    let p = pki();
    let ca = Path::new("/etc/ferry/pg-ca.pem");
    let c = PgConnection::new("host=h user=u", None, None).unwrap();
    assert_eq!(c.tls.mode(), SslMode::Prefer);
    assert_eq!(
        c.config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Prefer
    );
    let c = PgConnection::new(
        "postgres://h/db?sslmode=verify-ca",
        None,
        Some((ca, p.ca.as_bytes())),
    )
    .unwrap();
    assert_eq!(c.tls.mode(), SslMode::VerifyCa);
    assert_eq!(
        c.config.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    let err = |db: &str, ca: Option<(&Path, &[u8])>| {
        PgConnection::new(db, None, ca).unwrap_err().to_string()
    };
    assert_eq!(
        err("host=h", Some((ca, b"".as_slice()))),
        "--pg-ca-file: /etc/ferry/pg-ca.pem holds no certificate (expected PEM: \
         -----BEGIN CERTIFICATE-----)"
    );
    assert_eq!(
        err("host=h sslmode=verify", None),
        "--database: sslmode: \"verify\" is not an sslmode (one of disable, prefer, require, \
         verify-ca, verify-full)"
    );
    assert!(err("host=h sslrootcert=/r.pem", None)
        .starts_with("--database: sslrootcert is not read from the connection string"));
    assert_eq!(
        err("host=h port=x", None),
        "--database: invalid connection string: invalid value for option `port`"
    );
}

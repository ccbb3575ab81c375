//! A real headless Chromium for page tests, driven over WebDriver: Debian's `chromium` and
//! `chromedriver`, with plain HTTP/1.1 to chromedriver on loopback (no client crate).
//!
//! Calls block (each is a short loopback round trip); from a `#[tokio::test]` body that is fine:
//! the body runs on the test thread, spawned tasks on the runtime's workers. Dropping the
//! [`Browser`] ends the session (Chromium exits) and kills chromedriver.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::require_tool;

const INSTALL: &str = "apt-get install -y --no-install-recommends chromium chromium-driver";

/// WebDriver's id for an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One browser session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium (window 1280x900); panics with the install
    /// step when either is not installed.
    pub fn start() -> Browser {
        Browser::start_with(&[])
    }

    /// [`Browser::start`] trusting the HTTPS certificate whose key is `key_pem` (PEM): its
    /// SubjectPublicKeyInfo's SHA-256 goes to `--ignore-certificate-errors-spki-list`, so that
    /// certificate is accepted and any other untrusted one still fails.
    pub fn start_trusting(key_pem: &str) -> Browser {
        use base64::Engine;
        use sha2::Digest;
        let key = rcgen::KeyPair::from_pem(key_pem).expect("a PEM key");
        let pin = base64::engine::general_purpose::STANDARD
            .encode(sha2::Sha256::digest(key.public_key_der()));
        Browser::start_with(&[format!("--ignore-certificate-errors-spki-list={pin}")])
    }

    /// [`Browser::start`] with more Chromium flags.
    pub fn start_with(extra: &[String]) -> Browser {
        let chromium = require_tool("chromium", INSTALL);
        let chromedriver = require_tool("chromedriver", INSTALL);
        let profile = tempfile::Builder::new()
            .prefix("ferry-chromium-")
            .tempdir()
            .expect("temp dir");
        let mut driver = Command::new(chromedriver)
            .arg("--port=0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn chromedriver");
        // "ChromeDriver was started successfully on port 41234."
        let mut out = BufReader::new(driver.stdout.take().expect("piped"));
        let mut port = None;
        let mut line = String::new();
        while port.is_none() && out.read_line(&mut line).unwrap_or(0) > 0 {
            port = line
                .split("successfully on port ")
                .nth(1)
                .and_then(|rest| rest.trim().trim_end_matches('.').parse::<u16>().ok());
            line.clear();
        }
        let port = port.expect("chromedriver did not say which port it listens on");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Flags: run as root in a container, and no background traffic (this machine has no
        // internet; Chromium would otherwise keep trying Google's hosts).
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--window-size=1280,900".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        args.extend(extra.iter().cloned());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let session = match request(addr, "POST", "/session", Some(&caps)) {
            Ok(v) => v["sessionId"].as_str().expect("sessionId").to_owned(),
            Err(e) => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("cannot start a Chromium session: {e:#}");
            }
        };
        Browser {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let path = format!("/session/{}{path}", self.session);
        request(self.addr, method, &path, body)
    }

    /// Loads `url` and waits for its `load` event.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.cmd("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` as the body of a function in the page (`return …` gives the value).
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    fn element(&self, css: &str) -> anyhow::Result<String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        )?;
        let id = v[ELEMENT].as_str();
        Ok(id
            .with_context(|| format!("no element id in {v}"))?
            .to_owned())
    }

    /// Clicks the element `css` selects, as a user would (it must be visible).
    pub fn click(&self, css: &str) -> anyhow::Result<()> {
        let id = self.element(css)?;
        self.cmd("POST", &format!("/element/{id}/click"), Some(&json!({})))
            .map(drop)
    }

    /// Types `text` into the element `css` selects.
    pub fn type_into(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let id = self.element(css)?;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    /// The page's console messages and uncaught errors since the last call (`level: message`).
    pub fn console(&self) -> anyhow::Result<Vec<String>> {
        let v = self.cmd("POST", "/se/log", Some(&json!({ "type": "browser" })))?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| format!("{}: {}", e["level"], e["message"]))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Saves a PNG of the window to `path` (creating its folder).
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.cmd("GET", "/screenshot", None)?;
        let png = base64_decode(v.as_str().context("screenshot is a string")?)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cmd("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver command: its `value`, or the WebDriver error as an `Err`.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).context("connect to chromedriver")?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line.split(' ').nth(1).unwrap_or_default().to_owned();
    let mut len = 0;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse()?;
            }
        }
    }
    let mut buf = vec![0; len];
    reader.read_exact(&mut buf)?;
    let reply: Value = serde_json::from_slice(&buf)
        .with_context(|| format!("{method} {path}: {status}, not JSON"))?;
    let value = reply["value"].clone();
    if status != "200" {
        bail!(
            "{method} {path}: {status} {}: {}",
            value["error"].as_str().unwrap_or("?"),
            value["message"].as_str().unwrap_or("?")
        );
    }
    Ok(value)
}

fn base64_decode(text: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
    {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: byte {c}"),
        };
        acc = (acc << 6 | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("").unwrap(), b"");
        assert_eq!(super::base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(super::base64_decode("Zm9vYg==").unwrap(), b"foob");
        assert_eq!(super::base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert_eq!(super::base64_decode("/+8=").unwrap(), [0xff, 0xef]);
    }
}

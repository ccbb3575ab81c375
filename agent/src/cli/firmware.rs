//! `ferry firmware …` and `ferry flash`: vendor keys and signing (offline, no agent), and updates
//! of devices through the agent's local API with a live progress bar per device.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{ApiClient, CliError};
use crate::firmware::bundle::{self, Bundle};
use crate::firmware::{BundleInfo, JobView, RolloutSpec, RolloutView};

/// How long a bundle upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Progress polling period.
const POLL: Duration = Duration::from_millis(250);

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Usage(format!("{what} {}: {e}", path.display())))
}

/// Writes `{prefix}.key` (private, mode 0600) and `{prefix}.pub`; never overwrites.
pub fn keygen(prefix: &Path, out: &mut impl Write) -> Result<(), CliError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    for p in [&key, &public] {
        if p.exists() {
            return Err(CliError::Usage(format!(
                "{} exists; not overwriting a key (choose another --out)",
                p.display()
            )));
        }
    }
    let (private_pem, public_pem) = bundle::keygen().map_err(CliError::Usage)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key)
        .map_err(|e| CliError::Usage(format!("{}: {e}", key.display())))?;
    f.write_all(private_pem.as_bytes())
        .map_err(|e| CliError::Usage(format!("{}: {e}", key.display())))?;
    std::fs::write(&public, public_pem.as_bytes())
        .map_err(|e| CliError::Usage(format!("{}: {e}", public.display())))?;
    let pk = bundle::read_public_key(&public_pem).map_err(CliError::Usage)?;
    writeln!(
        out,
        "private key: {} (keep it offline; it signs firmware)\npublic key:  {} (devices carry it)\nraw public key: {}",
        key.display(),
        public.display(),
        bundle::to_hex(&pk)
    )?;
    Ok(())
}

/// Signs `image` into a bundle at `out`.
pub fn sign(
    image: &Path,
    key: &Path,
    version: &str,
    board: &str,
    out_path: &Path,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let img = read(image, "image")?;
    let pem = String::from_utf8(read(key, "key")?)
        .map_err(|_| CliError::Usage(format!("key {}: not a PEM text file", key.display())))?;
    let k = bundle::read_private_key(&pem)
        .map_err(|e| CliError::Usage(format!("key {}: {e}", key.display())))?;
    let b = Bundle::sign(img, version, board, &k).map_err(CliError::Usage)?;
    std::fs::write(out_path, b.to_bytes())
        .map_err(|e| CliError::Usage(format!("{}: {e}", out_path.display())))?;
    writeln!(
        out,
        "{}: version {} for board {}, {} bytes, sha256 {}",
        out_path.display(),
        b.manifest.version,
        b.manifest.board,
        b.manifest.length,
        b.manifest.sha256
    )?;
    Ok(())
}

/// Uploads a bundle file (checked locally first, with the same rules as the agent).
pub async fn upload(c: &ApiClient, path: &Path) -> Result<BundleInfo, CliError> {
    let bytes = read(path, "bundle")?;
    Bundle::parse(&bytes)
        .map_err(|e| CliError::Usage(format!("bundle {}: {e}", path.display())))?;
    c.post(
        &["api", "v1", "firmware", "bundles"],
        bytes,
        "application/octet-stream",
        UPLOAD_TIMEOUT,
    )
    .await
}

/// Starts an update.
pub async fn start(c: &ApiClient, spec: &RolloutSpec) -> Result<RolloutView, CliError> {
    c.post(
        &["api", "v1", "firmware", "updates"],
        serde_json::to_vec(spec).expect("spec serializes"),
        "application/json",
        Duration::from_secs(15),
    )
    .await
}

/// Cancels an update.
pub async fn cancel(c: &ApiClient, id: i64, out: &mut impl Write) -> Result<(), CliError> {
    let id = id.to_string();
    let v: RolloutView = c
        .post(
            &["api", "v1", "firmware", "updates", &id, "cancel"],
            Vec::new(),
            "application/json",
            Duration::from_secs(15),
        )
        .await?;
    write_update(&v, out)
}

/// Shows one update, or the recent ones.
pub async fn status(
    c: &ApiClient,
    id: Option<i64>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let views: Vec<RolloutView> = c
        .one_or_list(
            &["api", "v1", "firmware", "updates"],
            id.map(|i| i.to_string()),
            "updates",
        )
        .await?;
    super::client::write_views(out, json, &views, "no firmware updates", |v, out| {
        write_update(v, out)
    })
}

fn job_line(j: &JobView) -> String {
    let pct = if j.length > 0 {
        100.0 * f64::from(j.offset) / f64::from(j.length)
    } else {
        0.0
    };
    format!(
        "{:<24} {:<13} {:>6.1}% {:>9}/{:<9} attempts {}{}",
        j.device,
        j.state,
        pct,
        j.offset,
        j.length,
        j.attempts,
        j.error
            .as_deref()
            .map(|e| format!("  error: {e}"))
            .unwrap_or_default()
    )
}

fn write_update(v: &RolloutView, out: &mut (impl Write + ?Sized)) -> Result<(), CliError> {
    writeln!(
        out,
        "update {}: {} to version {} (bundle {}…), {} devices at once",
        v.id,
        v.state,
        v.version,
        &v.bundle[..v.bundle.len().min(12)],
        v.concurrency
    )?;
    for j in &v.jobs {
        writeln!(out, "  {}", job_line(j))?;
    }
    Ok(())
}

/// `ferry flash`: uploads the bundle, updates the devices, shows a progress bar per device until
/// every job ended. Ok(true) when every device runs the new image.
pub async fn flash(
    c: &ApiClient,
    devices: Vec<String>,
    bundle_path: &Path,
    force: bool,
    concurrency: u32,
    max_failures: u32,
    out: &mut impl Write,
) -> Result<bool, CliError> {
    let info = upload(c, bundle_path).await?;
    let spec = RolloutSpec {
        devices,
        bundle: info.sha256.clone(),
        force,
        concurrency,
        max_failures,
    };
    let started = start(c, &spec).await?;
    writeln!(
        out,
        "update {}: version {} ({} bytes) to {} device(s); Ctrl-C stops watching, not the update (ferry firmware cancel {})",
        started.id,
        info.version,
        info.length,
        started.jobs.len(),
        started.id
    )?;
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
    let style =
        ProgressStyle::with_template("{prefix:<20} [{bar:30}] {bytes:>9}/{total_bytes:<9} {msg}")
            .expect("template")
            .progress_chars("=> ");
    let mut shown: BTreeMap<i64, (ProgressBar, String)> = BTreeMap::new();
    let id = started.id.to_string();
    let last = loop {
        let v: RolloutView = c
            .get(&["api", "v1", "firmware", "updates", &id], &[])
            .await?;
        for j in &v.jobs {
            let (bar, state) = shown.entry(j.id).or_insert_with(|| {
                let b = bars.add(ProgressBar::new(u64::from(j.length)));
                b.set_style(style.clone());
                b.set_prefix(j.device.clone());
                (b, String::new())
            });
            bar.set_position(u64::from(j.offset));
            let msg = match &j.error {
                Some(e) => format!("{} ({e})", j.state),
                None => j.state.clone(),
            };
            if *state != msg {
                if !bars.is_hidden() {
                    bar.set_message(msg.clone());
                } else {
                    // Not a terminal: one line per change instead of bars.
                    writeln!(out, "{}: {msg}", j.device)?;
                }
                *state = msg;
            }
            if matches!(j.state.as_str(), "done" | "failed" | "cancelled") && !bar.is_finished() {
                bar.finish();
            }
        }
        if v.state != "running" {
            break v;
        }
        tokio::time::sleep(POLL).await;
    };
    let _ = bars.clear();
    write_update(&last, out)?;
    let all_done = last.jobs.iter().all(|j| j.state == "done");
    Ok(all_done)
}

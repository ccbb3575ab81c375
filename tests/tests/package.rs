//! The Debian packages (tests/package.sh builds them for amd64, arm64 and armhf): what each holds,
//! then the amd64 `ferry` installed on this machine as an operator would: the `ferry` user, the
//! data directory, the conffile, the unit verified and enabled; the installed binary run with the
//! installed config as that user under systemd's notify protocol (READY=1 after bind, watchdog
//! pings stop while the writer hangs); a reinstall keeps an edited config; remove keeps the data,
//! purge deletes it. Installing needs root: tests/run-all.sh runs it.
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use ferry_tests::debs::{self, run, ARCHES};
use ferry_tests::service::{check_service_protocol, ServiceRun};
use ferry_tests::{free_port, is_root};

#[test]
#[ignore = "needs the packages (tests/package.sh): tests/run-all.sh"]
fn every_package_holds_its_binary_unit_and_conffile_for_its_architecture() {
    for (arch, _, _) in ARCHES {
        let machine = match arch {
            "amd64" => 62,
            "arm64" => 183,
            _ => 40,
        };
        for (package, unit, conffile) in [
            ("ferry", "ferry.service", "/etc/ferry/ferry.toml"),
            (
                "ferry-bridge",
                "ferry-bridge.service",
                "/etc/ferry/ferry-bridge.env",
            ),
        ] {
            let deb = debs::deb(package, arch);
            assert_eq!(debs::field(&deb, "Package"), package);
            assert_eq!(debs::field(&deb, "Architecture"), arch);
            let files = debs::contents(&deb);
            for want in [
                format!("/usr/bin/{package}"),
                format!("/usr/lib/systemd/system/{unit}"),
                conffile.to_owned(),
                format!("/usr/share/doc/{package}/README.md"),
            ] {
                assert!(
                    files.contains(&want),
                    "{}: no {want} in {files:?}",
                    deb.display()
                );
            }
            assert_eq!(
                debs::control_file(&deb, "conffiles").trim(),
                conffile,
                "{}",
                deb.display()
            );
            let root = tempfile::tempdir().unwrap();
            debs::extract(&deb, root.path());
            let bin = root.path().join(format!("usr/bin/{package}"));
            assert_eq!(debs::elf_machine(&bin), machine, "{}", bin.display());
            println!(
                "{package} {arch}: {} bytes stripped, needs glibc {}",
                bin.metadata().unwrap().len(),
                debs::glibc_needed(&bin)
            );
        }
        let ferry = debs::deb("ferry", arch);
        assert!(debs::field(&ferry, "Depends").contains("adduser"));
        let postinst = debs::control_file(&ferry, "postinst");
        assert!(postinst.contains("adduser --system") && postinst.contains("dialout"));
        assert!(postinst.contains("deb-systemd-invoke $_dh_action ferry.service"));
        let postrm = debs::control_file(&ferry, "postrm");
        assert!(postrm.contains("rm -rf /var/lib/ferry"), "{postrm}");
    }
}

/// A package this test installs on the machine: refused if the machine has it already (the
/// test purges it, data and all); no service started if systemd runs here (`policy-rc.d`);
/// purged again when the test ends, also when it fails.
struct ScratchInstall {
    package: &'static str,
    policy: bool,
}

const POLICY_RC: &str = "/usr/sbin/policy-rc.d";

impl ScratchInstall {
    fn new(package: &'static str) -> ScratchInstall {
        let status = Command::new("dpkg-query")
            .args(["-W", "-f", "${db:Status-Status}", package])
            .output()
            .unwrap();
        let state = String::from_utf8_lossy(&status.stdout).into_owned();
        assert!(
            state.is_empty() || state == "not-installed" || state == "config-files",
            "{package} is installed on this machine ({state}): this test installs and purges it, \
             data included; run it on a scratch machine (CI) or remove {package} first"
        );
        let _ = Command::new("dpkg").args(["--purge", package]).output();
        let policy = Path::new("/run/systemd/system").exists() && !Path::new(POLICY_RC).exists();
        if policy {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(POLICY_RC, "#!/bin/sh\nexit 101\n").unwrap();
            std::fs::set_permissions(POLICY_RC, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        ScratchInstall { package, policy }
    }
}

impl Drop for ScratchInstall {
    fn drop(&mut self) {
        let _ = Command::new("dpkg")
            .args(["--purge", self.package])
            .output();
        if self.policy {
            let _ = std::fs::remove_file(POLICY_RC);
        }
    }
}

/// dpkg takes one caller at a time: the install tests take turns.
static DPKG: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn dpkg(args: &[&str]) -> String {
    run(Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn mode(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode() & 0o7777)
}

/// `systemd-analyze verify` passes on an installed unit, without a word.
fn verify_unit(unit: &str) {
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(Path::new("/usr/lib/systemd/system").join(unit))
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify {unit}: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

fn id_of(what: &str, name: &str) -> u32 {
    run(Command::new("id").arg(what).arg(name))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs root and the packages (tests/package.sh): tests/run-all.sh"]
async fn the_amd64_package_installs_runs_as_a_notify_service_and_purges_cleanly() {
    assert!(is_root(), "installing a package needs root");
    let _turn = DPKG.lock().await;
    let deb = debs::deb("ferry", "amd64");
    let _scratch = ScratchInstall::new("ferry");
    dpkg(&["--install", deb.to_str().unwrap()]);

    let groups = run(Command::new("id").args(["-nG", "ferry"]));
    assert!(
        groups.split_whitespace().any(|g| g == "dialout"),
        "{groups}"
    );
    let (uid, gid) = (id_of("-u", "ferry"), id_of("-g", "ferry"));
    assert_eq!(mode(Path::new("/var/lib/ferry")), (uid, gid, 0o750));
    assert_eq!(mode(Path::new("/etc/ferry/ferry.toml")), (0, gid, 0o640));
    verify_unit("ferry.service");
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/ferry.service").exists(),
        "enabled on install"
    );
    let check =
        run(Command::new("/usr/bin/ferry").args(["config", "check", "/etc/ferry/ferry.toml"]));
    assert!(check.contains("/var/lib/ferry/ferry.db"), "{check}");
    // What the unit runs before each start prints no settings (they hold secrets) to the journal.
    let quiet = run(Command::new("/usr/bin/ferry").args([
        "config",
        "check",
        "--quiet",
        "/etc/ferry/ferry.toml",
    ]));
    assert_eq!(quiet.trim(), "/etc/ferry/ferry.toml: ok");
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/ferry.service").unwrap();
    assert!(unit.contains("ExecStartPre=/usr/bin/ferry config check --quiet /etc/ferry/ferry.toml"));
    assert!(Path::new("/usr/lib/modules-load.d/ferry.conf").exists());

    // The installed binary with the installed config, as the `ferry` user (the unit's User=);
    // only the listen addresses are moved off the defaults, through the environment.
    let dir = tempfile::tempdir().unwrap();
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tcp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = check_service_protocol(
        dir.path(),
        ServiceRun {
            prefix: &[
                "setpriv",
                "--reuid=ferry",
                "--regid=ferry",
                "--init-groups",
                "--",
            ],
            ferry: Path::new("/usr/bin/ferry"),
            config: Path::new("/etc/ferry/ferry.toml"),
            env: &[
                ("FERRY_API_LISTEN", api.to_string()),
                ("FERRY_TCP_LISTEN", tcp.to_string()),
            ],
            api,
            tcp,
        },
    )
    .await;
    assert!(log.contains("store=/var/lib/ferry/ferry.db"), "{log}");
    let db = Path::new("/var/lib/ferry/ferry.db");
    assert_eq!(mode(db).0, uid, "the store belongs to the ferry user");

    // An edited config survives a reinstall (an upgrade of the same files).
    let edited = format!(
        "{}\n# edited by the operator\n",
        std::fs::read_to_string("/etc/ferry/ferry.toml").unwrap()
    );
    std::fs::write("/etc/ferry/ferry.toml", &edited).unwrap();
    dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string("/etc/ferry/ferry.toml").unwrap(),
        edited
    );

    // Remove keeps the data and the config; purge deletes both.
    dpkg(&["--remove", "ferry"]);
    assert!(!Path::new("/usr/bin/ferry").exists());
    assert!(db.exists(), "data kept on remove");
    assert!(
        Path::new("/etc/ferry/ferry.toml").exists(),
        "config kept on remove"
    );
    dpkg(&["--purge", "ferry"]);
    assert!(
        !Path::new("/var/lib/ferry").exists(),
        "data deleted on purge"
    );
    assert!(
        !Path::new("/etc/ferry/ferry.toml").exists(),
        "config deleted on purge"
    );
}

#[test]
#[ignore = "needs root and the packages (tests/package.sh): tests/run-all.sh"]
fn the_amd64_bridge_package_installs_with_a_private_env_file_and_a_verified_unit() {
    assert!(is_root(), "installing a package needs root");
    let _turn = DPKG.blocking_lock();
    let deb = debs::deb("ferry-bridge", "amd64");
    let _scratch = ScratchInstall::new("ferry-bridge");
    dpkg(&["--install", deb.to_str().unwrap()]);
    assert_eq!(
        mode(Path::new("/etc/ferry/ferry-bridge.env")),
        (0, 0, 0o600)
    );
    verify_unit("ferry-bridge.service");
    // Not started on install: it needs a database first (README: Install).
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/ferry-bridge.service").exists()
    );
    let help = run(Command::new("/usr/bin/ferry-bridge").arg("--help"));
    assert!(help.contains("FERRY_BRIDGE_DATABASE"), "{help}");
    dpkg(&["--purge", "ferry-bridge"]);
    assert!(!Path::new("/usr/bin/ferry-bridge").exists());
}

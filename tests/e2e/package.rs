//! The Debian package: `cargo deb` packs the gateway, and the package, unpacked into a
//! throwaway root, has the binary, a unit systemd accepts (its own user, state and config
//! directories, restart on failure, hardening), a default config that passes `check-config`,
//! kept as a conffile, and maintainer scripts that create the service's user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode()
        & 0o7777
}

#[test]
fn the_debian_package_holds_the_binary_a_unit_systemd_accepts_and_a_config_that_checks() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("fieldgate.deb");
    // The binary the tests run (release packages come from `cargo deb -p fieldgate`, which
    // builds it in release first). cargo-deb is installed by .ci/install-test-deps.
    let packed = Command::new("cargo")
        .current_dir(workspace)
        .args(["deb", "-p", "fieldgate", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(
        packed.status.success(),
        "cargo deb failed (installed? `cargo install cargo-deb --version 3.8.0 --locked`):\n{}",
        String::from_utf8_lossy(&packed.stderr)
    );
    let root = dir.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let control = dir.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));

    // Files, where Debian and systemd look for them, with their modes.
    let binary = root.join("usr/bin/fieldgate");
    assert_eq!(mode(&binary), 0o755);
    let config = root.join("etc/fieldgate/fieldgate.toml");
    assert_eq!(mode(&config), 0o640, "the config may hold secrets");
    for doc in ["README.md", "config.md", "deploy.md", "examples/fieldgate.toml", "copyright"] {
        assert!(root.join("usr/share/doc/fieldgate").join(doc).is_file(), "{doc}");
    }
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/fieldgate/fieldgate.toml", "an edited config survives upgrades");
    let fields = std::fs::read_to_string(control.join("control")).unwrap();
    assert!(fields.contains("Package: fieldgate") && fields.contains("adduser"), "{fields}");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system --group") && postinst.contains("dialout"), "{postinst}");
    assert!(postinst.contains("deb-systemd-helper enable fieldgate.service"), "{postinst}");

    // The unit: its own user, state and config where the issue says, restarts, hardening.
    let unit_path = root.join("usr/lib/systemd/system/fieldgate.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for line in [
        "User=fieldgate",
        "SupplementaryGroups=dialout",
        "ExecStart=/usr/bin/fieldgate run --config /etc/fieldgate/fieldgate.toml",
        "StateDirectory=fieldgate",
        "ConfigurationDirectory=fieldgate",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=",
        "DeviceAllow=char-ttyUSB rw",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks `{line}`");
    }
    // systemd's own check, on a copy whose commands point into the throwaway root.
    if Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let copy = dir.path().join("fieldgate.service");
        std::fs::write(&copy, unit.replace("/usr/bin/fieldgate", binary.to_str().unwrap())).unwrap();
        let verified = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
        let complaints = String::from_utf8_lossy(&verified.stderr);
        assert!(verified.status.success() && complaints.trim().is_empty(), "{complaints}");
    } else {
        eprintln!("systemd-analyze is not installed: the unit's keys were not verified by systemd");
    }

    // The shipped config is valid for the shipped binary.
    let checked = run(Command::new(&binary).arg("check-config").arg(&config));
    assert!(checked.contains("is valid") && checked.contains("/var/lib/fieldgate"), "{checked}");
}

//! The package on the systemd-booted system lab (tests/lab/scenarios/system-package.sh): apt
//! install of the built .deb, a live L2TP session through the installed plugin, upgrade to a
//! higher version with the session up, remove with a session up, purge with unsent accounting.
//! Every step read back from dpkg, systemd, the files and the kernel.
//!
//! Needs root, qemu, linux-image-amd64, e2fsprogs, the release artifacts and both packages
//! (scripts/test-all.sh builds them: scripts/build-deb.sh --no-build [--version <v>+lab1]).
//! Part of the long run, not CI (tests/lab/README.md, "CI and the long run"):
//! `cargo test --release --test lab_package -- --ignored`.

use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, SystemDisk};

/// `target/deb/pppgate_<version>_<arch>.deb`, built by scripts/test-all.sh (scripts/build-deb.sh).
fn deb(version: &str) -> String {
    let arch =
        String::from_utf8(std::process::Command::new("dpkg").arg("--print-architecture").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
    let p = pppgate_lab::paths::target_dir().join("deb").join(format!("pppgate_{version}_{arch}.deb"));
    assert!(p.is_file(), "{} is missing: scripts/build-deb.sh --no-build [--version {version}]", p.display());
    p.canonicalize().unwrap().display().to_string()
}

/// The version the upgrade test installs over the package: same artifacts, higher version.
pub const UPGRADE_VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "+lab1");

#[test]
#[ignore = "long run (PPPGATE_LAB_LONG=1 scripts/test-all.sh): four apt runs under TCG, ~30 min on a loaded machine"]
fn package_installs_upgrades_with_a_live_session_removes_and_purges() {
    let disk = SystemDisk::create(&SystemDisk::default_path("package"), 4096).expect("system disk");
    let opts = LabOptions { system: Some(disk), ..LabOptions::default() }
        .timeout(Duration::from_secs(2400))
        .env("LAB_BOOT", "1")
        .env("LAB_DEB", &deb(env!("CARGO_PKG_VERSION")))
        .env("LAB_DEB_UPGRADE", &deb(UPGRADE_VERSION));
    let run = Lab::run("system-package", &opts).unwrap_or_else(|e| panic!("system-package: {e}"));
    let f = &run.facts;
    for step in ["install", "upgrade", "remove", "purge"] {
        eprintln!(
            "system-package: {step} took {} ms (apt/dpkg in the VM)",
            f.get(&format!("{step}.ms")).unwrap_or("?")
        );
    }
    for case in ["install", "upgrade", "remove", "purge"] {
        run.expect_case(case);
    }
    assert_eq!(f.expect("install.version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(f.expect("install.dpkg_status"), "install ok installed");
    assert_eq!(f.expect("install.timers"), "enabled-active");
    assert_eq!(f.expect("install.boot_units"), "enabled-not-started");
    assert_eq!(f.expect("install.sessions_dir"), "2750 root pppgate");
    assert_eq!(f.expect("install.state_dir"), "700 root root");
    assert_eq!(f.expect("install.config"), "644 root root");
    assert_eq!(f.expect("install.ip_forward"), "1");
    assert_eq!(f.expect("install.freerad_in_group"), "1");
    assert_eq!(f.expect("install.canonical"), "ok");

    // Upgrade with a live session: same pppd, same policy, config kept, timers running.
    assert_eq!(f.expect("upgrade.version"), UPGRADE_VERSION);
    assert_eq!(f.expect("upgrade.before"), "full tbf");
    assert_eq!(f.expect("upgrade.after"), "full tbf", "the upgrade changed the live session's policy");
    assert_eq!(f.expect("upgrade.pppd_alive"), "yes");
    assert_eq!(f.expect("upgrade.mapping"), "present");
    assert_eq!(f.expect("upgrade.config_kept"), "1", "the administrator's configuration was replaced");
    assert_eq!(f.expect("upgrade.new_session"), "full tbf");

    // Remove with a live session: policy stays, timers stop, and the script says so.
    assert_eq!(f.expect("remove.said"), "1");
    assert_eq!(f.expect("remove.binary"), "gone");
    assert_eq!(f.expect("remove.config"), "kept");
    assert_eq!(f.expect("remove.pppd_alive"), "yes");
    assert_eq!(f.expect("remove.policy"), "full tbf", "remove took a live session's policy away");
    assert_eq!(f.expect("remove.timers"), "stopped");
    assert_eq!(f.expect("remove.table"), "kept");

    // Purge with an unsent batch: the spool is kept, and said so; the configuration goes.
    assert_eq!(f.expect("purge.spool"), "kept");
    assert_eq!(f.expect("purge.said"), "1");
    assert_eq!(f.expect("purge.config"), "gone");
    assert_eq!(f.expect("purge.units"), "gone");
}

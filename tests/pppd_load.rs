//! The plugin inside the real pppd 2.4.9 of the build machine (no PPP in this kernel: pppd stops
//! after option parsing, which is where plugins load and where our option is validated).
//!
//! Needs `cargo build --release -p pppgate-plugin` and `scripts/build-pppd-variants.sh` (the test
//! command runs both first); a missing artifact fails the test with the command to build it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn artifact(rel: &str, build: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));
    let p = target.join(rel);
    assert!(p.exists(), "{} is missing; build it first with: {build}", p.display());
    p
}

fn plugin() -> PathBuf {
    artifact("release/libpppgate.so", "cargo build --release -p pppgate-plugin")
}

/// Runs pppd with a pseudo-terminal as stdin (pppd wants a tty when no device is given) and
/// returns (exit code, combined output).
fn pppd(args: &str) -> (i32, String) {
    assert!(Path::new("/usr/sbin/pppd").exists(), "pppd is not installed (apt-get install ppp)");
    let out = Command::new("script")
        .args(["-qec", &format!("/usr/sbin/pppd file /dev/null {args}"), "/dev/null"])
        .output()
        .expect("run pppd under script(1)");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn plugin_loads_into_real_pppd() {
    let so = plugin();
    let (_, out) = pppd(&format!("plugin {} dryrun", so.display()));
    assert!(out.contains(&format!("Plugin {} loaded.", so.display())), "pppd output:\n{out}");
    assert!(out.contains("pppgate: pppgate ") && out.contains("loaded (pppd 2.4.9 API 2.4)"), "{out}");
    assert!(!out.contains("is for pppd version"), "{out}");
}

#[test]
fn exported_version_matches_installed_pppd() {
    let so = plugin();
    let bytes = std::fs::read(&so).unwrap();
    let hdr = std::fs::read_to_string("/usr/include/pppd/patchlevel.h").unwrap();
    let version = hdr.lines().find_map(|l| l.strip_prefix("#define VERSION")).unwrap().trim().trim_matches('"');
    let needle = format!("{version}\0");
    assert!(bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
    let syms = Command::new("nm").args(["-D", "--defined-only"]).arg(&so).output().unwrap();
    let syms = String::from_utf8_lossy(&syms.stdout);
    assert!(syms.lines().any(|l| l.ends_with(" T plugin_init")), "{syms}");
    assert!(syms.lines().any(|l| l.ends_with(" R pppd_version")), "{syms}");
}

#[test]
fn mismatched_version_is_refused_by_pppd() {
    let so = artifact("pppd-variants/libpppgate-mismatch.so", "scripts/build-pppd-variants.sh");
    let (code, out) = pppd(&format!("plugin {} dryrun", so.display()));
    assert!(out.contains("is for pppd version 2.4.9-mismatch, this is 2.4.9"), "pppd output:\n{out}");
    assert!(!out.contains("pppgate: pppgate "), "the plugin must not have initialised:\n{out}");
    assert_eq!(code, 2, "pppd exits with EXIT_OPTION_ERROR:\n{out}");
}

#[test]
fn missing_config_makes_pppd_refuse_to_start() {
    let so = plugin();
    let (code, out) = pppd(&format!("plugin {} pppgate-config /nonexistent/pppgate.toml dryrun", so.display()));
    assert!(out.contains("pppgate-config: invalid configuration /nonexistent/pppgate.toml: cannot read"), "{out}");
    assert_eq!(code, 2, "{out}");
}

/// The trust rule (docs/security.md) holds inside pppd too: a configuration others may write, or
/// a symlink to one, makes pppd refuse to start, naming the path and the mode.
#[test]
fn untrusted_config_makes_pppd_refuse_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let so = plugin();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pppgate.toml");
    std::fs::write(
        &cfg,
        "[database]\ndsn = \"host=/tmp dbname=x user=y\"\n[nas]\nidentity = \"lns-1\"\nip = \"192.0.2.1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg.display()));
    assert!(out.contains(&format!("refusing {}: has mode 0666", cfg.display())), "{out}");
    assert_eq!(code, 2, "{out}");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&cfg, &link).unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), link.display()));
    assert!(out.contains(&format!("refusing {}: is a symbolic link", link.display())), "{out}");
    assert_eq!(code, 2, "{out}");

    // A group-writable directory above the configuration (issue 10's acceptance).
    let sub = dir.path().join("etc-pppgate");
    std::fs::create_dir(&sub).unwrap();
    let cfg2 = sub.join("pppgate.toml");
    std::fs::copy(&cfg, &cfg2).unwrap();
    std::fs::set_permissions(&cfg2, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o775)).unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg2.display()));
    assert!(out.contains(&format!("refusing {}: directory has mode 0775", sub.display())), "{out}");
    assert_eq!(code, 2, "{out}");
    std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg2.display()));
    assert!(
        !out.contains("refusing") && out.contains("pppgate: pppgate "),
        "in a 0755 directory it is trusted:\n{out}"
    );

    // A symlinked secrets file (its target is a good 0600 file).
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, "db_password = \"s3cret\"\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secrets_link = dir.path().join("secrets-link.toml");
    std::os::unix::fs::symlink(&secrets, &secrets_link).unwrap();
    let cfg3 = dir.path().join("with-secrets.toml");
    std::fs::write(
        &cfg3,
        format!(
            "[database]\ndsn = \"host=/tmp dbname=x user=y\"\nsecrets_file = \"{}\"\n[nas]\nidentity = \"lns-1\"\nip = \"192.0.2.1\"\n",
            secrets_link.display()
        ),
    )
    .unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg3.display()));
    assert!(out.contains(&format!("refusing {}: is a symbolic link", secrets_link.display())), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
    assert_eq!(code, 2, "{out}");
}

#[test]
fn invalid_config_makes_pppd_refuse_to_start_with_every_problem() {
    let so = plugin();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[database]\ndsn = \"host=/tmp dbname=x\"\n[nas]\nidentity = \"a b\"\nip = \"nope\"\n")
        .unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg.display()));
    assert!(out.contains("nas.identity") && out.contains("nas.ip"), "{out}");
    assert_eq!(code, 2, "{out}");
}

#[test]
fn the_2_5_build_uses_the_2_5_api() {
    let so = artifact("pppd-variants/libpppgate-pppd-2.5.so", "scripts/build-pppd-variants.sh");
    let syms = Command::new("nm").arg("-D").arg(&so).output().unwrap();
    let syms = String::from_utf8_lossy(&syms.stdout);
    for needed in ["ppp_add_notify", "ppp_ifname", "ppp_set_status", "ppp_timeout"] {
        assert!(syms.lines().any(|l| l.trim_end().ends_with(&format!("U {needed}"))), "{needed} not imported:\n{syms}");
    }
    assert!(std::fs::read(&so).unwrap().windows(6).any(|w| w == b"2.5.2\0"), "pppd_version is not 2.5.2");
}

/// One source tree, one build per pppd ABI: the build against Debian 13's pppd 2.5.2 headers is
/// refused by Debian 12's pppd 2.4.9 (the reverse is tests/lab_trixie.rs, inside pppd 2.5.2).
/// pppd dlopen()s with RTLD_NOW, so the 2.5 API's symbols (`ppp_add_notify`, ...) that pppd 2.4.9
/// does not have make the dynamic linker refuse the plugin before its version is compared.
#[test]
fn the_2_5_2_build_is_refused_by_pppd_2_4_9() {
    let so = artifact("pppd-variants/libpppgate-pppd-2.5.so", "scripts/build-pppd-variants.sh");
    let (code, out) = pppd(&format!("plugin {} dryrun", so.display()));
    assert!(out.contains(&format!("Couldn't load plugin {}", so.display())), "pppd 2.4.9 output:\n{out}");
    assert!(out.contains("undefined symbol: ppp_"), "{out}");
    assert!(!out.contains("pppgate: pppgate "), "the plugin must not have initialised:\n{out}");
    assert_eq!(code, 2, "pppd exits with EXIT_OPTION_ERROR:\n{out}");
}

#[test]
fn world_readable_secrets_make_pppd_refuse_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let so = plugin();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(&secrets, "db_password = \"s3cret\"\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("pppgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\ndsn = \"host=/tmp dbname=x user=y\"\nsecrets_file = \"{}\"\n[nas]\nidentity = \"lns-1\"\nip = \"192.0.2.1\"\n",
            secrets.display()
        ),
    )
    .unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg.display()));
    assert!(out.contains("has mode 0644") && out.contains("chmod 600"), "{out}");
    assert!(!out.contains("s3cret"), "the secret leaked into pppd's output:\n{out}");
    assert_eq!(code, 2, "{out}");
    // Unreadable (missing) secrets file: refused too.
    std::fs::remove_file(&secrets).unwrap();
    let (code, out) = pppd(&format!("plugin {} pppgate-config {} dryrun", so.display(), cfg.display()));
    assert!(out.contains("database.secrets_file: cannot read"), "{out}");
    assert_eq!(code, 2, "{out}");
}

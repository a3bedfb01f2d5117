//! The built .deb against what docs/packaging.md documents: contents (files, links, modes,
//! owners), Depends/Breaks from ppp-dev's substvars, conffiles, lintian, the sudoers file and
//! what the maintainer scripts start.
//!
//! Needs the package: `scripts/build-deb.sh` (scripts/test-all.sh builds it before the tests).
//! Needs dpkg-deb, lintian and visudo (scripts/install-deps.sh). Nothing is installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (scripts/install-deps.sh installs it): {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let (rc, out, err) = run(cmd, args);
    assert_eq!(rc, 0, "{cmd} {args:?} failed: {err}");
    out
}

/// `target/deb/pppgate_<workspace version>_<arch>.deb`.
fn deb() -> &'static PathBuf {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let arch = ok("dpkg", &["--print-architecture"]).trim().to_string();
        let dir = std::env::var_os("PPPGATE_DEB_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| pppgate_lab::paths::target_dir().join("deb"));
        let p = dir.join(format!("pppgate_{}_{arch}.deb", env!("CARGO_PKG_VERSION")));
        assert!(p.is_file(), "{} is missing: build it with scripts/build-deb.sh", p.display());
        p
    })
}

fn deb_str() -> &'static str {
    deb().to_str().expect("utf-8 path")
}

fn substvars() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string("/usr/share/ppp-dev/substvars").expect("ppp-dev's substvars");
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// One entry of the package: type+mode string (`-rw-r--r--`, or `-> target` for a symlink) and owner.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    path: String,
    mode: String,
    owner: String,
}

fn documented() -> BTreeSet<Entry> {
    let doc = std::fs::read_to_string(repo().join("docs/packaging.md")).expect("docs/packaging.md");
    let start = doc.find("<!-- deb-contents:begin -->").expect("begin marker in docs/packaging.md");
    let end = doc.find("<!-- deb-contents:end -->").expect("end marker in docs/packaging.md");
    let plugin_dir = substvars().get("ppp:PluginDir").cloned().expect("ppp:PluginDir");
    let mut out = BTreeSet::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let path = unquote(cells[1]).replace("/usr/lib/pppd/2.4.9", &plugin_dir);
        out.insert(Entry { path, mode: unquote(cells[2]), owner: cells[3].to_string() });
    }
    assert!(out.len() > 30, "the contents table in docs/packaging.md looks truncated: {out:?}");
    out
}

/// `dpkg-deb -c`: (directories, everything else).
fn listed() -> (Vec<Entry>, BTreeSet<Entry>) {
    let text = ok("dpkg-deb", &["-c", deb_str()]);
    let (mut dirs, mut rest) = (Vec::new(), BTreeSet::new());
    for line in text.lines() {
        // drwxr-xr-x root/root 0 2026-12-02 04:10 ./usr/  |  lrwxrwxrwx ... ./usr/sbin/x -> pppgate
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() >= 6, "unexpected dpkg-deb -c line: {line}");
        let perms = f[0];
        let path = f[5].trim_start_matches('.').trim_end_matches('/').to_string();
        let owner = f[1].to_string();
        if perms.starts_with('d') {
            dirs.push(Entry { path, mode: perms.to_string(), owner });
        } else if perms.starts_with('l') {
            assert_eq!(f.get(6), Some(&"->"), "symlink without target: {line}");
            rest.insert(Entry { path, mode: format!("-> {}", f[7]), owner });
        } else {
            rest.insert(Entry { path, mode: perms.to_string(), owner });
        }
    }
    (dirs, rest)
}

#[test]
fn contents_are_exactly_the_documented_files_modes_and_owners() {
    let (dirs, files) = listed();
    let doc = documented();
    let missing: Vec<_> = doc.difference(&files).collect();
    let extra: Vec<_> = files.difference(&doc).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the package differs from docs/packaging.md\n  documented, not in the package (or other mode/owner): {missing:#?}\n  in the package, not documented: {extra:#?}"
    );
    for d in dirs {
        assert_eq!((d.mode.as_str(), d.owner.as_str()), ("drwxr-xr-x", "root/root"), "directory {}", d.path);
    }
}

fn field(name: &str) -> String {
    ok("dpkg-deb", &["-f", deb_str(), name]).trim().to_string()
}

fn relations(s: &str) -> BTreeSet<String> {
    s.split(',').map(|r| r.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|r| !r.is_empty()).collect()
}

#[test]
fn depends_and_breaks_are_ppp_devs_exact_range_and_the_plugin_is_in_its_plugin_dir() {
    let sv = substvars();
    let depends = relations(&field("Depends"));
    let ppp_in_depends: BTreeSet<String> = depends.iter().filter(|r| r.starts_with("ppp ")).cloned().collect();
    assert_eq!(ppp_in_depends, relations(&sv["ppp:Depends"]), "Depends: {depends:?}");
    assert!(depends.contains("nftables"), "Depends: {depends:?}");
    assert_eq!(relations(&field("Breaks")), relations(&sv["ppp:Breaks"]));
    let plugin = format!("{}/pppgate.so", sv["ppp:PluginDir"]);
    assert!(listed().1.iter().any(|e| e.path == plugin), "no {plugin} in the package");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
}

/// Extracts the control area once.
fn control_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        ok("dpkg-deb", &["-e", deb_str(), d.path().join("DEBIAN").to_str().unwrap()]);
        d
    })
    .path()
}

fn control_file(name: &str) -> String {
    std::fs::read_to_string(control_dir().join("DEBIAN").join(name)).unwrap_or_default()
}

#[test]
fn configuration_files_are_conffiles() {
    let conffiles: BTreeSet<String> = control_file("conffiles").lines().map(str::to_string).collect();
    let want: BTreeSet<String> =
        ["/etc/pppgate/pppgate.toml", "/etc/iproute2/rt_protos.d/pppgate.conf"].iter().map(|s| s.to_string()).collect();
    assert_eq!(conffiles, want);
}

const TIMERS: [&str; 4] = [
    "vpn-policy-reconcile.timer",
    "vpn-accounting-collector.timer",
    "vpn-stale-session-janitor.timer",
    "pppgate-wg-reconcile.timer",
];

/// The tamper guard (docs/security.md): enabled, started on install, restarted on upgrade.
const GUARD: &str = "pppgate-guard.service";

#[test]
fn maintainer_scripts_start_only_timers_and_touch_no_policy_outside_purge() {
    let postinst = control_file("postinst");
    for t in TIMERS {
        assert!(postinst.contains(&format!("deb-systemd-helper enable '{t}'")), "{t} not enabled on install");
    }
    for u in ["pppgate-boot-reconcile.service", "pppgate-boot-janitor.service", GUARD] {
        assert!(postinst.contains(&format!("deb-systemd-helper enable '{u}'")), "{u} not enabled on install");
    }
    // Every unit dpkg starts or restarts is a timer or the guard (which only restores the table
    // from local state): a boot reconcile/janitor never runs inside dpkg.
    let mut guard_started = false;
    for line in postinst.lines().filter(|l| l.contains("deb-systemd-invoke")) {
        let units: Vec<&str> = line.split('\'').skip(1).step_by(2).collect();
        assert!(!units.is_empty(), "deb-systemd-invoke without units: {line}");
        for u in units {
            guard_started |= u == GUARD;
            assert!(TIMERS.contains(&u) || u == GUARD, "postinst starts/restarts {u}: {line}");
        }
    }
    assert!(guard_started, "the guard is started on install and restarted on upgrade:\n{postinst}");
    for script in ["preinst", "postinst", "prerm"] {
        let s = control_file(script);
        for word in [
            "nft delete",
            "nft flush",
            "nft -f",
            "tc qdisc",
            "tc class",
            "ip route",
            "ip rule",
            "/run/vpn-sessions/",
            "kill",
        ] {
            assert!(!s.contains(word), "{script} mentions `{word}`: it must not touch live sessions");
        }
    }
    let prerm = control_file("prerm");
    assert!(prerm.contains("Live sessions keep their policy"), "remove must say what it does:\n{prerm}");
    let postrm = control_file("postrm");
    assert!(postrm.contains("KEPT $SPOOL"), "purge must say when it keeps unsent accounting:\n{postrm}");
}

#[test]
fn lintian_reports_no_errors_and_only_documented_warnings() {
    let (rc, out, err) = run("lintian", &["--tag-display-limit", "0", deb_str()]);
    let tags: Vec<&str> = out.lines().filter(|l| l.len() > 2 && &l[1..3] == ": ").collect();
    let errors: Vec<&&str> = tags.iter().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", out);
    assert_eq!(rc, 0, "lintian exited {rc}: {out}{err}");
    let doc = std::fs::read_to_string(repo().join("docs/packaging.md")).unwrap();
    for w in tags.iter().filter(|l| l.starts_with("W:")) {
        // W: pppgate: tag-name [context]
        let tag = w.split_whitespace().nth(2).unwrap_or("");
        assert!(doc.contains(&format!("`{tag}`")), "lintian warning {tag} is not listed in docs/packaging.md: {w}");
    }
    eprintln!("lintian: {} tags shown at the default level", tags.len());
}

#[test]
fn shipped_sudoers_file_passes_visudo() {
    let d = tempfile::tempdir().unwrap();
    ok("dpkg-deb", &["-x", deb_str(), d.path().to_str().unwrap()]);
    let f = d.path().join("usr/share/pppgate/sudoers.pppgate");
    let (rc, out, err) = run("visudo", &["-cf", f.to_str().unwrap()]);
    assert_eq!(rc, 0, "visudo -c: {out}{err}");
}

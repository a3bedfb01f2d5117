//! Debian 13 in the lab (src/root.rs): the trixie root, built from Debian's registry, boots its own
//! kernel; inside, pppd 2.5.2 loads the plugin built against that root's headers and refuses the
//! plugins built for other pppds — the 2.4.9 build and a 2.5 build claiming another version —
//! with pppd's own messages. (The other direction, pppd 2.4.9 refusing the 2.5.2 build, is
//! `tests/pppd_load.rs`.) In the same boot the .deb built for Debian 13
//! (`scripts/build-deb.sh --root`, target/deb/trixie/) is installed with `dpkg -i` and pppd 2.5.2
//! loads its plugin as `plugin pppgate.so`. One VM boot; the other lab tests run on trixie with
//! `PPPGATE_LAB_ROOT=trixie` (tests/lab/README.md).
//!
//! Needs root, qemu, mmdebstrap (the root is built on first use), the release artifacts and
//! `scripts/build-pppd-variants.sh`, then the Debian 13 .deb:
//! `PPPGATE_DEB_PLUGIN=target/pppd-variants/libpppgate-pppd-2.5.so scripts/build-deb.sh --no-build
//! --root "$(target/release/pppgate-lab root trixie)"` (scripts/test-all.sh does all of it).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{paths, root, Artifacts, Lab, LabOptions, LabRun, Root};

/// Boot, three pppd dry runs and one `dpkg -i` (Perl helpers under TCG: the slow part).
const TIMEOUT: Duration = Duration::from_secs(600);

/// The .deb for Debian 13 of this version.
fn trixie_deb() -> String {
    let p = paths::target_dir().join(format!("deb/trixie/pppgate_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    assert!(
        p.is_file(),
        "{} is missing; build it with PPPGATE_DEB_PLUGIN=target/pppd-variants/libpppgate-pppd-2.5.so scripts/build-deb.sh --no-build --root \"$(target/release/pppgate-lab root trixie)\"",
        p.display()
    );
    p.display().to_string()
}

fn variant(name: &str) -> String {
    let p = paths::target_dir().join("pppd-variants").join(name);
    assert!(p.is_file(), "{} is missing; build it with scripts/build-pppd-variants.sh", p.display());
    p.display().to_string()
}

fn host_plugin() -> String {
    let p = Artifacts::locate().plugin;
    assert!(p.is_file(), "{} is missing; build it with cargo build --release --workspace", p.display());
    p.display().to_string()
}

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        let opts = LabOptions::default()
            .root(Root::Trixie)
            .timeout(TIMEOUT)
            .env("LAB_PLUGIN_OTHER_ABI", &host_plugin())
            .env("LAB_PLUGIN_MISMATCH", &variant("libpppgate-pppd-2.5-mismatch.so"))
            .env("LAB_DEB", &trixie_deb());
        Lab::run("abi", &opts).map_err(|e| e.to_string())
    });
    match r {
        Ok(run) => run,
        Err(e) => panic!("the abi lab run on trixie failed: {e}"),
    }
}

#[test]
fn trixie_root_boots_its_own_kernel_with_pppd_2_5_2() {
    let run = run();
    let f = &run.facts;
    assert_eq!(run.root, Root::Trixie);
    assert_eq!(f.expect("abi.root"), "trixie");
    assert_eq!(f.expect("abi.os"), "trixie 13");
    let guest = root::ensure(Root::Trixie).expect("the trixie root");
    let kernel = guest.kernel().expect("the trixie root's kernel");
    assert_eq!(f.expect("abi.kernel"), kernel.version, "the guest runs the root's own kernel");
    assert!(kernel.image.starts_with(&guest.dir), "{} is not the root's", kernel.image.display());
    assert_eq!(f.expect("abi.pppd_version"), "2.5.2", "pppd --version inside the trixie guest");
    assert_eq!(guest.pppd_version().as_deref(), Some("2.5.2"), "the root's ppp-dev headers");
    assert!(f.expect("abi.postgres_version").contains(" 17."), "{}", f.expect("abi.postgres_version"));
    assert!(f.expect("abi.freeradius_version").contains("3.2."), "{}", f.expect("abi.freeradius_version"));
    assert!(f.expect("abi.xl2tpd_version").starts_with("1.3."), "{}", f.expect("abi.xl2tpd_version"));
    assert_eq!(f.expect("abi.radius_so"), "/usr/lib/pppd/2.5.2/radius.so");
    // Built on Debian 12 (glibc 2.36), run on Debian 13 (glibc 2.41).
    assert!(f.expect("abi.pppgate_version").starts_with("pppgate "), "{}", f.expect("abi.pppgate_version"));
}

fn pppd_log(run: &LabRun, name: &str) -> String {
    run.read(&format!("logs/pppd-{name}.log"))
}

#[test]
fn pppd_2_5_2_loads_the_plugin_built_for_it() {
    let run = run();
    let out = pppd_log(run, "own");
    let so = paths::plugin_2_5();
    assert!(out.contains(&format!("Plugin {} loaded.", so.display())), "pppd 2.5.2 output:\n{out}");
    assert!(out.contains("pppgate: pppgate ") && out.contains("loaded (pppd 2.5.2 API 2.5)"), "{out}");
    assert!(!out.contains("Couldn't load plugin") && !out.contains("is for pppd version"), "{out}");
}

#[test]
fn pppd_2_5_2_refuses_the_plugin_built_for_pppd_2_4_9() {
    let run = run();
    let out = pppd_log(run, "other_abi");
    let so = host_plugin();
    // pppd dlopen()s with RTLD_NOW: the 2.4 API's symbols (add_notifier, ...) do not resolve in
    // pppd 2.5.2, so the dynamic linker refuses the plugin before its version is compared.
    assert!(out.contains(&format!("Couldn't load plugin {so}")), "pppd 2.5.2 output:\n{out}");
    assert!(out.contains("undefined symbol"), "{out}");
    assert!(!out.contains("pppgate: pppgate "), "the plugin must not have initialised:\n{out}");
    assert_eq!(run.facts.expect("abi.other_abi.rc"), "2", "pppd exits with EXIT_OPTION_ERROR:\n{out}");
}

#[test]
fn pppd_2_5_2_refuses_a_2_5_plugin_built_for_another_version() {
    let run = run();
    let out = pppd_log(run, "mismatch");
    assert!(out.contains("is for pppd version 2.5.2-mismatch, this is 2.5.2"), "pppd 2.5.2 output:\n{out}");
    assert!(!out.contains("pppgate: pppgate "), "the plugin must not have initialised:\n{out}");
    assert_eq!(run.facts.expect("abi.mismatch.rc"), "2", "{out}");
}

#[test]
fn the_trixie_root_records_what_it_installed() {
    let guest = root::ensure(Root::Trixie).expect("the trixie root");
    let m = std::fs::read_to_string(guest.dir.join(root::MANIFEST)).expect("manifest");
    assert!(m.contains(&format!("key {}", root::TRIXIE.key())), "{m}");
    for pkg in ["ppp 2.5.2", "xl2tpd ", "postgresql-17 17.", "freeradius 3.2.", "linux-image-amd64 "] {
        assert!(m.lines().any(|l| l.starts_with(pkg)), "{pkg} not in the manifest:\n{m}");
    }
    assert!(Path::new(&guest.dir).join("usr/sbin/pppd").is_file());
}

/// The Debian 13 variant of the package: built against trixie's ppp-dev 2.5.2 (plugin in its
/// PluginDir, Depends/Breaks from its substvars), installed with `dpkg -i` into the trixie root,
/// its plugin loaded by pppd 2.5.2 under the name operators write.
#[test]
fn the_trixie_deb_installs_and_pppd_2_5_2_loads_its_plugin() {
    let run = run();
    let f = &run.facts;
    println!("dpkg -i of the trixie .deb: {} ms in the guest", f.expect("abi.deb.dpkg_ms"));
    assert_eq!(f.expect("abi.deb.dpkg_rc"), "0", "dpkg -i failed:\n{}", run.read("logs/dpkg-i.log"));
    assert_eq!(
        f.expect("abi.deb.status"),
        format!("install ok installed {}", env!("CARGO_PKG_VERSION")),
        "dpkg's view of pppgate"
    );
    assert_eq!(f.expect("abi.deb.missing_deps"), "", "dpkg -C (audit) reports unconfigured or broken packages");

    // Depends/Breaks exactly as trixie's ppp-dev substvars say, read from the root on the host.
    let guest = root::ensure(Root::Trixie).expect("the trixie root");
    let substvars = std::fs::read_to_string(guest.dir.join("usr/share/ppp-dev/substvars")).expect("ppp-dev substvars");
    let var = |k: &str| {
        substvars
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} not in trixie's ppp-dev substvars:\n{substvars}"))
            .to_string()
    };
    assert_eq!(var("ppp:PluginDir"), "/usr/lib/pppd/2.5.2");
    let depends = f.expect("abi.deb.depends");
    assert!(depends.starts_with(&var("ppp:Depends")), "Depends {depends:?} vs ppp:Depends {:?}", var("ppp:Depends"));
    // dpkg normalises the order inside a field; compare the relations as a set.
    let mut breaks: Vec<&str> = f.expect("abi.deb.breaks").split(", ").collect();
    let want = var("ppp:Breaks");
    let mut want: Vec<&str> = want.split(", ").collect();
    breaks.sort_unstable();
    want.sort_unstable();
    assert_eq!(breaks, want, "Breaks vs ppp:Breaks");
    assert_eq!(f.expect("abi.deb.plugin").trim(), "/usr/lib/pppd/2.5.2/pppgate.so");
    assert_eq!(f.expect("abi.deb.units"), "11", "units under /usr/lib/systemd/system (Debian 13's merged /usr)");
    assert!(f.expect("abi.deb.pppgate_version").starts_with("pppgate "), "{}", f.expect("abi.deb.pppgate_version"));

    let out = pppd_log(run, "deb");
    assert!(out.contains("pppgate.so loaded."), "pppd 2.5.2 with plugin pppgate.so:\n{out}");
    assert!(out.contains("loaded (pppd 2.5.2 API 2.5)"), "{out}");
    assert!(!out.contains("Couldn't load plugin") && !out.contains("is for pppd version"), "{out}");
    assert_eq!(f.expect("abi.deb.rc"), f.expect("abi.own.rc"), "pppd exits as with the build it was made from");
}

//! Where things are on the host: the checkout, cargo's target directory, the built artifacts the
//! guest runs, and the lab's own cache and run directories under `target/lab/`.

use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// The checkout this harness was built from (the workspace root).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<repo>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                repo_root().join(d)
            }
        }
        _ => repo_root().join("target"),
    }
}

/// `target/lab/`: cached initramfs images and per-run output.
pub fn lab_dir() -> PathBuf {
    target_dir().join("lab")
}

pub fn runs_dir() -> PathBuf {
    lab_dir().join("runs")
}

pub fn scenario_path(name: &str) -> PathBuf {
    repo_root().join("tests/lab/scenarios").join(format!("{name}.sh"))
}

pub fn guest_dir() -> PathBuf {
    repo_root().join("tests/lab/guest")
}

/// The programs under test, as `cargo build --release --workspace` leaves them.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// `libpppgate.so`, loaded by the LNS's pppd with `plugin <path>`.
    pub plugin: PathBuf,
    /// The `pppgate` companion binary.
    pub pppgate: PathBuf,
}

pub const BUILD_COMMAND: &str = "cargo build --release --workspace";

impl Artifacts {
    /// The release artifacts of this checkout, `$PPPGATE_LAB_ARTIFACTS` (a directory) overriding.
    pub fn locate() -> Artifacts {
        let dir = std::env::var_os("PPPGATE_LAB_ARTIFACTS")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| target_dir().join("release"));
        Artifacts { plugin: dir.join("libpppgate.so"), pppgate: dir.join("pppgate") }
    }

    /// The artifacts a guest booting `root` runs: the plugin built for that root's pppd (the
    /// host's: [`Artifacts::locate`]; Debian 13's: the pppd 2.5 build of
    /// `scripts/build-pppd-variants.sh`, against that root's own headers) and the `pppgate` binary
    /// built on the host (glibc is forward compatible; the trixie lab runs it there).
    pub fn for_root(root: crate::Root) -> Artifacts {
        let host = Artifacts::locate();
        match root {
            crate::Root::Bookworm => host,
            crate::Root::Trixie => Artifacts { plugin: plugin_2_5(), pppgate: host.pppgate },
        }
    }

    /// Fails with the build command when an artifact is missing. The lab never builds: a test
    /// that started cargo from inside cargo would fight over the target directory's lock.
    pub fn check(&self) -> Result<()> {
        for p in [&self.plugin, &self.pppgate] {
            if !p.is_file() {
                let build = if *p == plugin_2_5() { BUILD_VARIANTS_COMMAND } else { BUILD_COMMAND };
                return Err(LabError::MissingArtifact { path: p.clone(), build: build.to_string() });
            }
        }
        // The 2.5 plugin is a second build of the same source: older than the host's plugin
        // means it misses changes the test expects.
        if self.plugin == plugin_2_5() {
            let host = Artifacts::locate().plugin;
            let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            if let (Some(ours), Some(newer)) = (mtime(&self.plugin), mtime(&host)) {
                if ours < newer {
                    return Err(LabError::StaleArtifact {
                        path: self.plugin.clone(),
                        newer: host,
                        build: BUILD_VARIANTS_COMMAND.to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// The plugin built against Debian 13's pppd 2.5.2 headers (`scripts/build-pppd-variants.sh`).
pub fn plugin_2_5() -> PathBuf {
    target_dir().join("pppd-variants/libpppgate-pppd-2.5.so")
}

pub const BUILD_VARIANTS_COMMAND: &str = "scripts/build-pppd-variants.sh";

/// A path as the guest sees it: the host's root is mounted at the guest's root, so host paths
/// are guest paths, provided they are absolute and canonical.
pub fn guest_path(p: &Path) -> Result<PathBuf> {
    p.canonicalize().map_err(LabError::io("cannot resolve a path the guest needs", p))
}

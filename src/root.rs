//! The guest's root file system: the build machine's own (Debian 12, `bookworm`, the default) or a
//! Debian 13 root (`trixie`) built from Debian's package registry with mmdebstrap.
//!
//! The trixie root is built once and cached under [`roots_dir`] (`target/lab/roots/` unless
//! `$PPPGATE_LAB_ROOTS` says otherwise), in a directory named after a hash of its recipe: suite,
//! sources, variant, package list, dpkg options. Change any of them and the next run builds a new
//! root (and removes the old ones). What was actually installed is written next to it
//! (`<dir>/pppgate-lab-root.txt`: recipe, key, every package's version), because the registry
//! moves on: the recipe is reproducible, the versions are recorded.
//!
//! A foreign root is booted with *its own* kernel (`/boot/vmlinuz-*` and `/lib/modules` of the
//! root); the host's root is still exported over 9p and the paths the guest needs from the host
//! (the checkout, the artifacts) are bound into the guest at the same paths (see `initramfs.rs`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use crate::error::{LabError, Result};
use crate::kernel::Kernel;
use crate::paths;

/// Which root the guest boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Root {
    /// The build machine's own root (Debian 12: pppd 2.4.9, PostgreSQL 15, kernel 6.1).
    #[default]
    Bookworm,
    /// Debian 13 from Debian's registry (pppd 2.5.2, PostgreSQL 17, kernel 6.12).
    Trixie,
}

impl Root {
    pub const ALL: [Root; 2] = [Root::Bookworm, Root::Trixie];

    pub fn name(self) -> &'static str {
        match self {
            Root::Bookworm => "bookworm",
            Root::Trixie => "trixie",
        }
    }

    /// `$PPPGATE_LAB_ROOT` (`bookworm` or `trixie`), else bookworm. An unknown value panics: a
    /// test run meant for one root must not silently run on the other.
    pub fn from_env() -> Root {
        match std::env::var("PPPGATE_LAB_ROOT") {
            Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|e| panic!("PPPGATE_LAB_ROOT: {e}")),
            _ => Root::Bookworm,
        }
    }

    /// Whether the guest boots the build machine's own root.
    pub fn is_host(self) -> bool {
        self == Root::Bookworm
    }

    /// The mmdebstrap recipe of a foreign root; `None` for the host's.
    pub fn recipe(self) -> Option<&'static Recipe> {
        match self {
            Root::Bookworm => None,
            Root::Trixie => Some(&TRIXIE),
        }
    }
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Root {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Root, String> {
        Root::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown lab root {s:?} (bookworm or trixie)"))
    }
}

/// How a foreign root is built: `mmdebstrap --variant=<variant> --include=<packages>
/// <dpkg options> <suite> <dir> <sources>`.
#[derive(Debug)]
pub struct Recipe {
    pub suite: &'static str,
    pub variant: &'static str,
    pub sources: &'static [&'static str],
    /// Everything the guest scripts and the scenarios run, beyond `minbase`.
    pub packages: &'static [&'static str],
    pub dpkg_options: &'static [&'static str],
}

/// Debian 13. Its own kernel and modules, pppd 2.5.2 (+ headers: the 2.5 plugin is built against
/// this root's `/usr/include/pppd`, so it matches this pppd exactly), xl2tpd, PostgreSQL 17,
/// FreeRADIUS 3.2 with rlm_sql_postgresql, and the tools of `tests/lab/guest/*.sh`.
pub const TRIXIE: Recipe = Recipe {
    suite: "trixie",
    variant: "minbase",
    sources: &[
        "deb http://deb.debian.org/debian trixie main",
        "deb http://deb.debian.org/debian-security trixie-security main",
    ],
    packages: &[
        "linux-image-amd64",
        "kmod",
        "ppp",
        "ppp-dev",
        "xl2tpd",
        "postgresql",
        "freeradius",
        "freeradius-postgresql",
        "freeradius-utils",
        "iproute2",
        "iputils-ping",
        "nftables",
        "util-linux",
        "procps",
        "iperf3",
        "socat",
        "perl",
        "jq",
        "systemd",
    ],
    dpkg_options: &[
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/locale/*",
        "path-exclude=/usr/share/doc/*",
    ],
};

/// Bumped when the way a root is built changes in a way the recipe's fields do not show.
const RECIPE_VERSION: &str = "pppgate-lab root recipe 1";

impl Recipe {
    /// A stable key over everything that goes into the root.
    pub fn key(&self) -> String {
        let mut h = crate::initramfs::Fnv64::new();
        h.write(RECIPE_VERSION.as_bytes());
        h.write(self.suite.as_bytes());
        h.write(self.variant.as_bytes());
        for group in [self.sources, self.packages, self.dpkg_options] {
            h.write(b"[");
            for s in group {
                h.write(s.as_bytes());
            }
        }
        format!("{:016x}", h.finish())
    }

    fn mmdebstrap_args(&self, dir: &Path) -> Vec<String> {
        let mut a = vec![format!("--variant={}", self.variant), format!("--include={}", self.packages.join(","))];
        a.extend(self.dpkg_options.iter().map(|o| format!("--dpkgopt={o}")));
        a.push(self.suite.to_string());
        a.push(dir.display().to_string());
        a.extend(self.sources.iter().map(|s| s.to_string()));
        a
    }

    fn describe(&self, key: &str) -> String {
        format!(
            "# pppgate lab root (src/root.rs), built by mmdebstrap\nkey {key}\nrecipe {RECIPE_VERSION}\nsuite {}\nvariant {}\n{}\n{}\n{}\n",
            self.suite,
            self.variant,
            self.sources.iter().map(|s| format!("source {s}")).collect::<Vec<_>>().join("\n"),
            self.packages.iter().map(|s| format!("include {s}")).collect::<Vec<_>>().join("\n"),
            self.dpkg_options.iter().map(|s| format!("dpkgopt {s}")).collect::<Vec<_>>().join("\n"),
        )
    }
}

/// Where built roots live: `$PPPGATE_LAB_ROOTS`, else `target/lab/roots/`.
pub fn roots_dir() -> PathBuf {
    match std::env::var_os("PPPGATE_LAB_ROOTS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => paths::lab_dir().join("roots"),
    }
}

/// Name of the file in a built root that records its recipe and package versions.
pub const MANIFEST: &str = "pppgate-lab-root.txt";

/// A root ready to boot.
#[derive(Debug, Clone)]
pub struct GuestRoot {
    pub root: Root,
    /// `/` for the host's root.
    pub dir: PathBuf,
}

impl GuestRoot {
    /// The root's own kernel (the host's: `$PPPGATE_LAB_KERNEL` or the newest installed).
    pub fn kernel(&self) -> Result<Kernel> {
        if self.root.is_host() {
            return Kernel::select();
        }
        Kernel::select_in(&self.dir.join("lib/modules"), &self.dir.join("boot"), None)
    }

    /// The pppd version of the root, from its headers (`pppdconf.h` on 2.5, `patchlevel.h` on
    /// 2.4), else `pppd --version` for the host.
    pub fn pppd_version(&self) -> Option<String> {
        if self.root.is_host() {
            return crate::PPPD_VERSION.map(str::to_string);
        }
        let inc = self.dir.join("usr/include/pppd");
        read_define(&inc.join("pppdconf.h"), "PPPD_VERSION")
            .or_else(|| read_define(&inc.join("patchlevel.h"), "VERSION"))
    }

    /// `usr/include` of the root (for `PPPD_INCLUDE_DIR`).
    pub fn include_dir(&self) -> PathBuf {
        self.dir.join("usr/include")
    }
}

fn read_define(path: &Path, name: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("#define") && w.next() == Some(name))
            .then(|| w.next().map(|v| v.trim_matches('"').to_string()))
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

/// The root, built first if its recipe has no built root yet. Building needs root privileges,
/// mmdebstrap (`apt-get install mmdebstrap`) and Debian's registry; it takes a few minutes and
/// prints what it does on stderr.
pub fn ensure(root: Root) -> Result<GuestRoot> {
    let Some(recipe) = root.recipe() else {
        return Ok(GuestRoot { root, dir: PathBuf::from("/") });
    };
    let base = roots_dir();
    let dir = base.join(format!("{}-{}", root.name(), recipe.key()));
    if dir.join(MANIFEST).is_file() {
        return Ok(GuestRoot { root, dir });
    }
    fs::create_dir_all(&base).map_err(LabError::io("cannot create the lab roots directory", &base))?;
    let _lock = lock(&base.join(".build.lock"))?;
    if dir.join(MANIFEST).is_file() {
        return Ok(GuestRoot { root, dir }); // built by another process while we waited
    }
    build(root, recipe, &base, &dir)?;
    Ok(GuestRoot { root, dir })
}

fn lock(path: &Path) -> Result<Flock<File>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(LabError::io("cannot open the roots lock", path))?;
    Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| LabError::Io {
        what: "cannot take the roots lock",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

fn build(root: Root, recipe: &Recipe, base: &Path, dir: &Path) -> Result<()> {
    let key = recipe.key();
    let tmp = base.join(format!(".{}-{key}.tmp{}", root.name(), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(LabError::io("cannot remove a half-built root", &tmp))?;
    }
    let log_path = base.join(format!("{}-{key}.build.log", root.name()));
    let log = File::create(&log_path).map_err(LabError::io("cannot create the root build log", &log_path))?;
    let log_err = log.try_clone().map_err(LabError::io("cannot create the root build log", &log_path))?;
    let args = recipe.mmdebstrap_args(&tmp);
    eprintln!("lab: building the {root} root with mmdebstrap into {} (log {})", dir.display(), log_path.display());
    let started = Instant::now();
    let status =
        Command::new("mmdebstrap").args(&args).stdin(Stdio::null()).stdout(log).stderr(log_err).status().map_err(
            |source| LabError::RootBuild {
                root: root.name().into(),
                reason: format!("cannot run mmdebstrap ({source}); apt-get install mmdebstrap"),
                log: log_path.clone(),
            },
        )?;
    if !status.success() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(LabError::RootBuild {
            root: root.name().into(),
            reason: format!("mmdebstrap {} exited with {status}", args.join(" ")),
            log: log_path,
        });
    }
    let versions = Command::new("dpkg-query")
        .arg(format!("--admindir={}", tmp.join("var/lib/dpkg").display()))
        .args(["-W", "-f", "${Package} ${Version}\n"])
        .output()
        .map_err(|source| LabError::RootBuild {
            root: root.name().into(),
            reason: format!("cannot run dpkg-query: {source}"),
            log: log_path.clone(),
        })?;
    let manifest = format!(
        "{}built_seconds {}\n# installed packages\n{}",
        recipe.describe(&key),
        started.elapsed().as_secs(),
        String::from_utf8_lossy(&versions.stdout)
    );
    let guest = GuestRoot { root, dir: tmp.clone() };
    let kernel = guest.kernel();
    let pppd = guest.pppd_version();
    if kernel.is_err() || pppd.is_none() {
        let _ = fs::remove_dir_all(&tmp);
        return Err(LabError::RootBuild {
            root: root.name().into(),
            reason: format!("the built root lacks a kernel ({kernel:?}) or pppd headers ({pppd:?})"),
            log: log_path,
        });
    }
    // The manifest is written last: its presence marks a complete root.
    let m = tmp.join(MANIFEST);
    fs::write(&m, manifest).map_err(LabError::io("cannot write the root manifest", &m))?;
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(LabError::io("cannot replace an incomplete root", dir))?;
    }
    fs::rename(&tmp, dir).map_err(LabError::io("cannot install the built root", dir))?;
    eprintln!(
        "lab: {root} root built in {:.0}s: {}, pppd {}",
        started.elapsed().as_secs_f64(),
        dir.display(),
        pppd.unwrap_or_default()
    );
    // Roots of older recipes are not used any more.
    let prefix = format!("{}-", root.name());
    if let Ok(entries) = fs::read_dir(base) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stale_dir = name.starts_with(&prefix) && !name.ends_with(".log") && e.path() != dir;
            if stale_dir && e.path().join(MANIFEST).is_file() {
                eprintln!("lab: removing the {root} root of an older recipe: {}", e.path().display());
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for r in Root::ALL {
            assert_eq!(r.name().parse::<Root>().unwrap(), r);
        }
        assert!("sid".parse::<Root>().unwrap_err().contains("bookworm or trixie"));
        assert_eq!(Root::default(), Root::Bookworm);
    }

    #[test]
    fn the_key_follows_the_package_list() {
        let a = TRIXIE.key();
        assert_eq!(a, TRIXIE.key(), "stable");
        let more = Recipe { packages: &["linux-image-amd64", "ppp"], ..TRIXIE };
        let other = Recipe { packages: &["linux-image-amd64", "ppp", "tcpdump"], ..TRIXIE };
        assert_ne!(more.key(), other.key());
        assert_ne!(a, more.key());
        // Moving a word from one field to another is a different recipe.
        let s = Recipe { sources: &[], packages: &["x"], ..TRIXIE };
        let p = Recipe { sources: &["x"], packages: &[], ..TRIXIE };
        assert_ne!(s.key(), p.key());
    }

    #[test]
    fn mmdebstrap_gets_suite_dir_and_sources_in_order() {
        let a = TRIXIE.mmdebstrap_args(Path::new("/x/root"));
        assert_eq!(a[0], "--variant=minbase");
        assert!(a[1].starts_with("--include=linux-image-amd64,") && a[1].contains(",ppp-dev,"));
        let suite = a.iter().position(|s| s == "trixie").unwrap();
        assert_eq!(a[suite + 1], "/x/root");
        assert_eq!(a[suite + 2], TRIXIE.sources[0]);
        assert!(a[..suite].iter().all(|s| s.starts_with("--")));
    }

    #[test]
    fn pppd_version_is_read_from_the_roots_headers() {
        let d = tempfile::tempdir().unwrap();
        let inc = d.path().join("usr/include/pppd");
        fs::create_dir_all(&inc).unwrap();
        fs::write(inc.join("pppdconf.h"), "/* x */\n#define PPPD_VERSION \"2.5.2\"\n").unwrap();
        let g = GuestRoot { root: Root::Trixie, dir: d.path().to_path_buf() };
        assert_eq!(g.pppd_version().as_deref(), Some("2.5.2"));
        assert_eq!(g.include_dir(), d.path().join("usr/include"));
    }
}

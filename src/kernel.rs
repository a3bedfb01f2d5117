//! The guest kernel: Debian's own, the newest version that has both `/lib/modules/<K>` and
//! `/boot/vmlinuz-<K>`, and the modules the initramfs must load to reach the host's root over 9p.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// What the initramfs needs before it can mount the host's root: virtio PCI, 9p over virtio, and
/// overlayfs. Their dependencies are resolved from `modules.dep`.
pub const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// What the system lab's initramfs needs on top: the virtio disk holding the persistent ext4
/// upper layer (see `crate::system`); ext4 needs a crc32c implementation, a soft dependency
/// modules.dep does not list.
pub const SYSTEM_MODULES: &[&str] = &["virtio_blk", "crc32c_generic", "ext4"];

#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    pub image: PathBuf,
    pub modules_dir: PathBuf,
}

impl Kernel {
    /// `$PPPGATE_LAB_KERNEL` (a version string) if set, else the newest usable version.
    pub fn select() -> Result<Kernel> {
        Self::select_in(Path::new("/lib/modules"), Path::new("/boot"), std::env::var("PPPGATE_LAB_KERNEL").ok())
    }

    pub fn select_in(modules_root: &Path, boot: &Path, wanted: Option<String>) -> Result<Kernel> {
        let mut versions: Vec<String> = fs::read_dir(modules_root)
            .map_err(|e| {
                LabError::NoKernel(format!(
                    "cannot list {}: {e} (apt-get install linux-image-amd64)",
                    modules_root.display()
                ))
            })?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|v| boot.join(format!("vmlinuz-{v}")).is_file())
            .collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        let version = match wanted.filter(|w| !w.is_empty()) {
            Some(w) if versions.contains(&w) => w,
            Some(w) => {
                return Err(LabError::NoKernel(format!(
                    "PPPGATE_LAB_KERNEL={w} but there is no {}/{w} with {}/vmlinuz-{w}",
                    modules_root.display(),
                    boot.display()
                )))
            }
            None => versions.pop().ok_or_else(|| {
                LabError::NoKernel(format!(
                    "no version in {} has a {}/vmlinuz-<version> (apt-get install linux-image-amd64)",
                    modules_root.display(),
                    boot.display()
                ))
            })?,
        };
        Ok(Kernel { image: boot.join(format!("vmlinuz-{version}")), modules_dir: modules_root.join(&version), version })
    }

    /// The module files to insmod, in load order (dependencies first); built-in ones are skipped.
    pub fn boot_modules(&self) -> Result<Vec<PathBuf>> {
        self.modules_for(BOOT_MODULES)
    }

    /// [`Kernel::boot_modules`] for another list of module names.
    pub fn modules_for(&self, wanted: &[&str]) -> Result<Vec<PathBuf>> {
        let dep_path = self.modules_dir.join("modules.dep");
        let dep = fs::read_to_string(&dep_path).map_err(LabError::io("cannot read modules.dep", &dep_path))?;
        let builtin = fs::read_to_string(self.modules_dir.join("modules.builtin")).unwrap_or_default();
        let order = resolve(&dep, &builtin, wanted)?;
        Ok(order.into_iter().map(|rel| self.modules_dir.join(rel)).collect())
    }
}

/// Module name as modprobe spells it: file stem without `.ko[.xz|.zst|.gz]`, '-' as '_'.
fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// Resolves `wanted` (module names) into relative paths in load order, from the text of
/// `modules.dep` and `modules.builtin`.
pub fn resolve(modules_dep: &str, modules_builtin: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((m, rest)) = line.split_once(':') else { continue };
        let m = m.trim();
        let list = rest.split_whitespace().map(|d| d.to_string()).collect();
        deps.insert(module_name(m), (m.to_string(), list));
    }
    let builtin: BTreeSet<String> = modules_builtin.lines().map(module_name).collect();

    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        name: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        builtin: &BTreeSet<String>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(name.to_string()) {
            return Ok(());
        }
        let Some((path, list)) = deps.get(name) else {
            if builtin.contains(name) {
                return Ok(());
            }
            return Err(LabError::Module { name: name.to_string(), reason: "modules.dep does not list it".into() });
        };
        for d in list {
            visit(&module_name(d), deps, builtin, seen, order)?;
        }
        if Compression::of(path).is_none() {
            return Err(LabError::Module {
                name: name.to_string(),
                reason: format!("{path} is in a format the initramfs cannot load (.ko, .ko.xz, .ko.zst, .ko.gz)"),
            });
        }
        order.push(path.clone());
        Ok(())
    }
    for w in wanted {
        visit(&w.replace('-', "_"), &deps, &builtin, &mut seen, &mut order)?;
    }
    Ok(order)
}

/// How a module file is stored. The initramfs's busybox `insmod` loads plain ELF only, so
/// compressed modules (Debian 13 ships `.ko.xz`) are decompressed on the host while the
/// initramfs is written (`xz`, `zstd` or `gzip -dc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    /// `None` (the Option) for anything that is not a module file we can load.
    pub fn of(path: &str) -> Option<Compression> {
        [
            (".ko", Compression::None),
            (".ko.xz", Compression::Xz),
            (".ko.zst", Compression::Zstd),
            (".ko.gz", Compression::Gzip),
        ]
        .into_iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, c)| c)
    }

    /// The decompressing command (`None` for a plain module).
    pub fn command(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Xz => Some("xz"),
            Compression::Zstd => Some("zstd"),
            Compression::Gzip => Some("gzip"),
        }
    }
}

/// Compares kernel versions numerically where they are numbers ("6.10" > "6.9").
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    fn parts(s: &str) -> Vec<Result<u64, &str>> {
        let mut out = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                out.push(Ok(rest[..digits].parse().unwrap_or(u64::MAX)));
                rest = &rest[digits..];
            } else {
                let other = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
                out.push(Err(&rest[..other]));
                rest = &rest[other..];
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(pb.iter()) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Err(x), Err(y)) => x.cmp(y),
            (Ok(_), Err(_)) => Ordering::Greater,
            (Err(_), Ok(_)) => Ordering::Less,
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/overlayfs/overlay.ko:
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/netfs/netfs.ko:
kernel/net/9p/9pnet.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    #[test]
    fn resolves_dependencies_first_and_once() {
        let order = resolve(DEP, "", BOOT_MODULES).unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or_else(|| panic!("{n} missing in {names:?}"));
        assert!(pos("virtio_ring") < pos("virtio_pci"));
        assert!(pos("9pnet") < pos("9pnet_virtio"));
        assert!(pos("netfs") < pos("fscache"));
        assert!(pos("fscache") < pos("9p"));
        assert_eq!(names.len(), names.iter().collect::<BTreeSet<_>>().len());
        assert_eq!(names.len(), 11);
    }

    #[test]
    fn builtin_modules_are_skipped_and_unknown_ones_fail() {
        let order = resolve("", "kernel/fs/overlayfs/overlay.ko\n", &["overlay"]).unwrap();
        assert!(order.is_empty());
        assert!(resolve("", "", &["overlay"]).is_err());
    }

    #[test]
    fn compressed_modules_resolve_and_unknown_formats_are_refused() {
        let order =
            resolve("kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.zst\nkernel/net/9p/9pnet.ko.zst:\n", "", &["9p"])
                .unwrap();
        assert_eq!(order, ["kernel/net/9p/9pnet.ko.zst", "kernel/fs/9p/9p.ko.xz"]);
        assert_eq!(Compression::of("a/b.ko.xz"), Some(Compression::Xz));
        assert_eq!(Compression::of("a/b.ko"), Some(Compression::None));
        let err = resolve("kernel/fs/overlayfs/overlay.ko.bz2:\n", "", &["overlay"]).unwrap_err();
        assert!(err.to_string().contains("format"), "{err}");
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_cmp("6.10.0-1-amd64", "6.9.0-5-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.0-56-amd64", "6.1.0-9-amd64"), Ordering::Greater);
        assert_eq!(version_cmp("6.1.0-56-amd64", "6.1.0-56-amd64"), Ordering::Equal);
    }
}

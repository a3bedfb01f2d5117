//! The initramfs: busybox, the kernel's virtio/9p/overlay modules and a small `/init` that mounts
//! the host's root read-only over 9p under a tmpfs overlay, mounts the run's output directory at
//! `/out`, and hands over to `tests/lab/guest/boot.sh` (path taken from `/out/lab.env`).
//!
//! Written directly as a `newc` cpio archive (no cpio, no root needed) and cached under
//! `target/lab/initramfs/`, keyed by everything that goes into it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};
use crate::kernel::{Compression, Kernel};

pub const BUSYBOX: &str = "/bin/busybox";

/// Mount tags of the 9p exports (see `vm.rs`).
pub const ROOT_TAG: &str = "hostroot";
pub const OUT_TAG: &str = "labout";
/// A foreign guest root (`src/root.rs`, e.g. Debian 13): exported under this tag and made the
/// overlay's lower layer when the kernel command line says [`GUEST_ROOT_ARG`]. The host's root is
/// then mounted at `/host` in the initramfs and the paths in `$LAB_HOST_BINDS` (lab.env: the
/// checkout, the artifacts) are bound read-only into the guest at the same paths.
pub const GUEST_ROOT_TAG: &str = "labroot";
pub const GUEST_ROOT_ARG: &str = "pppgate_lab.root=labroot";
/// Writable cache shared by all runs (`target/lab/cache`), at `/var/cache/pppgate-lab` in the guest.
pub const CACHE_TAG: &str = "labcache";
pub const GUEST_CACHE_DIR: &str = "/var/cache/pppgate-lab";

const INIT: &str = r#"#!/bin/busybox sh
# pppgate lab initramfs: host root (9p, read-only) + tmpfs overlay, run output at /out.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
  echo "lab-init: FAILED: $*"
  exec poweroff -f
}
for m in /lib/modules/*.ko; do
  insmod "$m" || fail "insmod $m"
done
mkdir -p /lower /upper /newroot
lower=@ROOT_TAG@
case " $(cat /proc/cmdline) " in *" @GUEST_ROOT_ARG@ "*) lower=@GUEST_ROOT_TAG@ ;; esac
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose $lower /lower || fail "cannot mount the guest root ($lower) over 9p"
if [ "$lower" != @ROOT_TAG@ ]; then
  mkdir -p /host
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose @ROOT_TAG@ /host || fail "cannot mount the host root over 9p"
fi
mount -t tmpfs -o mode=0755 tmpfs /upper || fail "cannot mount the overlay's tmpfs"
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "cannot mount the overlay"
mkdir -p /newroot/out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 @OUT_TAG@ /newroot/out || fail "cannot mount the run directory"
mkdir -p /newroot/var/cache/pppgate-lab
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 @CACHE_TAG@ /newroot/var/cache/pppgate-lab || fail "cannot mount the lab cache"
[ -r /newroot/out/lab.env ] || fail "the run directory has no lab.env"
. /newroot/out/lab.env
[ -n "${LAB_BOOT:-}" ] || fail "lab.env does not set LAB_BOOT"
# boot.sh powers off with busybox; a guest root may have none (Debian 13's minbase).
[ -e /newroot/bin/busybox ] || cp /bin/busybox /newroot/bin/busybox || fail "cannot copy busybox into the guest root"
for p in ${LAB_HOST_BINDS:-}; do
  [ "$lower" != @ROOT_TAG@ ] || fail "LAB_HOST_BINDS needs a guest root"
  [ -d "/host$p" ] || fail "host path $p does not exist"
  mkdir -p "/newroot$p" && mount --bind "/host$p" "/newroot$p" || fail "cannot bind the host's $p into the guest"
done
mount --move /dev /newroot/dev || fail "cannot move /dev"
echo "lab-init: root ready, running $LAB_BOOT"
exec chroot /newroot /bin/sh "$LAB_BOOT"
fail "cannot exec chroot"
"#;

fn init_script() -> String {
    INIT.replace("@ROOT_TAG@", ROOT_TAG)
        .replace("@OUT_TAG@", OUT_TAG)
        .replace("@CACHE_TAG@", CACHE_TAG)
        .replace("@GUEST_ROOT_TAG@", GUEST_ROOT_TAG)
        .replace("@GUEST_ROOT_ARG@", GUEST_ROOT_ARG)
}

/// Builds (or reuses) the initramfs for `kernel`; returns its path.
pub fn ensure(kernel: &Kernel, cache_dir: &Path) -> Result<PathBuf> {
    build(kernel, cache_dir, &kernel.boot_modules()?, &init_script(), "initramfs")
}

/// The system lab's initramfs (`crate::system`): boots systemd instead of the scenario.
pub fn ensure_system(kernel: &Kernel, cache_dir: &Path) -> Result<PathBuf> {
    let wanted: Vec<&str> = crate::kernel::BOOT_MODULES.iter().chain(crate::kernel::SYSTEM_MODULES).copied().collect();
    build(kernel, cache_dir, &kernel.modules_for(&wanted)?, &crate::system::init_script(), "initramfs-system")
}

fn build(kernel: &Kernel, cache_dir: &Path, modules: &[PathBuf], init: &str, stem: &str) -> Result<PathBuf> {
    let mut key = Fnv64::new();
    key.write(init.as_bytes());
    key.write(kernel.version.as_bytes());
    for p in std::iter::once(Path::new(BUSYBOX)).chain(modules.iter().map(|m| m.as_path())) {
        let md = fs::metadata(p)
            .map_err(LabError::io("cannot read an initramfs input (apt-get install busybox-static)", p))?;
        key.write(p.as_os_str().as_encoded_bytes());
        key.write(&md.len().to_le_bytes());
        key.write(&md.mtime().to_le_bytes());
    }
    let path = cache_dir.join(format!("{stem}-{}-{:016x}.cpio", kernel.version, key.finish()));
    if path.is_file() {
        return Ok(path);
    }

    fs::create_dir_all(cache_dir).map_err(LabError::io("cannot create the lab cache directory", cache_dir))?;
    let mut cpio = Newc::default();
    for d in ["bin", "dev", "lib", "lib/modules", "proc", "sys", "lower", "upper", "newroot"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &read(Path::new(BUSYBOX))?);
    cpio.file("init", 0o755, init.as_bytes());
    for (i, m) in modules.iter().enumerate() {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("module.ko");
        let stem = name.split(".ko").next().unwrap_or(name);
        cpio.file(&format!("lib/modules/{i:02}-{stem}.ko"), 0o644, &module_bytes(m)?);
    }
    let bytes = cpio.finish();

    // Unique per process *and* call: parallel tests in one binary build it at the same time.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}-{seq}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(LabError::io("cannot write the initramfs", &tmp))?;
    f.write_all(&bytes).map_err(LabError::io("cannot write the initramfs", &tmp))?;
    drop(f);
    fs::rename(&tmp, &path).map_err(LabError::io("cannot install the initramfs", &path))?;
    Ok(path)
}

/// A module as plain ELF: compressed ones are decompressed with the format's own tool.
fn module_bytes(p: &Path) -> Result<Vec<u8>> {
    let compression = Compression::of(&p.to_string_lossy());
    let Some(tool) = compression.and_then(Compression::command) else { return read(p) };
    let out =
        std::process::Command::new(tool).arg("-dc").arg(p).stdin(std::process::Stdio::null()).output().map_err(
            LabError::io("cannot run the decompressor for a kernel module (apt-get install xz-utils zstd)", p),
        )?;
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        return Err(LabError::Module {
            name: p.display().to_string(),
            reason: format!("`{tool} -dc` did not give an ELF module: {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(out.stdout)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).map_err(LabError::io("cannot read an initramfs input", p))
}

/// A `newc` ("070701") cpio archive, built in memory.
#[derive(Default)]
pub struct Newc {
    buf: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime: fixed, so the image is reproducible
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// FNV-1a, 64 bit: a stable cache key (std's hasher may change between releases).
pub(crate) struct Fnv64(u64);

impl Fnv64 {
    pub(crate) fn new() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Separates fields, so ("ab","c") and ("a","bc") differ.
        self.0 ^= 0xff;
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
    }
    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a newc archive back: (name, mode, rdevmajor, data).
    fn parse(buf: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            assert_eq!(&buf[i..i + 6], b"070701", "magic at {i}");
            let field = |n: usize| {
                let s = std::str::from_utf8(&buf[i + 6 + n * 8..i + 14 + n * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, rmaj, namesize) = (field(1), field(6) as usize, field(9), field(11) as usize);
            let name_start = i + 110;
            let name = std::str::from_utf8(&buf[name_start..name_start + namesize - 1]).unwrap().to_string();
            assert_eq!(buf[name_start + namesize - 1], 0);
            let data_start = (name_start + namesize).next_multiple_of(4);
            let data = buf[data_start..data_start + size].to_vec();
            i = (data_start + size).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(i, buf.len());
                return out;
            }
            out.push((name, mode, rmaj, data));
        }
    }

    #[test]
    fn newc_round_trips() {
        let mut c = Newc::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.file("odd", 0o644, b"12345");
        c.char_dev("dev/console", 5, 1);
        let entries = parse(&c.finish());
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, "bin");
        assert_eq!(entries[0].1 & 0o170000, 0o040000);
        assert_eq!(entries[1], ("init".to_string(), 0o100755, 0, b"#!/bin/sh\n".to_vec()));
        assert_eq!(entries[2].3, b"12345");
        assert_eq!((entries[3].1 & 0o170000, entries[3].2), (0o020000, 5));
    }

    #[test]
    fn init_hands_over_to_the_boot_script() {
        let s = init_script();
        assert!(s.contains("lower=hostroot") && s.contains("$lower /lower") && s.contains("labout /newroot/out"));
        assert!(s.contains("exec chroot /newroot /bin/sh \"$LAB_BOOT\""));
        assert!(s.contains(GUEST_ROOT_ARG) && s.contains("hostroot /host"), "a guest root is supported");
        assert!(!s.contains('@'), "unreplaced placeholder in {s}");
    }

    #[test]
    fn cache_key_separates_fields() {
        let (mut a, mut b) = (Fnv64::new(), Fnv64::new());
        a.write(b"ab");
        a.write(b"c");
        b.write(b"a");
        b.write(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}

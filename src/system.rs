//! The system lab: the same VM, but systemd runs as PID 1 over a persistent writable layer.
//!
//! The initramfs mounts the host's root read-only over 9p as usual, but the overlay's upper layer
//! is an ext4 file system on a virtio disk ([`SystemDisk`], a sparse image the harness creates on
//! the host), so a second boot over the same disk sees what the first left behind: installed
//! packages, PostgreSQL's data, /var/lib, /etc. Before `switch_root` into the overlay and exec of
//! `/lib/systemd/systemd`, `/init` writes a few files into the overlay every boot:
//!
//! * `/etc/fstab` without entries (the host's belongs to the host), host name `lns`, a tmpfs on
//!   `/tmp` (not persistent);
//! * masks for units that only cost time under TCG (apt/man-db/e2scrub/fstrim timers, time sync,
//!   the host's monitoring daemons and connection pooler, a console getty);
//! * `DefaultTimeoutStartSec=900s` (system.conf.d): a start slower than 90 s under TCG is not
//!   killed and restarted;
//! * `pppgate-lab.service` (enabled): runs `tests/lab/guest/system-run.sh`, which runs the
//!   scenario with `LAB_BOOT` = the boot number, records `guest.rc`, and powers off.
//!
//! Everything else — which services start, in what order — is the installed system's own doing,
//! which is what the package and boot tests are about.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LabError, Result};
use crate::initramfs::{CACHE_TAG, OUT_TAG, ROOT_TAG};

/// Units the guest never needs (masked every boot): timers that would start heavy jobs under TCG,
/// time sync without a network, and daemons the host may have installed for other purposes.
pub const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-timesyncd.service",
    "prometheus.service",
    "prometheus-node-exporter.service",
    "pgbouncer.service",
    "getty@tty1.service",
    "console-getty.service",
    "systemd-pstore.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
];

/// Appended to the guest kernel's command line: udev's coldplug would load drivers for emulated
/// devices nobody uses (floppy, parallel port, speaker, CD-ROM), which costs tens of seconds
/// under TCG.
pub const KERNEL_ARGS: &str = "module_blacklist=floppy,parport_pc,ppdev,pcspkr,joydev,serio_raw,sr_mod,cdrom,sg";

const INIT: &str = r##"#!/bin/busybox sh
# pppgate system lab initramfs: host root (9p, read-only) + overlay whose upper layer is the ext4
# disk /dev/vda (persistent across boots), then systemd as PID 1.
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
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose @ROOT_TAG@ /lower || fail "cannot mount the host root over 9p"
n=0
while [ ! -b /dev/vda ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
mount -t ext4 -o noatime /dev/vda /upper || fail "cannot mount the persistent disk /dev/vda"
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot || fail "cannot mount the overlay"
mkdir -p /newroot/out /newroot/var/cache/pppgate-lab
# /tmp is a tmpfs, as on many servers: systemd-tmpfiles empties /tmp at boot, and doing that to
# the host's /tmp through the overlay took minutes (a whiteout per file).
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /newroot/tmp || fail "cannot mount /tmp"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 @OUT_TAG@ /newroot/out || fail "cannot mount the run directory"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 @CACHE_TAG@ /newroot/var/cache/pppgate-lab || fail "cannot mount the lab cache"
[ -r /newroot/out/lab.env ] || fail "the run directory has no lab.env"
. /newroot/out/lab.env
[ -n "${LAB_REPO:-}" ] || fail "lab.env does not set LAB_REPO"
echo "# written by the pppgate system lab: the host's mounts are not the guest's" > /newroot/etc/fstab
echo lns > /newroot/etc/hostname
S=/newroot/etc/systemd/system
mkdir -p "$S/multi-user.target.wants"
for u in @MASKED@; do
  rm -f "$S/$u"
  ln -s /dev/null "$S/$u"
done
# Under TCG a service's start can take longer than systemd's default 90 s (FreeRADIUS's config
# check, charon, PostgreSQL starting together): a timeout would kill and restart it, doubling the
# cost. Nothing in the lab relies on the default timeout.
mkdir -p /newroot/etc/systemd/system.conf.d
printf '[Manager]\nDefaultTimeoutStartSec=900s\n' > /newroot/etc/systemd/system.conf.d/pppgate-lab.conf
cat > "$S/pppgate-lab.service" <<EOF
[Unit]
Description=pppgate lab scenario (boot \$LAB_BOOT)
After=basic.target

[Service]
Type=simple
ExecStart=/bin/bash $LAB_REPO/tests/lab/guest/system-run.sh
StandardOutput=journal+console
StandardError=journal+console
EOF
ln -sf ../pppgate-lab.service "$S/multi-user.target.wants/pppgate-lab.service"
mount --move /dev /newroot/dev || fail "cannot move /dev"
mount --move /proc /newroot/proc || fail "cannot move /proc"
mount --move /sys /newroot/sys || fail "cannot move /sys"
echo "lab-init: system root ready (boot ${LAB_BOOT:-?}), starting systemd"
exec switch_root /newroot /lib/systemd/systemd
fail "cannot exec systemd"
"##;

/// `/init` of the system lab's initramfs.
pub fn init_script() -> String {
    INIT.replace("@ROOT_TAG@", ROOT_TAG)
        .replace("@OUT_TAG@", OUT_TAG)
        .replace("@CACHE_TAG@", CACHE_TAG)
        .replace("@MASKED@", &MASKED_UNITS.join(" "))
}

/// The persistent upper layer of a system lab VM: a sparse raw image with an ext4 file system.
/// Boot it any number of times ([`crate::LabOptions::system`]); delete it to start over.
#[derive(Debug, Clone)]
pub struct SystemDisk {
    pub path: PathBuf,
}

impl SystemDisk {
    /// Creates a fresh, empty disk of `size_mb` at `path` (replacing one that is there).
    pub fn create(path: &Path, size_mb: u64) -> Result<SystemDisk> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(LabError::io("cannot create the disk's directory", dir))?;
        }
        let _ = fs::remove_file(path);
        let f = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(path)
            .map_err(LabError::io("cannot create the system disk", path))?;
        f.set_len(size_mb * 1024 * 1024).map_err(LabError::io("cannot size the system disk", path))?;
        drop(f);
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "pppgate-lab", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
            .arg(path)
            .output()
            .map_err(|source| LabError::Spawn { program: "mkfs.ext4".into(), source })?;
        if !out.status.success() {
            return Err(LabError::Io {
                what: "mkfs.ext4 failed on the system disk",
                path: path.to_path_buf(),
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            });
        }
        Ok(SystemDisk { path: path.to_path_buf() })
    }

    /// `target/lab/system/<name>.img`.
    pub fn default_path(name: &str) -> PathBuf {
        crate::paths::lab_dir().join("system").join(format!("{name}.img"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_boots_systemd_over_the_disk() {
        let s = init_script();
        assert!(s.contains("/dev/vda /upper") && s.contains("exec switch_root /newroot /lib/systemd/systemd"));
        assert!(s.contains("ln -s /dev/null \"$S/$u\"") && s.contains("man-db.timer"));
        for p in ["@ROOT_TAG@", "@OUT_TAG@", "@CACHE_TAG@", "@MASKED@"] {
            assert!(!s.contains(p), "unreplaced placeholder {p} in {s}");
        }
    }
}

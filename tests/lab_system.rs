//! The system lab (src/system.rs): Debian's kernel under qemu with systemd as PID 1 over a
//! persistent ext4 upper layer. Boots the same disk twice: what the first boot wrote is there in
//! the second, which is what the package and boot tests build on.
//!
//! Needs root, qemu-system-x86, linux-image-amd64, e2fsprogs and the release artifacts.
//! Prints how long each boot took (systemd's own figure); nothing is asserted about time.

use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, SystemDisk};

#[test]
fn systemd_boots_twice_over_a_persistent_disk() {
    let disk = SystemDisk::create(&SystemDisk::default_path("smoke"), 4096).expect("system disk");
    for boot in ["1", "2"] {
        let opts = LabOptions { system: Some(disk.clone()), ..LabOptions::default() }
            .timeout(Duration::from_secs(900))
            .env("LAB_BOOT", boot);
        let run = Lab::run("system-smoke", &opts).unwrap_or_else(|e| panic!("system lab boot {boot}: {e}"));
        let f = &run.facts;
        eprintln!(
            "system lab boot {boot}: userspace {} ms (systemd), VM {:.1} s",
            f.expect(&format!("boot{boot}.userspace_ms")),
            run.elapsed.as_secs_f64()
        );
        assert_eq!(f.expect("smoke.pid1"), "systemd");
        let state = f.expect(&format!("boot{boot}.state"));
        assert!(state == "running" || state == "degraded", "boot {boot}: {state}");
        // Journal fields (issue 12, R716) through a real journald: the janitor with the database
        // unreachable exits 69 twice and writes db_outage_begin once (once per outage), with its
        // stable MESSAGE_ID, priority 3 and the PPPGATE_* facts.
        run.expect_case("journal");
        assert_eq!(f.expect("journal.rc1"), "69", "boot {boot}: the janitor with the database down");
        assert_eq!(f.expect("journal.rc2"), "69");
        assert_eq!(f.expect("journal.entries"), "1", "boot {boot}: db_outage_begin entries (once per outage)");
        assert_eq!(f.expect("journal.fields"), "pppgate 3 db_outage_begin janitor");
        assert_eq!(f.expect("journal.error"), "1", "PPPGATE_ERROR is missing");
        eprintln!(
            "system lab boot {boot}: db_outage_begin in journald ({} plain stderr lines beside it)",
            f.expect("journal.plain_lines")
        );
        let marker = f.expect("smoke.marker_before");
        if boot == "1" {
            assert_eq!(marker, "none", "a fresh disk carries state");
        } else {
            assert_eq!(marker, "boot 1", "the first boot's file did not survive the reboot");
        }
    }
}

//! Boot and timer tests (R701-R705) on the systemd-booted system lab with the package installed
//! (tests/lab/scenarios/system-boot.sh): Boot-Reconcile (once, after the VPN stack), Start-Order
//! and Early-Reconcile Protection (systemd's own timestamps and critical-chain), Boot-Janitor
//! (after its delay, this NAS's stale radacct row closed, another NAS's untouched) and the timers
//! (systemd's view of the shipped intervals; at a test interval: repeated runs and a drift
//! repaired by the reconcile timer) and the DB Down Boot (a third boot with PostgreSQL masked).
//! Three boots over one disk; durations printed.
//!
//! Needs root, qemu, linux-image-amd64, e2fsprogs, the release artifacts and the package
//! (scripts/build-deb.sh --no-build). Part of the long run (`PPPGATE_LAB_LONG=1
//! scripts/test-all.sh`), not of CI (three boots and an apt run: ~15 min of VM):
//! `cargo test --release --test lab_boot -- --ignored` runs it.

use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun, SystemDisk};

const TIMER_S: u64 = 20;

fn deb() -> String {
    let arch =
        String::from_utf8(std::process::Command::new("dpkg").arg("--print-architecture").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
    let version = env!("CARGO_PKG_VERSION");
    let p = pppgate_lab::paths::target_dir().join("deb").join(format!("pppgate_{version}_{arch}.deb"));
    assert!(p.is_file(), "{} is missing: scripts/build-deb.sh --no-build", p.display());
    p.canonicalize().unwrap().display().to_string()
}

fn boot(disk: &SystemDisk, n: u32) -> LabRun {
    let opts = LabOptions { system: Some(disk.clone()), ..LabOptions::default() }
        .timeout(Duration::from_secs(1800))
        .env("LAB_BOOT", &n.to_string())
        .env("LAB_DEB", &deb())
        .env("LAB_TIMER_S", &TIMER_S.to_string());
    let run = Lab::run("system-boot", &opts).unwrap_or_else(|e| panic!("system-boot, boot {n}: {e}"));
    eprintln!(
        "system-boot: boot {n}: userspace {} ms (systemd), VM {:.1} s",
        run.facts.get(&format!("boot{n}.userspace_ms")).unwrap_or("?"),
        run.elapsed.as_secs_f64()
    );
    run
}

fn us(run: &LabRun, key: &str) -> u64 {
    let v = run.facts.expect_i64(key);
    assert!(v > 0, "{key} = {v}: systemd has no such timestamp (the unit never got there)");
    v as u64
}

/// Monotonic start times (s) from the journal's short-monotonic stamps.
fn starts(run: &LabRun, key: &str) -> Vec<f64> {
    run.facts.expect(key).split_whitespace().map(|w| w.parse().unwrap_or_else(|_| panic!("{key}: {w}"))).collect()
}

#[test]
#[ignore = "long run (three boots, ~15 min of VM): tests/lab/README.md, 'The system lab'"]
fn boot_reconcile_boot_janitor_start_order_and_timers_on_a_rebooted_system() {
    let disk = SystemDisk::create(&SystemDisk::default_path("boot"), 4096).expect("system disk");

    let b1 = boot(&disk, 1);
    let f = &b1.facts;
    eprintln!("system-boot: apt install took {} ms", f.get("install.ms").unwrap_or("?"));
    // Systemd's view of the shipped timers (R701: reconcile and janitor every 5 min,
    // collector every 300 s).
    for t in ["vpn-policy-reconcile", "vpn-accounting-collector", "vpn-stale-session-janitor"] {
        let v = f.expect(&format!("timer.{t}"));
        assert!(v.contains("OnUnitActiveUSec=5min"), "{t}.timer as systemd holds it: {v}");
    }
    assert_eq!(f.expect("boot_units"), "enabled enabled");
    assert_eq!(f.expect("rows_before"), "2");

    let b2 = boot(&disk, 2);
    let f = &b2.facts;
    // Boot-Reconcile: ran once, succeeded.
    assert_eq!(f.expect("reconcile.result"), "success 0");
    assert_eq!(f.expect("reconcile.starts"), "1", "the boot reconcile ran more than once or never");
    assert_eq!(f.expect("reconcile.restarts"), "0");
    assert_eq!(f.expect("reconcile.table"), "present", "pppgate's nft table after the boot reconcile");
    // Start-Order and Early-Reconcile Protection: the unit left "inactive" (its delay included)
    // only after network-online and the VPN stack were up.
    let start = us(&b2, "reconcile.inactive_exit");
    for u in ["network-online.target", "strongswan.service", "xl2tpd.service", "freeradius.service"] {
        let up = us(&b2, &format!("order.{u}"));
        assert!(up <= start, "{u} became active at {up} µs, after the boot reconcile started at {start} µs");
    }
    let exec = us(&b2, "reconcile.exec_start");
    eprintln!(
        "system-boot: network-online at {:.1} s, boot reconcile started {:.1} s, ran {:.1} s (after its 10 s delay)",
        us(&b2, "order.network-online.target") as f64 / 1e6,
        start as f64 / 1e6,
        exec as f64 / 1e6
    );
    assert!(exec >= start + 10_000_000, "the boot reconcile's 10 s delay did not happen: {start} → {exec}");
    let chain = f.expect("reconcile.chain");
    assert!(chain.contains("network-online.target") || chain.contains("service"), "critical-chain: {chain}");

    // Boot-Janitor: after the reconcile and its 90 s delay; closed this NAS's stale row only.
    let rec_done = us(&b2, "reconcile.active_enter");
    let jan_start = us(&b2, "janitor.inactive_exit");
    let jan_exec = us(&b2, "janitor.exec_start");
    assert!(jan_start >= rec_done, "the boot janitor started before the boot reconcile finished");
    assert!(jan_exec >= jan_start + 90_000_000, "the boot janitor's 90 s delay did not happen");
    assert_eq!(f.expect("janitor.result"), "success 0");
    assert_eq!(f.expect("janitor.said"), "closed 1 stale radacct row(s)");
    assert_eq!(f.expect("janitor.stale_row"), "t", "the stale row of this NAS is still open");
    assert_eq!(f.expect("janitor.other_row"), "f", "the boot janitor closed another NAS's row");

    // The guard restores a deleted table at once (the reconcile timer below runs with the guard
    // stopped, so the timer is what repairs that drift).
    assert_eq!(f.expect("guard.state"), "enabled active");
    eprintln!("system-boot: the guard restored a deleted table in {} ms (guest clock)", f.expect("guard.restore_ms"));

    // Timers at the test interval: repeated runs, never closer than the interval; the drift
    // (pppgate's table deleted) repaired by the reconcile timer.
    assert_eq!(f.expect("drift.deleted"), "absent");
    assert_eq!(f.expect("drift.repaired"), "present");
    for t in ["vpn-policy-reconcile", "vpn-accounting-collector"] {
        let s = starts(&b2, &format!("timers.{t}.starts"));
        assert!(s.len() >= 3, "{t}: {s:?}");
        let gaps: Vec<f64> = s.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("system-boot: {t}.timer at {TIMER_S} s: runs {gaps:.1?} s apart");
        for g in &gaps[1..] {
            assert!(*g >= TIMER_S as f64 - 1.0, "{t} ran {g:.1} s after its previous run (interval {TIMER_S} s)");
        }
        assert_eq!(f.expect(&format!("timers.{t}.result")), "success");
    }
    assert_eq!(f.expect("pg_masked"), "masked", "boot 3 needs the system's PostgreSQL masked");

    // DB Down Boot (R705): PostgreSQL masked. The boot finishes, every unit starts, the
    // boot units end as designed, the timers run without restarts or log spam, and a login is
    // refused fail-closed by the installed plugin.
    let b3 = boot(&disk, 3);
    let f = &b3.facts;
    assert_eq!(f.expect("dbdown.pg"), "inactive", "PostgreSQL ran in the DB Down Boot");
    assert_eq!(f.expect("dbdown.pg_socket"), "absent");
    assert!(
        matches!(f.expect("boot3.state"), "running" | "degraded"),
        "the DB Down Boot did not finish: {}",
        f.expect("boot3.state")
    );
    let failed = f.expect("dbdown.failed");
    for u in failed.split_whitespace() {
        assert!(
            !(u.starts_with("pppgate")
                || u.starts_with("vpn-")
                || ["xl2tpd.service", "strongswan.service", "freeradius.service"].contains(&u)),
            "{u} failed in the DB Down Boot (failed units: {failed})"
        );
    }
    for u in [
        "strongswan.service",
        "xl2tpd.service",
        "freeradius.service",
        "pppgate-guard.service",
        "vpn-policy-reconcile.timer",
        "vpn-accounting-collector.timer",
        "vpn-stale-session-janitor.timer",
    ] {
        assert_eq!(f.expect(&format!("dbdown.active.{u}")), "active", "{u} in the DB Down Boot");
    }
    // The boot reconcile is kernel-based: it succeeds without SQL. The boot janitor skips (69,
    // "database unavailable", a success exit of its unit). Each ran once, logged at most two lines.
    assert_eq!(f.expect("dbdown.pppgate-boot-reconcile.service.result"), "success 0");
    assert_eq!(f.expect("dbdown.pppgate-boot-janitor.service.result"), "success 69");
    for u in ["pppgate-boot-reconcile.service", "pppgate-boot-janitor.service"] {
        assert_eq!(f.expect(&format!("dbdown.{u}.starts")), "1", "{u} ran more than once or never");
        assert_eq!(f.expect(&format!("dbdown.{u}.restarts")), "0", "{u} restarted");
        let lines = f.expect_i64(&format!("dbdown.{u}.lines"));
        eprintln!("system-boot: DB Down Boot: {u} logged {lines} line(s)");
        assert!(lines <= 2, "{u} logged {lines} lines with the database down (logs/dbdown-{u}.log)");
    }
    // The timers: every run ends as a success of its unit (69 = database unavailable), no loop:
    // runs ≤ what the interval allows, at most two lines each.
    for t in ["vpn-policy-reconcile", "vpn-accounting-collector"] {
        let runs = f.expect_i64(&format!("dbdown.{t}.runs"));
        let lines = f.expect_i64(&format!("dbdown.{t}.lines"));
        let result = f.expect(&format!("dbdown.{t}.result"));
        eprintln!("system-boot: DB Down Boot: {t}: {runs} runs, {lines} lines logged, last result {result}");
        assert!(runs >= 3, "{t}: {runs} runs");
        assert!(result.starts_with("success"), "{t}: {result}");
        assert!(lines <= 2 * runs, "{t}: {lines} lines in {runs} runs with the database down");
    }
    // Auth fail-closed: the session came up at the LNS and the plugin ended it, naming the
    // database; nothing reached the far side.
    let said = f.expect_i64("dbdown.lns_said");
    assert!(said >= 1, "the plugin did not say 'database unavailable' (logs/dbdown-pppd-lns.log)");
    assert_eq!(f.expect("dbdown.full_v4"), "0", "the refused client's address is in full_v4");
    let sent = f.expect_i64("dbdown.sent");
    let recv = f.expect_i64("dbdown.recv");
    let inet = f.expect_i64("dbdown.inet_pkts");
    eprintln!("system-boot: DB Down Boot login: sent {sent}, arrived {recv} (inet counter {inet})");
    assert!(sent > 0, "the client's sender got no datagram out; the case proves nothing");
    assert_eq!(recv, 0, "{recv} datagrams reached inet from a session refused with the database down");
    assert_eq!(inet, 0);
}

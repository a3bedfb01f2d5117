//! Trust boundaries of the data path (issue 10, docs/security.md) in the lab: real L2TP sessions
//! through the built `libpppgate.so`, raw datagrams with forged sources written into the
//! clients' real ppp links, counted at the far side (inet) by a receiver there.
//!
//! All tests share one run of `tests/lab/scenarios/security.sh` (one VM boot); each prints the
//! run's wall time and its case's.
//! Needs root, qemu-system-x86, linux-image-amd64 and the release artifacts:
//! `cargo build --release --workspace && cargo test --release --test lab_security`.

use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun};
use pppgate_testkit::lab_output::Kernel;

const TIMEOUT: Duration = Duration::from_secs(1500);

/// `PPPGATE_LAB_REREAD=<run directory>` re-reads a finished run instead of booting the VM (the
/// harness's `Lab::run`).
fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r =
        RUN.get_or_init(|| Lab::run("security", &LabOptions::default().timeout(TIMEOUT)).map_err(|e| e.to_string()));
    match r {
        Ok(run) => run,
        Err(e) => panic!("the security lab run failed: {e}"),
    }
}

#[track_caller]
fn num(run: &LabRun, key: &str) -> u64 {
    let v = run.facts.expect(key);
    v.parse().unwrap_or_else(|_| panic!("fact {key}={v:?} is not a number"))
}

#[track_caller]
fn case_ok(run: &LabRun, case: &str) {
    let status = run.facts.expect(&format!("{case}.status"));
    assert_eq!(status, "ok", "case {case} failed; see {}/cases/{case}.log", run.dir.display());
}

/// Forged sources from a BLOCKED, a RESTRICTED and an unpoliced client — a FULL session's
/// address, and the address of a session whose pppd was just SIGKILLed — arrive nowhere; the
/// FULL session's own datagrams arrive before and after.
#[test]
fn spoofed_sources_arrive_nowhere_and_full_is_unaffected() {
    let run = run();
    case_ok(run, "spoof");
    println!("lab run {} ({:.0} s)", run.dir.display(), run.elapsed.as_secs_f64());
    let arrived = |w: &str| num(run, &format!("spoof.arrived.{w}"));
    let sent = |w: &str| num(run, &format!("spoof.sent.{w}"));
    for w in [
        "bob-as-alice",
        "carol-as-alice",
        "rogue-as-alice",
        "bob-as-dave",
        "carol-as-dave",
        "rogue-as-dave",
        "bob-own",
        "carol-own",
        "rogue-own",
    ] {
        println!("{w}: sent {} arrived {}", sent(w), arrived(w));
        assert_eq!(sent(w), 20, "{w}: the kernel took every datagram for sending");
        assert_eq!(arrived(w), 0, "{w}: forged or unpoliced datagrams arrived at the far side");
    }
    for w in ["alice-own", "alice-after"] {
        println!("{w}: sent {} arrived {}", sent(w), arrived(w));
        assert_eq!(arrived(w), sent(w), "{w}: FULL traffic is unaffected");
        assert_eq!(sent(w), 20);
    }
    // The SIGKILLed session's member was still in full_v4 (no reconcile ran) and opened nothing.
    assert_eq!(run.facts.expect("spoof.dave_member_left"), "yes");
    println!(
        "drop counters: unpoliced_from {} blocked_from {} restricted_from {}",
        num(run, "spoof.unpoliced_from"),
        num(run, "spoof.blocked_from"),
        num(run, "spoof.restricted_from")
    );
    assert!(num(run, "spoof.unpoliced_from") >= 140, "the spoofed and the rogue datagrams met the default drop");
    // Each session's member is bound to its own LNS interface.
    let k = Kernel::load(&run.dir.join("snap/spoof-live"));
    for c in ["alice", "bob", "carol", "dave"] {
        let ip = run.facts.expect(&format!("spoof.{c}.ip")).parse().unwrap();
        let ifname = run.facts.expect(&format!("spoof.{c}.lns_if"));
        let b = k.bindings_of(ip);
        assert_eq!(b.len(), 1, "{c}: one member: {b:?}");
        assert_eq!(b[0].1.trim_matches('"'), ifname, "{c}'s member is bound to its LNS interface");
    }
    let rogue = run.facts.expect("spoof.rogue.ip").parse().unwrap();
    assert!(k.bindings_of(rogue).is_empty(), "the link pppgate never saw is in no set");
}

/// `nft flush ruleset` and `nft delete table inet pppgate` with FULL, BLOCKED and RESTRICTED
/// clients sending every 10 ms and `pppgate guard` running: the table is back with every member
/// (the guard's figures printed), BLOCKED and RESTRICTED datagrams sent from one second after the
/// tamper on arrive nowhere (what leaked in the gap is printed), FULL keeps arriving, the drop
/// counters count again; a connect right after a flush (no guard) leaves every older session
/// policed.
///
/// The tamper's time t0 is when the command returned in srv — or, when earlier, when the first
/// BLOCKED or RESTRICTED datagram that got through was sent (the policy was gone by then): a
/// stamp taken before spawning `nft` is no measure under TCG, where the spawn alone takes up to
/// a second.
#[test]
fn tampering_with_the_table_is_repaired_and_nothing_unpoliced_passes_after_a_second() {
    let run = run();
    case_ok(run, "tamper");
    println!(
        "lab run {} ({:.0} s); case tamper {} ms",
        run.dir.display(),
        run.elapsed.as_secs_f64(),
        num(run, "tamper.wall_ms")
    );
    for ep in ["flush", "delete"] {
        let e = |k: &str| run.facts.expect(&format!("tamper.{ep}.{k}"));
        println!(
            "{ep}: command {} ms; guard: restored {} ms after the event (lockdown {} µs, restore {} µs into it); \
             the test saw the table whole {} ms after the command; {} BLOCKED/RESTRICTED datagram(s) leaked, \
             sent within {} ms, the last {} ms after t0 (t0 {} ms before the command returned)",
            e("cmd_ms"),
            e("guard_since_event_ms"),
            e("guard_lockdown_us"),
            e("guard_restore_us"),
            e("seen_whole_ms"),
            e("leaked"),
            e("leak_window_ms"),
            e("last_leak_after_t0_ms"),
            e("t0_before_cmd_end_ms"),
        );
        for who in ["tina", "tom", "tess"] {
            let f = |k: &str| num(run, &format!("tamper.{ep}.{who}.{k}"));
            println!(
                "  {who}: first second sent {} arrived {}; after it sent {} arrived {}",
                f("sent_first"),
                f("arrived_first"),
                f("sent_after"),
                f("arrived_after")
            );
        }
        let f = |who: &str, k: &str| num(run, &format!("tamper.{ep}.{who}.{k}"));
        for who in ["tina", "tom", "tess"] {
            assert!(f(who, "sent_first") > 0, "{ep}: {who} was sending during the gap");
            assert!(f(who, "sent_after") > 0, "{ep}: {who} kept sending");
        }
        for who in ["tom", "tess"] {
            assert_eq!(f(who, "arrived_after"), 0, "{ep}: {who}'s datagrams arrived after the first second");
        }
        assert!(f("tina", "arrived_after") > 0, "{ep}: FULL works after the restore");
        // The rebuild writes the table and every recorded member in one transaction: FULL loses
        // nothing while its table is rebuilt (5 of 39 were lost when the members came second).
        assert_eq!(
            (f("tina", "arrived_first"), f("tina", "arrived_after")),
            (f("tina", "sent_first"), f("tina", "sent_after")),
            "{ep}: every FULL datagram arrives, during the gap and after it"
        );
        assert!(num(run, &format!("tamper.{ep}.last_leak_after_t0_ms")) < 1000, "{ep}: the gap is bounded");
    }
    assert!(num(run, "tamper.blocked_from") > 0 && num(run, "tamper.restricted_from") > 0, "drop counters count");
    for c in ["tina", "tom", "tess"] {
        assert_eq!(
            run.facts.expect(&format!("tamper.connect_after_flush.{c}")),
            "yes",
            "{c} policed after a connect right after a flush"
        );
    }
}

/// Eight simultaneous first connects on a box without the table: all up and policed, none
/// ended, nothing arrives at the far side.
#[test]
fn eight_simultaneous_first_connects_without_the_table_all_come_up_policed() {
    let run = run();
    case_ok(run, "first8");
    println!("case first8 {} ms", num(run, "first8.wall_ms"));
    println!(
        "first8: up {} alive {} policed {} ended {}; slowest policy {} ms after ip-up, {} attempts, SQL {} ms",
        num(run, "first8.up"),
        num(run, "first8.alive"),
        num(run, "first8.policed"),
        num(run, "first8.ended"),
        run.facts.expect("first8.max_gate_released_ms"),
        run.facts.expect("first8.max_attempts"),
        run.facts.expect("first8.max_sql_ms"),
    );
    let why = run.facts.expect("first8.why");
    if !why.is_empty() {
        println!("first8: sessions ended: {why}");
    }
    let all_well = ["up", "alive", "policed"].iter().all(|k| num(run, &format!("first8.{k}")) == 8)
        && num(run, "first8.ended") == 0;
    if !all_well {
        // CI keeps no run directory: the case's own log and what the LNS's pppds said during it
        // go into the test's output.
        let case_log = run.dir.join("cases/first8.log");
        println!("--- last 40 lines of {}\n{}", case_log.display(), pppgate_lab::vm::tail(&case_log, 40));
        print_matching(&run.dir.join("logs/pppd-lns.log"), "first1", &["pppgate:", "Terminat", "hangup", "LCP"], 80);
    }
    assert_eq!(num(run, "first8.up"), 8);
    assert_eq!(num(run, "first8.alive"), 8);
    assert_eq!(num(run, "first8.policed"), 8);
    assert_eq!(num(run, "first8.ended"), 0);
    println!("first8: sent {} datagrams, {} arrived", num(run, "first8.sent"), num(run, "first8.recv"));
    assert_eq!(num(run, "first8.recv"), 0, "unpoliced packets");
}

/// The lines of `path` from the first one containing `from` on that contain any of `words`,
/// at most the last `n` of them.
fn print_matching(path: &std::path::Path, from: &str, words: &[&str], n: usize) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let hits: Vec<&str> =
        text.lines().skip_while(|l| !l.contains(from)).filter(|l| words.iter().any(|w| l.contains(w))).collect();
    println!("--- {} lines of {} from the first {from:?}", hits.len().min(n), path.display());
    for l in &hits[hits.len().saturating_sub(n)..] {
        println!("{l}");
    }
}

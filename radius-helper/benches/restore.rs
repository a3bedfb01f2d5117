//! Restore benchmark (issue 10, docs/security.md "Tamper detection and restore"): how long
//! `pppgate guard` — or a connect that finds the table gone — takes to put `inet pppgate` back
//! with every member, at 100, 1,000 and 10,000 sessions. Figures, printed, never asserted.
//!
//! `cargo bench -p pppgate --bench restore [-- --sizes 100,1000,10000 --iters 5]` (root: it runs
//! in a network namespace of its own). No database: a restore reads only local state.
//!
//! Each size: TUN sessions with VALID mappings (stand-in processes, as the policy benchmark),
//! their memberships committed and recorded as the real writers do (90 % FULL, 5 % RESTRICTED,
//! 5 % BLOCKED); then, `--iters` times each, timed in-process with `policy_core::policy::restore`
//! (what the guard runs, without the lock and the event latency):
//!   * the table deleted (`nft delete table inet pppgate`): lockdown of every link that is not
//!     FULL, rebuild, every member back, read-back;
//!   * `nft flush ruleset`: the same from an empty ruleset;
//!   * members edited by a stranger (1 % of them moved to another set): no rebuild;
//!   * nothing to do (the guard's periodic check).

use std::time::Instant;

use policy_core::kernel::members::MemberRecord;
use policy_core::kernel::{Backends, Member, Netlink, Nft, NftSet, SetChange};
use policy_core::policy::restore::{self, Restored};
use pppgate_testkit::*;

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The state of session `i` of the farm (90 % FULL, 5 % RESTRICTED, 5 % BLOCKED).
fn state_of(i: usize) -> NftSet {
    match i % 20 {
        0 => NftSet::Blocked,
        1 => NftSet::Restricted,
        _ => NftSet::Full,
    }
}

struct Row {
    label: &'static str,
    total: Vec<u64>,
    lockdown: Vec<u64>,
    last: Option<Restored>,
}

impl Row {
    fn new(label: &'static str) -> Row {
        Row { label, total: Vec::new(), lockdown: Vec::new(), last: None }
    }

    fn push(&mut self, r: Restored) {
        self.total.push(r.total_us);
        self.lockdown.push(r.lockdown_us);
        self.last = Some(r);
    }

    fn print(&mut self, n: usize) {
        let r = self.last.clone().expect("ran");
        let total = median(&mut self.total);
        let lockdown = median(&mut self.lockdown);
        println!(
            "  {:<36} median {:>9.1} ms ({:>6.1} µs/session)   lockdown done after {:>7.2} ms   \
             [rebuilt {}, {} locked down, {} live, +{} -{}, n={}]",
            self.label,
            total as f64 / 1e3,
            total as f64 / n as f64,
            lockdown as f64 / 1e3,
            r.rebuilt,
            r.locked_down.len(),
            r.live,
            r.added,
            r.removed,
            self.total.len()
        );
    }
}

fn main() {
    let a = bench_args(5);
    private_netns();
    println!("pppgate restore benchmark — {}", machine());
    // No database is reached: the DSN only has to parse.
    let env = TestEnv::new("host=/nonexistent dbname=pppgate user=none");
    let cfg = env.config();
    let mut farms: Vec<TunFarm> = Vec::new();
    let mut have = 0usize;
    let mut summary = Vec::new();
    for &n in &a.sizes {
        println!("\n=== {n} sessions ===");
        let t = Instant::now();
        farms.push(tun_farm(&env.sessions_dir, have + 1, n - have, (have + 1) as i64, ((n - have) / 40).max(1)));
        have = n;
        // Memberships committed and recorded as the connect path and reconcile do.
        let mut b = Netlink::recording_to(&cfg.paths.sessions_dir).expect("netlink");
        b.nft().ensure_base(&cfg.policy.walled_garden).expect("table");
        let mut changes = Vec::new();
        for (i, m) in farms.iter().flat_map(|f| f.mappings.iter()).enumerate() {
            let idx = policy_core::kernel::links::ifindex(&m.ppp_if).expect("ifindex").expect("link exists");
            changes.push(SetChange::new(state_of(i), Member::new(idx, m.client_ip), true));
        }
        b.nft().commit(&changes).expect("commit");
        let recorded = MemberRecord::in_sessions_dir(&cfg.paths.sessions_dir).read().expect("record").len();
        assert_eq!(recorded, n, "every member recorded");
        println!(" setup: {n} TUN sessions, memberships committed and recorded in {:?}", t.elapsed());

        let mut deleted = Row::new("table deleted");
        let mut flushed = Row::new("nft flush ruleset");
        let mut edited = Row::new("1% of members moved by a stranger");
        let mut intact = Row::new("intact (periodic check)");
        for _ in 0..a.iters {
            run(&["nft", "delete", "table", "inet", "pppgate"]);
            deleted.push(restore::restore(&mut b, &cfg).expect("restore"));
            run(&["nft", "flush", "ruleset"]);
            flushed.push(restore::restore(&mut b, &cfg).expect("restore"));
            // A stranger (nft(8), unrecorded) moves every 100th member into full_v4 and out of
            // its own set; FULL ones are moved to blocked_v4.
            let mut script = String::new();
            for (i, m) in farms.iter().flat_map(|f| f.mappings.iter()).enumerate().filter(|(i, _)| i % 100 == 7) {
                let from = state_of(i);
                let to = if from == NftSet::Full { NftSet::Blocked } else { NftSet::Full };
                script.push_str(&format!(
                    "delete element inet pppgate {} {{ \"{}\" . {} }}\nadd element inet pppgate {} {{ \"{}\" . {} }}\n",
                    from.name(),
                    m.ppp_if,
                    m.client_ip,
                    to.name(),
                    m.ppp_if,
                    m.client_ip
                ));
            }
            if !script.is_empty() {
                nft_script(&script);
            }
            edited.push(restore::restore(&mut b, &cfg).expect("restore"));
            intact.push(restore::restore(&mut b, &cfg).expect("restore"));
        }
        for row in [&mut deleted, &mut flushed, &mut edited, &mut intact] {
            row.print(n);
        }
        summary.push((n, median(&mut deleted.total), median(&mut deleted.lockdown), median(&mut intact.total)));
    }
    println!("\n=== summary: restore after `nft delete table inet pppgate` (median) ===");
    for (n, total, lockdown, intact) in &summary {
        println!(
            "  {n:>6} sessions: restored in {:>8.1} ms, links that are not FULL locked down after {:>6.2} ms; \
             intact check {:>7.1} ms",
            *total as f64 / 1e3,
            *lockdown as f64 / 1e3,
            *intact as f64 / 1e3
        );
    }
    drop(farms);
}

/// Runs an nft script (`nft -f -`), as a stranger would.
fn nft_script(script: &str) {
    use std::io::Write;
    let mut child =
        std::process::Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("nft");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft -f failed");
}

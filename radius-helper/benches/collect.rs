//! `cargo bench -p pppgate --bench collect` — figures for one collector run at 1,000 and 10,000
//! sessions, and for replaying 10,000 spooled journal records. Printed, never asserted.
//!
//! Setup per size: a PostgreSQL cluster with fsync on (durable commits), a network namespace with
//! N TUN interfaces named pppN, all held open by one python process that also plays pppd (every
//! mapping's PPPD_PID/START_TS point at it), each with a point-to-point peer address, N
//! connections and N mapping files. Between runs one packet is written into every device (rx
//! from the client) so every session has a delta. Needs root, like the kernel tests.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use policy_core::accounting::counters::Octets;
use policy_core::accounting::record::{Batch, Entry};
use policy_core::accounting::spool::AcctDir;
use policy_core::accounting::state::State;
use policy_core::mapping::Mapping;
use pppgate_testkit::{loadavg, AcctLab as Lab, PgServer, NAS_IDENTITY};

fn peer_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 1)) + i as u32)
}

fn ip_batch(ns: &str, lines: &str) {
    let mut c = Command::new("ip").args(["-n", ns, "-batch", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "ip -batch failed");
}

/// The stand-in pppd: holds every TUN device open (carrier up); on each line of stdin it writes
/// one 100-byte packet into every device (rx from the client on every session) and answers.
const HOLDER: &str = r#"
import fcntl, os, resource, struct, sys
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
fds = []
for i in range(n):
    fd = os.open('/dev/net/tun', os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'ppp%d' % i, 0x1001))
    fds.append(fd)
# IPv4/UDP to a non-local address: counted as rx, then dropped without an ICMP answer.
pkt = bytes([0x45, 0, 0, 100, 0, 0, 0, 0, 64, 17, 0, 0, 100, 64, 0, 1, 198, 51, 100, 77]) + bytes(80)
print('ready', flush=True)
for line in sys.stdin:
    if line.strip() == 'persist':
        # Teardown: persistent devices outlive us and go in one batch with the namespace,
        # instead of 10,000 one-by-one unregistrations as the descriptors close.
        for fd in fds:
            fcntl.ioctl(fd, 0x400454cb, 1)
    else:
        for fd in fds:
            os.write(fd, pkt)
    print('ok', flush=True)
"#;

struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn traffic(&mut self) {
        self.say("rx");
    }

    fn say(&mut self, what: &str) {
        writeln!(self.stdin, "{what}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok");
    }
}

struct Figures {
    label: String,
    wall_ms: f64,
    report: serde_json::Value,
}

fn timed_collect(lab: &Lab, label: &str) -> Figures {
    let t = Instant::now();
    let r = lab.collect();
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(r.code, Some(0), "{label}: {r:?}");
    Figures { label: label.into(), wall_ms, report: r.json() }
}

fn print(f: &Figures) {
    let t = &f.report["timings"];
    println!(
        "  {:<38} wall {:>8.1} ms | in-process {:>8.1} ms (open {:>6.1}, read {:>6.1} [netlink {:>5.1}], spool {:>6.1}, sql {:>7.1}, quota {:>5.1}) | \
         sessions {:>6} (+{} rx octets) | records committed {:>5} | SQL statements {:>3} | SQL round trips {:>3}",
        f.label,
        f.wall_ms,
        t["total_ms"].as_f64().unwrap_or(0.0),
        t["open_ms"].as_f64().unwrap_or(0.0),
        t["read_ms"].as_f64().unwrap_or(0.0),
        t["netlink_ms"].as_f64().unwrap_or(0.0),
        t["spool_ms"].as_f64().unwrap_or(0.0),
        t["sql_ms"].as_f64().unwrap_or(0.0),
        t["quota_ms"].as_f64().unwrap_or(0.0),
        f.report["sessions"]["read"],
        f.report["batch"]["delta"]["rx"],
        f.report["replay"]["records_applied"],
        f.report["replay"]["commit_statements"],
        f.report["sql_round_trips"],
    );
}

fn bench_size(n: usize) {
    println!("\n{n} sessions");
    let lab = Lab::with_pg(env!("CARGO_BIN_EXE_pppgate"), "own", PgServer::new_durable());
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.ns.name, "python3", "-c", HOLDER, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout.read_line(&mut ready).unwrap();
    assert_eq!(ready.trim(), "ready");
    let mut pppd = Holder { child, stdin, stdout };
    let mut lines = String::new();
    for i in 0..n {
        lines.push_str(&format!("addr add 10.0.0.1 peer {}/32 dev ppp{i}\nlink set ppp{i} up\n", peer_ip(i)));
    }
    ip_batch(&lab.ns.name, &lines);
    let pid = pppd.child.id();
    let start_ts = policy_core::procfs::process_start_epoch(pid).unwrap().unwrap();
    let mut c = lab.pg.client();
    if let Ok(sql) = std::env::var("PPPGATE_BENCH_SQL") {
        c.batch_execute(&sql).unwrap();
    }
    c.execute(
        "INSERT INTO vpn_connections (subaccount_login, status) SELECT 'user' || g, 'CLAIMED' FROM generate_series(1, $1::int) g",
        &[&(n as i32)],
    )
    .unwrap();
    let ids: Vec<i64> =
        c.query("SELECT id FROM vpn_connections ORDER BY id", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    for (i, id) in ids.iter().enumerate() {
        Mapping {
            connection_id: *id,
            ppp_if: format!("ppp{i}"),
            client_ip: peer_ip(i),
            start_ts,
            pppd_pid: pid,
            session_id: None,
            up_ts: Some(start_ts),
            counters_base: None,
            process: policy_core::procfs::identity(pid).unwrap(),
        }
        .write_atomic(&lab.sessions_dir)
        .unwrap();
    }
    println!("  (setup: {:.1} s)", t.elapsed().as_secs_f64());

    pppd.traffic();
    print(&timed_collect(&lab, "first run (all sessions new)"));
    let mut steady = Vec::new();
    for k in 1..=2 {
        pppd.traffic();
        let f = timed_collect(&lab, &format!("steady run {k}"));
        print(&f);
        steady.push(f.wall_ms);
    }
    let best = steady.iter().copied().fold(f64::INFINITY, f64::min);
    if n >= 10_000 {
        println!(
            "  goal: a steady collector run at 10,000 sessions < 300 ms: {best:.0} ms ({}; load average {})",
            if best < 300.0 { "met" } else { "NOT met" },
            loadavg()
        );
    }

    // Outage: three runs spooled, then one run replays them with its own.
    lab.pg.stop();
    for _ in 0..3 {
        pppd.traffic();
        assert_eq!(lab.collect().code, Some(69));
    }
    lab.pg.start();
    pppd.traffic();
    print(&timed_collect(&lab, "after outage (3 spooled + 1 new)"));

    if n == 10_000 {
        replay_records(&lab, 10_000);
    }
    let t = Instant::now();
    pppd.say("persist");
    let _ = pppd.child.kill();
    let _ = pppd.child.wait();
    drop(lab);
    println!("  (teardown: {:.1} s)", t.elapsed().as_secs_f64());
}

/// 10,000 small journal records (one session each, as many short DB outages would leave).
fn replay_records(lab: &Lab, records: usize) {
    lab.pg.stop();
    let dir = AcctDir::open(&lab.acct_dir).unwrap();
    let mut state = State::decode(&std::fs::read(lab.acct_dir.join("state")).unwrap()).unwrap();
    let sessions: Vec<_> = state.sessions.values().cloned().collect();
    let t = Instant::now();
    for k in 0..records {
        let s = &sessions[k % sessions.len()];
        let seq = state.next_seq;
        let total = s.total.saturating_add(Octets::new((k / sessions.len() + 1) as u64, 0));
        let b = Batch {
            seq,
            batch_id: state.batch_id(NAS_IDENTITY, seq),
            nas_identity: NAS_IDENTITY.into(),
            collected_at: policy_core::lock::now_unix(),
            entries: vec![Entry {
                session: s.session.clone(),
                at: policy_core::lock::now_unix(),
                ifindex: s.ifindex,
                baseline: s.baseline,
                delta: Octets::new(1, 0),
                total,
                stop: None,
            }],
        };
        dir.append(&b).unwrap();
        state.next_seq += 1;
    }
    println!("  (wrote {records} journal records in {:.1} s)", t.elapsed().as_secs_f64());
    lab.pg.start();
    print(&timed_collect(lab, &format!("replay of {records} spooled records")));
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is not supported.
    println!("pppgate collector benchmark (figures only; nothing is asserted about time); load average {}", loadavg());
    // PPPGATE_BENCH_SIZES=10000 runs one size only.
    let sizes: Vec<usize> = std::env::var("PPPGATE_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 10_000]);
    for n in sizes {
        bench_size(n);
    }
}

//! What the benchmarks (radius-helper/benches/) share: their command line and the load average
//! they print beside every figure, the SQL rows of their session farms, an in-process reconcile and a local pgbouncer.

use policy_core::config::Config;
use policy_core::kernel::Netlink;
use policy_core::lock::Lock;
use policy_core::policy::apply;
use policy_core::policy::engine::Timings;

use crate::PgServer;

/// `--sizes 100,1000,10000` (session counts) and `--iters N`; anything else is ignored (cargo
/// bench passes `--bench`).
pub struct BenchArgs {
    pub sizes: Vec<usize>,
    pub iters: usize,
}

/// The benchmark's arguments; without them, 100, 1,000 and 10,000 sessions and `default_iters`.
pub fn bench_args(default_iters: usize) -> BenchArgs {
    let mut a = BenchArgs { sizes: vec![100, 1_000, 10_000], iters: default_iters };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "--sizes" => {
                a.sizes = argv[i + 1].split(',').map(|s| s.parse().expect("size")).collect();
                i += 1;
            }
            "--iters" => {
                a.iters = argv[i + 1].parse().expect("iters");
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    a
}

/// What a benchmark's first line says about the machine: kernel, CPUs and load average.
pub fn machine() -> String {
    format!(
        "kernel {}, {} CPUs, load average {}",
        crate::run(&["uname", "-r"]).trim(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        loadavg()
    )
}

/// The uplink [`farm_rows`]' policy routing names (wg0, 10.100.0.1/24, next hop 10.100.0.40),
/// in the current namespace, with loose reverse-path filtering as a concentrator has it.
pub fn farm_uplink() {
    crate::veth("wg0", "wg0p", None);
    crate::run(&["ip", "addr", "add", "10.100.0.1/24", "dev", "wg0"]);
    crate::run(&["sysctl", "-qw", "net.ipv4.conf.default.rp_filter=0"]);
}

/// The first three fields of /proc/loadavg ("" when unreadable).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// SQL rows for the benchmarks' farm sessions `from..=to` (connection id = session number,
/// login `benchN`): rates on all, a route on every tenth, policy routing on every hundredth (table
/// 100 via 10.100.0.40 on wg0, which the benchmark creates), 5 % expired, 2 % blocked.
pub fn farm_rows(pg: &PgServer, from: usize, to: usize) {
    pg.psql(&format!(
        "INSERT INTO vpn_connections (id, subaccount_login, status, rate_down_kbit, rate_up_kbit, expires_at, manual_block)
         SELECT g, 'bench' || g, 'CLAIMED', 8000 + (g % 10) * 1000, 2000,
                CASE WHEN g % 20 = 1 THEN now() - interval '1 day' END, g % 50 = 0
         FROM generate_series({from}, {to}) g;
         INSERT INTO vpn_routes (connection_id, destination)
         SELECT g, ('10.' || (100 + (g >> 8)) || '.' || (g & 255) || '.0/24')::cidr
         FROM generate_series({from}, {to}) g WHERE g % 10 = 0;
         INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority)
         SELECT 'bench' || g, g, 100, '10.100.0.40', 'wg0', 1000
         FROM generate_series({from}, {to}) g WHERE g % 100 = 7;
         SELECT setval('vpn_connections_id_seq', greatest(1000000, (SELECT max(id) FROM vpn_connections)));"
    ));
}

/// One reconcile of every session, in-process under the apply lock: its timings and how many
/// operations it carried out.
pub fn reconcile_in_process(cfg: &Config) -> (Timings, usize) {
    let mut k = Netlink::new().expect("netlink");
    let _l = Lock::try_acquire(&cfg.paths.apply_lock, "bench").expect("lock");
    let r = apply::reconcile(cfg, &mut k, false)
        .unwrap_or_else(|e| panic!("reconcile: {}", policy_core::error::one_line(&e)));
    assert!(r.malformed.is_empty());
    (r.outcome.timings, r.outcome.plan.ops.len())
}

/// A pgbouncer in front of the private PostgreSQL (session pooling, its own socket directory),
/// run as the postgres user (it refuses root).
pub struct Bouncer {
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_bouncer(pg: &PgServer) -> Option<Bouncer> {
    use std::os::unix::process::CommandExt;
    let bin = std::path::Path::new("/usr/sbin/pgbouncer");
    if !bin.exists() {
        println!(" pgbouncer: not installed (scripts/install-deps.sh installs it); pooled figures skipped");
        return None;
    }
    let user = nix::unistd::User::from_name("postgres").ok().flatten().expect("postgres user");
    let dir = tempfile::Builder::new().prefix("pppgate-bench-bouncer-").tempdir().unwrap();
    std::fs::write(
        dir.path().join("pgbouncer.ini"),
        format!(
            "[databases]\n* = host={pgdir} port=5432\n[pgbouncer]\nlisten_addr =\nlisten_port = 6432\n\
             unix_socket_dir = {d}\nauth_type = trust\nauth_file = {d}/users.txt\npool_mode = session\n\
             default_pool_size = 8\nmax_client_conn = 1000\nserver_reset_query = DISCARD ALL\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n",
            pgdir = pg.socket_dir().display(),
            d = dir.path().display()
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
    nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let mut child = std::process::Command::new(bin)
        .arg(dir.path().join("pgbouncer.ini"))
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgbouncer");
    let sock = dir.path().join(".s.PGSQL.6432");
    if !crate::wait_until(std::time::Duration::from_secs(10), || sock.exists()) {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default();
        println!(" pgbouncer: did not start ({log})");
        return None;
    }
    Some(Bouncer { dir, child })
}

//! The accounting tests' world: a private PostgreSQL, a named network namespace (IPv6 off, so
//! only the test's packets move counters) where [`crate::tunpeer::Peer`] links live and the
//! `pppgate` binary runs, a [`TestEnv`] with the wanted `accounting.radacct` mode, and readers
//! for what accounting wrote to SQL and to the accounting directory.

use std::path::{Path, PathBuf};

use policy_core::mapping::Mapping;

use crate::env::{Cli, CliOut, EnvOptions, TestEnv};
use crate::netns::NetNs;
use crate::pg::PgServer;

pub struct AcctLab {
    pub pg: PgServer,
    pub ns: NetNs,
    pub env: TestEnv,
    /// Runs the binary inside `ns` with `PPPGATE_LOG=info`.
    pub cli: Cli,
    pub config: PathBuf,
    pub sessions_dir: PathBuf,
    pub acct_dir: PathBuf,
    pub collector_lock: PathBuf,
}

impl AcctLab {
    /// `bin`: the `pppgate` binary; `radacct`: the accounting.radacct mode (auto, radius, own, off).
    pub fn new(bin: impl AsRef<Path>, radacct: &str) -> AcctLab {
        AcctLab::with_pg(bin, radacct, PgServer::new())
    }

    pub fn with_pg(bin: impl AsRef<Path>, radacct: &str, pg: PgServer) -> AcctLab {
        let ns = NetNs::new("acct");
        ns.disable_ipv6();
        let env = TestEnv::with(
            &pg.dsn(),
            EnvOptions { radacct: Some(radacct.to_string()), connect_timeout_ms: 1000, ..EnvOptions::default() },
        );
        let mut cli = env.cli(bin.as_ref());
        cli.netns = Some(ns.name.clone());
        cli.env.push(("PPPGATE_LOG".into(), "info".into()));
        let lab = AcctLab {
            config: env.config_path.clone(),
            sessions_dir: env.sessions_dir.clone(),
            acct_dir: env.accounting_dir.clone(),
            collector_lock: env.collector_lock.clone(),
            pg,
            ns,
            env,
            cli,
        };
        lab.pppgate(&["db", "migrate"], None).expect_code(0);
        lab
    }

    /// Runs the binary (in the namespace); `crash_at` sets `PPPGATE_TEST_CRASH_AT`.
    pub fn pppgate(&self, args: &[&str], crash_at: Option<&str>) -> CliOut {
        match crash_at {
            Some(p) => self.cli.run_env(args, &[("PPPGATE_TEST_CRASH_AT", p)]),
            None => self.cli.run(args),
        }
    }

    pub fn collect(&self) -> CliOut {
        self.pppgate(&["--json", "collect"], None)
    }

    pub fn collect_crashing_at(&self, point: &str) -> CliOut {
        self.pppgate(&["--json", "collect"], Some(point))
    }

    /// A CLAIMED connection with an optional quota; returns its id.
    pub fn add_connection(&self, login: &str, quota: Option<i64>, period: &str) -> i64 {
        self.pg
            .client()
            .query_one(
                "INSERT INTO vpn_connections (subaccount_login, status, quota_bytes, quota_period) VALUES ($1, 'CLAIMED', $2, $3) RETURNING id",
                &[&login, &quota, &period],
            )
            .expect("insert connection")
            .get(0)
    }

    pub fn write_mapping(&self, m: &Mapping) {
        m.write_atomic(&self.sessions_dir).expect("write mapping");
    }

    pub fn remove_mapping(&self, ifname: &str) {
        Mapping::remove(&self.sessions_dir, ifname).expect("remove mapping");
    }

    /// (bytes_in, bytes_out) of pppgate_sessions for the key, if the row exists.
    pub fn session_totals(&self, key: &str) -> Option<(i64, i64)> {
        self.pg
            .client()
            .query_opt("SELECT bytes_in, bytes_out FROM pppgate_sessions WHERE session_key = $1", &[&key])
            .expect("read pppgate_sessions")
            .map(|r| (r.get(0), r.get(1)))
    }

    /// Sum of vpn_usage for a connection.
    pub fn usage(&self, connection_id: i64) -> (i64, i64) {
        let r = self
            .pg
            .client()
            .query_one(
                "SELECT COALESCE(sum(bytes_in), 0)::bigint, COALESCE(sum(bytes_out), 0)::bigint FROM vpn_usage WHERE connection_id = $1",
                &[&connection_id],
            )
            .expect("read vpn_usage");
        (r.get(0), r.get(1))
    }

    /// Octets of pppgate's own radacct row for the session, and whether it is closed.
    pub fn own_radacct(&self, key: &str) -> Option<(i64, i64, bool)> {
        self.pg
            .client()
            .query_opt(
                "SELECT acctinputoctets, acctoutputoctets, acctstoptime IS NOT NULL FROM radacct WHERE acctuniqueid = $1",
                &[&format!("pppgate:{key}")],
            )
            .expect("read radacct")
            .map(|r| (r.get(0), r.get(1), r.get(2)))
    }

    /// Everything accounting wrote, as text, to compare "nothing changed".
    pub fn snapshot(&self) -> String {
        let mut c = self.pg.client();
        let mut s = String::new();
        for q in [
            "SELECT connection_id::text || ' ' || day::text || ' ' || bytes_in::text || ' ' || bytes_out::text FROM vpn_usage ORDER BY 1",
            "SELECT session_key || ' ' || bytes_in::text || ' ' || bytes_out::text || ' ' || COALESCE(stop_time::text, '-') FROM pppgate_sessions ORDER BY 1",
            "SELECT acctuniqueid || ' ' || COALESCE(acctinputoctets, -1)::text || ' ' || COALESCE(acctoutputoctets, -1)::text || ' ' || COALESCE(acctstoptime::text, '-') FROM radacct ORDER BY 1",
        ] {
            for r in c.query(q, &[]).expect("snapshot query") {
                s.push_str(r.get::<_, &str>(0));
                s.push('\n');
            }
        }
        s
    }

    /// Journal records waiting in the spool.
    pub fn spool_records(&self) -> usize {
        std::fs::read_dir(self.acct_dir.join("spool"))
            .map(|rd| rd.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().ends_with(".batch")).count())
            .unwrap_or(0)
    }

    /// Files moved aside as unreadable.
    pub fn bad_files(&self) -> usize {
        std::fs::read_dir(self.acct_dir.join("spool/bad")).map(|rd| rd.count()).unwrap_or(0)
    }
}

//! Shared test support for pppgate's kernel and end-to-end tests.
//!
//! * [`pg`]: a private PostgreSQL server per test ([`PgServer`]), migrated with pppgate's own
//!   migrations, that can be stopped and started again on the same data directory;
//! * [`netns`]: a private network namespace per test thread ([`private_netns`]), named namespaces
//!   ([`NetNs`]) for packet topologies, and running the real tools;
//! * [`kernel`]: reading the kernel back with the real tools (`nft -j`, `tc`, `ip -j`) and whole
//!   dumps for before/after comparisons;
//! * [`env`]: a configuration whose every path lives in the test's temp dir ([`TestEnv`]) and a
//!   runner for the `pppgate` binary ([`Cli`]);
//! * [`traffic`]: connectivity checks (ping, TCP) and far-side counters;
//! * [`session`]: fake sessions that are VALID by `policy_core::mapping::valid_sessions`: a live
//!   process, an interface `pppN` carrying `local peer CLIENT_IP`, and a mapping file; and the
//!   parts for sessions assembled by hand ([`StandIn`], [`ppp_link`], [`write_mapping`]);
//! * [`fixtures`]: rows a panel or FreeRADIUS would write (connections, routes, radacct,
//!   pppgate_sessions);
//! * [`tunpeer`]: a TUN link whose counters the test moves on command, and [`acct`]: the
//!   accounting tests' world built from it;
//! * [`lab_output`]: reading what the lab VM's connect scenarios leave behind (kernel snapshots,
//!   probe logs, the plugin's log fields);
//! * [`schema`]: validating `--json` outputs against docs/schemas (python3-jsonschema).
//!
//! Everything here needs root (network namespaces, PostgreSQL run as the postgres user). Without it
//! the helpers panic with a message saying so: a test that cannot run must fail, never skip.

#![forbid(unsafe_code)]

pub mod acct;
pub mod bench;
pub mod env;
pub mod fixtures;
pub mod kernel;
pub mod lab_output;
pub mod netns;
pub mod pg;
pub mod schema;
pub mod session;
pub mod traffic;
pub mod tunpeer;

pub use acct::AcctLab;
pub use bench::{
    bench_args, farm_rows, farm_uplink, loadavg, machine, reconcile_in_process, start_bouncer, BenchArgs, Bouncer,
};
pub use env::{Cli, CliOut, DbEnv, EnvOptions, TestEnv, WgSection, NAS_IDENTITY, NAS_IP};
pub use fixtures::{add_connection, add_customer, add_route};
pub use kernel::*;
pub use netns::*;
pub use pg::PgServer;
pub use schema::{assert_schema, schema_errors};
pub use session::{dead_pid, ppp_link, tun_farm, write_mapping, FakeSession, SessionBuilder, StandIn, TunFarm};
pub use traffic::{expect_all, ns_counter, ping, tcp, udp_burst, Check};
pub use tunpeer::Peer;

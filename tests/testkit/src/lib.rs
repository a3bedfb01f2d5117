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
//!   process, an interface `pppN` carrying `local peer CLIENT_IP`, and a mapping file.
//!
//! Everything here needs root (network namespaces, PostgreSQL run as the postgres user). Without it
//! the helpers panic with a message saying so: a test that cannot run must fail, never skip.

#![forbid(unsafe_code)]

pub mod env;
pub mod fixtures;
pub mod kernel;
pub mod netns;
pub mod pg;
pub mod session;
pub mod traffic;

pub use env::{Cli, CliOut, EnvOptions, TestEnv};
pub use fixtures::{add_connection, add_customer, add_route};
pub use kernel::*;
pub use netns::*;
pub use pg::PgServer;
pub use session::{tun_farm, FakeSession, SessionBuilder, TunFarm};
pub use traffic::{expect_all, ns_counter, ping, tcp, udp_burst, Check};

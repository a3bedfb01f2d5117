//! pppgate's VM lab harness.
//!
//! [`Lab::run`] boots Debian's own kernel under qemu (`-accel tcg`; KVM does not work on the
//! build machines) with the host's root read-only over 9p under a tmpfs overlay, runs
//! `tests/lab/scenarios/<name>.sh` inside, and brings back what the scenario left in `/out`:
//! `guest.log`, `console.log`, `results.env` (facts, see [`Facts`]) and collected logs and
//! snapshots (see [`snapshot`]). Runs live under `target/lab/runs/<name>-<timestamp>/`.
//!
//! The guest sees the host's files at the same paths, so it runs the artifacts of this checkout
//! (`target/release/libpppgate.so`, `target/release/pppgate`); the harness only checks they
//! exist and never builds them.
//!
//! ```no_run
//! use pppgate_lab::{Lab, LabOptions};
//! let run = Lab::run("smoke", &LabOptions::default()).expect("lab run");
//! assert_eq!(run.facts.expect("smoke.ppp_modules"), "ok");
//! ```

#![forbid(unsafe_code)]

pub mod error;
pub mod facts;
pub mod initramfs;
pub mod kernel;
pub mod paths;
pub mod root;
pub mod snapshot;
pub mod system;
pub mod vm;

pub use error::LabError;
pub use facts::Facts;
pub use paths::Artifacts;
pub use root::Root;
pub use snapshot::Snapshot;
pub use system::SystemDisk;
pub use vm::{Lab, LabOptions, LabRun};

/// pppd version found at build time (headers or binary), if any.
pub const PPPD_VERSION: Option<&str> = option_env!("PPPGATE_LAB_PPPD_VERSION");
/// pppd's plugin directory (`/usr/lib/pppd/<version>`) found at build time, if any.
pub const PPPD_PLUGIN_DIR: Option<&str> = option_env!("PPPGATE_LAB_PPPD_PLUGIN_DIR");

//! pppgate's domain: configuration, SQL access, the policy model and planner, the kernel
//! backends, the single-writer lock, session mappings and accounting.

#![forbid(unsafe_code)]

pub mod accounting;
pub mod audit;
pub mod config;
pub mod connect;
pub mod db;
pub mod diag;
pub mod error;
pub mod fuzz;
pub mod guard;
pub mod hardcut;
pub mod ids;
pub mod input;
pub mod janitor;
pub mod journal;
pub mod kernel;
pub mod lock;
pub mod mapping;
pub mod metrics;
pub mod outage;
pub mod policy;
pub mod procfs;
pub mod radius;
pub mod rt_tables;
pub mod runs;
pub mod session_view;
pub mod trust;
pub mod wg;

pub use error::{Error, ExitCode, Result};

//! pppgate's domain: configuration, SQL access, the policy model and planner, the kernel
//! backends, the single-writer lock, session mappings and accounting.

#![forbid(unsafe_code)]

pub mod accounting;
pub mod config;
pub mod db;
pub mod error;
pub mod kernel;
pub mod lock;
pub mod mapping;
pub mod policy;
pub mod procfs;
pub mod rt_tables;

pub use error::{Error, ExitCode, Result};

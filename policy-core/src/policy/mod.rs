//! The policy engine: desired state as data ([`model`]), the diff against the kernel
//! ([`planner`]) and applying it under the single-writer lock ([`engine`]).

pub mod apply;
pub mod engine;
pub mod model;
pub mod planner;
pub mod restore;

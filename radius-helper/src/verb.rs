//! What every verb module shares with the dispatcher (`cli`): the global options, the result a
//! verb returns and the exit code it maps to, and loading the configuration. Verb modules depend on
//! this, never on `cli`.

use std::path::PathBuf;

use clap::Args;
use policy_core::config::{Config, DEFAULT_PATH};
use policy_core::error::one_line;
use policy_core::{Error, ExitCode};

/// Options every verb takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Configuration file.
    #[arg(long, short = 'c', global = true, env = "PPPGATE_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure { code: e.exit_code(), message: one_line(&e) }
    }
}

pub type CmdResult = Result<(), Failure>;

pub fn load_config(g: &Global) -> Result<Config, Failure> {
    Config::load(&g.config).map_err(Failure::from)
}

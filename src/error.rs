//! The harness's one error type. Messages say what failed and where the logs are; a failing test
//! prints them, so they carry the tails of the guest's and the console's logs.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("scenario name {0:?} is not usable (letters, digits, '-' and '_' only)")]
    BadScenarioName(String),

    #[error("no scenario {name:?}: {} does not exist", path.display())]
    UnknownScenario { name: String, path: PathBuf },

    #[error("missing build artifact {}; build it first with `{build}` (the lab never builds)", path.display())]
    MissingArtifact { path: PathBuf, build: String },

    #[error("the lab artifact {} is older than {}; rebuild it with `{build}`", path.display(), newer.display())]
    StaleArtifact { path: PathBuf, newer: PathBuf, build: String },

    #[error("cannot build the {root} lab root: {reason} (log {})", log.display())]
    RootBuild { root: String, reason: String, log: PathBuf },

    #[error("unsupported lab run: {0}")]
    Unsupported(String),

    #[error("no usable kernel: {0}")]
    NoKernel(String),

    #[error("kernel module {name} is needed for the lab but {reason}")]
    Module { name: String, reason: String },

    #[error("{what} (path {})", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("failed to start {program}; is it installed? (apt-get install qemu-system-x86)")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "lab scenario {scenario} timed out after {}s; qemu was killed. Logs in {}\n{tails}",
        after.as_secs(),
        dir.display()
    )]
    Timeout { scenario: String, after: Duration, dir: PathBuf, tails: String },

    #[error("lab scenario {scenario}: the guest did not finish (qemu exited with {status}). Logs in {}\n{tails}", dir.display())]
    GuestDidNotFinish { scenario: String, status: String, dir: PathBuf, tails: String },

    #[error("lab scenario {scenario} failed in the guest (exit status {rc}). Logs in {}\n{tails}", dir.display())]
    GuestFailed { scenario: String, rc: i32, dir: PathBuf, tails: String },

    #[error("malformed lab output {}: line {line}: {reason}", path.display())]
    Malformed { path: PathBuf, line: usize, reason: String },
}

impl LabError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::Io { what, path, source }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

//! `pppgate-lab run <scenario> [--root bookworm|trixie] [--follow] [--timeout SECONDS] [--env KEY=VALUE]...
//! [--system DISK [--fresh]]`: runs one lab scenario (`--root`: the guest root, bookworm by default;
//! `--system`: the systemd-booted system lab over that disk, created if missing or with `--fresh`)
//! from the command line (the tests call `pppgate_lab::Lab::run` directly). Prints the run
//! directory; exits non-zero with the harness's error when the run fails.
//!
//! `pppgate-lab root <bookworm|trixie>`: builds the root if its recipe has none yet (Debian 13:
//! mmdebstrap from Debian's registry) and prints its directory (scripts build the pppd 2.5
//! plugin against its headers).

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, Root};

const USAGE: &str = "usage: pppgate-lab run <scenario> [--root bookworm|trixie] [--follow] [--timeout SECONDS] [--env KEY=VALUE]... [--system DISK [--fresh]]\n       pppgate-lab root <bookworm|trixie>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let (Some("root"), Some(name), None) = (args.first().map(|s| s.as_str()), args.get(1), args.get(2)) {
        let root = match name.parse::<Root>() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("pppgate-lab: {e}");
                return ExitCode::from(64);
            }
        };
        return match pppgate_lab::root::ensure(root) {
            Ok(g) => {
                println!("{}", g.dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pppgate-lab: {e}");
                ExitCode::from(1)
            }
        };
    }
    let (Some("run"), Some(scenario)) = (args.first().map(|s| s.as_str()), args.get(1)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(64);
    };
    let mut opts = LabOptions::default();
    let mut rest = args[2..].iter();
    let (mut system, mut fresh) = (None, false);
    while let Some(a) = rest.next() {
        if a == "--follow" {
            opts.follow = true;
            continue;
        }
        if a == "--fresh" {
            fresh = true;
            continue;
        }
        match (a.as_str(), rest.next()) {
            ("--timeout", Some(v)) => match v.parse::<u64>() {
                Ok(s) => opts.timeout = Duration::from_secs(s),
                Err(_) => {
                    eprintln!("pppgate-lab: --timeout takes whole seconds, not {v:?}");
                    return ExitCode::from(64);
                }
            },
            ("--root", Some(v)) => match v.parse::<Root>() {
                Ok(r) => opts.root = r,
                Err(e) => {
                    eprintln!("pppgate-lab: {e}");
                    return ExitCode::from(64);
                }
            },
            ("--system", Some(p)) => system = Some(std::path::PathBuf::from(p)),
            ("--env", Some(kv)) => match kv.split_once('=') {
                Some((k, v)) => opts.env.push((k.to_string(), v.to_string())),
                None => {
                    eprintln!("pppgate-lab: --env takes KEY=VALUE, not {kv:?}");
                    return ExitCode::from(64);
                }
            },
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    if let Some(path) = system {
        let disk = if fresh || !path.exists() {
            match pppgate_lab::SystemDisk::create(&path, 4096) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("pppgate-lab: {e}");
                    return ExitCode::from(1);
                }
            }
        } else {
            pppgate_lab::SystemDisk { path }
        };
        opts.system = Some(disk);
    }
    match Lab::run(scenario, &opts) {
        Ok(run) => {
            println!("{}", run.dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pppgate-lab: {e}");
            ExitCode::from(1)
        }
    }
}

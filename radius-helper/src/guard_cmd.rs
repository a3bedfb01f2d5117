//! `pppgate guard`: watches `inet pppgate` and restores it when it is deleted or altered
//! (`pppgate-guard.service`; policy_core::guard, docs/security.md).

use std::time::Duration;

use clap::Args;
use policy_core::error::one_line;
use policy_core::guard::{self, Trigger};

use crate::verb::{load_config, CmdResult, Global};

#[derive(Args, Debug, Clone)]
pub struct GuardArgs {
    /// Seconds between full checks besides the nftables events (also repairs per-interface
    /// forwarding and element changes that raise no event of ours).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// One check (and restore, if needed), then exit.
    #[arg(long)]
    pub once: bool,
}

pub fn guard(g: &Global, a: &GuardArgs) -> CmdResult {
    let cfg = load_config(g)?;
    if a.once {
        let r = guard::check(&cfg)?;
        if g.json {
            println!("{}", serde_json::to_string_pretty(&r).expect("serializable"));
        } else {
            println!(
                "inet pppgate: {} ({} live sessions, {} membership(s) added, {} removed, {} unrecorded, {} ms)",
                if r.rebuilt {
                    "rebuilt"
                } else if r.changed() {
                    "repaired"
                } else {
                    "intact"
                },
                r.live,
                r.added,
                r.removed,
                r.unrecorded.len(),
                r.total_us / 1000
            );
        }
        return Ok(());
    }
    tracing::info!(interval_s = a.interval, "guard: watching inet pppgate");
    guard::run(&cfg, Duration::from_secs(a.interval), |trigger, r| match r {
        Ok(r) if r.changed() => {
            let since_event_ms = match trigger {
                Trigger::Event(t) => Some(t.elapsed().as_millis() as u64),
                _ => None,
            };
            tracing::warn!(
                trigger = trigger.name(),
                rebuilt = r.rebuilt,
                locked_down = r.locked_down.len(),
                live = r.live,
                added = r.added,
                removed = r.removed,
                unrecorded = r.unrecorded.len(),
                lockdown_us = r.lockdown_us,
                restore_us = r.total_us,
                since_event_ms,
                "guard: inet pppgate restored"
            );
        }
        Ok(_) => tracing::debug!(trigger = trigger.name(), "guard: inet pppgate intact"),
        Err(e) => tracing::error!(trigger = trigger.name(), "guard: restore failed: {}", one_line(e)),
    })?;
    Ok(())
}

//! Checks of pppgate's own state: the database, the kernel (nft, sysctls, interfaces, the
//! policy as a dry-run reconcile), the sessions and their radacct rows, locks, the accounting
//! spool and the timer jobs' last runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde_json::json;

use super::{ago, list, Check, Ctx, Status};
use crate::config::RadacctMode;
use crate::db::{migrate, radacct};
use crate::error::one_line;
use crate::janitor::{self, Live, Rules, Verdict};
use crate::kernel::links::LinkSnapshot;
use crate::kernel::{nft_counters, Netlink, Nft, NftNetlink, NftSet, Sysctl};
use crate::lock::now_unix;
use crate::policy::planner::Op;
use crate::radius::sqlname::sql_username;
use crate::runs::{self, Job, RunResult};

fn db_unavailable(id: &'static str, e: &str, hint: &str) -> Check {
    Check::new(id, Status::Warn, format!("not checked: database unavailable ({e})"), hint)
}

// ---------------------------------------------------------------------------------------------
// database

pub(super) fn database(ctx: &Ctx) -> Check {
    let hint = "pppgate db status";
    let mut c = match ctx.db() {
        Ok(c) => c,
        Err(e) => return Check::new("database", Status::Fail, format!("unreachable: {e}"), hint),
    };
    let st = match migrate::status(&mut c) {
        Ok(s) => s,
        Err(e) => return Check::new("database", Status::Fail, format!("reachable, but: {}", one_line(&e)), hint),
    };
    let missing: Vec<String> = st.freeradius_tables.iter().filter(|(_, p)| !p).map(|(t, _)| t.clone()).collect();
    let details = json!({ "version": st.version, "latest": st.latest, "missing_freeradius_tables": missing });
    let (status, finding) = if st.version < st.latest {
        (Status::Fail, format!("schema version {} is older than {}: run `pppgate db migrate`", st.version, st.latest))
    } else if st.version > st.latest {
        (Status::Fail, format!("schema version {} is newer than this pppgate ({})", st.version, st.latest))
    } else if !missing.is_empty() {
        (Status::Fail, format!("FreeRADIUS tables missing: {} (run `pppgate db migrate`)", missing.join(", ")))
    } else {
        (Status::Ok, format!("reachable; schema version {} (current); FreeRADIUS tables present", st.version))
    };
    Check::new("database", status, finding, hint).with(details)
}

// ---------------------------------------------------------------------------------------------
// nft

pub(super) fn nft(_ctx: &Ctx) -> Check {
    let hint = "nft list table inet pppgate";
    let probe = match NftNetlink::new().and_then(|mut n| n.probe()) {
        Ok(p) => p,
        Err(e) => return Check::new("nft", Status::Fail, format!("cannot read nftables: {}", one_line(&e)), hint),
    };
    if !probe.table {
        return Check::new(
            "nft",
            Status::Fail,
            "table inet pppgate is missing: nothing drops traffic of ppp interfaces pppgate does not police \
             (`pppgate reconcile` builds it)",
            hint,
        );
    }
    let drops = match nft_counters::read() {
        Ok(Some(d)) => d,
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            return Check::new("nft", Status::Fail, format!("cannot read the drop counters: {}", one_line(&e)), hint)
        }
    };
    let details = json!({
        "layout": probe.comment,
        "layout_current": probe.layout_ok(),
        "sets": probe.sets.keys().collect::<Vec<_>>(),
        "rules_per_chain": probe.rules_per_chain,
        "drops": drops,
    });
    if !probe.layout_ok() {
        return Check::new(
            "nft",
            Status::Fail,
            format!(
                "table inet pppgate does not have the current layout ({} expected, found {}): `pppgate reconcile` rebuilds it",
                crate::kernel::nft::LAYOUT_COMMENT,
                probe.comment.as_deref().unwrap_or("no marker")
            ),
            hint,
        )
        .with(details);
    }
    let summary: Vec<String> = drops.iter().map(|(r, c)| format!("{r} {}", c.packets)).collect();
    Check::new(
        "nft",
        Status::Ok,
        format!(
            "inet pppgate has the current layout; dropped packets: {}",
            if summary.is_empty() { "none counted".to_string() } else { summary.join(", ") }
        ),
        hint,
    )
    .with(details)
}

// ---------------------------------------------------------------------------------------------
// sysctl

pub(super) fn sysctl(ctx: &Ctx) -> Check {
    let hint = "sysctl net.ipv4.ip_forward net.ipv4.conf.all.rp_filter net.ipv4.conf.default.rp_filter";
    let ifnames: Vec<String> = match ctx.scan() {
        Ok((checked, _)) => {
            checked.iter().filter(|c| c.validity.is_valid()).map(|c| c.mapping.ppp_if.clone()).collect()
        }
        Err(_) => Vec::new(),
    };
    let r = match crate::kernel::SysctlProc::new().read(&ifnames) {
        Ok(r) => r,
        Err(e) => return Check::new("sysctl", Status::Fail, one_line(&e), hint),
    };
    let details = serde_json::to_value(&r).unwrap_or_default();
    if !r.ip_forward {
        return Check::new("sysctl", Status::Fail, "net.ipv4.ip_forward = 0: sessions forward nothing", hint)
            .with(details);
    }
    let strict = r.strict_interfaces();
    if r.rp_filter_all == 1 || !strict.is_empty() {
        let mut what = Vec::new();
        if r.rp_filter_all == 1 {
            what.push("conf.all".to_string());
        }
        what.extend(strict);
        return Check::new(
            "sysctl",
            Status::Warn,
            format!("strict rp_filter (1) on {}: traffic from networks behind clients is dropped", list(&what, 4)),
            hint,
        )
        .with(details);
    }
    Check::new(
        "sysctl",
        Status::Ok,
        format!("ip_forward = 1; rp_filter loose or off (all {}, default {})", r.rp_filter_all, r.rp_filter_default),
        hint,
    )
    .with(details)
}

// ---------------------------------------------------------------------------------------------
// sessions: mapping files

pub(super) fn sessions(ctx: &Ctx) -> Check {
    let hint = "pppgate session list";
    let (checked, malformed) = match ctx.scan() {
        Ok(s) => s,
        Err(e) => return Check::new("sessions", Status::Fail, format!("cannot scan the mappings: {e}"), hint),
    };
    let valid = checked.iter().filter(|c| c.validity.is_valid()).count();
    let not_valid: Vec<String> = checked
        .iter()
        .filter(|c| !c.validity.is_valid())
        .map(|c| format!("{} ({})", c.mapping.ppp_if, c.validity.reason()))
        .collect();
    let details = json!({
        "valid": valid,
        "not_valid": checked.iter().filter(|c| !c.validity.is_valid()).map(|c| json!({
            "ppp_if": c.mapping.ppp_if, "connection_id": c.mapping.connection_id,
            "pppd_pid": c.mapping.pppd_pid, "reason": c.validity.reason() })).collect::<Vec<_>>(),
        "malformed": malformed,
    });
    let dir = ctx.cfg.paths.sessions_dir.display();
    if !malformed.is_empty() {
        return Check::new(
            "sessions",
            Status::Fail,
            format!(
                "{} malformed mapping file(s) in {dir} (never treated as sessions): {}",
                malformed.len(),
                list(malformed, 2)
            ),
            hint,
        )
        .with(details);
    }
    if !not_valid.is_empty() {
        return Check::new(
            "sessions",
            Status::Warn,
            format!(
                "{valid} VALID; {} mapping file(s) not VALID (left behind): {}",
                not_valid.len(),
                list(&not_valid, 3)
            ),
            hint,
        )
        .with(details);
    }
    Check::new("sessions", Status::Ok, format!("{valid} VALID session(s); no stale or malformed mapping file"), hint)
        .with(details)
}

// ---------------------------------------------------------------------------------------------
// unpoliced: ppp interfaces without a VALID mapping

pub(super) fn unpoliced(ctx: &Ctx) -> Check {
    let hint = "ip -br addr show | grep ^ppp; pppgate session list";
    let mapped: BTreeSet<String> = match ctx.scan() {
        Ok((checked, _)) => {
            checked.iter().filter(|c| c.validity.is_valid()).map(|c| c.mapping.ppp_if.clone()).collect()
        }
        Err(e) => return Check::new("unpoliced", Status::Fail, format!("cannot scan the mappings: {e}"), hint),
    };
    let links = match LinkSnapshot::read() {
        Ok(l) => l,
        Err(e) => return Check::new("unpoliced", Status::Fail, one_line(&e), hint),
    };
    let mut nft = NftNetlink::new().ok();
    let mut unpoliced = Vec::new();
    let mut connecting = Vec::new();
    let mut total = 0;
    for (name, link) in &links.by_name {
        if !name.starts_with("ppp") {
            continue;
        }
        total += 1;
        if mapped.contains(name) {
            continue;
        }
        match link.peers.first() {
            None => connecting.push(format!("{name} (no IPv4 peer yet)")),
            Some(peer) => {
                let gated = nft
                    .as_mut()
                    .and_then(|n| n.sets_of(crate::kernel::Member::new(link.index, *peer)).ok())
                    .is_some_and(|s| s.contains(&NftSet::Pending));
                if gated {
                    connecting.push(format!("{name} {peer} (gated)"));
                } else {
                    unpoliced.push(format!("{name} {peer}"));
                }
            }
        }
    }
    let details = json!({ "ppp_interfaces": total, "unpoliced": unpoliced, "connecting": connecting });
    if !unpoliced.is_empty() {
        return Check::new(
            "unpoliced",
            Status::Fail,
            format!(
                "{} ppp interface(s) without a VALID mapping (unpoliced; nft drops their traffic): {}",
                unpoliced.len(),
                list(&unpoliced, 4)
            ),
            hint,
        )
        .with(details);
    }
    if !connecting.is_empty() {
        return Check::new(
            "unpoliced",
            Status::Warn,
            format!("{} ppp interface(s) connecting (no mapping yet): {}", connecting.len(), list(&connecting, 4)),
            hint,
        )
        .with(details);
    }
    Check::new("unpoliced", Status::Ok, format!("every ppp interface ({total}) has a VALID mapping"), hint)
        .with(details)
}

// ---------------------------------------------------------------------------------------------
// policy: kernel state versus SQL (a dry-run reconcile)

pub(super) fn policy(ctx: &Ctx) -> Check {
    let hint = "pppgate reconcile --dry-run";
    let res = Netlink::new().and_then(|mut b| crate::policy::apply::reconcile(ctx.cfg, &mut b, true));
    let r = match res {
        Ok(r) => r,
        Err(e) => return Check::new("policy", Status::Fail, format!("cannot plan: {}", one_line(&e)), hint),
    };
    // A connect in progress has its address gated before its mapping exists: reconcile would
    // remove that gate (fail closed), but it is not a difference worth a failure.
    let connecting = connecting_peers(ctx);
    let mut plan = r.outcome.plan.clone();
    for op in &mut plan.ops {
        if let Op::NftTransaction { changes } = op {
            changes.retain(|c| !(c.set == NftSet::Pending && !c.add && connecting.contains(&c.ip)));
        }
    }
    plan.ops.retain(|op| !matches!(op, Op::NftTransaction { changes } if changes.is_empty()));
    let steps = &plan.describe();
    let details = json!({
        "sessions": r.outcome.sessions.len(),
        "differences": steps,
        "sql_unavailable": r.sql_unavailable,
    });
    if let Some(e) = &r.sql_unavailable {
        let status = if steps.is_empty() { Status::Warn } else { Status::Fail };
        return Check::new(
            "policy",
            status,
            format!(
                "only partly checked (database unavailable: {e}); {} change(s) for sessions that are gone{}",
                steps.len(),
                if steps.is_empty() { String::new() } else { format!(": {}", list(steps, 3)) }
            ),
            hint,
        )
        .with(details);
    }
    if steps.is_empty() {
        return Check::new(
            "policy",
            Status::Ok,
            format!("kernel state matches the policy of all {} session(s)", r.outcome.sessions.len()),
            hint,
        )
        .with(details);
    }
    Check::new(
        "policy",
        Status::Fail,
        format!("kernel state differs from the policy: {} change(s) pending: {}", steps.len(), list(steps, 3)),
        hint,
    )
    .with(details)
}

/// Peers of ppp interfaces without a VALID mapping (sessions between the gate and ip-up).
fn connecting_peers(ctx: &Ctx) -> BTreeSet<Ipv4Addr> {
    let mapped: BTreeSet<String> = match ctx.scan() {
        Ok((checked, _)) => {
            checked.iter().filter(|c| c.validity.is_valid()).map(|c| c.mapping.ppp_if.clone()).collect()
        }
        Err(_) => return BTreeSet::new(),
    };
    LinkSnapshot::read_addresses()
        .map(|l| {
            l.by_name
                .iter()
                .filter(|(n, _)| n.starts_with("ppp") && !mapped.contains(*n))
                .flat_map(|(_, link)| link.peers.iter().copied())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// radacct: open rows without a session (lockout risk), sessions without a row

pub(super) fn radacct(ctx: &Ctx) -> Check {
    let hint = "pppgate janitor --dry-run";
    let cfg = ctx.cfg;
    let mut c = match ctx.db() {
        Ok(c) => c,
        Err(e) => return db_unavailable("radacct", &e, hint),
    };
    let valid: Vec<crate::mapping::Mapping> = match ctx.scan() {
        Ok((checked, _)) => checked.iter().filter(|x| x.validity.is_valid()).map(|x| x.mapping.clone()).collect(),
        Err(e) => return Check::new("radacct", Status::Fail, format!("cannot scan the mappings: {e}"), hint),
    };
    let read = (|| {
        let now = radacct::now(&mut c)?;
        let rows = radacct::open_rows_of_nas(&mut c, IpAddr::V4(cfg.nas.ip))?;
        let ids: Vec<i64> = valid.iter().map(|m| m.connection_id).collect();
        let logins: BTreeMap<i64, String> = radacct::logins_of(&mut c, &ids)?.into_iter().collect();
        Ok::<_, crate::Error>((now, rows, logins))
    })();
    let (db_now, rows, logins) = match read {
        Ok(x) => x,
        Err(e) => return Check::new("radacct", Status::Fail, one_line(&e), hint),
    };
    let live: Vec<Live> = valid
        .iter()
        .map(|m| Live {
            mapping: m.clone(),
            sql_username: logins.get(&m.connection_id).map(|l| sql_username(l.as_bytes())),
        })
        .collect();
    let rules = Rules::from_config(cfg);
    let mut stale = Vec::new();
    let mut claimed: BTreeSet<(String, u32)> = BTreeSet::new();
    for r in &rows {
        match janitor::classify(r, &live, &rules, db_now) {
            Verdict::Stale { .. } => stale.push(format!(
                "{} user {} ip {}",
                r.radacctid,
                r.username,
                r.framed_ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into())
            )),
            Verdict::Live { ppp_if, pppd_pid, .. } => {
                claimed.insert((ppp_if, pppd_pid));
            }
            _ => {}
        }
    }
    // A session's row appears at its start (radius.so) or at the first collector run (own row).
    let grace = cfg.accounting.interim_interval.as_secs() as i64 + 60;
    let now = now_unix();
    let rowless: Vec<String> = if cfg.accounting.radacct == RadacctMode::Off {
        Vec::new()
    } else {
        valid
            .iter()
            .filter(|m| !claimed.contains(&(m.ppp_if.clone(), m.pppd_pid)))
            .filter(|m| now - m.up_ts.unwrap_or(m.start_ts) > grace)
            .map(|m| format!("{} (connection {})", m.ppp_if, m.connection_id))
            .collect()
    };
    let details = json!({
        "open_rows": rows.len(),
        "without_session": stale,
        "sessions_without_row": rowless,
        "accounting_radacct": format!("{:?}", cfg.accounting.radacct).to_lowercase(),
    });
    let mut notes = Vec::new();
    if !stale.is_empty() {
        notes.push(format!(
            "{} open row(s) of this NAS without a VALID session (Simultaneous-Use lockout risk until the janitor closes them): {}",
            stale.len(),
            list(&stale, 3)
        ));
    }
    if !rowless.is_empty() {
        notes.push(format!("{} VALID session(s) without an open radacct row: {}", rowless.len(), list(&rowless, 3)));
    }
    if notes.is_empty() {
        return Check::new(
            "radacct",
            Status::Ok,
            format!(
                "{} open row(s) of NAS {}, each with a VALID session; every session has its row",
                rows.len(),
                cfg.nas.ip
            ),
            hint,
        )
        .with(details);
    }
    Check::new("radacct", Status::Warn, notes.join("; "), hint).with(details)
}

// ---------------------------------------------------------------------------------------------
// locks

pub(super) fn locks(ctx: &Ctx) -> Check {
    let p = &ctx.cfg.paths;
    let ttl = ctx.cfg.policy.lock_ttl;
    let hint = format!("cat /proc/locks {} {}", p.apply_lock.display(), p.collector_lock.display());
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    let mut details = Vec::new();
    for (name, path) in [("apply", &p.apply_lock), ("collector", &p.collector_lock)] {
        match crate::lock::holder(path) {
            None => {
                notes.push(format!("{name} free"));
                details.push(json!({ "lock": name, "path": path, "held": false }));
            }
            Some(h) => {
                let age = h.age();
                let stale = age > ttl;
                if stale {
                    status = Status::Fail;
                    notes.push(format!(
                        "{name} STALE: held by pid {} ({}) for {} (TTL {}s; `--break-stale-lock` ends it)",
                        h.pid,
                        h.what,
                        ago(age.as_secs() as i64),
                        ttl.as_secs()
                    ));
                } else {
                    notes.push(format!("{name} held by pid {} ({}) for {}", h.pid, h.what, ago(age.as_secs() as i64)));
                }
                details.push(json!({ "lock": name, "path": path, "held": true, "holder": h,
                    "age_s": age.as_secs(), "stale": stale }));
            }
        }
    }
    Check::new("locks", status, notes.join("; "), hint).with(json!({ "locks": details }))
}

// ---------------------------------------------------------------------------------------------
// spool

/// A backlog older than this is a failure: accounting a day behind is billing gone wrong.
const SPOOL_FAIL_AGE_S: i64 = 86_400;

pub(super) fn spool(ctx: &Ctx) -> Check {
    let dir = &ctx.cfg.paths.accounting_dir;
    let hint = format!("ls -l {}/spool {}/final {}/spool/bad", dir.display(), dir.display(), dir.display());
    let b = match crate::accounting::spool::backlog(dir) {
        Ok(b) => b,
        Err(e) => return Check::new("spool", Status::Fail, one_line(&e), hint),
    };
    let details = serde_json::to_value(&b).unwrap_or_default();
    let now = now_unix();
    let age = b.oldest_at.map(|t| now - t);
    let warn_age = 2 * ctx.cfg.accounting.interim_interval.as_secs() as i64;
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    if b.batches > 0 {
        let a = age.unwrap_or(0);
        if a > SPOOL_FAIL_AGE_S {
            status = Status::Fail;
        } else if a > warn_age {
            status = Status::Warn;
        }
        notes.push(format!("{} batch(es), {} bytes waiting, oldest {}", b.batches, b.bytes, ago(a)));
    }
    if let Some(since) = b.outage_since {
        status = status.max(Status::Warn);
        notes.push(format!("the collector finds the database unreachable since {}", crate::audit::rfc3339(since)));
    }
    if b.final_markers > 0 {
        notes.push(format!("{} final marker(s) for the next collector run", b.final_markers));
    }
    if b.quarantined > 0 {
        status = status.max(Status::Warn);
        notes.push(format!("{} unreadable file(s) quarantined in spool/bad", b.quarantined));
    }
    if notes.is_empty() {
        notes.push("empty: everything is in SQL".into());
    }
    Check::new("spool", status, notes.join("; "), hint).with(details)
}

// ---------------------------------------------------------------------------------------------
// runs: last run of each timer job

pub(super) fn runs(ctx: &Ctx) -> Check {
    let state = &ctx.cfg.paths.state_dir;
    let hint = format!("cat {}/runs/*.json; journalctl -t pppgate", state.display());
    let now = now_unix();
    let mut status = Status::Ok;
    let mut notes = Vec::new();
    let mut details = Vec::new();
    for job in Job::ALL {
        let name = job.name();
        match runs::load(state, job) {
            Err(e) => {
                status = Status::Fail;
                notes.push(format!("{name}: {}", one_line(&e)));
            }
            Ok(None) => {
                status = status.max(Status::Warn);
                notes.push(format!("{name}: no run recorded"));
                details.push(json!({ "job": name, "recorded": false }));
            }
            Ok(Some(r)) => {
                let age = now - r.finished_at;
                let late = age > 3 * job.interval().as_secs() as i64;
                let mut s = match r.result {
                    RunResult::Ok => Status::Ok,
                    RunResult::SqlUnavailable | RunResult::Locked => Status::Warn,
                    RunResult::Failed => Status::Fail,
                };
                if late {
                    s = s.max(Status::Warn);
                }
                status = status.max(s);
                let mut note = format!("{name} {} {} ago", r.result.name(), ago(age));
                if r.result != RunResult::Ok {
                    note.push_str(&format!(" (exit {}", r.exit_code));
                    if let Some(m) = &r.message {
                        note.push_str(&format!(": {m}"));
                    }
                    note.push(')');
                    if let Some(t) = r.last_success_at {
                        note.push_str(&format!(", last success {} ago", ago(now - t)));
                    }
                }
                if late {
                    note.push_str(&format!(" — late (runs every {})", ago(job.interval().as_secs() as i64)));
                }
                notes.push(note);
                details.push(json!({ "job": name, "recorded": true, "result": r.result, "exit_code": r.exit_code,
                    "finished_at": r.finished_at, "age_s": age, "late": late,
                    "last_success_at": r.last_success_at, "message": r.message }));
            }
        }
    }
    Check::new("runs", status, notes.join("; "), hint).with(json!({ "jobs": details }))
}

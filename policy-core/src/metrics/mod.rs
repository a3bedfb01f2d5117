//! Prometheus metrics in the text exposition format (0.0.4, what node_exporter's textfile
//! collector reads), encoded by the `prometheus` crate's `TextEncoder` from metric families
//! built here from pppgate's own records.
//!
//! Three sections, each written atomically by the run that knows its figures, into its own file
//! of node_exporter's textfile directory (`metrics.textfile_dir`; names never repeat across
//! files, so node_exporter never sees one family twice):
//! * [`Section::Policy`] → `pppgate_policy.prom`, by reconcile: sessions by state (the nft set
//!   each VALID session's address is in), mapping files, unmapped ppp interfaces, nft drop
//!   counters by reason, reconcile's last run;
//! * [`Section::Accounting`] → `pppgate_accounting.prom`, by the collector: spool backlog,
//!   database outages, connects by outcome and the connect-path histograms (from the plugin's
//!   events, [`events`]), per-session bytes, the collector's last run;
//! * [`Section::Janitor`] → `pppgate_janitor.prom`, by the janitor: its last run, rows closed.
//!
//! `pppgate metrics` prints all three, read fresh (it changes nothing). Names follow the
//! Prometheus conventions: `pppgate_` prefix, base units (`_seconds`, `_bytes`), `_total` for
//! counters, `_timestamp_seconds` for points in time. docs/operations.md lists every family.

pub mod events;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::config::Config;
use crate::error::{one_line, Error, Result};
use crate::kernel::links::LinkSnapshot;
use crate::kernel::{nft_counters, Nft, NftNetlink, NftSet};
use crate::lock::now_unix;
use crate::runs::{self, Job, RunResult};

/// Which part of the metrics a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Section {
    Policy,
    Accounting,
    Janitor,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Policy, Section::Accounting, Section::Janitor];

    /// The textfile this section is written to.
    pub fn file_name(self) -> &'static str {
        match self {
            Section::Policy => "pppgate_policy.prom",
            Section::Accounting => "pppgate_accounting.prom",
            Section::Janitor => "pppgate_janitor.prom",
        }
    }

    pub fn of_job(job: Job) -> Section {
        match job {
            Job::Reconcile => Section::Policy,
            Job::Collector => Section::Accounting,
            Job::Janitor => Section::Janitor,
        }
    }
}

/// Metric families under construction.
#[derive(Debug, Default)]
pub struct Families {
    fams: Vec<MetricFamily>,
}

fn labels(l: &[(&str, &str)]) -> Vec<LabelPair> {
    l.iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name(k.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect()
}

impl Families {
    fn family(&mut self, name: &str, help: &str, ty: MetricType) -> &mut MetricFamily {
        if let Some(i) = self.fams.iter().position(|f| f.name() == name) {
            return &mut self.fams[i];
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(ty);
        self.fams.push(f);
        self.fams.last_mut().expect("just pushed")
    }

    /// Declares a family without samples yet (kept out of the output until it has some).
    pub fn declare(&mut self, name: &str, help: &str, ty: MetricType) {
        self.family(name, help, ty);
    }

    pub fn gauge(&mut self, name: &str, help: &str, l: &[(&str, &str)], v: f64) {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut g = Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
        self.family(name, help, MetricType::GAUGE).mut_metric().push(m);
    }

    pub fn counter(&mut self, name: &str, help: &str, l: &[(&str, &str)], v: f64) {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut c = Counter::default();
        c.set_value(v);
        m.set_counter(c);
        self.family(name, help, MetricType::COUNTER).mut_metric().push(m);
    }

    /// A histogram from cumulative counts per upper bound (`+Inf` is the count).
    pub fn histogram(&mut self, name: &str, help: &str, l: &[(&str, &str)], h: &events::Histo) {
        let mut m = Metric::default();
        m.set_label(labels(l));
        let mut hist = Histogram::default();
        hist.set_sample_count(h.count);
        hist.set_sample_sum(h.sum_s);
        hist.set_bucket(
            h.cumulative()
                .into_iter()
                .map(|(le, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(n);
                    b
                })
                .collect(),
        );
        m.set_histogram(hist);
        self.family(name, help, MetricType::HISTOGRAM).mut_metric().push(m);
    }

    /// The text exposition (families without samples left out).
    pub fn encode(&self) -> String {
        let fams: Vec<MetricFamily> = self.fams.iter().filter(|f| !f.get_metric().is_empty()).cloned().collect();
        prometheus::TextEncoder::new().encode_to_string(&fams).expect("metric families are complete")
    }

    pub fn names(&self) -> Vec<String> {
        self.fams.iter().filter(|f| !f.get_metric().is_empty()).map(|f| f.name().to_string()).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// job records (every section has its job's)

fn job_metrics(f: &mut Families, cfg: &Config, job: Job) {
    let j = job.name();
    let rec = match runs::load(&cfg.paths.state_dir, job) {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(job = j, "last-run record unreadable: {}", one_line(&e));
            return;
        }
    };
    let n = |s: &str| format!("pppgate_{j}_{s}");
    f.gauge(
        &n("last_run_timestamp_seconds"),
        &format!("When the {j} last finished a run (Unix time)."),
        &[],
        rec.finished_at as f64,
    );
    if let Some(t) = rec.last_success_at {
        f.gauge(
            &n("last_success_timestamp_seconds"),
            &format!("When a {j} run last succeeded (Unix time)."),
            &[],
            t as f64,
        );
    }
    f.gauge(&n("last_run_duration_seconds"), &format!("Wall time of the {j}'s last run."), &[], rec.duration_s);
    f.gauge(
        &n("last_run_exit_code"),
        &format!("Exit code of the {j}'s last run (0 ok, 69 SQL down, 75 lock busy)."),
        &[],
        f64::from(rec.exit_code),
    );
    for (phase, s) in &rec.phases {
        f.gauge(
            &n("last_run_phase_seconds"),
            &format!("Seconds per phase of the {j}'s last run."),
            &[("phase", phase)],
            *s,
        );
    }
    if let Some(w) = rec.lock_wait_s {
        f.gauge(&n("last_run_lock_wait_seconds"), &format!("How long the {j}'s last run waited for its lock."), &[], w);
    }
    if let Some(h) = rec.lock_held_s {
        f.gauge(&n("last_run_lock_held_seconds"), &format!("How long the {j}'s last run held its lock."), &[], h);
    }
    for r in RunResult::ALL {
        f.counter(
            &n("runs_total"),
            &format!("Runs of the {j} by result."),
            &[("result", r.name())],
            rec.totals.runs.get(r.name()).copied().unwrap_or(0) as f64,
        );
    }
    f.counter(
        &n("database_outages_total"),
        &format!("Database outages the {j} saw begin (a run finding SQL unreachable after one that did not)."),
        &[],
        rec.totals.database_outages as f64,
    );
    let total = |k: &str| rec.totals.figures.get(k).copied().unwrap_or(0) as f64;
    match job {
        Job::Janitor => {
            f.counter(
                "pppgate_janitor_radacct_rows_closed_total",
                "Stale radacct rows of this NAS the janitor closed.",
                &[],
                total("radacct_closed"),
            );
            f.counter(
                "pppgate_janitor_sessions_closed_total",
                "Stale pppgate_sessions rows of this NAS the janitor closed.",
                &[],
                total("sessions_closed"),
            );
        }
        Job::Reconcile => {
            f.gauge(
                "pppgate_reconcile_last_run_changes",
                "Kernel changes the last reconcile made (0 when nothing had drifted).",
                &[],
                rec.figures.get("changes").copied().unwrap_or(0) as f64,
            );
            f.counter("pppgate_reconcile_changes_total", "Kernel changes reconcile runs made.", &[], total("changes"));
        }
        Job::Collector => {
            f.counter(
                "pppgate_collector_sessions_closed_total",
                "Sessions the collector closed (ip-down's final counters, or vanished without ip-down).",
                &[],
                total("sessions_closed"),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// policy section

fn policy_metrics(f: &mut Families, cfg: &Config) -> Result<()> {
    let (checked, malformed) = crate::mapping::scan_checked(&cfg.paths.sessions_dir)?;
    let valid: Vec<&crate::mapping::Mapping> =
        checked.iter().filter(|c| c.validity.is_valid()).map(|c| &c.mapping).collect();
    let mut nft = NftNetlink::new()?;
    let state = nft.read()?;
    // nft membership is bound to the session's interface index (layout 2).
    let links = crate::kernel::links::LinkSnapshot::read_addresses()?;
    let mut by_state: std::collections::BTreeMap<&str, u64> =
        ["full", "restricted", "blocked", "gated", "unpoliced"].iter().map(|s| (*s, 0)).collect();
    for m in &valid {
        let sets = links
            .get(&m.ppp_if)
            .map(|l| state.sets_of(crate::kernel::Member::new(l.index, m.client_ip)))
            .unwrap_or_default();
        // The most restrictive set wins, as in the forward chain.
        let s = if sets.contains(&NftSet::Blocked) {
            "blocked"
        } else if sets.contains(&NftSet::Pending) {
            "gated"
        } else if sets.contains(&NftSet::Full) {
            "full"
        } else if sets.contains(&NftSet::Restricted) {
            "restricted"
        } else {
            "unpoliced"
        };
        *by_state.entry(s).or_default() += 1;
    }
    for (s, n) in &by_state {
        f.gauge(
            "pppgate_sessions",
            "VALID sessions by the nft state set their address is in (unpoliced: in none).",
            &[("state", s)],
            *n as f64,
        );
    }
    f.gauge(
        "pppgate_mappings_invalid",
        "Mapping files that are not VALID (left behind).",
        &[],
        (checked.len() - valid.len()) as f64,
    );
    f.gauge(
        "pppgate_mappings_malformed",
        "Mapping files that do not parse (never sessions).",
        &[],
        malformed.len() as f64,
    );
    let mapped: BTreeSet<&str> = valid.iter().map(|m| m.ppp_if.as_str()).collect();
    let links = LinkSnapshot::read_lean()?;
    let unmapped = links.by_name.keys().filter(|n| n.starts_with("ppp") && !mapped.contains(n.as_str())).count();
    f.gauge(
        "pppgate_ppp_interfaces_unmapped",
        "ppp interfaces without a VALID mapping (connecting, or unpoliced).",
        &[],
        unmapped as f64,
    );
    f.gauge(
        "pppgate_nft_layout_current",
        "1 when table inet pppgate exists with the current layout.",
        &[],
        if state.base_ok { 1.0 } else { 0.0 },
    );
    for (reason, c) in nft_counters::read()?.unwrap_or_default() {
        f.counter(
            "pppgate_nft_dropped_packets_total",
            "Packets inet pppgate dropped, by rule (reason); reset when the table is rebuilt.",
            &[("reason", &reason)],
            c.packets as f64,
        );
        f.counter(
            "pppgate_nft_dropped_bytes_total",
            "Bytes inet pppgate dropped, by rule (reason); reset when the table is rebuilt.",
            &[("reason", &reason)],
            c.bytes as f64,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// accounting section

/// Outage markers of the components that keep one.
fn outage_markers(cfg: &Config) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("accounting", crate::outage::Outage::new(&cfg.paths.accounting_dir, "accounting").path().to_path_buf()),
        ("janitor", crate::outage::Outage::new(&cfg.paths.run_dir, "janitor").path().to_path_buf()),
        ("checkrad", crate::outage::Outage::new(&cfg.paths.run_dir, "checkrad").path().to_path_buf()),
        ("radius-exec", crate::outage::Outage::new(&cfg.paths.run_dir, "radius-exec").path().to_path_buf()),
    ]
}

fn accounting_metrics(f: &mut Families, cfg: &Config, stats: &events::ConnectStats) -> Result<()> {
    let b = crate::accounting::spool::backlog(&cfg.paths.accounting_dir)?;
    let now = now_unix();
    f.gauge("pppgate_spool_batches", "Accounting batches spooled and not yet in SQL.", &[], b.batches as f64);
    f.gauge("pppgate_spool_bytes", "Size of the spooled accounting batches.", &[], b.bytes as f64);
    f.gauge(
        "pppgate_spool_oldest_age_seconds",
        "Age of the oldest spooled batch (0 when the spool is empty).",
        &[],
        b.oldest_at.map(|t| (now - t).max(0)).unwrap_or(0) as f64,
    );
    f.gauge(
        "pppgate_spool_final_markers",
        "ip-down final markers waiting for the collector.",
        &[],
        b.final_markers as f64,
    );
    f.gauge(
        "pppgate_spool_quarantined_files",
        "Unreadable accounting files kept in spool/bad.",
        &[],
        b.quarantined as f64,
    );
    for (component, path) in outage_markers(cfg) {
        let since = std::fs::read_to_string(&path).ok().map(|t| {
            t.lines().find_map(|l| l.strip_prefix("since=")).and_then(|v| v.trim().parse::<i64>().ok()).unwrap_or(0)
        });
        f.gauge(
            "pppgate_database_outage",
            "1 while this component finds the database unreachable (its outage marker exists).",
            &[("component", component)],
            if since.is_some() { 1.0 } else { 0.0 },
        );
        if let Some(s) = since {
            f.gauge(
                "pppgate_database_outage_start_timestamp_seconds",
                "When the component's current database outage began (Unix time).",
                &[("component", component)],
                s as f64,
            );
        }
    }
    for o in events::Outcome::ALL {
        f.counter(
            "pppgate_connects_total",
            "Connects seen by the plugin, by outcome.",
            &[("outcome", o.name())],
            stats.outcomes.get(o.name()).copied().unwrap_or(0) as f64,
        );
    }
    f.histogram(
        "pppgate_connect_latency_seconds",
        "Applied connects: ip-up to the connect gate released.",
        &[],
        &stats.latency,
    );
    f.histogram(
        "pppgate_connect_lock_wait_seconds",
        "Applied connects: waiting for the apply lock.",
        &[],
        &stats.lock_wait,
    );
    f.histogram(
        "pppgate_connect_lock_held_seconds",
        "Applied connects: holding the apply lock.",
        &[],
        &stats.lock_held,
    );
    for phase in ["sql", "mapping", "apply"] {
        let h = stats.phases.get(phase).cloned().unwrap_or_default();
        f.histogram(
            "pppgate_connect_phase_seconds",
            "Applied connects: time per connect-path phase (sql: connect and lookup).",
            &[("phase", phase)],
            &h,
        );
    }
    session_bytes(f, cfg)
}

fn session_bytes(f: &mut Families, cfg: &Config) -> Result<()> {
    if !cfg.metrics.per_session {
        return Ok(());
    }
    let (checked, _) = crate::mapping::scan_checked(&cfg.paths.sessions_dir)?;
    let valid: Vec<&crate::mapping::Mapping> =
        checked.iter().filter(|c| c.validity.is_valid()).map(|c| &c.mapping).collect();
    let suppressed = valid.len() > cfg.metrics.per_session_max;
    f.gauge(
        "pppgate_session_series_suppressed",
        "1 when per-session series are left out because there are more VALID sessions than metrics.per_session_max.",
        &[],
        if suppressed { 1.0 } else { 0.0 },
    );
    if suppressed {
        return Ok(());
    }
    let links = LinkSnapshot::read()?;
    for m in valid {
        let Some(c) = links.get(&m.ppp_if).and_then(|l| l.counters) else { continue };
        let (rx0, tx0) = m.counters_base.unwrap_or((0, 0));
        let id = m.connection_id.to_string();
        let l = [("ppp_if", m.ppp_if.as_str()), ("connection_id", id.as_str())];
        f.counter(
            "pppgate_session_receive_bytes_total",
            "Octets received from the client since its IPCP came up (Acct-Input-Octets), per VALID session.",
            &l,
            c.rx_bytes.saturating_sub(rx0) as f64,
        );
        f.counter(
            "pppgate_session_transmit_bytes_total",
            "Octets sent to the client since its IPCP came up (Acct-Output-Octets), per VALID session.",
            &l,
            c.tx_bytes.saturating_sub(tx0) as f64,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// The families of one section, read now. `stats`: the connect totals (the collector passes
/// what it just merged; `None` reads them without merging).
pub fn gather(cfg: &Config, section: Section, stats: Option<&events::ConnectStats>) -> Result<Families> {
    let mut f = Families::default();
    match section {
        Section::Policy => {
            policy_metrics(&mut f, cfg)?;
            job_metrics(&mut f, cfg, Job::Reconcile);
        }
        Section::Accounting => {
            let owned;
            let stats = match stats {
                Some(s) => s,
                None => {
                    owned = events::view(&cfg.paths.run_dir, &cfg.paths.state_dir)?;
                    &owned
                }
            };
            accounting_metrics(&mut f, cfg, stats)?;
            job_metrics(&mut f, cfg, Job::Collector);
        }
        Section::Janitor => job_metrics(&mut f, cfg, Job::Janitor),
    }
    Ok(f)
}

/// Writes one section's textfile atomically (temp file in the same directory, which
/// node_exporter ignores as it does not end in `.prom`, then rename). Returns the path, or
/// `None` when no textfile directory is configured or it does not exist.
pub fn write_textfile(cfg: &Config, section: Section, f: &Families) -> Result<Option<PathBuf>> {
    let Some(dir) = &cfg.metrics.textfile_dir else { return Ok(None) };
    if !dir.is_dir() {
        return Ok(None);
    }
    write_into(dir, section.file_name(), &f.encode()).map(Some)
}

fn write_into(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(source) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Write { path, source });
    }
    Ok(path)
}

/// At the end of a timer job: gathers and writes its section. Errors are logged, never fatal
/// (metrics never change a job's outcome).
pub fn after_run(cfg: &Config, job: Job, stats: Option<&events::ConnectStats>) {
    let section = Section::of_job(job);
    if !matches!(&cfg.metrics.textfile_dir, Some(d) if d.is_dir()) {
        return;
    }
    match gather(cfg, section, stats).and_then(|f| write_textfile(cfg, section, &f)) {
        Ok(_) => {}
        Err(e) => tracing::warn!(job = job.name(), "metrics textfile not written: {}", one_line(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_prometheus_text() {
        let mut f = Families::default();
        f.declare("pppgate_empty_total", "Never filled.", MetricType::COUNTER);
        f.gauge("pppgate_sessions", "Sessions.", &[("state", "full")], 3.0);
        f.gauge("pppgate_sessions", "Sessions.", &[("state", "blocked")], 1.0);
        f.counter("pppgate_connects_total", "Connects.", &[("outcome", "applied")], 7.0);
        let mut h = events::Histo::default();
        h.observe_us(20_000);
        h.observe_us(20_000_000);
        f.histogram("pppgate_connect_latency_seconds", "Latency.", &[], &h);
        let text = f.encode();
        assert!(!text.contains("pppgate_empty_total"));
        assert!(text.contains("# TYPE pppgate_sessions gauge\npppgate_sessions{state=\"full\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE pppgate_connects_total counter\npppgate_connects_total{outcome=\"applied\"} 7\n"));
        assert!(text.contains("pppgate_connect_latency_seconds_bucket{le=\"0.025\"} 1\n"), "{text}");
        // 20 s: above the 15 s bucket, inside the 30 s one.
        assert!(text.contains("pppgate_connect_latency_seconds_bucket{le=\"15\"} 1\n"), "{text}");
        assert!(text.contains("pppgate_connect_latency_seconds_bucket{le=\"30\"} 2\n"), "{text}");
        assert!(text.contains("pppgate_connect_latency_seconds_bucket{le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("pppgate_connect_latency_seconds_count 2\n"));
        assert_eq!(f.names(), vec!["pppgate_sessions", "pppgate_connects_total", "pppgate_connect_latency_seconds"]);
    }

    #[test]
    fn textfiles_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_into(dir.path(), "pppgate_x.prom", "a 1\n").unwrap();
        write_into(dir.path(), "pppgate_x.prom", "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a 2\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }
}

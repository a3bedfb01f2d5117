//! Tests of the lab harness itself: it boots, passes the artifacts in, brings facts back, and
//! fails loudly (timeout, guest failure, unknown scenario, missing artifacts). Three VM boots.

use std::path::PathBuf;
use std::time::Duration;

use pppgate_lab::{Artifacts, Lab, LabError, LabOptions};

#[test]
fn smoke_scenario_sees_the_artifacts_and_brings_facts_back() {
    let run =
        Lab::run("smoke", &LabOptions::default().timeout(Duration::from_secs(300))).unwrap_or_else(|e| panic!("{e}"));
    let f = &run.facts;
    assert_eq!(f.expect("smoke.ppp_modules"), "ok", "ppp_generic/l2tp_ppp did not load in the guest");
    assert_eq!(f.expect("smoke.plugin_readable"), "yes");
    assert!(f.expect("smoke.pppgate_version").starts_with("pppgate "));
    assert_eq!(f.expect("smoke.out_writable"), "yes");
    if let Some(v) = pppgate_lab::PPPD_VERSION {
        assert_eq!(f.expect("smoke.pppd_version"), v, "the guest's pppd is not the one the plugin was built for");
    }
    // The guest writes to a tmpfs overlay; the host's tree stays untouched.
    assert_eq!(f.expect("smoke.overlay_write"), "ok");
    assert!(!pppgate_lab::paths::repo_root().join(".lab-write-probe").exists(), "a guest write reached the host");
    for f in ["console.log", "guest.log", "guest.rc", "lab.env", "results.env"] {
        assert!(run.path(f).is_file(), "{f} missing in {}", run.dir.display());
    }
    assert!(run.dir.starts_with(pppgate_lab::paths::runs_dir()));
}

#[test]
fn a_hanging_scenario_times_out_and_qemu_is_killed() {
    let opts = LabOptions::default().timeout(Duration::from_secs(60));
    match Lab::run("hang", &opts) {
        Err(LabError::Timeout { dir, after, .. }) => {
            assert!(after >= Duration::from_secs(60));
            assert!(dir.join("TIMEOUT").is_file());
            let guest = std::fs::read_to_string(dir.join("guest.log")).unwrap_or_default();
            assert!(guest.contains("hang: started"), "the scenario never ran, so this proves nothing:\n{guest}");
            let msg = LabError::Timeout { scenario: "hang".into(), after, dir: dir.clone(), tails: String::new() }
                .to_string();
            assert!(msg.contains(&dir.display().to_string()), "the error must say where the logs are: {msg}");
            // qemu itself is gone, not just the process the harness started.
            let run = dir.display().to_string();
            let left: Vec<String> = std::fs::read_dir("/proc")
                .expect("/proc")
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("qemu-system") && c.contains(&run))
                .collect();
            assert!(left.is_empty(), "qemu of the timed-out run is still running: {left:?}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn a_failing_scenario_is_an_error_with_its_exit_status_and_log() {
    match Lab::run("fail-exit", &LabOptions::default().timeout(Duration::from_secs(300))) {
        Err(e @ LabError::GuestFailed { .. }) => {
            let msg = e.to_string();
            let LabError::GuestFailed { rc, dir, .. } = e else { unreachable!() };
            assert_eq!(rc, 1);
            assert!(msg.contains("failing on purpose"), "the error carries the guest log's tail: {msg}");
            assert!(msg.contains(&dir.display().to_string()));
        }
        other => panic!("expected GuestFailed, got {other:?}"),
    }
}

#[test]
fn unknown_scenarios_and_missing_artifacts_fail_before_booting() {
    assert!(matches!(Lab::run("no-such-scenario", &LabOptions::default()), Err(LabError::UnknownScenario { .. })));
    assert!(matches!(Lab::run("../smoke", &LabOptions::default()), Err(LabError::BadScenarioName(_))));

    let nowhere = PathBuf::from("/nonexistent/pppgate-lab-artifacts");
    let opts = LabOptions {
        artifacts: Some(Artifacts { plugin: nowhere.join("libpppgate.so"), pppgate: nowhere.join("pppgate") }),
        ..LabOptions::default()
    };
    let e = Lab::run("smoke", &opts).expect_err("missing artifacts must fail");
    assert!(matches!(e, LabError::MissingArtifact { .. }), "{e:?}");
    assert!(e.to_string().contains("cargo build --release --workspace"), "the error says how to build: {e}");
}

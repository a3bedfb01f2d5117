//! Kernel WireGuard in the lab VM (issue 13): the build machines' kernel has no WireGuard, so
//! `radius-helper/tests/wg_host.rs` runs there against wireguard-go only. This test boots the VM
//! (Debian's kernel has the module) and runs the same test binary inside it with
//! `PPPGATE_WG_KERNEL=1`: pppgate's generic netlink backend creates and drives the server
//! interface, the routers are kernel WireGuard interfaces, and tenant isolation is counted at the
//! far side — handshakes, `wg status --json` against `wg show dump`, out-of-band repair, the ping
//! matrix.
//!
//! Then policy routing over the tunnel, R907 (scenario case `seed003`): a real L2TP session (xl2tpd + pppd
//! with pppgate.so) policy-routed by `pppgate pbr add … --dev wg0` into the kernel WireGuard
//! server, to a router namespace loaded from the generated wg-quick config that NATs it to the
//! internet namespace; TCP both ways (socat) counted and checksummed at the far side.
//!
//! Needs the wg_host test binary of this build: `cargo test --release --workspace` builds it
//! first; alone: `cargo test --release -p pppgate --test wg_host --no-run` before
//! `cargo test --release --test lab_wireguard`.

use std::path::PathBuf;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions};

/// The newest `wg_host-<hash>` test executable next to this one.
fn wg_host_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("deps directory");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .expect("read the deps directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("wg_host-") && !n.contains('.'))
        })
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).unwrap_or_else(|| {
        panic!(
            "no wg_host test binary in {}: build it with `cargo test --release -p pppgate --test wg_host --no-run`",
            dir.display()
        )
    })
}

#[test]
fn kernel_wireguard_server_routers_and_isolation() {
    let bin = wg_host_binary();
    let opts = LabOptions::default()
        .timeout(Duration::from_secs(1200))
        .env("LAB_WG_HOST_TEST", bin.to_str().expect("UTF-8 path"));
    let run = Lab::run("wireguard", &opts).unwrap_or_else(|e| panic!("the wireguard lab run failed: {e}"));
    let f = &run.facts;
    eprintln!(
        "wireguard lab: kernel {}, VM {:.0} s, tests {} ms",
        f.expect("wg.kernel"),
        run.elapsed.as_secs_f64(),
        f.expect("wg.test_ms")
    );
    let (listed, passed, failed) =
        (f.expect_i64("wg.tests_listed"), f.expect_i64("wg.tests_passed"), f.expect_i64("wg.tests_failed"));
    assert!(
        f.expect("wg.test_rc") == "0" && listed >= 2 && passed == listed && failed == 0,
        "wg_host under kernel WireGuard: rc {}, {passed} of {listed} passed, {failed} failed; log {}",
        f.expect("wg.test_rc"),
        run.path("cases/wg_host.log").display()
    );
    let isolation = run.read("isolation.txt");
    eprintln!("{isolation}");
    assert!(isolation.contains("cross tenant, router 1 -> router 3: 0 of 3"), "{isolation}");
    assert!(isolation.contains("same tenant, router 1 -> router 2: 3 of 3"), "{isolation}");

    // R907, policy routing over the tunnel: a real L2TP session policy-routed into wg0, NATed by the router.
    assert_eq!(
        f.expect("seed003.status"),
        "ok",
        "the seed 003 case failed; see {}",
        run.path("cases/seed003.log").display()
    );
    let route = f.expect("seed003.route_get");
    eprintln!(
        "seed 003: client {} via router {}: {route}",
        f.expect("seed003.client_ip"),
        f.expect("seed003.router_address")
    );
    assert!(
        route.contains("dev wg0") && route.contains("table 100") && route.contains(f.expect("seed003.router_address")),
        "the client's traffic is routed to the router through wg0 by table 100: {route}"
    );
    let (up_sent, up, down) =
        (f.expect_i64("seed003.up_sent"), f.expect_i64("seed003.up_bytes"), f.expect_i64("seed003.down_bytes"));
    let (via, not_via) = (f.expect_i64("seed003.via_router_bytes"), f.expect_i64("seed003.not_via_router_pkts"));
    let (wg_rx, wg_tx) = (f.expect_i64("seed003.wg_rx"), f.expect_i64("seed003.wg_tx"));
    eprintln!(
        "seed 003: TCP up {up_sent} B sent, {up} B received, down {down} B; at inet from the router's WAN {via} B, from elsewhere {not_via} packets; wg0 rx {wg_rx} B tx {wg_tx} B"
    );
    const MB4: i64 = 4 * 1024 * 1024;
    // The receivers count until the sender's FIN and compare checksums: both transfers are exact.
    assert_eq!((up_sent, up, down), (MB4, MB4, MB4), "both 4 MiB transfers arrived whole");
    assert_eq!(
        (f.expect("seed003.up_intact"), f.expect("seed003.down_intact")),
        ("yes", "yes"),
        "both transfers arrived with the sender's checksum"
    );
    assert!(via >= up, "the upload reached the internet from the router's WAN address (NAT): {via} B");
    assert_eq!(not_via, 0, "nothing reached the internet with another source (no bypass of the router)");
    assert!(wg_rx > MB4 && wg_tx > MB4, "both directions went through the tunnel: rx {wg_rx} tx {wg_tx}");
    assert_eq!(f.expect("seed003.full_member"), "yes", "the session stayed policed (its FULL member)");
}

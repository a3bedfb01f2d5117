//! L2TP over IPsec in the lab VM (tests/lab/scenarios/ipsec.sh): strongSwan's charon on both
//! sides (IKEv1, transport mode for UDP 1701; a pre-shared key and X.509 certificates), xl2tpd,
//! pppd with radius.so and pppgate.so, FreeRADIUS on PostgreSQL. The connect path's guarantees
//! are checked over IPsec exactly as over plain L2TP: UDP senders from before the link exists,
//! counted at the far side — every arrived datagram came after the policy (no gap, the client's
//! source only, through the shaping), and the dial itself rode inside ESP.
//!
//! Needs root, qemu, linux-image-amd64, charon-systemd, strongswan-swanctl, strongswan-pki,
//! libstrongswan-standard-plugins, freeradius(-postgresql) and the release artifacts.

use std::sync::OnceLock;
use std::time::Duration;

use pppgate_lab::{Lab, LabOptions, LabRun};
use pppgate_testkit::lab_output::received;

fn run() -> &'static LabRun {
    static RUN: OnceLock<Result<LabRun, String>> = OnceLock::new();
    let r = RUN.get_or_init(|| {
        Lab::run("ipsec", &LabOptions::default().timeout(Duration::from_secs(900))).map_err(|e| e.to_string())
    });
    match r {
        Ok(run) => {
            eprintln!("ipsec lab run: VM {:.1} s", run.elapsed.as_secs_f64());
            run
        }
        Err(e) => panic!("the ipsec lab run failed: {e}"),
    }
}

#[test]
fn l2tp_without_ipsec_never_reaches_pppd() {
    let r = run();
    r.expect_case("plain");
    assert_eq!(r.facts.expect("plain.lns_up"), "no");
    assert!(r.facts.expect_i64("plain.dropped") > 0, "no plain L2TP datagram was counted as dropped");
}

fn check_mode(mode: &str) {
    let r = run();
    r.expect_case(mode);
    let f = &r.facts;
    let k = |s: &str| format!("{mode}.{s}");
    println!(
        "{mode}: IKE {} ms, dial to both ip-ups {} ms, {} ESP packets into the LNS",
        f.expect(&k("ike_ms")),
        f.expect(&k("connect_to_up_ms")),
        f.expect(&k("esp_in_packets"))
    );
    assert!(f.expect_i64(&k("sas_lns")) >= 2, "no ESP SA pair on the LNS");
    assert!(f.expect_i64(&k("esp_in_packets")) > 0, "the L2TP session did not ride inside ESP");
    assert_eq!(f.expect_i64(&k("plain_drops")), 0, "L2TP of the IPsec client arrived without IPsec");
    let ip = f.expect(&k("client_ip")).to_string();
    assert_eq!(f.expect(&k("full")), "yes");
    assert_eq!(f.expect(&k("pending_after")), "no");
    assert_eq!(f.expect(&k("qdisc")), "tbf");
    assert_eq!(f.expect(&k("radacct_ip")), ip, "radius.so's accounting row");

    // The connect path over IPsec: the same checks as lab_connect's ipup case.
    let rx = received(&r.dir, mode);
    let (sent, pending, unpoliced, inet) = (
        f.expect_i64(&k("sent")),
        f.expect_i64(&k("pending_drops")),
        f.expect_i64(&k("unpoliced_drops")),
        f.expect_i64(&k("inet_pkts")),
    );
    println!("{mode} traffic: sent {sent}, dropped {pending} gated + {unpoliced} unpoliced, arrived {}", rx.len());
    assert!(!rx.is_empty(), "nothing arrived in inet after the session came up");
    assert_eq!(inet as usize, rx.len(), "inet's nft counter and the receiver disagree");
    assert!(pending > 0, "no datagram met the gate: the sender did not send from the first moment");
    let foreign: Vec<_> = rx.iter().filter(|x| x.src != ip).collect();
    assert!(foreign.is_empty(), "datagrams with another source than {ip} were forwarded: {foreign:?}");
    let gaps: Vec<(u64, u64)> =
        rx.windows(2).filter(|w| w[1].seq != w[0].seq + 1).map(|w| (w[0].seq, w[1].seq)).collect();
    assert!(
        gaps.is_empty(),
        "datagrams passed, were held back, passed again (gaps {gaps:?}): some passed before the gate"
    );
}

#[test]
fn psk_session_is_policed_from_the_first_packet() {
    check_mode("psk");
}

#[test]
fn certificate_session_is_policed_from_the_first_packet() {
    check_mode("cert");
}

//! The accounting commit against a real PostgreSQL when the wall clock was stepped back between
//! a session's readings (issue 16, R411): a later reading stamped an hour before an earlier one.
//! SQL's update times never go back, durations never shrink or go negative, no stop before its
//! start or its last stored reading (also when the janitor closes a row), and the octets keep growing — for a row pppgate owns and for radius.so's row it binds.
//! (The collector stamps readings with the wall clock; stepping the build machine's clock is not
//! acceptable, so the readings are built here. The lab's `lab_identity` steps a VM's clock.)

use std::net::Ipv4Addr;

use policy_core::accounting::counters::Octets;
use policy_core::accounting::record::{Batch, Entry, SessionInfo, Stop};
use policy_core::config::RadacctMode;
use policy_core::db::accounting::commit;
use pppgate_testkit::PgServer;

const NAS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn session(key: &str, connection_id: i64, ip: Ipv4Addr, t0: i64) -> SessionInfo {
    SessionInfo {
        key: key.into(),
        connection_id,
        ppp_if: format!("ppp{connection_id}"),
        client_ip: ip,
        pppd_pid: 4000 + connection_id as u32,
        start_ts: t0,
        up_ts: Some(t0 + 1),
        base: None,
    }
}

fn batch(seq: u64, s: &SessionInfo, at: i64, total: (u64, u64), stop: Option<i64>) -> Batch {
    Batch {
        seq,
        batch_id: format!("lns-1:clock:{seq}"),
        nas_identity: "lns-1".into(),
        collected_at: at,
        entries: vec![Entry {
            session: s.clone(),
            at,
            ifindex: stop.is_none().then_some(9),
            baseline: Octets::new(total.0, total.1),
            delta: Octets::default(),
            total: Octets::new(total.0, total.1),
            stop: stop.map(|at| Stop { at, cause: "User-Request".into() }),
        }],
    }
}

/// (start, update, stop, session time, in, out) of a radacct row, times in Unix seconds.
type RadacctRow = (i64, i64, Option<i64>, i64, i64, i64);

fn radacct(c: &mut postgres::Client, id: i64) -> RadacctRow {
    let r = c
        .query_one(
            "SELECT extract(epoch FROM acctstarttime)::int8, extract(epoch FROM acctupdatetime)::int8,
                    extract(epoch FROM acctstoptime)::int8, acctsessiontime::int8,
                    acctinputoctets, acctoutputoctets
               FROM radacct WHERE radacctid = $1",
            &[&id],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

/// (start, stop, updated, in, out, radacct id) of a pppgate_sessions row.
fn session_row(c: &mut postgres::Client, key: &str) -> (i64, Option<i64>, i64, i64, i64, Option<i64>) {
    let r = c
        .query_one(
            "SELECT extract(epoch FROM start_time)::int8, extract(epoch FROM stop_time)::int8,
                    extract(epoch FROM updated_at)::int8, bytes_in, bytes_out, radacct_id
               FROM pppgate_sessions WHERE session_key = $1",
            &[&key],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

fn usage(c: &mut postgres::Client, conn: i64) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT COALESCE(sum(bytes_in), 0)::int8, COALESCE(sum(bytes_out), 0)::int8 FROM vpn_usage WHERE connection_id = $1",
            &[&conn],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn readings_stamped_before_the_last_never_move_sql_times_back() {
    let pg = PgServer::new();
    pg.psql(
        "INSERT INTO vpn_connections (id, subaccount_login, status) VALUES (1, 'alice', 'CLAIMED'), (2, 'bob', 'CLAIMED')",
    );
    let mut c = pg.client();
    let t0 = policy_core::lock::now_unix() - 600;
    let back = -3600;

    // alice: pppgate owns her radacct row (mode own). bob: radius.so's row, bound by pppgate.
    let alice = session("lns-1:alice", 1, Ipv4Addr::new(198, 51, 100, 10), t0);
    let bob = session("lns-1:bob", 2, Ipv4Addr::new(198, 51, 100, 11), t0);
    let bob_row: i64 = c
        .query_one(
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime,
                                  acctupdatetime, framedipaddress)
             VALUES ('r-bob', 'r-bob', 'bob', $1::text::inet, to_timestamp($2), to_timestamp($2), $3::text::inet)
             RETURNING radacctid",
            &[&NAS.to_string(), &((t0 + 1) as f64), &bob.client_ip.to_string()],
        )
        .unwrap()
        .get(0);

    // Reading 1 before the step; reading 2 after the clock went back an hour (stamped 3590 s
    // before reading 1, octets higher); the stop after another 10 s of the stepped clock.
    let readings = [
        (t0 + 50, (1000, 100), None),
        (t0 + 60 + back, (3000, 300), None),
        (t0 + 70 + back, (4000, 400), Some(t0 + 70 + back)),
    ];
    for (i, (at, total, stop)) in readings.into_iter().enumerate() {
        let a = batch(10 + i as u64, &alice, at, total, stop);
        commit(&mut c, NAS, RadacctMode::Own, &[&a]).unwrap();
        // bob's row stays open: radius.so's Stop closes it, never pppgate.
        let b = batch(20 + i as u64, &bob, at, total, None);
        commit(&mut c, NAS, RadacctMode::Auto, &[&b]).unwrap();
    }

    let last = t0 + 50;
    let (start, updated, stop, dur, rx, tx) = {
        let id: i64 = c
            .query_one("SELECT radacctid FROM radacct WHERE acctuniqueid = 'pppgate:lns-1:alice'", &[])
            .unwrap()
            .get(0);
        radacct(&mut c, id)
    };
    assert_eq!(start, t0 + 1, "alice's row starts at IPCP-up");
    assert_eq!(updated, last, "acctupdatetime never goes back to a reading stamped earlier");
    let stop = stop.expect("alice's row is closed");
    assert!(stop >= start, "acctstoptime {stop} before acctstarttime {start}");
    assert_eq!(stop, last, "acctstoptime is not before the last reading already stored (it was seen alive then)");
    assert_eq!(dur, last - start, "acctsessiontime never shrinks and is never negative");
    assert_eq!((rx, tx), (4000, 400));

    let (start, stop, updated, rx, tx, _) = session_row(&mut c, &alice.key);
    assert_eq!(start, t0 + 1);
    assert!(stop.expect("alice's session is closed") >= start, "pppgate_sessions stop before start");
    assert_eq!(stop, Some(last), "pppgate_sessions stop not before its last stored reading");
    assert_eq!(updated, last, "pppgate_sessions.updated_at never goes back");
    assert_eq!((rx, tx), (4000, 400));
    assert_eq!(usage(&mut c, 1), (4000, 400), "every octet counted once, none negative");

    let (start, updated, stop, dur, rx, tx) = radacct(&mut c, bob_row);
    assert_eq!(start, t0 + 1, "radius.so's start kept");
    assert_eq!(updated, last, "the bound row's acctupdatetime never goes back");
    assert_eq!(stop, None, "pppgate never closes radius.so's row");
    assert_eq!(dur, last - start, "the bound row's acctsessiontime never shrinks");
    assert_eq!((rx, tx), (4000, 400));
    let (_, _, updated, rx, tx, bound) = session_row(&mut c, &bob.key);
    assert_eq!(bound, Some(bob_row), "bound by NAS, framed IP and start window");
    assert_eq!(updated, last);
    assert_eq!((rx, tx), (4000, 400));
    assert_eq!(usage(&mut c, 2), (4000, 400));
    assert_eq!(c.query_one("SELECT count(*) FROM radacct", &[]).unwrap().get::<_, i64>(0), 2, "no second row for bob");
}

/// The janitor's close with a stop stamped before the row's last update (the clock went back
/// after the last interim, or the collector's last-seen time is older than radius.so's interim):
/// the stop is the last update, the duration stays what the interim said — for radacct and for
/// pppgate_sessions.
#[test]
fn a_close_stamped_before_the_last_update_stops_at_the_last_update() {
    use policy_core::db::radacct::{close_rows, close_sessions, Close, CloseSession};
    let pg = PgServer::new();
    let mut c = pg.client();
    let t0 = policy_core::lock::now_unix() - 600;
    let id: i64 = c
        .query_one(
            "INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime,
                                  acctupdatetime, acctsessiontime, acctinputoctets, acctoutputoctets)
             VALUES ('r-carol', 'r-carol', 'carol', $1::text::inet, to_timestamp($2), to_timestamp($3), 300, 10, 20)
             RETURNING radacctid",
            &[&NAS.to_string(), &(t0 as f64), &((t0 + 300) as f64)],
        )
        .unwrap()
        .get(0);
    let stop = t0 + 300 - 3600;
    let closed = close_rows(
        &mut c,
        std::net::IpAddr::V4(NAS),
        &[Close { radacctid: id, stop: Some(stop), input_octets: Some(5), output_octets: None }],
        "Lost-Carrier",
    )
    .unwrap();
    assert_eq!(closed, vec![id]);
    let (start, updated, stop_at, dur, rx, tx) = radacct(&mut c, id);
    assert_eq!(stop_at, Some(t0 + 300), "acctstoptime is the last update, not the earlier stamp or the start");
    assert_eq!(updated, t0 + 300, "acctupdatetime never goes back");
    assert_eq!(dur, 300, "acctsessiontime never shrinks");
    assert_eq!((start, rx, tx), (t0, 10, 20), "known counters never lower a stored value");

    pg.psql(&format!(
        "INSERT INTO pppgate_sessions (session_key, nas_identity, connection_id, username, ppp_if, client_ip,
                                       pppd_pid, start_time, updated_at, bytes_in, bytes_out)
         VALUES ('lns-1:carol', 'lns-1', NULL, 'carol', 'ppp3', '198.51.100.12', 4242,
                 to_timestamp({t0}), to_timestamp({}), 10, 20)",
        t0 + 300
    ));
    let keys = close_sessions(
        &mut c,
        "lns-1",
        &[CloseSession { session_key: "lns-1:carol".into(), stop: Some(stop), bytes_in: None, bytes_out: None }],
        "Lost-Carrier",
    )
    .unwrap();
    assert_eq!(keys, vec!["lns-1:carol".to_string()]);
    let (_, stop_at, _, rx, tx, _) = session_row(&mut c, "lns-1:carol");
    assert_eq!(stop_at, Some(t0 + 300), "pppgate_sessions stop is not before its last update");
    assert_eq!((rx, tx), (10, 20));
}

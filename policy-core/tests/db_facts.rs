//! The facts queries against a real PostgreSQL: the set-based query reconcile uses for many
//! connections gives exactly what the one-row query (the connect path's) gives for each.

use pppgate_testkit::PgServer;

#[test]
fn many_ids_query_agrees_with_the_one_row_query() {
    let pg = PgServer::new();
    pg.psql(
        "INSERT INTO customers (id, name, blocked) VALUES (1, 'a', true), (2, 'b', false);
         INSERT INTO vpn_connections (id, subaccount_login, status, rate_down_kbit, rate_up_kbit, expires_at,
                                      manual_block, customer_id, quota_bytes, quota_period)
         SELECT g, 'user' || g, (ARRAY['CLAIMED','PREPROVISIONED','SUSPENDED'])[1 + g % 3],
                CASE WHEN g % 4 <> 0 THEN 8000 + g END, CASE WHEN g % 5 <> 0 THEN 2000 END,
                CASE WHEN g % 6 = 1 THEN now() - interval '1 day' END, g % 11 = 0,
                CASE WHEN g % 3 = 0 THEN 1 WHEN g % 3 = 1 THEN 2 END,
                CASE WHEN g % 7 = 0 THEN 1000 END, (ARRAY['day','month','total'])[1 + g % 3]
         FROM generate_series(1, 300) g;
         INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out)
         SELECT g, current_date - d, g * 3, d FROM generate_series(1, 300, 2) g, generate_series(0, 400, 37) d;
         INSERT INTO vpn_routes (connection_id, destination, gateway, table_id, metric)
         SELECT g, ('10.1.' || g % 256 || '.0/24')::cidr, CASE WHEN g % 4 = 0 THEN '1.2.3.4'::inet END,
                CASE WHEN g % 6 = 0 THEN 100 END, CASE WHEN g % 8 = 0 THEN 5 END
         FROM generate_series(1, 300) g WHERE g % 2 = 0;
         INSERT INTO vpn_routes (connection_id, destination) SELECT g, '10.99.0.0/24' FROM generate_series(1, 300) g WHERE g % 3 = 0;
         INSERT INTO pbr_rules (name, connection_id, table_id, next_hop, dev, priority)
         SELECT 'p' || g, g, 100 + g % 2, '10.100.0.40', 'wg0', 1000 FROM generate_series(1, 300) g WHERE g % 9 = 0;",
    );
    let mut c = pg.client();
    let ids: Vec<i64> = (1..=300).chain([999_999]).collect();
    let many = policy_core::db::connections::facts_by_ids(&mut c, &ids).unwrap();
    assert_eq!(many.len(), 300, "the unknown id gives no row");
    for f in &many {
        let one = policy_core::db::connections::facts_by_ids(&mut c, &[f.id]).unwrap();
        assert_eq!(one.len(), 1);
        let mut a = one[0].clone();
        let mut b = f.clone();
        a.db_now = 0;
        b.db_now = 0;
        assert_eq!(a, b, "connection {}", f.id);
    }
    assert!(many.iter().any(|f| f.used_bytes > 0 && f.quota_bytes.is_some()));
    assert!(many.iter().any(|f| f.routes.len() == 2 && f.routes.iter().any(|r| r.metric.is_some())));
    assert!(many.iter().any(|f| !f.pbr.is_empty() && f.customer_blocked));
}

/// The state decision (facts → `decide`) and the collector's quota trigger
/// (`db::accounting::quota_use` → `QuotaUse::over`) read the same usage for the same period and
/// apply the same rule: for every period, with usage today, earlier this month, last month and a
/// year ago, and quotas just below, at and above the usage, they agree — and both equal what the
/// rows say, computed here from the dates alone.
#[test]
fn quota_decision_and_collector_trigger_agree() {
    use policy_core::db::{accounting::quota_use, connections};
    use policy_core::policy::model::{decide, Reason};

    let pg = PgServer::new();
    // Dates relative to the database's own clock.
    let dates = pg.psql(
        "SELECT current_date, date_trunc('month', current_date)::date,
                (date_trunc('month', current_date) - interval '1 day')::date, current_date - 400",
    );
    let d: Vec<&str> = dates.split('|').collect();
    let (today, first, last_month, year_ago) = (d[0], d[1], d[2], d[3]);
    // Octets per row (in, out): today 1+2, first of the month 10+20, last month 100+200,
    // a year ago 1000+2000. On the 1st, "today" and "first of the month" are one row.
    let rows = [(today, 1i64), (first, 10), (last_month, 100), (year_ago, 1000)];
    let mut expected = std::collections::BTreeMap::new();
    let mut id = 0;
    for period in ["day", "month", "total"] {
        let used: i64 = rows
            .iter()
            .filter(|(day, _)| match period {
                "day" => *day == today,
                "month" => *day >= first,
                _ => true,
            })
            .map(|(_, v)| 3 * v)
            .sum();
        for quota in [used - 1, used, used + 1] {
            id += 1;
            pg.psql(&format!(
                "INSERT INTO vpn_connections (id, subaccount_login, status, quota_bytes, quota_period)
                 VALUES ({id}, 'q{id}', 'CLAIMED', {quota}, '{period}')"
            ));
            for (day, v) in rows {
                pg.psql(&format!(
                    "INSERT INTO vpn_usage (connection_id, day, bytes_in, bytes_out) VALUES ({id}, '{day}', {v}, {})
                     ON CONFLICT (connection_id, day) DO UPDATE
                     SET bytes_in = vpn_usage.bytes_in + excluded.bytes_in,
                         bytes_out = vpn_usage.bytes_out + excluded.bytes_out",
                    2 * v
                ));
            }
            expected.insert(id, (used, used >= quota));
        }
    }
    let mut c = pg.client();
    let ids: Vec<i64> = expected.keys().copied().collect();
    let trigger = quota_use(&mut c, "lns-test", &ids, &[]).unwrap();
    let many = connections::facts_by_ids(&mut c, &ids).unwrap();
    assert_eq!((trigger.len(), many.len()), (ids.len(), ids.len()));
    for (u, f) in trigger.iter().zip(&many) {
        let (used, over) = expected[&f.id];
        let one = connections::facts_by_ids(&mut c, &[f.id]).unwrap().remove(0);
        let login = match connections::lookup_login(&mut c, &format!("q{}", f.id)).unwrap() {
            connections::LoginLookup::Found(f) => *f,
            other => panic!("q{}: {other:?}", f.id),
        };
        assert_eq!(u.connection_id, f.id);
        for (what, facts) in [("facts_by_ids (many)", f), ("facts_by_ids (one)", &one), ("lookup_login", &login)] {
            assert_eq!(facts.used_bytes as i64, used, "connection {} {what}: usage", f.id);
            let restricted = decide(Some(facts)).reason == Reason::QuotaExceeded;
            assert_eq!(restricted, over, "connection {} {what}: decision", f.id);
        }
        assert_eq!(u.used_bytes, used, "connection {}: collector's usage", f.id);
        assert_eq!(u.over(), over, "connection {}: collector's trigger", f.id);
    }
}

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

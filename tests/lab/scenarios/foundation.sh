# Foundation: real L2TP sessions through pppgate.so, checked by tests/lab_foundation.rs.
#
# One VM, independent cases (see run_case in lib.sh); each records NAME.status and facts, and
# takes snapshots under /out/snap/ that the Rust tests read back:
#   known       alice (CLAIMED) connects: snap known-up; disconnects: snap known-down
#   concurrent  alice and bob (PREPROVISIONED) at once: snap concurrent-up; alice hangs up:
#               snap concurrent-one-left; bob hangs up: snap concurrent-down
#   unique      a second vpn_connections row for alice is refused by the database
#   norow       carol authenticates (pap-secrets) but has no row: terminated, snap norow-after
#   disabled    dave's row is DISABLED: terminated, snap disabled-after
#   malformed   garbage mapping files for ppp0..ppp3 exist before alice connects: hers replaces
#               one (logged), snap malformed-up; she disconnects: snap malformed-down
#   diag        a healthy, fully wired box (issue 12): FreeRADIUS's files wired as
#               packaging/freeradius describes (guest/radius.sh; FreeRADIUS is not started: diag
#               reads its configuration), diag pointed at the LNS's xl2tpd.conf, alice connected,
#               reconcile, collector and janitor run once each as their timers run them; then
#               `pppgate --json diag` in srv into /out/diag.json (exit code: fact diag.rc)
#   pgdown      PostgreSQL stopped, alice connects: terminated, snap pgdown-after
#   metrics     `pppgate metrics` (no SQL: the database is down) into /out/metrics.prom after
#               every connect above: the plugin's connect counters (issue 12), snap metrics
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init

t0=$(uptime_ms)
pg_start
pppgate_configure
pppgate_migrate
net_setup

customer=$(sql "insert into customers (name) values ('Lab Customer') returning id")
sql "insert into vpn_connections (customer_id, subaccount_login, status) values
       ($customer, 'alice', 'CLAIMED'),
       ($customer, 'bob', 'PREPROVISIONED'),
       ($customer, 'dave', 'DISABLED')"
lns_user alice pw-alice
lns_user bob pw-bob
lns_user carol pw-carol
lns_user dave pw-dave

lns_start
fact setup.wall_ms $(( $(uptime_ms) - t0 ))

# A session the plugin must end: the LNS runs ip-up for the user (PAP succeeded), then its pppd
# exits. Records PREFIX.{client_ip,lns_pid,lns_if,ipup_to_gone_ms,connect_to_gone_ms,lac_gone}.
expect_terminated() {
  local prefix=$1 name=$2
  client_connect "$name"
  lns_wait_peer_up "$name" 40
  client_wait_lns_gone "$name" 20
  fact "$prefix.client_ip" "$(client_get "$name" client_ip)"
  fact "$prefix.lns_pid" "$(client_get "$name" lns_pid)"
  fact "$prefix.lns_if" "$(client_get "$name" lns_if)"
  fact "$prefix.ipup_to_gone_ms" $(( $(client_get "$name" gone_ms) - $(client_get "$name" up_ms) ))
  fact "$prefix.connect_to_gone_ms" $(( $(client_get "$name" gone_ms) - $(client_get "$name" connect_ms) ))
  # The LAC's pppd follows (LCP terminate from the LNS).
  local lac_link_gone=yes
  poll_until 10 lac_pppd_gone "$name" || lac_link_gone=no
  fact "$prefix.lac_gone" "$lac_link_gone"
}

case_known() {
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 40
  fact known.connect_to_up_ms $(( $(client_get alice up_ms) - $(client_get alice connect_ms) ))
  snap known-up
  client_disconnect alice
  client_wait_down alice 20
  # The plugin removes the mapping in ip-down, before pppd exits.
  fact known.up_to_gone_ms $(( $(client_get alice gone_ms) - $(client_get alice up_ms) ))
  snap known-down
}

case_concurrent() {
  client_add alice alice pw-alice
  client_add bob bob pw-bob
  client_connect alice
  client_connect bob
  client_wait_up alice 40
  client_wait_up bob 40
  snap concurrent-up
  client_hangup alice
  client_wait_down alice 20
  snap concurrent-one-left
  client_disconnect bob
  client_wait_down bob 20
  snap concurrent-down
}

case_unique() {
  local rc=0 err
  err=$(sql "insert into vpn_connections (customer_id, subaccount_login, status) values ($customer, 'alice', 'PREPROVISIONED')" 2>&1) || rc=$?
  fact unique.insert_rc "$rc"
  fact unique.insert_error "$(echo "$err" | grep -m1 ERROR || echo "$err" | head -1)"
  fact unique.rows_for_alice "$(sql "select count(*) from vpn_connections where subaccount_login = 'alice'")"
}

case_norow() {
  fact norow.rows_for_carol "$(sql "select count(*) from vpn_connections where subaccount_login = 'carol'")"
  client_add carol carol pw-carol
  expect_terminated norow carol
  snap norow-after
}

case_disabled() {
  fact disabled.status_of_dave "$(sql "select status from vpn_connections where subaccount_login = 'dave'")"
  client_add dave dave pw-dave
  expect_terminated disabled dave
  snap disabled-after
}

case_malformed() {
  local i
  mkdir -p "$SESSIONS_DIR"
  for i in 0 1 2 3; do
    printf 'CONNECTION_ID=1; rm -rf /\ngarbage line\n' > "$SESSIONS_DIR/ppp$i.env"
  done
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 40
  # The snapshot reader refuses garbage: drop the leftovers alice's session did not replace.
  local mine
  mine=$(client_get alice lns_if)
  fact malformed.lns_if "$mine"
  for i in 0 1 2 3; do
    [ "ppp$i" = "$mine" ] || rm -f "$SESSIONS_DIR/ppp$i.env"
  done
  snap malformed-up
  client_disconnect alice
  client_wait_down alice 20
  snap malformed-down
}

case_pgdown() {
  pg_stop
  fact pgdown.pg_running "$(pg_running && echo yes || echo no)"
  client_add alice alice pw-alice
  expect_terminated pgdown alice
  snap pgdown-after
}

run_case known case_known
run_case concurrent case_concurrent
run_case unique case_unique
run_case norow case_norow
run_case disabled case_disabled
run_case malformed case_malformed
case_diag() {
  # shellcheck source=tests/lab/guest/radius.sh
  . "$LAB_REPO/tests/lab/guest/radius.sh"
  radius_prepare
  grep -q '^\[diag\]' "$PPPGATE_CONF" || printf '\n[diag]\nxl2tpd_conf = "%s"\n' "$LAB_TMP/lns.conf" >> "$PPPGATE_CONF"
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 40
  local job rc=0 guard
  for job in reconcile collect janitor; do
    ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$job" > "$LAB_OUT/logs/diag-$job.log" 2>&1 || {
      echo "pppgate $job failed: $(tail -5 "$LAB_OUT/logs/diag-$job.log")"
      return 1
    }
  done
  # A wired box runs pppgate guard (pppgate-guard.service); diag's guard check reads the status
  # file it writes after its first check (/run/pppgate/guard.json: run_dir's default).
  rm -f /run/pppgate/guard.json
  ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" guard > "$LAB_OUT/logs/diag-guard.log" 2>&1 &
  guard=$!
  wait_for 30 "pppgate guard's first check" test -s /run/pppgate/guard.json
  ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" --json diag > "$LAB_OUT/diag.json" 2> "$LAB_TMP/diag.err" || rc=$?
  fact diag.rc "$rc"
  # The human report, for the case log.
  ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" diag -v || true
  kill -TERM "$guard" 2> /dev/null || true
  wait "$guard" 2> /dev/null || true
  client_disconnect alice
  client_wait_down alice 20
}

case_metrics() {
  "$LAB_PPPGATE" -c "$PPPGATE_CONF" metrics > "$LAB_OUT/metrics.prom" 2> "$LAB_TMP/metrics.err" || {
    echo "pppgate metrics failed: $(cat "$LAB_TMP/metrics.err")"
    return 1
  }
  ls -l /run/pppgate || true
  snap metrics
}

run_case diag case_diag
run_case pgdown case_pgdown
run_case metrics case_metrics

# Accounting against radius.so's own radacct rows (docs/accounting.md, "Session identity"), checked
# by tests/lab_accounting.rs: real FreeRADIUS 3.2 (rlm_sql postgresql), real pppd with
# `plugin radius.so` + pppgate.so over real L2TP, accounting mode auto.
#
#   radius    a stale open row for carol (an earlier session that never stopped) is planted;
#             carol connects (radius.so writes its row, Acct-Session-Id malformed); pings; the
#             collector binds the session to radius.so's row, not the stale one, and writes the
#             interface's counters into it; carol disconnects: pppgate's ip-down flush closes
#             pppgate_sessions, radius.so's Stop closes its row; pppgate never writes a row of
#             its own.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/radius.sh"
. "$LAB_REPO/tests/lab/guest/accounting.sh"
lab_init

pg_start
pppgate_configure
pppgate_migrate
net_setup
acct_quiet_links
radius_prepare
radius_user carol secret 1
radius_start

LNS_PLUGIN=0
LNS_PPPD_EXTRA="plugin radius.so plugin $LAB_PLUGIN pppgate-config $PPPGATE_CONF"
lns_start

case_radius() {
  local ifname row stale
  # An earlier session of carol's on this NAS whose Stop never came, with the same address the
  # pool will hand out again and radius.so's malformed Acct-Session-Id.
  sql "insert into radacct (acctsessionid, acctuniqueid, username, nasipaddress, framedipaddress, acctstarttime)
       values ('%lX6b01f7fd%hX', 'stale-carol', 'carol', '$LNS_IP', '198.51.100.10', now() - interval '2 hours')"
  stale=$(sql "select radacctid from radacct where acctuniqueid = 'stale-carol'")
  client_add r1 carol secret
  client_connect r1
  client_wait_up r1 60
  ifname=$(client_get r1 lns_if)
  wait_for 10 "carol's radacct row from radius.so" sql_is 1 "select count(*) from radacct where username = 'carol' and acctuniqueid <> 'stale-carol'"
  row=$(sql "select radacctid from radacct where username = 'carol' and acctuniqueid <> 'stale-carol'")
  fact radius.session_id "$(sql "select acctsessionid from radacct where radacctid = $row")"
  fact radius.framed_ip_matches_stale "$(sql "select (select framedipaddress from radacct where radacctid = $row) = (select framedipaddress from radacct where radacctid = $stale)")"

  fact radius.base "$(sed -n 's/^RX_BASE=//p' "/run/vpn-sessions/$ifname.env") $(sed -n 's/^TX_BASE=//p' "/run/vpn-sessions/$ifname.env")"
  ip netns exec cli ping -q -c 15 -i 0.05 -s 800 -W 2 "$PPP_LOCAL" > /dev/null
  measure_quiet live "$ifname"
  fact live.kernel "$MEASURE_BEFORE"
  fact live.collect_rc "$COLLECT_RC"
  fact live.kernel_after "$MEASURE_AFTER"
  fact live.binding "$(sql "select radacct_owner || ' ' || (radacct_id = $row) from pppgate_sessions")"
  fact live.row "$(sql "select acctinputoctets || ' ' || acctoutputoctets || ' ' || (acctstoptime is null) from radacct where radacctid = $row")"
  fact live.stale "$(sql "select coalesce(acctinputoctets, -1) || ' ' || (acctstoptime is null) from radacct where radacctid = $stale")"
  fact live.sessions "$(sql "select bytes_in || ' ' || bytes_out from pppgate_sessions")"

  ip netns exec cli ping -q -c 9 -i 0.05 -s 1200 -W 2 "$PPP_LOCAL" > /dev/null
  settle "$ifname"
  fact final.kernel "$(counters_now "$ifname")"
  client_disconnect r1
  client_wait_down r1 30
  wait_for 10 "radius.so's Stop" sql_is t "select (acctstoptime is not null) from radacct where radacctid = $row"
  fact final.sessions "$(sql "select bytes_in || ' ' || bytes_out || ' ' || (stop_time is not null) from pppgate_sessions")"
  fact final.usage "$(sql "select coalesce(sum(bytes_in), 0) || ' ' || coalesce(sum(bytes_out), 0) from vpn_usage")"
  fact final.row "$(sql "select acctinputoctets || ' ' || acctoutputoctets || ' ' || coalesce(acctterminatecause, '-') from radacct where radacctid = $row")"
  fact final.own_rows "$(sql "select count(*) from radacct where acctuniqueid like 'pppgate:%'")"
  fact final.plugin_line "$(lns_log_since "$CASE_LOG_MARK" | grep -m1 'final accounting' || echo none)"
  fact final.pppd_stats "$(lns_log_since "$CASE_LOG_MARK" | grep -m1 -o 'Sent [0-9]* bytes, received [0-9]* bytes' || echo none)"
}

run_case radius case_radius

# Accounting over real L2TP (docs/accounting.md), checked by tests/lab_accounting.rs.
#
#   session   alice (CLAIMED) connects; pings move the LNS interface's counters; the collector
#             runs in srv twice; alice disconnects and pppgate.so's ip-down flushes the rest;
#             the collector runs once more. Facts after each step: the LNS interface's counters
#             (sysfs) and what SQL holds (pppgate_sessions, vpn_usage, pppgate's radacct row).
. "$LAB_LIB"
lab_init

pg_start
pppgate_configure
pppgate_migrate
net_setup
sql "insert into vpn_connections (subaccount_login, status) values ('alice', 'CLAIMED')"
lns_user alice pw-alice
lns_start

collect() {
  local step=$1 rc=0
  ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" --json collect > "$LAB_OUT/collect-$step.json" 2> "$LAB_OUT/collect-$step.err" || rc=$?
  fact "$step.collect_rc" "$rc"
}

counters_now() {
  echo "$(ip netns exec srv cat "/sys/class/net/$1/statistics/rx_bytes") $(ip netns exec srv cat "/sys/class/net/$1/statistics/tx_bytes")"
}

# settle IFNAME: waits (up to 10 s) until the counters stand still for a second. The client's
# kernel sends the odd packet of its own (an IGMP report after the link came up) that would
# otherwise land between our reading and the collector's.
settle() {
  local a b i
  a=$(counters_now "$1")
  for i in 1 2 3 4 5 6 7 8 9 10; do
    nap 1
    b=$(counters_now "$1")
    [ "$a" = "$b" ] && return 0
    a=$b
  done
  log "WARNING: counters of $1 still moving"
}

kernel_counters() {
  local step=$1 ifname=$2 c
  c=$(counters_now "$ifname")
  fact "$step.kernel_rx" "${c% *}"
  fact "$step.kernel_tx" "${c#* }"
}

sql_totals() {
  local step=$1
  fact "$step.sql" "$(sql "select bytes_in || ' ' || bytes_out || ' ' || (stop_time is not null) from pppgate_sessions")"
  fact "$step.usage" "$(sql "select coalesce(sum(bytes_in), 0) || ' ' || coalesce(sum(bytes_out), 0) from vpn_usage")"
  fact "$step.radacct" "$(sql "select coalesce(string_agg(acctuniqueid || ' ' || coalesce(acctinputoctets, -1) || ' ' || coalesce(acctoutputoctets, -1) || ' ' || (acctstoptime is not null), ','), '-') from radacct")"
  fact "$step.spooled" "$(ls /var/lib/vpn-accounting/spool | grep -c '\.batch$' || true)"
}

case_session() {
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 60
  local ifname
  ifname=$(client_get alice lns_if)
  fact session.lns_if "$ifname"
  fact session.lns_pid "$(client_get alice lns_pid)"

  ip netns exec cli ping -q -c 20 -i 0.05 -s 1000 -W 2 "$PPP_LOCAL" > /dev/null
  settle "$ifname"
  kernel_counters live1 "$ifname"
  collect live1
  kernel_counters live1.after "$ifname"
  sql_totals live1

  ip netns exec cli ping -q -c 10 -i 0.05 -s 300 -W 2 "$PPP_LOCAL" > /dev/null
  settle "$ifname"
  kernel_counters live2 "$ifname"
  collect live2
  kernel_counters live2.after "$ifname"
  sql_totals live2

  ip netns exec cli ping -q -c 7 -i 0.05 -s 1400 -W 2 "$PPP_LOCAL" > /dev/null
  settle "$ifname"
  kernel_counters final "$ifname"
  client_disconnect alice
  client_wait_down alice 30
  sql_totals final
  fact final.plugin_line "$(lns_log_since "$CASE_LOG_MARK" | grep -m1 'final accounting' || echo none)"

  collect after
  sql_totals after
}

run_case session case_session

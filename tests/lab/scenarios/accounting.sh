# Accounting over real L2TP (docs/accounting.md), checked by tests/lab_accounting.rs.
#
#   session   alice (CLAIMED) connects; a ping, then 5 MB each way over TCP move the LNS
#             interface's counters; the collector runs in srv after each; alice disconnects and
#             pppgate.so's ip-down flushes the rest; the collector runs once more. Facts after
#             each step: the LNS interface's counters (sysfs), the mapping's IPCP-up base, what
#             SQL holds (pppgate_sessions, vpn_usage, pppgate's radacct row) and pppd's own final
#             "Sent N bytes, received M bytes".
#   outage    alice again; PostgreSQL stops mid-session; 5 MB each way; the collector spools;
#             alice disconnects (ip-down spools its final flush); PostgreSQL starts again; one
#             collector run later SQL holds pppd's own figures exactly, and a second run
#             changes nothing.
#   quota     carol (quota 3 MB a month) reaches the far side (inet) with pings; uploads 5 MB; one
#             collector run later she is RESTRICTED: pings to the far side are dropped, the
#             walled garden (203.0.113.80 tcp/80) still answers; the panel raises the quota and
#             one collector run later the pings pass again.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/accounting.sh"
lab_init

pg_start
pppgate_configure
pppgate_migrate
net_setup
acct_quiet_links
sql "insert into vpn_connections (subaccount_login, status) values ('alice', 'CLAIMED')"
sql "insert into vpn_connections (subaccount_login, status, quota_bytes, quota_period) values ('carol', 'CLAIMED', 3000000, 'month')"
lns_user alice pw-alice
lns_user carol pw-carol
lns_start

XFER_BYTES=5000000

collect() {
  run_collector "$1"
  fact "$1.collect_rc" "$COLLECT_RC"
}

kernel_counters() {
  local step=$1 ifname=$2 c
  c=$(counters_now "$ifname")
  fact "$step.kernel_rx" "${c% *}"
  fact "$step.kernel_tx" "${c#* }"
}

# measure STEP IFNAME: a collector run the interface stood still around (measure_quiet), as facts.
measure() {
  measure_quiet "$1" "$2"
  fact "$1.collect_rc" "$COLLECT_RC"
  fact "$1.attempts" "$MEASURE_ATTEMPTS"
  fact "$1.kernel_rx" "${MEASURE_BEFORE% *}"
  fact "$1.kernel_tx" "${MEASURE_BEFORE#* }"
  fact "$1.after" "$MEASURE_AFTER"
}

sql_totals() {
  local step=$1
  fact "$step.sql" "$(sql "select bytes_in || ' ' || bytes_out || ' ' || (stop_time is not null) from pppgate_sessions where session_key = '$SESSION_KEY'")"
  fact "$step.usage" "$(sql "select coalesce(sum(bytes_in), 0) || ' ' || coalesce(sum(bytes_out), 0) from vpn_usage")"
  fact "$step.radacct" "$(sql "select coalesce(string_agg(acctuniqueid || ' ' || coalesce(acctinputoctets, -1) || ' ' || coalesce(acctoutputoctets, -1) || ' ' || (acctstoptime is not null), ','), '-') from radacct where acctuniqueid = 'pppgate:$SESSION_KEY'")"
  fact "$step.spooled" "$(ls /var/lib/vpn-accounting/spool | grep -c '\.batch$' || true)"
}

# mapped STEP IFNAME: the session's mapping (its IPCP-up base and key).
mapped() {
  local step=$1 ifname=$2 f rx tx pid start
  f=/run/vpn-sessions/$ifname.env
  rx=$(sed -n 's/^RX_BASE=//p' "$f")
  tx=$(sed -n 's/^TX_BASE=//p' "$f")
  pid=$(sed -n 's/^PPPD_PID=//p' "$f")
  start=$(sed -n 's/^START_TS=//p' "$f")
  fact "$step.base" "${rx:-none} ${tx:-none}"
  SESSION_KEY="lns-1:$ifname:$pid:$start"
  fact "$step.session_key" "$SESSION_KEY"
}

# transfer STEP: XFER_BYTES from the client to the LNS and XFER_BYTES back, over TCP through
# the session; the receivers count what arrived.
transfer() {
  local step=$1 got
  ip netns exec srv timeout 300 socat -u TCP-LISTEN:5001,reuseaddr - < /dev/null | wc -c > "$LAB_TMP/up.count" &
  local rcv=$!
  head -c "$XFER_BYTES" /dev/zero | ip netns exec cli timeout 300 socat -u - "TCP:$PPP_LOCAL:5001,retry=50,interval=0.2" \
    || die "the upload failed"
  wait "$rcv" || die "the upload's receiver failed"
  read -r got < "$LAB_TMP/up.count"
  fact "$step.up_bytes" "$got"
  head -c "$XFER_BYTES" /dev/zero | ip netns exec srv timeout 300 socat -u - TCP-LISTEN:5002,reuseaddr &
  local snd=$!
  got=$(ip netns exec cli timeout 300 socat -u "TCP:$PPP_LOCAL:5002,retry=50,interval=0.2" - | wc -c)
  wait "$snd" || die "the download's sender failed"
  fact "$step.down_bytes" "$got"
}

pppd_stats() {
  fact "$1.pppd_stats" "$(lns_log_since "$CASE_LOG_MARK" | grep -m1 -o 'Sent [0-9]* bytes, received [0-9]* bytes' || echo none)"
}

case_session() {
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 60
  local ifname t0
  ifname=$(client_get alice lns_if)
  fact session.lns_if "$ifname"
  fact session.lns_pid "$(client_get alice lns_pid)"
  mapped session "$ifname"

  ip netns exec cli ping -q -c 20 -i 0.05 -s 1000 -W 2 "$PPP_LOCAL" > /dev/null
  measure live1 "$ifname"
  sql_totals live1

  now
  t0=$NOW
  transfer xfer
  now
  fact xfer.ms $(( NOW - t0 ))
  measure live2 "$ifname"
  sql_totals live2

  ip netns exec cli ping -q -c 7 -i 0.05 -s 1400 -W 2 "$PPP_LOCAL" > /dev/null
  settle "$ifname"
  kernel_counters final "$ifname"
  client_disconnect alice
  client_wait_down alice 30
  sql_totals final
  pppd_stats final
  fact final.plugin_line "$(lns_log_since "$CASE_LOG_MARK" | grep -m1 'final accounting' || echo none)"

  collect after
  sql_totals after
}

case_outage() {
  client_add alice2 alice pw-alice
  client_connect alice2
  client_wait_up alice2 60
  local ifname usage0
  ifname=$(client_get alice2 lns_if)
  mapped outage "$ifname"
  usage0=$(sql "select coalesce(sum(bytes_in), 0) || ' ' || coalesce(sum(bytes_out), 0) from vpn_usage")
  fact outage.usage_before "$usage0"

  ip netns exec cli ping -q -c 10 -i 0.05 -s 500 -W 2 "$PPP_LOCAL" > /dev/null
  measure outage.live "$ifname"
  sql_totals outage.live

  pg_stop
  transfer outage.xfer
  collect outage.down
  fact outage.down.spooled "$(ls /var/lib/vpn-accounting/spool | grep -c '\.batch$' || true)"
  client_disconnect alice2
  client_wait_down alice2 30
  pppd_stats outage
  fact outage.plugin_line "$(lns_log_since "$CASE_LOG_MARK" | grep -m1 'final accounting' || echo none)"
  fact outage.spooled_after_down "$(ls /var/lib/vpn-accounting/spool | grep -c '\.batch$' || true)"

  pg_start
  collect outage.back
  sql_totals outage.back
  collect outage.again
  sql_totals outage.again
}

# in_set IP: the inet pppgate set that holds IP (read back from the kernel), or "none".
in_set() {
  local set
  for set in connect_pending_v4 full_v4 restricted_v4 blocked_v4; do
    if nft_member "$set" "$1"; then
      echo "$set"
      return
    fi
  done
  echo none
}

# far_pings: how many of 3 pings from the client to the far side (203.0.113.80) came back.
far_pings() {
  ip netns exec cli ping -q -c 3 -i 0.2 -W 1 203.0.113.80 2> /dev/null | sed -n 's/.* \([0-9]*\) received.*/\1/p'
}

case_quota() {
  client_add q carol pw-carol
  client_connect q
  client_wait_up q 60
  local ip
  ip=$(client_get q client_ip)
  ip -n cli route replace 203.0.113.0/24 dev "$(client_get q lac_if)" || die "cannot route the far side through carol's link"
  ip netns exec inet timeout 120 socat TCP-LISTEN:80,reuseaddr,fork SYSTEM:'echo garden' > /dev/null 2>&1 &
  fact quota.set_before "$(in_set "$ip")"
  fact quota.pings_before "$(far_pings)"

  transfer quota.xfer
  collect quota.cross
  fact quota.changes "$(jq -c '[.quota_changes[] | {over}]' "$LAB_OUT/collect-quota.cross.json")"
  fact quota.set_over "$(in_set "$ip")"
  fact quota.pings_over "$(far_pings)"
  fact quota.garden "$(ip netns exec cli timeout 10 socat -u TCP:203.0.113.80:80,connect-timeout=3 - 2> /dev/null || echo unreachable)"
  fact quota.used "$(sql "select coalesce(sum(bytes_in + bytes_out), 0) from vpn_usage u join vpn_connections c on c.id = u.connection_id where c.subaccount_login = 'carol'")"

  sql "update vpn_connections set quota_bytes = 100000000 where subaccount_login = 'carol'"
  collect quota.raise
  fact quota.raise_changes "$(jq -c '[.quota_changes[] | {over}]' "$LAB_OUT/collect-quota.raise.json")"
  fact quota.set_raised "$(in_set "$ip")"
  fact quota.pings_raised "$(far_pings)"
}

run_case session case_session
run_case outage case_outage
run_case quota case_quota

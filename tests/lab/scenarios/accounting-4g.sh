# Accounting past 4 GiB (docs/accounting.md, "Counter edge cases"), checked by
# tests/lab_accounting_4g.rs in the long lab run (scripts/lab-matrix.sh): one real L2TP session
# through pppgate.so moves BIG_BYTES (default 4.3 GB) each way (iperf3, zero-copy), the collector
# runs before, between and after the transfers; alice disconnects and pppgate.so's ip-down flush
# closes the session. Facts: the transfer sizes and times, the LNS interface's 64-bit counters and
# the mapping's IPCP-up base, what SQL holds (pppgate_sessions, vpn_usage, pppgate's radacct row)
# and pppd's own final "Sent N bytes, received M bytes" — 64-bit on pppd 2.5.2; on pppd 2.4.9 a
# 32-bit figure that wrapped, which the plugin extends against the interface's counters.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/accounting.sh"
lab_init

: "${BIG_BYTES:=4300000000}"
fact big.bytes "$BIG_BYTES"

pg_start
pppgate_configure
pppgate_migrate
net_setup
acct_quiet_links
sql "insert into vpn_connections (subaccount_login, status) values ('alice', 'CLAIMED')"
lns_user alice pw-alice
lns_start

totals() {
  fact "$1.sql" "$(sql "select bytes_in || ' ' || bytes_out || ' ' || (stop_time is not null) from pppgate_sessions")"
  fact "$1.usage" "$(sql "select coalesce(sum(bytes_in), 0) || ' ' || coalesce(sum(bytes_out), 0) from vpn_usage")"
  fact "$1.radacct" "$(sql "select coalesce(string_agg(acctinputoctets || ' ' || acctoutputoctets, ','), 'none') from radacct")"
}

collect() {
  run_collector "$1"
  fact "$1.collect_rc" "$COLLECT_RC"
}

# iperf DIR: BIG_BYTES from the client to the LNS (up) or back (down, -R); facts DIR.bytes (what
# the receiving side counted) and DIR.ms.
iperf() {
  local dir=$1 rev= t0 got
  [ "$dir" = down ] && rev=-R
  now
  t0=$NOW
  # shellcheck disable=SC2086
  ip netns exec cli timeout 7200 iperf3 -c "$PPP_LOCAL" -p 5201 -n "$BIG_BYTES" -Z -J $rev > "$LAB_TMP/iperf-$dir.json" 2> "$LAB_TMP/iperf-$dir.err" ||
    die "iperf3 $dir failed: $(tail -3 "$LAB_TMP/iperf-$dir.err") $(grep -m1 '"error"' "$LAB_TMP/iperf-$dir.json")"
  now
  got=$(jq -r '.end.sum_received.bytes' "$LAB_TMP/iperf-$dir.json")
  fact "$dir.bytes" "$got"
  fact "$dir.ms" $(( NOW - t0 ))
  log "$dir: $got bytes in $(( NOW - t0 )) ms"
}

client_add alice alice pw-alice
client_connect alice
client_wait_up alice 60

# The server binds the LNS's PPP address, which exists only once the link is up; -D hides a
# failed bind in its log, so wait for the listener.
ip netns exec srv iperf3 -s -D -B "$PPP_LOCAL" -p 5201 --logfile "$LAB_TMP/iperf3-server.log" || die "cannot start iperf3 in srv"
for _ in $(seq 50); do
  ip netns exec srv ss -Hltn "sport = :5201" | grep -q . && break
  sleep 0.1
done
ip netns exec srv ss -Hltn "sport = :5201" | grep -q . || die "iperf3 in srv does not listen: $(cat "$LAB_TMP/iperf3-server.log")"
ifname=$(client_get alice lns_if)
f=/run/vpn-sessions/$ifname.env
fact big.base "$(sed -n 's/^RX_BASE=//p' "$f") $(sed -n 's/^TX_BASE=//p' "$f")"
collect first
totals first

iperf up
collect between
totals between
iperf down

measure_quiet live "$ifname"
fact live.collect_rc "$COLLECT_RC"
fact live.kernel "$MEASURE_BEFORE"
fact live.after "$MEASURE_AFTER"
totals live

settle "$ifname"
fact final.kernel "$(counters_now "$ifname")"
client_disconnect alice
client_wait_down alice 60
fact final.pppd_stats "$(grep -m1 -o 'Sent [0-9]* bytes, received [0-9]* bytes' "$LAB_TMP/pppd-lns.log" || echo none)"
fact final.plugin_line "$(grep -m1 'final accounting' "$LAB_TMP/pppd-lns.log" || echo none)"
totals final
collect after
totals after

# README demo (scripts/lab-demo.sh): a user dials in over real L2TP through pppgate.so. While
# another process holds the apply lock her address waits in the connect gate and nothing is
# applied; once the lock is free the policy lands (state, speeds, route, policy routing) and the
# gate goes. A TCP transfer measures the speed, a panel change doubles it, the user hangs up and
# everything is gone; then a user without a vpn_connections row is refused.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/connect.sh"
lab_init
cl_init

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() {
  printf '$ %s\n' "$*"
  "$@" 2>&1 | sed 's/^/    /'
}
pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }
sets() {
  local s
  for s in connect_pending_v4 full_v4 restricted_v4 blocked_v4; do
    printf '    %-20s %s\n' "$s" "$(ip netns exec srv nft list set inet pppgate "$s" | grep -o 'elements = {[^}]*}' || echo '(empty)')"
  done
}

say "setup: PostgreSQL, pppgate db migrate, namespaces cli (LAC) / srv (LNS) / inet, xl2tpd LNS with plugin $LAB_PLUGIN"
pg_start
pppgate_configure
pppgate_migrate
net_setup
ALICE=$(pg_srv connection add --login alice --status CLAIMED --down-kbit 2000 --up-kbit 1000)
pg_srv routes add --connection-id "$ALICE" --dst 10.99.0.0/24 > /dev/null
pg_srv pbr add alice-out --connection-id "$ALICE" --table 100 --via "$UPLINK_INET" --dev v-up --priority 1000 > /dev/null
settings_window 15
# What the boot unit does: reconcile creates inet pppgate (sets, forward chain, default drop).
pg_srv reconcile --boot > /dev/null
lns_user alice pw-alice
lns_user mallory pw-mallory
lns_start
show sql "select id, subaccount_login, status, rate_down_kbit, rate_up_kbit from vpn_connections"
show sql "select * from vpn_routes"
show sql "select name, connection_id, table_id, host(next_hop), dev, priority from pbr_rules"

say "the connect gate: another process holds the apply lock while alice dials in"
lock_hold
show ip netns exec srv cat /proc/locks
client_add alice alice pw-alice
client_connect alice
lns_wait_peer_up alice 60
lns_if=$(client_get alice lns_if)
ip=$(client_get alice client_ip)
nap 1
echo "alice's LNS pppd ran ip-up for $ip on $lns_if; her address is gated, nothing is applied yet:"
sets
show tc -n srv qdisc show dev "$lns_if"
show grep '^pppgate:' "$LAB_TMP/pppd-lns.log"

say "the lock is released: the policy is applied and the gate goes, in that order"
lock_release
wait_for 15 "alice's address in full_v4" nft_has full_v4 "$ip"
client_wait_up alice 30
sets
show grep '^pppgate: policy applied' "$LAB_TMP/pppd-lns.log"

say "the applied policy, read back from the kernel"
show tc -n srv class show dev "$lns_if"
show tc -n srv class show dev "pgi-$lns_if"
show tc -n srv filter show dev "$lns_if" ingress
show ip -n srv route show proto 77 table all
show ip -n srv rule show
show cat "$SESSIONS_DIR/$lns_if.env"

say "measured: a TCP transfer from inet to alice (iperf3, 6 s after a 1 s warm-up)"
client_route alice
iperf_start
iperf_run demo.down1 alice down 6
echo "    download: $IPERF_KBIT kbit/s (policy: 2000 kbit/s)"
iperf_run demo.up1 alice up 6
echo "    upload:   $IPERF_KBIT kbit/s (policy: 1000 kbit/s)"

say "the panel doubles her speed: pppgate connection set (SQL change + immediate apply)"
show pg_srv connection set "$ALICE" --down-kbit 4000 --up-kbit 2000
iperf_run demo.down2 alice down 6
echo "    download: $IPERF_KBIT kbit/s (policy: 4000 kbit/s)"
iperf_run demo.up2 alice up 6
echo "    upload:   $IPERF_KBIT kbit/s (policy: 2000 kbit/s)"

say "alice hangs up: memberships, shaping, IFB, route, rule and mapping are gone"
client_hangup alice
client_wait_down alice 30
sets
show tc -n srv qdisc show
show ip -n srv rule show
show ip -n srv route show proto 77 table all
show ls -l "$SESSIONS_DIR"

say "mallory authenticates (pap-secrets) but has no vpn_connections row"
mark=$(lns_log_mark)
client_add mallory mallory pw-mallory
client_connect mallory
lns_wait_peer_up mallory 60
client_wait_lns_gone mallory 20
echo "mallory's LNS pppd ended $(( $(client_get mallory gone_ms) - $(client_get mallory up_ms) )) ms after ip-up"
show lns_log_since "$mark"
show ls -l "$SESSIONS_DIR"
say "demo done"

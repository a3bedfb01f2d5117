# README demo (scripts/lab-demo.sh): a user dials in over real L2TP through pppgate.so, the
# session mapping appears, traffic crosses the tunnel, the user hangs up and the mapping is gone;
# then a user without a vpn_connections row is refused.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() {
  printf '$ %s\n' "$*"
  "$@" 2>&1 | sed 's/^/    /'
}

say "setup: PostgreSQL, pppgate db migrate, namespaces cli (LAC) / srv (LNS) / inet, xl2tpd LNS with plugin $LAB_PLUGIN"
pg_start
pppgate_configure
pppgate_migrate
net_setup
sql "insert into customers (name) values ('Demo Customer')"
sql "insert into vpn_connections (customer_id, subaccount_login, status)
     select id, 'alice', 'CLAIMED' from customers where name = 'Demo Customer'"
lns_user alice pw-alice
lns_user mallory pw-mallory
lns_start
show sql "select id, subaccount_login, status from vpn_connections"

say "alice dials in over L2TP (LAC in netns cli -> LNS in netns srv)"
client_add alice alice pw-alice
client_connect alice
client_wait_up alice 60
lns_if=$(client_get alice lns_if)
echo "alice is up on the LNS's $lns_if, client address $(client_get alice client_ip), LNS pppd pid $(client_get alice lns_pid)"
show ip -n srv addr show dev "$lns_if"

say "the session mapping pppgate wrote"
show ls -l "$SESSIONS_DIR"
show cat "$SESSIONS_DIR/$lns_if.env"

say "pppgate's lines in the LNS pppd log"
show grep '^pppgate:' "$LAB_TMP/pppd-lns.log"

say "pppgate's nft table on the LNS"
show ip netns exec srv nft list table inet pppgate

say "traffic across the tunnel"
show ip netns exec cli ping -c 2 -W 2 "$PPP_LOCAL"

say "alice hangs up"
client_hangup alice
client_wait_down alice 30
show ls -l "$SESSIONS_DIR"
[ ! -e "$SESSIONS_DIR/$lns_if.env" ] && echo "mapping $lns_if.env is gone"

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

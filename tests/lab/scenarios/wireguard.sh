# Kernel WireGuard (issue 13): the host test radius-helper/tests/wg_host.rs, run inside the VM
# with PPPGATE_WG_KERNEL=1 — pppgate's generic netlink backend drives a kernel WireGuard server
# interface, the routers are kernel interfaces configured from the generated wg-quick configs,
# and the ping matrix of tenant isolation is counted at the far side. The test binary comes from
# the host's build (LAB_WG_HOST_TEST), PostgreSQL is the testkit's private server.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init
[ -x "${LAB_WG_HOST_TEST:-}" ] || die "LAB_WG_HOST_TEST is not an executable test binary: ${LAB_WG_HOST_TEST:-<unset>}"
modprobe wireguard || die "modprobe wireguard failed"
grep -qw '^wireguard' /proc/modules || die "the wireguard module is not loaded"
fact wg.kernel "$(uname -r)"
fact wg.module loaded
now
start=$NOW
set +e
PPPGATE_WG_KERNEL=1 RUST_BACKTRACE=1 "$LAB_WG_HOST_TEST" --test-threads=1 --nocapture > "$LAB_OUT/cases/wg_host.log" 2>&1
rc=$?
set -e
now
fact wg.test_ms $((NOW - start))
fact wg.test_rc "$rc"
# With --nocapture a test's output interleaves its "test NAME ... ok" line, so the names come
# from --list and the verdict from libtest's summary line.
listed=$("$LAB_WG_HOST_TEST" --list 2>/dev/null | grep -c ': test$' || true)
fact wg.tests_listed "$listed"
summary=$(grep -E '^test result: ' "$LAB_OUT/cases/wg_host.log" | tail -n 1)
fact wg.tests_passed "$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' <<< "$summary")"
fact wg.tests_failed "$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<< "$summary")"
grep -E '^  [a-z].*: [0-9]+ of 3$' "$LAB_OUT/cases/wg_host.log" | sed 's/^  //' > "$LAB_OUT/isolation.txt" || true
tail -n 40 "$LAB_OUT/cases/wg_host.log"

# ---------------------------------------------------------------------------------------------
# Seed 003 over the tunnel: a real L2TP session's traffic is policy-routed (`pppgate pbr add …
# --dev wg0`) into the concentrator's kernel WireGuard interface to a tenant's router (a
# namespace with a kernel WireGuard interface loaded from `wg router config --format wg-quick`),
# which NATs it out of its own WAN to the internet namespace; replies come back the same way.
# Proven with TCP transfers (socat, both directions) counted and checksummed at the far side: the internet sees
# the router's WAN address only, never the client's.
#
#   cli (LAC) --L2TP--> srv (LNS, pppgate, wg0 10.100.0.1/16) --wg over v-wg/v-rtr--> rtr
#   rtr: wgr (tenant address), NAT out of v-wan 198.18.7.2 --> inet 198.18.7.1 (TCP endpoint)
RTR_UNDERLAY_SRV=172.31.9.1
RTR_UNDERLAY_RTR=172.31.9.2
RTR_WAN=198.18.7.2
INET_WAN=198.18.7.1

pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }

json_get() { perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>); my $v = $j; $v = $v->{$_} for @ARGV; print "$v\n"' "$@"; }

seed003() {
  local alice addr conf bytes ip lns_if lac_if
  pg_start
  pppgate_configure
  cat >> "$PPPGATE_CONF" <<EOC

[wireguard]
interface = "wg0"
endpoint = "$RTR_UNDERLAY_SRV:51820"
backend = "kernel"
master_key_file = "/etc/pppgate/wg-master.key"
EOC
  "$LAB_PPPGATE" -c "$PPPGATE_CONF" config check > /dev/null || die "config check failed with [wireguard]"
  pppgate_migrate
  net_setup
  ip -batch - <<EOB || die "cannot create the router namespace"
netns add rtr
link add v-wg netns srv type veth peer name v-rtr netns rtr
link add v-wan netns rtr type veth peer name v-inet2 netns inet
EOB
  ip -n srv -batch - <<EOB || die "cannot configure srv's underlay to the router"
addr add $RTR_UNDERLAY_SRV/24 dev v-wg
link set v-wg up
EOB
  ip -n rtr -batch - <<EOB || die "cannot configure rtr"
link set lo up
addr add $RTR_UNDERLAY_RTR/24 dev v-rtr
link set v-rtr up
addr add $RTR_WAN/24 dev v-wan
link set v-wan up
route add default via $INET_WAN
EOB
  ip -n inet -batch - <<EOB || die "cannot configure inet's side of the router WAN"
addr add $INET_WAN/24 dev v-inet2
link set v-inet2 up
EOB
  ip netns exec rtr sysctl -qw net.ipv4.ip_forward=1
  ip netns exec rtr nft -f - <<'EON' || die "cannot load the router's NAT"
table ip rtrnat {
  chain post { type nat hook postrouting priority srcnat; policy accept; oifname "v-wan" masquerade; }
}
EON
  # What reaches the transfers' port in inet, by source: the router's WAN address or anything else.
  ip netns exec inet nft -f - <<'EON' || die "cannot load inet's counters"
table ip seen {
  counter via_router {}
  counter not_via_router {}
  chain in {
    type filter hook input priority 0; policy accept;
    tcp dport 5201 ip saddr 198.18.7.2 counter name via_router
    tcp dport 5201 ip saddr != 198.18.7.2 counter name not_via_router
  }
}
EON

  # The concentrator's side: master key, server keys, tenant 1's router 1. Its server-side
  # AllowedIPs take 0.0.0.0/0 (--route: replies from the internet come back from it), the router
  # side allows the PPP pool (--allow: the router sends the un-NATed replies into the tunnel).
  pg_srv wg init > /dev/null
  pg_srv --json wg router add --tenant 1 --router 1 --name site-a --route 0.0.0.0/0 \
    --allow 198.51.100.0/24 --keepalive 0 > "$LAB_TMP/wg-router.json"
  addr=$(json_get router address < "$LAB_TMP/wg-router.json")
  fact seed003.router_address "$addr"
  pg_srv --json wg reconcile > "$LAB_OUT/cases/seed003-reconcile.json" || die "wg reconcile failed"

  # The router, from the generated wg-quick configuration (wg-quick strip + wg setconf).
  pg_srv wg router config 1 --format wg-quick > "$LAB_TMP/wgr.conf"
  wg-quick strip "$LAB_TMP/wgr.conf" > "$LAB_TMP/wgr.stripped"
  ip -n rtr link add wgr type wireguard
  ip netns exec rtr wg setconf wgr "$LAB_TMP/wgr.stripped"
  conf=$(sed -n 's/^Address = //p' "$LAB_TMP/wgr.conf")
  ip -n rtr addr add "$conf" dev wgr
  ip -n rtr link set wgr up
  ip -n rtr route add 198.51.100.0/24 dev wgr
  # The router calls home (it is behind NAT; the concentrator never initiates).
  ip netns exec rtr ping -c 2 -W 2 10.100.0.1 > /dev/null || die "the router cannot reach its gateway through the tunnel"

  # Seed 003's policy routing, as pppgate policy of alice's connection: her traffic uses table
  # 100, whose default route goes to the router through wg0.
  alice=$(pg_srv connection add --login alice --status CLAIMED)
  pg_srv pbr add ktn --connection-id "$alice" --table 100 --via "$addr" --dev wg0 --priority 1000 > /dev/null
  lns_user alice pw-alice
  lns_start
  client_add a alice pw-alice
  client_connect a
  client_wait_up a
  ip=$(client_get a client_ip)
  lns_if=$(client_get a lns_if)
  lac_if=$(client_get a lac_if)
  fact seed003.client_ip "$ip"
  ip -n srv route get 203.0.113.2 from "$ip" iif "$lns_if" > "$LAB_OUT/cases/seed003-route-get.txt"
  fact seed003.route_get "$(tr -s ' \n' ' ' < "$LAB_OUT/cases/seed003-route-get.txt")"
  ip -n srv rule show > "$LAB_OUT/cases/seed003-rules.txt"
  ip -n srv route show table 100 > "$LAB_OUT/cases/seed003-table100.txt"
  ip -n cli route replace 203.0.113.0/24 dev "$lac_if"

  # TCP both ways, 4 MiB of random data each, counted and checksummed where it arrives:
  # upload (client -> inet) and download (inet -> client). socat ends each stream with a FIN
  # after the last byte, so the receiver's count is exact (iperf3's receiver stops counting when
  # the sender ends the test, and missed up to a third of the upload under TCG load).
  head -c 4194304 /dev/urandom > "$LAB_TMP/xfer.bin"
  fact seed003.up_sent "$(stat -c %s "$LAB_TMP/xfer.bin")"
  sum_sent=$(sha256sum < "$LAB_TMP/xfer.bin")
  ip netns exec inet timeout 300 socat -u TCP-LISTEN:5201,reuseaddr - < /dev/null > "$LAB_TMP/up.bin" &
  sink=$!
  ip netns exec cli timeout 300 socat -u "OPEN:$LAB_TMP/xfer.bin" "TCP:203.0.113.2:5201,retry=50,interval=0.2" ||
    die "the upload through the router failed (socat exit $?)"
  wait "$sink" || die "the upload's receiver in inet failed"
  fact seed003.up_bytes "$(stat -c %s "$LAB_TMP/up.bin")"
  if [ "$(sha256sum < "$LAB_TMP/up.bin")" = "$sum_sent" ]; then fact seed003.up_intact yes; else fact seed003.up_intact no; fi
  ip netns exec inet timeout 300 socat -u "OPEN:$LAB_TMP/xfer.bin" TCP-LISTEN:5201,reuseaddr &
  source=$!
  ip netns exec cli timeout 300 socat -u "TCP:203.0.113.2:5201,retry=50,interval=0.2" - > "$LAB_TMP/down.bin" ||
    die "the download through the router failed (socat exit $?)"
  wait "$source" || die "the download's sender in inet failed"
  fact seed003.down_bytes "$(stat -c %s "$LAB_TMP/down.bin")"
  if [ "$(sha256sum < "$LAB_TMP/down.bin")" = "$sum_sent" ]; then fact seed003.down_intact yes; else fact seed003.down_intact no; fi

  ip netns exec inet nft -j list counter ip seen via_router > "$LAB_TMP/c1.json"
  fact seed003.via_router_bytes "$(perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>); for (@{$j->{nftables}}) { print $_->{counter}{bytes}, "\n" if $_->{counter} }' < "$LAB_TMP/c1.json")"
  ip netns exec inet nft -j list counter ip seen not_via_router > "$LAB_TMP/c2.json"
  fact seed003.not_via_router_pkts "$(perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>); for (@{$j->{nftables}}) { print $_->{counter}{packets}, "\n" if $_->{counter} }' < "$LAB_TMP/c2.json")"
  # The concentrator's view of the router peer, and the router's NAT (conntrack needs no tool:
  # the masquerade's effect is what inet counted).
  ip netns exec srv wg show wg0 transfer > "$LAB_OUT/cases/seed003-wg-transfer.txt"
  fact seed003.wg_rx "$(awk '{ s += $2 } END { print s + 0 }' "$LAB_OUT/cases/seed003-wg-transfer.txt")"
  fact seed003.wg_tx "$(awk '{ s += $3 } END { print s + 0 }' "$LAB_OUT/cases/seed003-wg-transfer.txt")"
  # The session stayed policed FULL throughout: its member is in the FULL set.
  if nft_member full_v4 "$ip" "$lns_if"; then fact seed003.full_member yes; else fact seed003.full_member no; fi
  client_disconnect a
  client_wait_down a
}

run_case seed003 seed003

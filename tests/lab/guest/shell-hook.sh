#!/bin/bash
# The connect-path benchmark's reference (benches/lab_connect_path.rs): what a careful operator
# writes as /etc/ppp/ip-up.d and ip-down.d hooks to do in shell what pppgate.so does in ip-up —
# /work/shared/bench/shell-hook-baseline.sh extended to the same work: gate, lock, one SQL lookup
# (rates, routes, policy routing), mapping, nft state, HTB download, ingress + IFB + HTB upload,
# per-user routes, the policy-routing rule and its table, ungate; and the ip-down half.
#
#   shell-hook.sh up|down IFNAME PEER_IP PEERNAME
#
# PSQL: the psql to use with its connection options (the lab passes the server's own psql
# binary: Debian's /usr/bin/psql wrapper costs about a second per call under TCG, which would
# only flatter pppgate). HOOK_STAMP: a file the up half appends $EPOCHREALTIME to right after
# the gate is released. Needs table inet pppgate with its sets (members `iface . address`, as
# pppgate binds them: docs/security.md).
set -euo pipefail
MODE=$1 IF=$2 IP=$3 PEERNAME=$4
IFB=pgi-$IF
EL="\"$IF\" . $IP"
LOCK=/run/vpn-policy-apply.lock
: "${PSQL:=psql}"

if [ "$MODE" = up ]; then
  nft add element inet pppgate connect_pending_v4 "{ $EL }"
  exec 9> "$LOCK"
  flock -w 10 9
  row=$($PSQL -tA -F' ' -c "SELECT c.id, coalesce(c.rate_down_kbit, 0), coalesce(c.rate_up_kbit, 0),
      coalesce((SELECT string_agg(r.destination::text, ',') FROM vpn_routes r WHERE r.connection_id = c.id), '-'),
      coalesce((SELECT string_agg(p.table_id || ':' || host(p.next_hop) || ':' || p.dev || ':' || p.priority, ',')
                FROM pbr_rules p WHERE p.connection_id = c.id), '-')
    FROM vpn_connections c WHERE c.subaccount_login = '$PEERNAME' AND c.status IN ('PREPROVISIONED', 'CLAIMED')")
  read -r CID DOWN UP ROUTES PBR <<< "$row"
  [ -n "$CID" ] || exit 1
  mkdir -p /run/vpn-sessions
  printf 'CONNECTION_ID=%s\nPPP_IF=%s\nCLIENT_IP=%s\nSTART_TS=%s\nPPPD_PID=%s\n' \
    "$CID" "$IF" "$IP" "$(date +%s)" "${PPPD_PID:-$PPID}" > "/run/vpn-sessions/$IF.env.tmp"
  mv "/run/vpn-sessions/$IF.env.tmp" "/run/vpn-sessions/$IF.env"
  nft add element inet pppgate full_v4 "{ $EL }"
  if [ "$DOWN" != 0 ]; then
    tc qdisc replace dev "$IF" root handle 1: htb default 10
    tc class replace dev "$IF" parent 1: classid 1:10 htb rate "${DOWN}kbit"
  fi
  if [ "$UP" != 0 ]; then
    ip link add "$IFB" type ifb 2> /dev/null || true
    ip link set "$IFB" up
    tc qdisc replace dev "$IFB" root handle 1: htb default 10
    tc class replace dev "$IFB" parent 1: classid 1:10 htb rate "${UP}kbit"
    tc qdisc replace dev "$IF" handle ffff: ingress
    tc filter replace dev "$IF" parent ffff: protocol all prio 1 u32 match u32 0 0 \
      action mirred egress redirect dev "$IFB"
  fi
  for r in ${ROUTES//,/ }; do
    [ "$r" = - ] || ip route replace "$r" dev "$IF" proto 77
  done
  for p in ${PBR//,/ }; do
    [ "$p" = - ] && continue
    IFS=: read -r T VIA DEV PRIO <<< "$p"
    ip route replace default via "$VIA" dev "$DEV" table "$T" proto 77
    ip rule add from "$IP" lookup "$T" priority "$PRIO" protocol 77
  done
  nft delete element inet pppgate connect_pending_v4 "{ $EL }"
  [ -z "${HOOK_STAMP:-}" ] || echo "$EPOCHREALTIME" >> "$HOOK_STAMP"
  flock -u 9
else
  exec 9> "$LOCK"
  flock -w 2 9 || true
  nft delete element inet pppgate full_v4 "{ $EL }" 2> /dev/null || true
  nft delete element inet pppgate connect_pending_v4 "{ $EL }" 2> /dev/null || true
  tc qdisc del dev "$IF" root 2> /dev/null || true
  tc qdisc del dev "$IF" ingress 2> /dev/null || true
  ip link del "$IFB" 2> /dev/null || true
  ip route flush dev "$IF" proto 77 2> /dev/null || true
  while ip rule del from "$IP" protocol 77 2> /dev/null; do :; done
  rm -f "/run/vpn-sessions/$IF.env"
fi

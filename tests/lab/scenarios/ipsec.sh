# L2TP over IPsec (tests/lab_ipsec.rs): strongSwan's charon on the LNS (srv) and on the client
# (cli), IKEv1 transport mode protecting UDP 1701, with the whole stack behind it: xl2tpd, pppd
# with radius.so and pppgate.so, FreeRADIUS on PostgreSQL. The LNS drops L2TP that did not arrive
# inside ESP. Cases:
#   plain  a client without IPsec dials: no tunnel, no pppd, the drops counted
#   psk    pre-shared key: IKE up, then the dial with the connect-path traffic check (UDP senders
#          from before the link exists, counted at the far side): gate before traffic, zero
#          unpoliced packets; the policy and the radacct row; L2TP carried by ESP (SA counters)
#   cert   the same with X.509 certificates (ECDSA, a lab CA)
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/connect.sh"
. "$LAB_REPO/tests/lab/guest/radius.sh"
. "$LAB_REPO/tests/lab/guest/ipsec.sh"
lab_init
cl_init
modprobe -a esp4 xfrm_user 2> /dev/null || true

pg_start
pppgate_configure
pppgate_migrate
net_setup
radius_prepare
radius_user alice secret
radius_start
ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" connection set "$(conn_id alice)" --down-kbit 2000 --up-kbit 1000 > /dev/null
LNS_PLUGIN=0
LNS_PPPD_EXTRA="plugin radius.so plugin $LAB_PLUGIN pppgate-config $PPPGATE_CONF"
lns_start
ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" reconcile --boot > /dev/null
ipsec_protect_l2tp

case_plain() {
  client_add plain alice secret
  local d0
  d0=$(ipsec_l2tp_plain_drops)
  client_connect plain
  if poll_until 20 lns_peer_up plain; then
    die "a dial without IPsec reached the LNS's pppd"
  fi
  fact plain.dropped $(( $(ipsec_l2tp_plain_drops) - d0 ))
  fact plain.lns_up no
}

# esp_in_packets: packets counted by the LNS's inbound ESP SAs (ip -s xfrm state).
esp_in_packets() {
  ip -n srv -s xfrm state | awk -v lns="$LNS_IP" '
    /^src/ { inbound = ($4 == lns) }
    inbound && /packets/ && /bytes/ { for (i = 1; i <= NF; i++) if ($i ~ /\(packets\)/) { sub(/\(packets\).*/, "", $i); sum += $i } }
    END { print sum + 0 }'
}

case_ipsec() {
  local mode=$1 ip
  client_add alice alice secret
  ipsec_setup "$mode" "$(client_get alice lac_addr)"
  ipsec_start
  ipsec_up
  fact "$mode.ike_ms" "$IPSEC_UP_MS"
  fact "$mode.sas_lns" "$(ipsec_sas lns)"
  local d0
  d0=$(ipsec_l2tp_plain_drops)
  traffic_start "$mode" alice
  client_connect alice
  client_wait_up alice 60
  ip=$(client_get alice client_ip)
  fact "$mode.client_ip" "$ip"
  fact "$mode.connect_to_up_ms" $(( $(client_get alice up_ms) - $(client_get alice connect_ms) ))
  nap 1.5
  traffic_stop "$mode"
  fact "$mode.full" "$(nft_has full_v4 "$ip" && echo yes || echo no)"
  fact "$mode.pending_after" "$(nft_has connect_pending_v4 "$ip" && echo yes || echo no)"
  fact "$mode.qdisc" "$(tc -n srv qdisc show dev "$(client_get alice lns_if)" root | awk '{print $2}')"
  wait_for 20 "alice's radacct row" open_rows_are alice 1
  fact "$mode.radacct_ip" "$(sql "select host(framedipaddress) from radacct where username = 'alice' and acctstoptime is null")"
  fact "$mode.esp_in_packets" "$(esp_in_packets)"
  fact "$mode.plain_drops" $(( $(ipsec_l2tp_plain_drops) - d0 ))
  ip -n srv -s xfrm state > "$LAB_OUT/logs/$mode-xfrm-state.txt"
  client_hangup alice
  client_wait_down alice 30
  wait_for 20 "alice's radacct row closed" open_rows_are alice 0
  ipsec_stop
}

case_psk() { case_ipsec psk; }
case_cert() { case_ipsec cert; }

cl_case plain case_plain
cl_case psk case_psk
cl_case cert case_cert

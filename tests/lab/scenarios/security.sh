# Trust boundaries of the data path (issue 10, docs/security.md), proven with packets counted at
# the far side; checked by tests/lab_security.rs.
#
#   spoof   alice (FULL), bob (BLOCKED), carol (RESTRICTED) and dave (FULL) connect over real
#           L2TP; a link pppgate never saw ("rogue", pppd over a pty without the plugin) comes
#           up too. bob, carol and the rogue client send raw datagrams with alice's address as
#           source; dave's LNS pppd is SIGKILLed and, before any reconcile, the three send with
#           dave's address: nothing arrives. alice's own datagrams arrive before and after.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/connect.sh"
. "$LAB_REPO/tests/lab/guest/security.sh"
lab_init
cl_init
sec_init

t0=$(uptime_ms)
pg_start
pppgate_configure
pppgate_migrate
net_setup
pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }

ALICE=$(pg_srv connection add --login alice --status CLAIMED)
BOB=$(pg_srv connection add --login bob --status CLAIMED)
pg_srv connection set "$BOB" --block > /dev/null
CAROL=$(pg_srv connection add --login carol --status PREPROVISIONED)
DAVE=$(pg_srv connection add --login dave --status CLAIMED)
for u in alice bob carol dave; do lns_user "$u" "pw-$u"; done
LNS_PPPD_EXTRA="lcp-restart 1"
lns_start
# As after a boot: the boot reconcile builds inet pppgate before the first dial (simultaneous
# first connects on a box without the table are a case of their own).
pg_srv reconcile --boot > /dev/null
# Four clients dial at once on a slow TCG guest: give each connect the whole window (its cap).
settings_window 15
fact setup.wall_ms $(( $(uptime_ms) - t0 ))

new_client() {
  client_add "$1" "$1" "pw-$1"
  client_opt "$1" "lcp-restart 1"
}

# sent WORD N: fact spoof.sent.WORD (datagrams the kernel took for sending); what arrived is
# counted in inet at the end of the case (spoof.arrived.WORD).
sent() { fact "spoof.sent.$1" "$2"; }

# ---------------------------------------------------------------------------------------------
case_spoof() {
  local c a_ip d_ip n
  for c in alice bob carol dave; do new_client "$c"; done
  for c in alice bob carol dave; do client_connect "$c"; done
  for c in alice bob carol dave; do client_wait_up "$c" 60; done
  a_ip=$(client_get alice client_ip)
  d_ip=$(client_get dave client_ip)
  wait_for 20 "alice in full_v4" nft_has full_v4 "$a_ip" "$(client_get alice lns_if)"
  wait_for 20 "bob in blocked_v4" nft_has blocked_v4 "$(client_get bob client_ip)" "$(client_get bob lns_if)"
  wait_for 20 "carol in restricted_v4" nft_has restricted_v4 "$(client_get carol client_ip)" "$(client_get carol lns_if)"
  wait_for 20 "dave in full_v4" nft_has full_v4 "$d_ip" "$(client_get dave lns_if)"
  rogue_up
  for c in alice bob carol dave; do
    fact "spoof.$c.ip" "$(client_get "$c" client_ip)"
    fact "spoof.$c.lns_if" "$(client_get "$c" lns_if)"
  done
  fact spoof.rogue.ip "$ROGUE_IP"
  fact spoof.rogue.srv_if "$(rogue_srv_if)"
  sink_start spoof
  # alice, FULL, with her own address: arrives.
  forge alice "$a_ip" 20 alice-own; sent alice-own "$V"
  # The others with their own addresses: bob and the rogue link pass nothing, carol only to her
  # walled garden (inet's 203.0.113.2 is not in it).
  forge bob "$(client_get bob client_ip)" 20 bob-own; n=$V
  forge carol "$(client_get carol client_ip)" 20 carol-own; n="$n $V"
  forge rogue "$ROGUE_IP" 20 rogue-own; n="$n $V"
  # Borrowing alice's address.
  forge bob "$a_ip" 20 bob-as-alice; sent bob-as-alice "$V"
  forge carol "$a_ip" 20 carol-as-alice; sent carol-as-alice "$V"
  forge rogue "$a_ip" 20 rogue-as-alice; sent rogue-as-alice "$V"
  set -- $n
  sent bob-own "$1"
  sent carol-own "$2"
  sent rogue-own "$3"
  snap spoof-live
  ksnap spoof-live
  # dave's pppd dies without a word (SIGKILL: no ip-down, no cleanup by the plugin).
  kill -KILL "$(client_get dave lns_pid)"
  wait_for 20 "dave's LNS interface to go" eval "! ip -n srv link show dev $(client_get dave lns_if) > /dev/null 2>&1"
  fact spoof.dave_member_left "$(nft_has full_v4 "$d_ip" && echo yes || echo no)"
  forge bob "$d_ip" 20 bob-as-dave; sent bob-as-dave "$V"
  forge carol "$d_ip" 20 carol-as-dave; sent carol-as-dave "$V"
  forge rogue "$d_ip" 20 rogue-as-dave; sent rogue-as-dave "$V"
  # FULL unaffected.
  forge alice "$a_ip" 20 alice-after; sent alice-after "$V"
  nap 0.5
  for w in alice-own bob-own carol-own rogue-own bob-as-alice carol-as-alice rogue-as-alice \
    bob-as-dave carol-as-dave rogue-as-dave alice-after; do
    sink_count spoof "$w"
    fact "spoof.arrived.$w" "$V"
  done
  pppgate_counters
  fact spoof.unpoliced_from "${CNT[unpoliced_from]:-0}"
  fact spoof.blocked_from "${CNT[blocked_from]:-0}"
  fact spoof.restricted_from "${CNT[restricted_from]:-0}"
  sink_stop spoof
  snap spoof-after
  ksnap spoof-after
  rogue_down
}

cl_case spoof case_spoof

# ---------------------------------------------------------------------------------------------
#   tamper  tina (FULL), tom (BLOCKED) and tess (RESTRICTED) send every 10 ms while `pppgate
#           guard` runs; `nft flush ruleset`, then `nft delete table inet pppgate`: the table is
#           back with every member; what each sent in the first second after the tamper and
#           after it is counted at the far side (tamper.<ep>.<who>.{sent,arrived}_{first,after}).
#           Then, with the guard stopped, a flush and a new client (ned) right after it: the
#           older sessions keep their membership (tamper.connect_after_flush.*).
TAMPER_CONN_TINA=$(pg_srv connection add --login tina --status CLAIMED)
TAMPER_CONN_TOM=$(pg_srv connection add --login tom --status CLAIMED)
pg_srv connection set "$TAMPER_CONN_TOM" --block > /dev/null
pg_srv connection add --login tess --status PREPROVISIONED > /dev/null
pg_srv connection add --login ned --status CLAIMED > /dev/null
for u in tina tom tess ned; do lns_user "$u" "pw-$u"; done
: "$TAMPER_CONN_TINA"

tamper_episode() {
  local ep=$1 tb ta
  shift
  timed_in_srv "$@"
  read -r tb ta <<< "$V"
  fact "tamper.$ep.cmd_ms" $(((ta - tb) / 1000))
  wait_for 30 "inet pppgate back with every member after $ep" \
    members_are full_v4=tina blocked_v4=tom restricted_v4=tess
  mono_us
  fact "tamper.$ep.seen_whole_ms" $(((V - ta) / 1000))
  # The guard's own figures for this restore (its last "restored" line).
  V=$(grep 'inet pppgate restored' "$LAB_OUT/guard.log" | tail -n 1)
  fact "tamper.$ep.guard_since_event_ms" "$(sed -n 's/.*since_event_ms=\([0-9]*\).*/\1/p' <<< "$V")"
  fact "tamper.$ep.guard_lockdown_us" "$(sed -n 's/.*lockdown_us=\([0-9]*\).*/\1/p' <<< "$V")"
  fact "tamper.$ep.guard_restore_us" "$(sed -n 's/.*restore_us=\([0-9]*\).*/\1/p' <<< "$V")"
  echo "$ep $tb $ta" >> "$SEC_DIR/episodes"
  nap 2.5
}

case_tamper() {
  local c ep tb ta t0 n first last who ip
  : > "$SEC_DIR/episodes"
  for c in tina tom tess; do new_client "$c"; done
  for c in tina tom tess; do client_connect "$c"; done
  for c in tina tom tess; do client_wait_up "$c" 90; done
  wait_for 30 "the three policies" members_are full_v4=tina blocked_v4=tom restricted_v4=tess
  guard_start
  traffic_start tamper tina tom tess
  wait_for 30 "the three senders to send" senders_running tamper tina tom tess
  tamper_episode flush nft flush ruleset
  tamper_episode delete nft delete table inet pppgate
  ksnap tamper-restored
  traffic_stop tamper
  # Each episode's reference time t0: when the command returned, or — if earlier — when the
  # first BLOCKED or RESTRICTED datagram that got through was sent (the policy was gone then).
  # The first second after t0 is the gap; from then on nothing of theirs may arrive.
  while read -r ep tb ta; do
    leaks "$CL_TRAFFIC/tamper-recv.log" "$tb" $((ta + 2500000)) "$(client_get tom client_ip)" "$(client_get tess client_ip)"
    read -r n first last <<< "$V"
    t0=$ta
    if [ "$n" -gt 0 ] && [ "$first" -lt "$t0" ]; then t0=$first; fi
    fact "tamper.$ep.t0_before_cmd_end_ms" $(((ta - t0) / 1000))
    fact "tamper.$ep.leaked" "$n"
    fact "tamper.$ep.leak_window_ms" $(((n > 0 ? last - first : 0) / 1000))
    fact "tamper.$ep.last_leak_after_t0_ms" $(((n > 0 ? last - t0 : 0) / 1000))
    for who in tina tom tess; do
      ip=$(client_get "$who" client_ip)
      window_count "$CL_TRAFFIC/tamper-$who-sent.log" 2 "$t0" $((t0 + 1000000))
      fact "tamper.$ep.$who.sent_first" "$V"
      window_count "$CL_TRAFFIC/tamper-$who-sent.log" 2 $((t0 + 1000000)) $((t0 + 2500000))
      fact "tamper.$ep.$who.sent_after" "$V"
      window_count "$CL_TRAFFIC/tamper-recv.log" 2 "$t0" $((t0 + 1000000)) "$ip"
      fact "tamper.$ep.$who.arrived_first" "$V"
      window_count "$CL_TRAFFIC/tamper-recv.log" 2 $((t0 + 1000000)) $((t0 + 2500000)) "$ip"
      fact "tamper.$ep.$who.arrived_after" "$V"
    done
  done < "$SEC_DIR/episodes"
  cp "$SEC_DIR/episodes" "$LAB_OUT/cases/tamper-episodes" 2> /dev/null || true
  pppgate_counters
  fact tamper.blocked_from "${CNT[blocked_from]:-0}"
  fact tamper.restricted_from "${CNT[restricted_from]:-0}"
  # A connect right after a flush, no guard: it rebuilds the table with everyone in it.
  guard_stop
  ip netns exec srv nft flush ruleset
  new_client ned
  client_connect ned
  client_wait_up ned 90
  wait_for 30 "ned's policy" members_are full_v4=ned
  for c in tina tom tess; do
    fact "tamper.connect_after_flush.$c" "$(members_are full_v4=tina blocked_v4=tom restricted_v4=tess && echo yes || echo no)"
  done
  ksnap tamper-connect-after-flush
  cp "$LAB_OUT/guard.log" "$LAB_OUT/cases/tamper-guard.log" 2> /dev/null || true
}

cl_case tamper case_tamper

# ---------------------------------------------------------------------------------------------
#   first8  no inet pppgate (deleted, no guard): eight clients of BLOCKED connections, each with
#           a sender from before it dials, dial at once; every one comes up and is policed
#           (blocked_v4), none is ended, nothing arrives at the far side.
for i in 1 2 3 4 5 6 7 8; do
  c=$(pg_srv connection add --login "first$i" --status CLAIMED)
  pg_srv connection set "$c" --block > /dev/null
  lns_user "first$i" "pw-first$i"
done

case_first8() {
  local i up=0 alive=0 policed=0
  for i in 1 2 3 4 5 6 7 8; do new_client "first$i"; done
  ip netns exec srv nft delete table inet pppgate
  traffic_start first8 first1 first2 first3 first4 first5 first6 first7 first8
  for i in 1 2 3 4 5 6 7 8; do client_connect "first$i"; done
  for i in 1 2 3 4 5 6 7 8; do
    if poll_until 120 client_is_up "first$i"; then up=$((up + 1)); fi
  done
  nap 3
  for i in 1 2 3 4 5 6 7 8; do
    if cget "first$i" lns_pid && pid_alive "$V"; then
      alive=$((alive + 1))
    else
      log "first$i: the LNS pppd ($V) is gone; its events: $(grep -h "pid=$V\$" "$LAB_TMP/lns-events.log" 2> /dev/null \
        | paste -sd '|' - || true)"
    fi
    if cget "first$i" client_ip && nft_member blocked_v4 "$V"; then policed=$((policed + 1)); fi
  done
  fact first8.up "$up"
  fact first8.alive "$alive"
  fact first8.policed "$policed"
  local since
  since=$(lns_log_since "$CASE_LOG_MARK")
  fact first8.ended "$(grep -c 'ending session' <<< "$since" || true)"
  # Why a session ended, and how long the slowest one waited for its policy: one line each, so
  # that a failure on a slower machine says its cause in the test's own output.
  fact first8.why "$(grep 'ending session' <<< "$since" | sed 's/^.*ending session //' | tr -d '\r' \
    | paste -sd '|' - || true)"
  fact first8.max_attempts "$(grep -o 'attempts=[0-9]*' <<< "$since" | cut -d= -f2 | sort -n | tail -1 || true)"
  fact first8.max_gate_released_ms "$(grep -o 'gate_released_us=[0-9]*' <<< "$since" | cut -d= -f2 \
    | sort -n | tail -1 | awk '{ printf "%d", $1 / 1000 }' || true)"
  fact first8.max_sql_ms "$(grep -o 'sql_us=[0-9]*' <<< "$since" | cut -d= -f2 | sort -n | tail -1 \
    | awk '{ printf "%d", $1 / 1000 }' || true)"
  ksnap first8
  traffic_stop first8
}

cl_case first8 case_first8

# shellcheck shell=bash
# Helpers for tests/lab/scenarios/security.sh (issue 10, docs/security.md), on top of lib.sh and
# guest/connect.sh.
#
#   rogue_up / rogue_down   a ppp link between srv and cli that pppgate.so never saw: srv's pppd
#                           (no plugin) runs the client's pppd in cli over a pty; srv's side is a
#                           ppp* interface like every session's (link name "rogue" in cli)
#   sink_start TAG / sink_count TAG WORD
#                           a receiver in inet for forged datagrams (udp.pl sink on SEC_PORT);
#                           how many arrived whose payload starts with WORD
#   forge NAME SRC COUNT WORD
#                           COUNT datagrams "WORD n" from source SRC (forged or not) through link
#                           NAME (a client name, or "rogue") to inet

SEC_PORT=9998
SEC_DIR=$LAB_TMP/security
ROGUE_IP=198.51.100.98

sec_init() { mkdir -p "$SEC_DIR"; }

rogue_if_cli() { readf /run/ppp-rogue.pid && F=$(sed -n 2p /run/ppp-rogue.pid) && [ -n "$F" ]; }
rogue_srv_if() { ip -n srv -o addr show | awk -v p="$ROGUE_IP" '$0 ~ "peer " p "/" { print $2; exit }'; }
rogue_is_up() { [ -n "$(rogue_srv_if)" ] && rogue_if_cli; }

rogue_up() {
  # srv's pppd is started with the default options file only (no plugin) and the lab's own
  # witness scripts left out: pppgate knows nothing of this link.
  ip netns exec srv pppd nodetach noauth local nodefaultroute noipdefault "$PPP_LOCAL:$ROGUE_IP" \
    linkname rogue-srv logfile "$SEC_DIR/rogue-srv.log" \
    pty "ip netns exec cli pppd notty noauth local nodefaultroute noipdefault ipcp-accept-local ipcp-accept-remote linkname rogue logfile $SEC_DIR/rogue-cli.log" \
    > "$SEC_DIR/rogue.out" 2>&1 &
  echo $! > "$SEC_DIR/rogue.pid"
  bg_track "$(cat "$SEC_DIR/rogue.pid")"
  wait_for 30 "the rogue ppp link (no pppgate) to come up" rogue_is_up
  log "rogue link up: srv $(rogue_srv_if) <-> cli $(sed -n 2p /run/ppp-rogue.pid), peer $ROGUE_IP"
}

rogue_down() {
  local pid
  read -r pid < "$SEC_DIR/rogue.pid" 2> /dev/null || return 0
  kill -TERM "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}

sink_start() {
  rm -f "$SEC_DIR/$1.sink" "$SEC_DIR/$1.sink.ready"
  ip netns exec inet perl "$CL_UDP" sink "$SEC_PORT" "$SEC_DIR/$1.sink" 2> "$SEC_DIR/$1.sink.err" &
  echo $! > "$SEC_DIR/$1.sinkpid"
  bg_track $!
  wait_for 20 "the forged-datagram sink in inet" test -e "$SEC_DIR/$1.sink.ready"
}

sink_stop() {
  local pid
  read -r pid < "$SEC_DIR/$1.sinkpid" 2> /dev/null || return 0
  kill -TERM "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  cp "$SEC_DIR/$1.sink" "$LAB_OUT/cases/$1.sink" 2> /dev/null || true
}

# sink_count TAG WORD: V = datagrams received whose payload's first word is WORD.
sink_count() {
  local line
  V=0
  [ -e "$SEC_DIR/$1.sink" ] || return 0
  while IFS= read -r line; do
    if [[ $line == "$2 "* ]]; then V=$((V + 1)); fi
  done < "$SEC_DIR/$1.sink"
  return 0
}

# forge NAME SRC COUNT WORD: V = datagrams the kernel accepted for sending.
forge() {
  V=$(ip netns exec cli perl "$CL_UDP" forge "$1" "$2" "$UPLINK_INET" "$SEC_PORT" "$3" "$4" 2> "$SEC_DIR/forge-$4.err") ||
    die "forging from $1 failed: $(cat "$SEC_DIR/forge-$4.err")"
  V=${V//[^0-9]/}
}

# mono_us: V = CLOCK_MONOTONIC in µs (udp.pl's clock: one clock for every namespace of the VM).
mono_us() { V=$(perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e 'printf "%d", clock_gettime(CLOCK_MONOTONIC) * 1e6'); }

# guard_start / guard_stop: `pppgate guard` in srv (as pppgate-guard.service runs it), its log in
# /out/guard.log.
guard_start() {
  ip netns exec srv env PPPGATE_LOG=info "$LAB_PPPGATE" -c "$PPPGATE_CONF" guard --interval 30 \
    >> "$LAB_OUT/guard.log" 2>&1 &
  echo $! > "$SEC_DIR/guard.pid"
  bg_track $!
  wait_for 30 "pppgate guard to watch" grep -q "watching inet pppgate" "$LAB_OUT/guard.log"
  # Its first check (nothing to do) takes a moment under TCG.
  nap 2
}

guard_stop() {
  local pid
  read -r pid < "$SEC_DIR/guard.pid" 2> /dev/null || return 0
  kill -TERM "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}

# members_are SET=NAME...: every named client's member is in its set (bound to its LNS link).
members_are() {
  local kv set name
  for kv in "$@"; do
    set=${kv%%=*}
    name=${kv#*=}
    nft_member "$set" "$(client_get "$name" client_ip)" "$(client_get "$name" lns_if)" || return 1
  done
}

# window_count LOG FIELD FROM_US TO_US [IP]: V = lines of LOG whose FIELD-th field (1-based, a
# CLOCK_MONOTONIC µs stamp) is in [FROM_US, TO_US) and, given IP, whose last field is IP.
window_count() {
  V=0
  [ -f "$1" ] || return 0
  V=$(awk -v f="$2" -v a="$3" -v b="$4" -v ip="${5:-}" \
    '$f + 0 >= a + 0 && $f + 0 < b + 0 && (ip == "" || $NF == ip) { n++ } END { print n + 0 }' "$1")
}

# timed_in_srv CMD...: runs CMD in srv from one perl process that reads CLOCK_MONOTONIC right
# before and right after it (an exec costs hundreds of ms under TCG: a stamp taken by another
# process before the command is not the command's time). V = "<before_us> <after_us>".
timed_in_srv() {
  V=$(ip netns exec srv perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e '
    my $a = clock_gettime(CLOCK_MONOTONIC);
    system(@ARGV) == 0 or exit 1;
    my $b = clock_gettime(CLOCK_MONOTONIC);
    printf "%d %d", $a * 1e6, $b * 1e6;' -- "$@") || die "in srv: $* failed"
}

# leaks LOG FROM_US TO_US IP...: V = "<count> <first_sent_us> <last_sent_us>" of the datagrams in
# the receiver's LOG from any of IP... sent in [FROM_US, TO_US) (first/last 0 when none).
leaks() {
  local log=$1 a=$2 b=$3
  shift 3
  V=$(awk -v a="$a" -v b="$b" -v ips=" $* " \
    '$2 + 0 >= a + 0 && $2 + 0 < b + 0 && index(ips, " " $NF " ") { n++; if (!f || $2 + 0 < f) f = $2 + 0; if ($2 + 0 > l) l = $2 + 0 }
     END { printf "%d %d %d", n, f, l }' "$log")
}

# senders_running TAG NAME...: every NAME's sender logged 5 sends.
senders_running() {
  local tag=$1 n
  shift
  for n in "$@"; do
    [ -f "$CL_TRAFFIC/$tag-$n-sent.log" ] || return 1
    [ "$(wc -l < "$CL_TRAFFIC/$tag-$n-sent.log")" -ge 5 ] || return 1
  done
}

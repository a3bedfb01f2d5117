# shellcheck shell=bash
# Connect-path helpers for tests/lab/scenarios/connect*.sh, on top of lib.sh (source lib.sh, then
# this file, then call cl_init after lab_init). Kept apart from lib.sh so the harness library
# stays small.
#
#   LNS variants      lns_stop, lns_restart (current LNS_PLUGIN / LNS_PPPD_EXTRA), lns_start_noauth
#   client tweaks     client_opt NAME LINE (append a pppd option), client_anonymous NAME,
#                     client_route NAME (cli: 203.0.113.0/24 via the client's ppp link)
#   lock holders      lock_hold / lock_release (flock(1) on the apply lock, in srv),
#                     settings_lock_hold / settings_lock_release (a PostgreSQL session holding
#                     ACCESS EXCLUSIVE on `settings`, so reading it times out)
#   database cut off  sql_unreachable / sql_reachable, sql_syn_drops (the plugin's database at an
#                     address srv drops connects to)
#   traffic           traffic_start TAG NAME... / traffic_stop TAG: UDP senders in cli (one per
#                     client, from before the link exists), a receiver in inet, counted at the
#                     far side by the receiver's log and by an nft counter in inet
#   pppd's log times  syslog_start (every pppd line stamped on arrival: logs/pppd-syslog.log)
#   kernel            nft_has SET IP, pppgate_counters (the drop counters of `inet pppgate`),
#                     ksnap NAME (tc, links, routes, rules of srv into /out/snap/NAME/kernel/)
#   iperf             iperf_start / iperf_run TAG NAME down|up SECONDS (TCP between inet and a client)

CL_LOCK=/run/vpn-policy-apply.lock
CL_UDP="$LAB_REPO/tests/lab/guest/udp.pl"
CL_PORT=9999
CL_DEST=$UPLINK_INET
CL_DIR=$LAB_TMP/connect
CL_TRAFFIC=$LAB_OUT/traffic

cl_init() {
  mkdir -p "$CL_DIR" "$CL_TRAFFIC"
  modprobe ifb numifbs=0 2> /dev/null || modprobe ifb || die "modprobe ifb failed"
  [ -r "$CL_UDP" ] || die "missing $CL_UDP"
}

# ---------------------------------------------------------------------------------------------
# Cases: cl_case NAME FN is run_case with a guard that ends whatever the case left running (lock
# holders, the settings lock, senders, receivers, monitors) even when it fails half-way, so one
# failing case cannot take the next ones down with it.

cl_case() {
  local name=$1
  shift
  run_case "$name" cl_guarded "$@"
}

cl_guarded() {
  trap cl_case_cleanup EXIT
  "$@"
}

cl_case_cleanup() {
  local rc=$? pid
  set +e
  [ -z "${LOCK_HOLDER:-}" ] || lock_release
  [ -z "${SETTINGS_LOCKER:-}" ] || settings_lock_release
  sql_reachable
  if [ -f "$CL_DIR/bg.pids" ]; then
    while read -r pid; do
      kill -TERM "$pid" 2> /dev/null
    done < "$CL_DIR/bg.pids"
    rm -f "$CL_DIR/bg.pids"
  fi
  exit "$rc"
}

# bg_track PID: a background process the case guard ends.
bg_track() { echo "$1" >> "$CL_DIR/bg.pids"; }

# ---------------------------------------------------------------------------------------------
# syslog_start: a reader on /dev/log (udp.pl syslog) that stamps every message with the time it
# was read (CLOCK_MONOTONIC µs, the clock of the traffic logs) into $LAB_TMP/pppd-syslog.log
# (logs/ at the end). pppd sends every line it logs to syslog as well as to its logfile, so its
# own lines and the plugin's (logged through pppd) get times from outside both: when IPCP came
# up, when the plugin decided to end the session, when the ip-down notifiers were done. The
# queue is raised first (per network namespace, read when the socket is made) so a reader
# behind by a few lines never makes pppd wait in syslog().
syslog_start() {
  [ ! -e /dev/log ] || die "/dev/log exists already: another syslog reader runs"
  echo 1024 > /proc/sys/net/unix/max_dgram_qlen || die "cannot raise net.unix.max_dgram_qlen"
  perl "$CL_UDP" syslog /dev/log "$LAB_TMP/pppd-syslog.log" 2> "$CL_DIR/syslog.err" &
  wait_for 10 "the syslog reader on /dev/log" test -e "$LAB_TMP/pppd-syslog.log.ready"
  rm -f "$LAB_TMP/pppd-syslog.log.ready"
}

# ---------------------------------------------------------------------------------------------
# sql_unreachable / sql_reachable: the plugin's database moved to an address whose connects
# srv drops (SYNs counted and dropped in srv's output: a connect waits for its timeout, as for a
# database host that is down or cut off), and back. New pppds read the changed configuration.
CL_SQL_DEAD=203.0.113.9

sql_unreachable() {
  cp -p "$PPPGATE_CONF" "$CL_DIR/pppgate.toml.orig"
  sed -i "s|^dsn = .*|dsn = \"host=$CL_SQL_DEAD port=5432 dbname=$PG_DB user=postgres\"|" "$PPPGATE_CONF"
  grep -q "host=$CL_SQL_DEAD " "$PPPGATE_CONF" || die "cannot point $PPPGATE_CONF at $CL_SQL_DEAD"
  ip netns exec srv nft -f - << EOF || die "cannot drop srv's connects to $CL_SQL_DEAD"
table inet labsql {
	chain output {
		type filter hook output priority 0; policy accept;
		ip daddr $CL_SQL_DEAD tcp dport 5432 counter drop
	}
}
EOF
}

# sql_syn_drops: V = the connects sql_unreachable dropped so far.
sql_syn_drops() {
  local line
  V=0
  while IFS= read -r line; do
    if [[ $line =~ counter\ packets\ ([0-9]+) ]]; then
      V=${BASH_REMATCH[1]}
    fi
  done < <(ip netns exec srv nft list chain inet labsql output)
}

sql_reachable() {
  [ -f "$CL_DIR/pppgate.toml.orig" ] || return 0
  cp -p "$CL_DIR/pppgate.toml.orig" "$PPPGATE_CONF"
  rm -f "$CL_DIR/pppgate.toml.orig"
  ip netns exec srv nft delete table inet labsql 2> /dev/null || true
}

# ---------------------------------------------------------------------------------------------
# LNS variants

lns_stop() {
  local pid
  if readf "$LAB_TMP/lns.pid" && pid_alive "$V"; then
    pid=$V
    kill -TERM "$pid" 2> /dev/null || true
    poll_until 20 pid_gone "$pid" || { kill -KILL "$pid" 2> /dev/null || true; }
  fi
  rm -f "$LAB_TMP/lns.pid" "$LAB_TMP/lns.ctl"
  poll_until 20 no_pppd || die "pppd still running after the LNS stopped:$PIDS"
}

lns_restart() {
  lns_stop
  lns_start
}

# xl2tpd for the LNS from the files lns_start wrote (after they were edited).
lns_launch() {
  rm -f "$LAB_TMP/lns.ctl"
  ip netns exec srv xl2tpd -D -c "$LAB_TMP/lns.conf" -p "$LAB_TMP/lns.pid" -C "$LAB_TMP/lns.ctl" \
    >> "$LAB_TMP/xl2tpd-lns.log" 2>&1 &
  wait_for 10 "the LNS xl2tpd control pipe" test -p "$LAB_TMP/lns.ctl"
  wait_for 5 "the LNS xl2tpd pid file" readf "$LAB_TMP/lns.pid"
  wait_for 5 "the LNS xl2tpd to listen" lns_listening
}

# The LNS does not ask the peer to authenticate (xl2tpd "require authentication = no", pppd
# "noauth", no require-pap): pppd has no authenticated peer name.
lns_start_noauth() {
  lns_stop
  lns_start
  lns_stop
  sed -i -e 's/^require authentication = yes$/require authentication = no/' -e '/^require pap = yes$/d' \
    "$LAB_TMP/lns.conf"
  sed -i -e '/^require-pap$/d' "$LAB_TMP/lns.options"
  echo "noauth" >> "$LAB_TMP/lns.options"
  lns_launch
  log "LNS restarted without authentication (noauth)"
}

# ---------------------------------------------------------------------------------------------
# Clients

client_opt() {
  local name=$1
  shift
  echo "$*" >> "$LAB_TMP/clients/$name/options"
}

# No user name, no password: the client has nothing to authenticate with.
client_anonymous() {
  sed -i -e '/^user /d' -e '/^password /d' "$LAB_TMP/clients/$1/options"
}

# cli: traffic to inet (203.0.113.0/24) leaves through the client's ppp link.
# lns_wait_up_where NAME KEY VALUE [TIMEOUT_S]: the LNS's first ip-up after NAME dialled whose
# witness KEY equals VALUE (e.g. `peer ""` for a peer that did not authenticate); records
# lns_pid lns_if client_ip up_ms like lns_wait_peer_up.
lns_up_where() {
  local name=$1
  cget "$name" lns_mark
  scan_events lns "$V" "$2" "$3" first-up || return 1
  ev_field pid
  cset "$name" lns_pid "$F"
  ev_field if
  cset "$name" lns_if "$F"
  ev_field remote
  cset "$name" client_ip "$F"
  ev_field ms
  cset "$name" up_ms "$F"
}

lns_wait_up_where() {
  poll_until "${4:-40}" lns_up_where "$1" "$2" "$3" ||
    die "timed out waiting for the LNS's ip-up of client $1 ($2=$3)"
}

# lac_lifetime NAME: after client NAME's last dial, the LAC's own ip-up and ip-down witness
# lines (the session as the client saw it); sets LAC_UP_MS, LAC_DOWN_MS (status 1 if either is
# missing).
lac_lifetime() {
  local mark n=0 line
  LAC_UP_MS=
  LAC_DOWN_MS=
  cget "$1" lac_mark
  mark=$V
  while IFS= read -r line; do
    n=$((n + 1))
    ((n > mark)) || continue
    [[ " $line " == *" link=$1 "* ]] || continue
    EV=$line
    ev_field ms
    if [[ $line == up* && -z $LAC_UP_MS ]]; then
      LAC_UP_MS=$F
    elif [[ $line == down* && -n $LAC_UP_MS && -z $LAC_DOWN_MS ]]; then
      LAC_DOWN_MS=$F
    fi
  done < "$LAB_TMP/lac-events.log"
  [ -n "$LAC_UP_MS" ] && [ -n "$LAC_DOWN_MS" ]
}

client_route() {
  ip -n cli route replace 203.0.113.0/24 dev "$(client_get "$1" lac_if)" ||
    die "cannot route 203.0.113.0/24 through client $1's link"
}

# ---------------------------------------------------------------------------------------------
# Lock holders

lock_busy() { ! flock -n "$CL_LOCK" true; }

# lock_hold: another process (flock(1), in srv) holds the apply lock until lock_release.
# `-o`: the lock stays with flock itself, so ending flock releases it. LOCK_HOLDER is its pid.
lock_hold() {
  touch "$CL_LOCK"
  ip netns exec srv flock -o "$CL_LOCK" sleep 600 &
  LOCK_HOLDER=$!
  bg_track "$LOCK_HOLDER"
  wait_for 10 "flock to hold $CL_LOCK" lock_busy
  now
  LOCK_HELD_MS=$NOW
  log "apply lock held by flock (pid $LOCK_HOLDER)"
}

lock_release() {
  local kids=
  [ -n "${LOCK_HOLDER:-}" ] || return 0
  read -r kids 2> /dev/null < "/proc/$LOCK_HOLDER/task/$LOCK_HOLDER/children" || true
  kill -TERM "$LOCK_HOLDER" 2> /dev/null || true
  wait "$LOCK_HOLDER" 2> /dev/null || true
  # shellcheck disable=SC2086
  [ -z "$kids" ] || kill -TERM $kids 2> /dev/null || true
  now
  LOCK_RELEASED_MS=$NOW
  LOCK_HOLDER=
  # Not checked with flock here: a waiting pppd may take the lock the moment it is free.
  log "apply lock released"
}

settings_locked() {
  [ "$(sql "select count(*) from pg_locks l join pg_class c on c.oid = l.relation
            where c.relname = 'settings' and l.mode = 'AccessExclusiveLock' and l.granted")" = 1 ]
}

settings_lock_hold() {
  PGAPPNAME=lab-settings-lock psql_as "$PG_DB" -q -c \
    "begin; lock table settings in access exclusive mode; select pg_sleep(600);" > /dev/null 2>&1 &
  SETTINGS_LOCKER=$!
  bg_track "$SETTINGS_LOCKER"
  wait_for 15 "a session to lock the settings table" settings_locked
  log "settings table locked (reads of it wait)"
}

settings_lock_release() {
  sql "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'lab-settings-lock'" > /dev/null
  wait "${SETTINGS_LOCKER:-}" 2> /dev/null || true
  SETTINGS_LOCKER=
  wait_for 10 "the settings lock to go" eval '! settings_locked'
}

settings_window() {
  sql "insert into settings (key, value) values ('connect_apply_window_s', '$1')
       on conflict (key) do update set value = excluded.value, updated_at = now()"
}

# ---------------------------------------------------------------------------------------------
# Kernel read-back

# nft_has SET IP [IFNAME]: IP (on IFNAME, or any interface) is a member of SET in srv's inet
# pppgate (lib.sh's nft_member).
nft_has() { nft_member "$@"; }

# pppgate_counters: CNT[comment] = packets of every commented counter in srv's inet pppgate.
declare -gA CNT
pppgate_counters() {
  local line name pk
  CNT=()
  while IFS= read -r line; do
    [[ $line == *'counter packets '* && $line == *'comment "'* ]] || continue
    name=${line##*comment \"}
    name=${name%%\"*}
    pk=${line#*counter packets }
    pk=${pk%% *}
    CNT[$name]=$pk
  done < <(ip netns exec srv nft list table inet pppgate 2> /dev/null)
}

# ksnap NAME: srv's nft ruleset, shaping, links, routes, rules and forwarding sysctls, the names
# in the sessions directory and the LNS pppd log of the current case into /out/snap/NAME/kernel/
# (cheaper than `snap`, which adds addresses, processes, mappings and the database).
# Classes are text: iproute2 6.1 prints HTB classes as text even with -j (pppgate's TBF is
# classless: its rate is in qdisc.json).
ksnap() {
  local d="$LAB_OUT/snap/$1/kernel" dev
  mkdir -p "$d"
  ip netns exec srv nft -j list ruleset > "$d/nft.json"
  ls "$SESSIONS_DIR" > "$d/sessions.txt" 2>&1 || true
  lns_log_since "${CASE_LOG_MARK:-0}" > "$d/pppd-lns.log"
  ip -n srv -j -d -s link show > "$d/links.json"
  tc -n srv -j -s qdisc show > "$d/qdisc.json"
  ip -n srv -j route show table all > "$d/routes.json"
  ip -n srv -j rule show > "$d/rules.json"
  # shellcheck disable=SC2016
  # `read`, not `cat`: one exec less per interface (each costs a noticeable time under TCG).
  ip netns exec srv sh -c 'read -r v < /proc/sys/net/ipv4/ip_forward; echo "ip_forward $v"
    for f in /proc/sys/net/ipv4/conf/*/rp_filter; do d=${f%/rp_filter}; read -r v < "$f"; echo "rp_filter ${d##*/} $v"; done' \
    > "$d/sysctl.txt"
  for dev in $(ip netns exec srv ls /sys/class/net); do
    case $dev in
      ppp* | pgi-*)
        tc -n srv -s class show dev "$dev" > "$d/class-$dev.txt"
        tc -n srv -j filter show dev "$dev" ingress > "$d/filter-$dev.json"
        ;;
    esac
  done
  log "kernel snapshot $1 taken"
}

# monitor_start TAG / monitor_stop TAG: `nft monitor` of srv's set elements, each line stamped
# (CLOCK_MONOTONIC µs, at or after the change) into /out/traffic/TAG-nft-monitor.log.
monitor_start() {
  ip netns exec srv perl "$CL_UDP" stamp "$CL_TRAFFIC/$1-nft-monitor.log" stdbuf -oL nft monitor &
  echo $! > "$CL_DIR/$1.monitor"
  bg_track $!
  nap 0.5
}

monitor_stop() {
  local pid
  read -r pid < "$CL_DIR/$1.monitor"
  kill -TERM "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}

# ---------------------------------------------------------------------------------------------
# Traffic: a UDP sender per client in cli (from before its link exists) to inet, counted there.

inet_counter_reset() {
  ip netns exec inet nft delete table inet labcount 2> /dev/null || true
  ip netns exec inet nft -f - <<EOF || die "cannot create the inet counter"
table inet labcount {
	chain input {
		type filter hook input priority 0; policy accept;
		udp dport $CL_PORT counter comment "from_clients"
	}
}
EOF
}

inet_counter() {
  local line
  V=
  while IFS= read -r line; do
    if [[ $line == *'comment "from_clients"'* ]]; then
      V=${line#*counter packets }
      V=${V%% *}
    fi
  done < <(ip netns exec inet nft list table inet labcount)
  [ -n "$V" ] || die "the inet counter is missing"
}

# lines FILE: sets V to the number of lines (0 for a missing file).
lines() {
  local n=0 _l
  if [ -f "$1" ]; then
    while IFS= read -r _l; do n=$((n + 1)); done < "$1"
  fi
  V=$n
}

# traffic_start TAG NAME...: receiver in inet, then one sender per client in cli.
traffic_start() {
  local tag=$1 name
  shift
  inet_counter_reset
  pppgate_counters
  echo "${CNT[pending_from]:-0} ${CNT[unpoliced_from]:-0} ${CNT[blocked_from]:-0}" > "$CL_DIR/$tag.cnt0"
  rm -f "$CL_TRAFFIC/$tag-recv.log" "$CL_TRAFFIC/$tag-recv.log.ready"
  ip netns exec inet perl "$CL_UDP" recv "$CL_PORT" "$CL_TRAFFIC/$tag-recv.log" 2> "$CL_DIR/$tag-recv.err" &
  echo $! > "$CL_DIR/$tag.sink"
  bg_track $!
  wait_for 20 "the UDP receiver in inet" test -e "$CL_TRAFFIC/$tag-recv.log.ready"
  : > "$CL_DIR/$tag.senders"
  for name in "$@"; do
    ip netns exec cli perl "$CL_UDP" send "$name" "$CL_DEST" "$CL_PORT" 10 "$CL_TRAFFIC/$tag-$name-sent.log" \
      2> "$CL_DIR/$tag-$name-send.err" &
    echo "$!" >> "$CL_DIR/$tag.senders"
    bg_track $!
  done
  # The senders are up once perl runs its loop; give them a moment before anything dials.
  nap 0.5
  log "traffic $tag: receiver in inet, senders for: $*"
}

# traffic_stop TAG: ends senders and receiver; facts TAG.sent, TAG.recv, TAG.inet_pkts,
# TAG.pending_drops, TAG.unpoliced_drops, TAG.blocked_drops.
traffic_stop() {
  local tag=$1 pid sent=0 f c0 c1 c2
  while read -r pid; do
    kill -TERM "$pid" 2> /dev/null || true
    wait "$pid" 2> /dev/null || true
  done < "$CL_DIR/$tag.senders"
  nap 0.5
  read -r pid < "$CL_DIR/$tag.sink"
  kill -TERM "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
  for f in "$CL_TRAFFIC/$tag"-*-sent.log; do
    [ -e "$f" ] || continue
    lines "$f"
    sent=$((sent + V))
  done
  fact "$tag.sent" "$sent"
  lines "$CL_TRAFFIC/$tag-recv.log"
  fact "$tag.recv" "$V"
  inet_counter
  fact "$tag.inet_pkts" "$V"
  read -r c0 c1 c2 < "$CL_DIR/$tag.cnt0"
  pppgate_counters
  fact "$tag.pending_drops" $((${CNT[pending_from]:-0} - c0))
  fact "$tag.unpoliced_drops" $((${CNT[unpoliced_from]:-0} - c1))
  fact "$tag.blocked_drops" $((${CNT[blocked_from]:-0} - c2))
}

# ---------------------------------------------------------------------------------------------
# TCP rates (iperf3): server in cli, client in inet. "down" = inet -> client (the LNS's egress on
# the session interface), "up" = client -> inet (-R: the server in cli sends).

# read_pid FILE: V = the number in FILE (iperf3 writes it without a newline).
read_pid() {
  V=
  [ -s "$1" ] || return 1
  read -r V < "$1" || true
  V=${V//[!0-9]/}
  [ -n "$V" ]
}

iperf_start() {
  rm -f "$CL_DIR/iperf3.pid"
  ip netns exec cli iperf3 -s -D -p 5201 -I "$CL_DIR/iperf3.pid" --logfile "$CL_DIR/iperf3-server.log" ||
    die "cannot start the iperf3 server in cli"
  wait_for 10 "the iperf3 server's pid file" read_pid "$CL_DIR/iperf3.pid"
  bg_track "$V"
  nap 0.5
}

# iperf_run TAG NAME down|up SECONDS: TCP transfer; fact TAG.kbit and IPERF_KBIT (the receiver's
# rate), the JSON in /out/traffic/TAG.json.
iperf_run() {
  local tag=$1 name=$2 dir=$3 secs=$4 ip rev= kbit
  ip=$(client_get "$name" client_ip)
  [ "$dir" = up ] && rev=-R
  # shellcheck disable=SC2086
  ip netns exec inet iperf3 -c "$ip" -p 5201 -t "$secs" -O 1 $rev -J > "$CL_TRAFFIC/$tag.json" 2> "$CL_DIR/$tag.err" ||
    die "iperf3 $dir to $name failed: $(tail -3 "$CL_DIR/$tag.err") $(grep -m1 '"error"' "$CL_TRAFFIC/$tag.json")"
  kbit=$(perl -MJSON::PP -e 'local $/; my $j = decode_json(<STDIN>);
    printf "%d\n", $j->{end}{sum_received}{bits_per_second} / 1000' < "$CL_TRAFFIC/$tag.json") ||
    die "cannot read the iperf3 result $tag"
  fact "$tag.kbit" "$kbit"
  IPERF_KBIT=$kbit
}

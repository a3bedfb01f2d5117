# shellcheck shell=bash
# pppgate lab guest library (bash). A scenario starts with:
#
#     . "$LAB_LIB"
#     lab_init
#
# and then builds what it needs: pg_start, pppgate_configure, pppgate_migrate, net_setup,
# lns_start, client_add / client_connect / client_wait_up / client_disconnect /
# client_hangup / client_wait_down, lns_wait_peer_up, snap, fact, run_case.
#
# Everything fails loudly (set -euo pipefail; `die` with a message), is idempotent where a
# scenario could reasonably call it twice, and polls with a bound instead of sleeping blindly.
# Under TCG every exec costs tens of milliseconds, so the polling paths use bash builtins only.
#
# Topology (all inside the VM):
#   cli (LAC, 192.0.2.2/24) --v-cli/v-srv-- srv (LNS, 192.0.2.1/24; forwards) --v-up/v-inet-- inet
#   srv: 203.0.113.1/24 on v-up; inet: 203.0.113.2/24 (+ .53, .80) on v-inet, route to the pool.
#   PPP: the LNS's side is 198.51.100.1, clients get 198.51.100.10-99.
#
# Times ("ms") are the guest's uptime in milliseconds (10 ms resolution), the same clock the
# pppd witness scripts use.

set -euo pipefail

: "${LAB_OUT:=/out}"
: "${LAB_PLUGIN:?LAB_PLUGIN is not set (run scenarios through the lab harness)}"
: "${LAB_PPPGATE:?LAB_PPPGATE is not set (run scenarios through the lab harness)}"

LAB_TMP=/tmp/lab
LAB_FACTS=$LAB_OUT/results.env
SESSIONS_DIR=/run/vpn-sessions
PPPGATE_CONF=/etc/pppgate/pppgate.toml
PG_DATA=/tmp/pgdata
PG_SOCK=/tmp/pg
PG_DB=pppgate
LNS_IP=192.0.2.1
LAC_IP=192.0.2.2
PPP_LOCAL=198.51.100.1
PPP_RANGE=198.51.100.10-198.51.100.99
UPLINK_SRV=203.0.113.1
UPLINK_INET=203.0.113.2
# Extra pppd options for the LNS (e.g. "debug"); the plugin is left out when LNS_PLUGIN=0.
: "${LNS_PPPD_EXTRA:=}"
: "${LNS_PLUGIN:=1}"

# ---------------------------------------------------------------------------------------------
# Basics

# now: sets NOW to the uptime in ms (no fork).
now() {
  local up _rest
  read -r up _rest < /proc/uptime
  NOW=$(( ${up%.*} * 1000 + 10#${up#*.} * 10 ))
}

uptime_ms() {
  now
  echo "$NOW"
}

log() {
  now
  printf '[lab %8s ms] %s\n' "$NOW" "$*" >&2
}

die() {
  log "FAILED: $*"
  exit 1
}

# nap SECONDS: sleeps without forking (read with a timeout on a pipe nobody writes to).
exec {LAB_NAP_FD}<> <(:)
nap() { read -r -t "$1" -u "$LAB_NAP_FD" _ || true; }

# fact KEY VALUE...: records a fact for the Rust side in /out/results.env (each key once).
fact() {
  local key=$1 line
  shift
  local value="$*"
  [[ $key =~ ^[A-Za-z0-9_.-]+$ ]] || die "fact: key '$key' has characters outside [A-Za-z0-9_.-]"
  [[ $value != *$'\n'* ]] || die "fact $key: the value has a newline"
  if [ -f "$LAB_FACTS" ]; then
    while IFS= read -r line; do
      [[ ${line%%=*} != "$key" ]] || die "fact $key recorded twice"
    done < "$LAB_FACTS"
  fi
  printf '%s=%s\n' "$key" "$value" >> "$LAB_FACTS"
  log "fact $key=$value"
}

# poll_until TIMEOUT_S CMD...: runs CMD every 0.1 s until it succeeds; status 1 on timeout.
poll_until() {
  local tmo=$1 deadline
  shift
  now
  deadline=$(( NOW + tmo * 1000 ))
  while :; do
    if "$@"; then
      return 0
    fi
    now
    [ "$NOW" -lt "$deadline" ] || return 1
    nap 0.1
  done
}

# wait_for TIMEOUT_S WHAT CMD...: poll_until, dying with WHAT on timeout.
wait_for() {
  local tmo=$1 what=$2
  shift 2
  poll_until "$tmo" "$@" || die "timed out after ${tmo}s waiting for $what"
}

pid_alive() {
  local _pid _comm state
  [ -n "$1" ] && read -r _pid _comm state _ 2> /dev/null < "/proc/$1/stat" && [ "$state" != Z ]
}

pid_gone() { ! pid_alive "$1"; }

# readf FILE: sets V to the file's first line (no fork); status 1 if missing or empty.
readf() {
  V=
  [ -s "$1" ] && read -r V < "$1"
}

lab_init() {
  [ -z "${LAB_INITED:-}" ] || return 0
  LAB_INITED=1
  mkdir -p "$LAB_TMP/clients" "$LAB_TMP/netns" "$LAB_OUT/logs" "$LAB_OUT/snap" "$LAB_OUT/cases" /run/xl2tpd /run/lock
  : > "$LAB_TMP/lns-events.log"
  : > "$LAB_TMP/lac-events.log"
  trap lab_on_exit EXIT
  local m
  for m in ppp_generic ppp_async l2tp_core l2tp_netlink l2tp_ppp veth; do
    modprobe "$m" || die "modprobe $m failed (kernel $(uname -r))"
  done
  [ -c /dev/ppp ] || mknod /dev/ppp c 108 0
  hostname lns
  grep -q ' lns$' /etc/hosts || echo "127.0.1.1 lns" >> /etc/hosts
  ip link set lo up
  [ -x "$LAB_PPPGATE" ] || die "pppgate binary $LAB_PPPGATE is missing"
  [ -r "$LAB_PLUGIN" ] || die "plugin $LAB_PLUGIN is missing"
  [ -z "${LAB_CASES:-}" ] || fact lab.cases "$LAB_CASES"
  log "lab ready: kernel $(uname -r), $(pppd --version 2>&1 | head -1), scenario $LAB_SCENARIO_NAME${LAB_CASES:+, cases: $LAB_CASES}"
}

lab_on_exit() {
  local rc=$?
  set +e
  log "scenario exiting with status $rc; collecting logs into $LAB_OUT/logs"
  cp -f "$LAB_TMP"/*.log "$LAB_TMP"/*.conf "$LAB_TMP"/*.options "$LAB_OUT/logs/" 2> /dev/null
  cp -f "$PG_SOCK/postgres.log" "$LAB_OUT/logs/" 2> /dev/null
  [ -f "$PPPGATE_CONF" ] && cp -f "$PPPGATE_CONF" "$LAB_OUT/logs/pppgate.toml"
  dmesg > "$LAB_OUT/logs/dmesg.log" 2> /dev/null
  sync
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Cases: a scenario runs independent cases so that one failing does not hide the others. A case
# runs in a subshell; its output goes to /out/cases/NAME.log (then into guest.log); its outcome
# is the fact NAME.status (ok|failed) plus NAME.wall_ms. Clients are reset after every case.

CASE_NAME=
CASE_LOG_MARK=0

# LAB_CASES (the harness passes $PPPGATE_LAB_CASES): run only the cases it names (space-separated);
# every other case records NAME.status=skipped, which the Rust side's expect_case refuses, so a
# test of a case that did not run fails instead of passing. Recorded as the fact lab.cases.
case_selected() {
  [ -n "${LAB_CASES:-}" ] || return 0
  case " $LAB_CASES " in *" $1 "*) return 0 ;; esac
  return 1
}

run_case() {
  local name=$1 t0 rc=0
  shift
  if ! case_selected "$name"; then
    log "=== case $name: skipped (LAB_CASES=$LAB_CASES) ==="
    fact "$name.status" skipped
    return 0
  fi
  log "=== case $name ==="
  CASE_NAME=$name
  CASE_LOG_MARK=$(lns_log_mark)
  now
  t0=$NOW
  ( "$@" ) > "$LAB_OUT/cases/$name.log" 2>&1 &
  wait $! || rc=$?
  cat "$LAB_OUT/cases/$name.log" >&2
  if [ "$rc" = 0 ]; then fact "$name.status" ok; else fact "$name.status" failed; fi
  now
  fact "$name.wall_ms" $(( NOW - t0 ))
  clients_reset || log "WARNING: clients_reset after case $name failed"
  CASE_NAME=
  log "=== case $name: $([ "$rc" = 0 ] && echo ok || echo "FAILED ($rc)") ==="
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL: initdb on tmpfs, trust auth, unix socket in $PG_SOCK, no TCP. The server's own
# client binaries are used directly (Debian's /usr/bin/psql is a Perl wrapper: ~1 s per call here).

PG_BIN=
pg_bin() {
  if [ -z "$PG_BIN" ]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2> /dev/null | sort -V | tail -1)
    [ -n "$PG_BIN" ] || die "PostgreSQL server binaries not found (apt-get install postgresql)"
  fi
}

as_postgres() { setpriv --reuid=postgres --regid=postgres --clear-groups "$@"; }

pg_running() { pg_bin; [ -f "$PG_DATA/postmaster.pid" ] && "$PG_BIN/pg_isready" -q -h "$PG_SOCK"; }

pg_start() {
  local t0
  pg_bin
  now
  t0=$NOW
  if [ ! -s "$PG_DATA/PG_VERSION" ]; then
    pg_init
  fi
  if ! pg_running; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t 60 -l "$PG_SOCK/postgres.log" \
      -o "-k $PG_SOCK -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" start > /dev/null ||
      die "PostgreSQL did not start: $(tail -5 "$PG_SOCK/postgres.log")"
  fi
  if [ "$(psql_as postgres -Atc "select count(*) from pg_database where datname = '$PG_DB'")" = 0 ]; then
    psql_as postgres -qc "create database $PG_DB" || die "cannot create database $PG_DB"
  fi
  now
  log "PostgreSQL up in $(( NOW - t0 )) ms (socket $PG_SOCK)"
}

# pg_init: a fresh cluster in $PG_DATA. initdb is by far the slowest step of a lab setup under
# TCG, so its pristine result is kept in the harness's cache ($LAB_CACHE, target/lab/cache on the
# host), keyed by the server's version and the initdb options; a template that does not unpack
# is replaced.
PG_INITDB_OPTS="-A trust -U postgres --no-sync --no-instructions --wal-segsize=1"
pg_init() {
  local t0 ver key tpl
  now
  t0=$NOW
  mkdir -p "$PG_SOCK"
  chown postgres:postgres "$PG_SOCK"
  ver=$("$PG_BIN/postgres" --version)
  key=$(printf '%s %s v1' "$ver" "$PG_INITDB_OPTS" | md5sum)
  tpl="${LAB_CACHE:-}/pgdata-${key%% *}.tar"
  rm -rf "$PG_DATA"
  if [ -n "${LAB_CACHE:-}" ] && [ -s "$tpl" ]; then
    if tar -C "$(dirname "$PG_DATA")" -xf "$tpl" && [ -s "$PG_DATA/PG_VERSION" ]; then
      now
      log "PostgreSQL cluster unpacked from the lab cache ($tpl) in $(( NOW - t0 )) ms"
      return 0
    fi
    log "WARNING: the cached cluster $tpl does not unpack; running initdb"
    rm -rf "$PG_DATA"
  fi
  mkdir -p "$PG_DATA"
  chown postgres:postgres "$PG_DATA"
  # shellcheck disable=SC2086
  as_postgres "$PG_BIN/initdb" -D "$PG_DATA" $PG_INITDB_OPTS > "$LAB_TMP/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$LAB_TMP/initdb.log")"
  now
  log "initdb took $(( NOW - t0 )) ms"
  if [ -n "${LAB_CACHE:-}" ] && [ -d "$LAB_CACHE" ]; then
    if tar -C "$(dirname "$PG_DATA")" -cf "$tpl.tmp.$$" "$(basename "$PG_DATA")" && mv "$tpl.tmp.$$" "$tpl"; then
      log "cached the fresh cluster as $tpl"
    else
      rm -f "$tpl.tmp.$$"
      log "WARNING: cannot cache the cluster in $LAB_CACHE"
    fi
  fi
}

pg_stop() {
  pg_bin
  [ -f "$PG_DATA/postmaster.pid" ] || return 0
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t 60 -m fast stop > /dev/null || die "PostgreSQL did not stop"
  ! pg_running || die "PostgreSQL still running after stop"
  log "PostgreSQL stopped"
}

psql_as() {
  local db=$1
  shift
  pg_bin
  "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$PG_SOCK" -U postgres -d "$db" "$@"
}

# sql STATEMENT: runs it against the pppgate database; prints rows unaligned, '|' separated.
sql() { psql_as "$PG_DB" -q -At -c "$1"; }
# sql_is EXPECTED QUERY: status 0 when QUERY prints EXPECTED. For polling: `wait_for 10 x test
# "$(sql ...)" = t` would run the query once and re-test a constant.
sql_is() { [ "$(sql "$2")" = "$1" ]; }

# ---------------------------------------------------------------------------------------------
# pppgate

pppgate_configure() {
  mkdir -p /etc/pppgate
  cat > "$PPPGATE_CONF" <<EOF
# written by the lab (tests/lab/guest/lib.sh)
[database]
dsn = "host=$PG_SOCK dbname=$PG_DB user=postgres"
connect_timeout_ms = 2000

[nas]
identity = "lns-1"
ip = "$LNS_IP"

[policy]
walled_garden = ["203.0.113.53/32:udp:53", "203.0.113.80/32:tcp:80"]
EOF
  "$LAB_PPPGATE" -c "$PPPGATE_CONF" config check > "$LAB_TMP/config-check.log" 2>&1 ||
    die "pppgate config check rejected $PPPGATE_CONF: $(cat "$LAB_TMP/config-check.log")"
}

pppgate_migrate() {
  "$LAB_PPPGATE" -c "$PPPGATE_CONF" db migrate > "$LAB_TMP/migrate.log" 2>&1 ||
    die "pppgate db migrate failed: $(cat "$LAB_TMP/migrate.log")"
}

# ---------------------------------------------------------------------------------------------
# Namespaces

net_setup() {
  if [ -s "$LAB_TMP/netns/srv" ]; then
    return 0
  fi
  local ns ino
  # Batched: every `ip` exec costs a noticeable fraction of a second under TCG.
  ip -batch - <<EOF || die "cannot create the namespaces and veths"
netns add srv
netns add cli
netns add inet
link add v-srv netns srv type veth peer name v-cli netns cli
link add v-up netns srv type veth peer name v-inet netns inet
EOF
  ip -n srv -batch - <<EOF || die "cannot configure srv"
link set lo up
addr add $LNS_IP/24 dev v-srv
link set v-srv up
addr add $UPLINK_SRV/24 dev v-up
link set v-up up
EOF
  ip -n cli -batch - <<EOF || die "cannot configure cli"
link set lo up
addr add $LAC_IP/24 dev v-cli
link set v-cli up
EOF
  ip -n inet -batch - <<EOF || die "cannot configure inet"
link set lo up
addr add $UPLINK_INET/24 dev v-inet
addr add 203.0.113.53/24 dev v-inet
addr add 203.0.113.80/24 dev v-inet
link set v-inet up
route add 198.51.100.0/24 via $UPLINK_SRV
EOF
  ip netns exec srv sysctl -qw net.ipv4.ip_forward=1
  ip netns exec cli ping -c 1 -W 2 "$LNS_IP" > /dev/null || die "cli cannot reach the LNS over the veth"
  ip netns exec srv ping -c 1 -W 2 "$UPLINK_INET" > /dev/null || die "srv cannot reach inet over the veth"
  # The namespaces' identities as /proc/<pid>/ns/net shows them (net:[inode]).
  for ns in srv cli inet; do
    ino=$(stat -L -c %i "/run/netns/$ns")
    echo "net:[$ino]" > "$LAB_TMP/netns/$ns"
  done
  log "namespaces srv, cli, inet ready"
}

# ---------------------------------------------------------------------------------------------
# pppd witness scripts: every ip-up/ip-down of the LNS's pppd (lns-events.log) and of the LAC's
# (lac-events.log) appends one line, independently of pppgate:
#   up|down ms=<uptime ms> if=<ifname> local=<ip> remote=<ip> peer=<PEERNAME> link=<LINKNAME> pid=<PPPD_PID>
# pppd runs ip-up even for a session the plugin ends in its ip-up notifier (then ip-down).

write_witness() {
  local side=$1 ev=$2 f="$LAB_TMP/$1-$2"
  cat > "$f" <<EOF
#!/bin/sh
read -r up rest < /proc/uptime
s=\${up%.*}; c=\${up#*.}
echo "$ev ms=\$((s * 1000 + \${c#0} * 10)) if=\$1 local=\$4 remote=\$5 peer=\${PEERNAME:-} link=\${LINKNAME:-} pid=\${PPPD_PID:-}" >> $LAB_TMP/$side-events.log
EOF
  chmod 755 "$f"
}

# event_count SIDE: sets V to the number of witness lines so far.
event_count() {
  local line n=0
  while IFS= read -r line; do n=$((n + 1)); done < "$LAB_TMP/$1-events.log"
  V=$n
}

# scan_events SIDE MARK KEY VALUE MODE: sets EV to a witness line after line MARK whose KEY
# equals VALUE: MODE "last" (the newest such line) or "first-up" (the first "up" line).
scan_events() {
  local side=$1 mark=$2 key=$3 val=$4 mode=$5 n=0 line
  EV=
  while IFS= read -r line; do
    n=$((n + 1))
    ((n > mark)) || continue
    [[ " $line " == *" $key=$val "* ]] || continue
    if [ "$mode" = last ]; then
      EV=$line
    elif [[ $line == up* ]]; then
      EV=$line
      break
    fi
  done < "$LAB_TMP/$side-events.log"
  [ -n "$EV" ]
}

# ev_field KEY: sets F to KEY's value in EV.
ev_field() {
  local w
  F=
  for w in $EV; do
    if [[ $w == "$1="* ]]; then
      F=${w#*=}
      return 0
    fi
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# LNS: xl2tpd + pppd in srv, pppd loading the plugin under test

lns_log_mark() { stat -c %s "$LAB_TMP/pppd-lns.log" 2> /dev/null || echo 0; }
lns_log_since() { tail -c +$(( $1 + 1 )) "$LAB_TMP/pppd-lns.log" 2> /dev/null || true; }

# lns_user USER PASSWORD: a PAP account on the LNS (/etc/ppp/pap-secrets).
lns_user() {
  [[ $1 =~ ^[A-Za-z0-9@._-]+$ ]] || die "lns_user: unusable user name '$1'"
  [[ $2 =~ ^[A-Za-z0-9@._-]+$ ]] || die "lns_user: unusable password for '$1'"
  local f=/etc/ppp/pap-secrets line
  touch "$f"
  {
    while IFS= read -r line; do
      [[ $line == "\"$1\" "* ]] || printf '%s\n' "$line"
    done < "$f"
    printf '"%s" * "%s" *\n' "$1" "$2"
  } > "$f.new"
  chmod 600 "$f.new"
  mv "$f.new" "$f"
}

lns_listening() { ip netns exec srv ss -Hlun "sport = :1701" | grep -q .; }

lns_start() {
  if readf "$LAB_TMP/lns.pid" && pid_alive "$V"; then
    return 0
  fi
  write_witness lns up
  write_witness lns down
  {
    echo "# LNS pppd options (written by the lab)"
    echo "name lns"
    echo "require-pap"
    echo "refuse-chap"
    echo "refuse-mschap"
    echo "refuse-mschap-v2"
    echo "refuse-eap"
    echo "nodefaultroute"
    echo "noproxyarp"
    echo "mtu 1400"
    echo "mru 1400"
    echo "lcp-echo-interval 0"
    echo "logfile $LAB_TMP/pppd-lns.log"
    echo "ip-up-script $LAB_TMP/lns-up"
    echo "ip-down-script $LAB_TMP/lns-down"
    if [ "$LNS_PLUGIN" = 1 ]; then
      echo "plugin $LAB_PLUGIN"
      echo "pppgate-config $PPPGATE_CONF"
    fi
    for o in $LNS_PPPD_EXTRA; do echo "$o"; done
  } > "$LAB_TMP/lns.options"
  cat > "$LAB_TMP/lns.conf" <<EOF
[global]
listen-addr = $LNS_IP
port = 1701
access control = no

[lns default]
ip range = $PPP_RANGE
local ip = $PPP_LOCAL
require authentication = yes
refuse chap = yes
require pap = yes
name = lns
length bit = yes
pppoptfile = $LAB_TMP/lns.options
EOF
  touch "$LAB_TMP/pppd-lns.log"
  rm -f "$LAB_TMP/lns.ctl"
  ip netns exec srv xl2tpd -D -c "$LAB_TMP/lns.conf" -p "$LAB_TMP/lns.pid" -C "$LAB_TMP/lns.ctl" \
    > "$LAB_TMP/xl2tpd-lns.log" 2>&1 &
  # xl2tpd binds its UDP socket before it creates the control pipe.
  wait_for 10 "the LNS xl2tpd control pipe" test -p "$LAB_TMP/lns.ctl"
  wait_for 5 "the LNS xl2tpd pid file" readf "$LAB_TMP/lns.pid"
  lns_listening || die "the LNS xl2tpd does not listen on $LNS_IP:1701: $(tail -5 "$LAB_TMP/xl2tpd-lns.log")"
  log "LNS xl2tpd up (pid $V), plugin=$LNS_PLUGIN"
}

# ---------------------------------------------------------------------------------------------
# LAC: every client is its own "host": an address 192.0.2.(10+n) on cli's veth and its own xl2tpd
# bound to it, with one LAC section named after the client and its own pppd options (user,
# password, linkname). Distinct source addresses matter: two kernel-mode L2TP tunnels between the
# same address:port pairs lose each other's data packets.

lac_ctl() { xl2tpd-control -c "$LAB_TMP/clients/$1/lac.ctl" "$2" "$1"; }

# Per-client state lives in $LAB_TMP/clients/NAME/<key>, one value per file.
client_dir() { echo "$LAB_TMP/clients/$1"; }

# cget NAME KEY: sets V (status 1 if not recorded). client_get NAME KEY: prints it or dies.
cget() { readf "$LAB_TMP/clients/$1/$2"; }
# nft_member SET IP [IFNAME]: srv's inet pppgate SET holds IP (bound to IFNAME when given, to
# any interface otherwise: members are `iface_index . ipv4_addr`, docs/security.md).
nft_member() {
  if [ -n "${3:-}" ]; then
    ip netns exec srv nft get element inet pppgate "$1" "{ \"$3\" . $2 }" > /dev/null 2>&1
    return
  fi
  local out
  out=$(ip netns exec srv nft list set inet pppgate "$1" 2> /dev/null) || return 1
  out=${out//,/ }
  out=${out//$'\n'/ }
  [[ "$out " == *" . $2 "* ]]
}

cset() { echo "$3" > "$LAB_TMP/clients/$1/$2"; }
client_get() {
  cget "$1" "$2" || die "client $1 has no $2 recorded"
  echo "$V"
}

# client_add NAME USER PASSWORD: defines client NAME and starts its LAC xl2tpd.
client_add() {
  local name=$1 user=$2 pass=$3 d n=0 addr
  [[ $name =~ ^[a-z0-9_-]+$ ]] || die "client_add: unusable client name '$name'"
  d=$LAB_TMP/clients/$name
  [ ! -d "$d" ] || die "client_add: client $name exists (clients_reset first)"
  [ -s "$LAB_TMP/netns/cli" ] || die "client_add: net_setup first"
  readf "$LAB_TMP/clients.seq" && n=$V
  echo $((n + 1)) > "$LAB_TMP/clients.seq"
  addr=192.0.2.$((10 + n % 200))
  mkdir -p "$d"
  cset "$name" user "$user"
  cset "$name" lac_addr "$addr"
  ip -n cli addr add "$addr/24" dev v-cli 2> /dev/null || true
  cat > "$d/options" <<EOF
# LAC pppd options for client $name (written by the lab)
user $user
password $pass
noauth
refuse-chap
refuse-mschap
refuse-mschap-v2
refuse-eap
nodefaultroute
noipdefault
mtu 1400
mru 1400
lcp-echo-interval 0
linkname $name
logfile $LAB_TMP/pppd-lac-$name.log
ip-up-script $LAB_TMP/lac-up
ip-down-script $LAB_TMP/lac-down
EOF
  cat > "$d/lac.conf" <<EOF
[global]
listen-addr = $addr
port = 1701
access control = no

[lac $name]
lns = $LNS_IP
pppoptfile = $d/options
autodial = no
redial = no
length bit = yes
EOF
  write_witness lac up
  write_witness lac down
  ip netns exec cli xl2tpd -D -c "$d/lac.conf" -p "$d/lac.pid" -C "$d/lac.ctl" > "$LAB_TMP/xl2tpd-lac-$name.log" 2>&1 &
  wait_for 10 "the LAC xl2tpd of client $name (control pipe)" test -p "$d/lac.ctl"
  wait_for 5 "the LAC xl2tpd of client $name (pid file)" readf "$d/lac.pid"
}

# client_connect NAME: dials and returns at once (then client_wait_up or lns_wait_peer_up).
client_connect() {
  local name=$1 d=$LAB_TMP/clients/$1
  [ -d "$d" ] || die "client_connect: no client $name (client_add first)"
  event_count lac
  cset "$name" lac_mark "$V"
  event_count lns
  cset "$name" lns_mark "$V"
  now
  cset "$name" connect_ms "$NOW"
  lac_ctl "$name" connect-lac > "$d/connect.out" 2>&1 || die "xl2tpd-control connect-lac $name failed: $(cat "$d/connect.out")"
  log "client $name: dialling as $(client_get "$name" user) from $(client_get "$name" lac_addr)"
}

client_lac_up() {
  local name=$1
  cget "$name" lac_mark
  scan_events lac "$V" link "$name" last || return 1
  [[ $EV == up* ]] || return 1
  ev_field pid
  pid_alive "$F" || return 1
  cset "$name" lac_pid "$F"
  ev_field if
  cset "$name" lac_if "$F"
  ev_field local
  cset "$name" client_ip "$F"
}

client_lns_up() {
  local name=$1 ip
  cget "$name" client_ip
  ip=$V
  cget "$name" lns_mark
  scan_events lns "$V" remote "$ip" last || return 1
  [[ $EV == up* ]] || return 1
  ev_field pid
  pid_alive "$F" || return 1
  cset "$name" lns_pid "$F"
  ev_field if
  cset "$name" lns_if "$F"
  ev_field peer
  cset "$name" lns_peer "$F"
  ev_field ms
  cset "$name" up_ms "$F"
}

client_is_up() { client_lac_up "$1" && client_lns_up "$1"; }

# client_wait_up NAME [TIMEOUT_S]: both pppds of the session have run ip-up and are alive.
# Records client_ip lac_if lac_pid lns_if lns_pid lns_peer up_ms.
client_wait_up() {
  local name=$1 tmo=${2:-40}
  if ! poll_until "$tmo" client_is_up "$name"; then
    log "client $name did not come up; LAC pppd log:"
    tail -20 "$LAB_TMP/pppd-lac-$name.log" >&2 2> /dev/null || true
    log "LNS pppd log:"
    tail -20 "$LAB_TMP/pppd-lns.log" >&2 || true
    die "timed out after ${tmo}s waiting for client $name to come up"
  fi
  log "client $name up: client_ip=$(client_get "$name" client_ip) lac_if=$(client_get "$name" lac_if)" \
    "lns_if=$(client_get "$name" lns_if) lns_pid=$(client_get "$name" lns_pid)" \
    "$(( $(client_get "$name" up_ms) - $(client_get "$name" connect_ms) )) ms after dialling"
}

# lns_wait_peer_up NAME [TIMEOUT_S]: waits for the LNS's first ip-up for the user client NAME
# dialled with, whether or not the session survives it (the plugin may end it right there).
# Records lns_pid lns_if client_ip up_ms.
lns_peer_up() {
  local name=$1 user
  cget "$name" user
  user=$V
  cget "$name" lns_mark
  scan_events lns "$V" peer "$user" first-up || return 1
  ev_field pid
  cset "$name" lns_pid "$F"
  ev_field if
  cset "$name" lns_if "$F"
  ev_field remote
  cset "$name" client_ip "$F"
  ev_field ms
  cset "$name" up_ms "$F"
}

lns_wait_peer_up() {
  local name=$1 tmo=${2:-40}
  if ! poll_until "$tmo" lns_peer_up "$name"; then
    tail -20 "$LAB_TMP/pppd-lns.log" >&2 || true
    die "timed out after ${tmo}s waiting for the LNS's ip-up of client $name"
  fi
}

# client_wait_lns_gone NAME [TIMEOUT_S]: the session's LNS pppd has exited; records gone_ms.
lns_pppd_gone() {
  cget "$1" lns_pid
  pid_gone "$V" || return 1
  now
  cset "$1" gone_ms "$NOW"
}

client_wait_lns_gone() {
  local name=$1 tmo=${2:-20}
  wait_for "$tmo" "the LNS pppd $(client_get "$name" lns_pid) of client $name to exit" lns_pppd_gone "$name"
}

# lac_pppd_gone NAME: the client's LAC pppd (per its linkname pid file) is not running.
lac_pppd_gone() {
  ! readf "/run/ppp-$1.pid" || pid_gone "$V"
}

# client_disconnect NAME: hangs up from the LAC's xl2tpd (xl2tpd-control disconnect-lac: the
# tunnel is torn down; the LNS's xl2tpd then ends its pppd).
client_disconnect() {
  local name=$1 d=$LAB_TMP/clients/$1
  lac_ctl "$name" disconnect-lac > "$d/disconnect.out" 2>&1 ||
    die "xl2tpd-control disconnect-lac $name failed: $(cat "$d/disconnect.out")"
  log "client $name: disconnect-lac sent"
}

# client_hangup NAME: hangs up from the LAC's pppd (SIGTERM: LCP Terminate-Request to the LNS).
client_hangup() {
  local pid
  pid=$(client_get "$1" lac_pid)
  kill -TERM "$pid" 2> /dev/null || true
  log "client $1: LAC pppd $pid sent SIGTERM"
}

# client_wait_down NAME [TIMEOUT_S]: both pppds of the session are gone.
client_wait_down() {
  local name=$1 tmo=${2:-20}
  client_wait_lns_gone "$name" "$tmo"
  wait_for "$tmo" "the LAC pppd of client $name to exit" lac_pppd_gone "$name"
  log "client $name down"
}

# pppd_pids: sets PIDS to the pids of all running pppd processes.
pppd_pids() {
  local p comm
  PIDS=
  for p in /proc/[0-9]*; do
    read -r comm 2> /dev/null < "$p/comm" || continue
    [ "$comm" = pppd ] && PIDS="$PIDS ${p#/proc/}"
  done
  return 0
}

no_pppd() {
  pppd_pids
  [ -z "$PIDS" ]
}

# clients_reset: stops every client's LAC xl2tpd (which hangs its session up), waits until no
# pppd is left (killing stragglers) and forgets the clients.
clients_reset() {
  local d
  for d in "$LAB_TMP"/clients/*/; do
    [ -d "$d" ] || continue
    readf "$d/lac.pid" && kill -TERM "$V" 2> /dev/null || true
  done
  if ! poll_until 20 no_pppd; then
    log "WARNING: pppd still running after hang-up:$PIDS; killing"
    # shellcheck disable=SC2086
    kill -KILL $PIDS 2> /dev/null || true
    wait_for 5 "killed pppds to exit" no_pppd
  fi
  for d in "$LAB_TMP"/clients/*/; do
    [ -d "$d" ] || continue
    if readf "$d/lac.pid"; then
      poll_until 5 pid_gone "$V" || kill -KILL "$V" 2> /dev/null || true
    fi
    mkdir -p "$LAB_OUT/logs/clients"
    cp -rf "$d" "$LAB_OUT/logs/clients/" 2> /dev/null || true
    rm -rf "$d"
  done
}

# ---------------------------------------------------------------------------------------------
# Snapshots for the Rust side (layout: src/snapshot.rs).

snap() {
  local name=$1 d p pid comm ns
  d="$LAB_OUT/snap/$name"
  [ ! -e "$d" ] || die "snapshot $name taken twice"
  mkdir -p "$d/netns" "$d/procs" "$d/sessions" "$d/db"
  now
  echo "$NOW" > "$d/uptime_ms"
  while read -r p rest; do
    [ "$p" = btime ] && echo "$rest" > "$d/btime"
  done < /proc/stat
  getconf CLK_TCK > "$d/clk_tck"
  for ns in srv cli inet; do
    ip -n "$ns" -j addr show > "$d/$ns-addr.json"
    cp "$LAB_TMP/netns/$ns" "$d/netns/$ns"
  done
  ip netns exec srv nft -j list ruleset > "$d/srv-nft.json" 2> "$d/srv-nft.err" || true
  for p in /proc/[0-9]*; do
    read -r comm 2> /dev/null < "$p/comm" || continue
    case $comm in pppd | xl2tpd) ;; *) continue ;; esac
    pid=${p#/proc/}
    mkdir -p "$d/procs/$pid"
    cp "$p/stat" "$p/cmdline" "$d/procs/$pid/" 2> /dev/null || true
    readlink "$p/ns/net" > "$d/procs/$pid/netns" 2> /dev/null || true
  done
  if [ -d "$SESSIONS_DIR" ]; then
    for p in "$SESSIONS_DIR"/*.env; do
      [ -e "$p" ] && cp "$p" "$d/sessions/"
    done
    ls -la "$SESSIONS_DIR" > "$d/sessions/.listed"
  else
    echo "no $SESSIONS_DIR" > "$d/sessions/.listed"
  fi
  if sql "select coalesce(json_agg(t order by t.id), '[]') from (select id, subaccount_login, status from vpn_connections) t" \
    > "$d/db/vpn_connections.json" 2> "$d/db/error"; then
    rm -f "$d/db/error"
  else
    rm -f "$d/db/vpn_connections.json"
  fi
  cp "$LAB_TMP/lns-events.log" "$LAB_TMP/lac-events.log" "$d/"
  if [ -n "$CASE_NAME" ]; then
    lns_log_since "$CASE_LOG_MARK" > "$d/pppd-lns.log"
  else
    cp "$LAB_TMP/pppd-lns.log" "$d/pppd-lns.log" 2> /dev/null || : > "$d/pppd-lns.log"
  fi
  log "snapshot $name taken"
}

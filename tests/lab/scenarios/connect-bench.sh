# Connect-path benchmark (benches/lab_connect_path.rs prints the figures; nothing is asserted):
#
#   plugin   BENCH_CONNECTS real L2TP connects through pppgate.so, one at a time, each hung up
#            before the next; the plugin's own line gives notifier entry → gate released and its
#            phases (logs/bench-plugin-lns.log)
#   hook     in the same run, the same work done by an ip-up.d shell hook (shell-hook.sh: psql +
#            nft + tc + ip), BENCH_CONNECTS times on a live session of the same kind (a real L2TP
#            session of a pppd without the plugin), timed from just before the hook starts to the
#            moment it releases the gate, plus its whole up and down halves (bench/hook.tsv)
#   idle     the LNS pppd's private memory and threads at idle with and without the plugin, its
#            sockets, and whether any database connection is open (facts idle.*)
#   server   PostgreSQL's own log of the plugin's sessions (statement durations, session time) to
#            split the plugin's sql phase (logs/bench-plugin-postgres.log)
#   storm    BENCH_STORM real L2TP clients of as many connections (FULL, shaped both ways) dial at
#            once, directly and again through pgbouncer: how many come up, stay up and are
#            policed (full_v4 member on their interface, TBF on it), how many the plugin ended and
#            why, and each one's plugin line (logs/storm-TAG-lns.log; facts storm.TAG.*)
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/connect.sh"
lab_init
cl_init

: "${BENCH_CONNECTS:=50}"
: "${BENCH_STORM:=20}"
HOOK="$LAB_REPO/tests/lab/guest/shell-hook.sh"
BENCH=$LAB_OUT/bench
mkdir -p "$BENCH"

pg_start
pppgate_configure
pppgate_migrate
net_setup
pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }
# The same policy as the connect scenario's alice: both rates, a route, policy routing.
ID=$(pg_srv connection add --login bench --status CLAIMED --down-kbit 2000 --up-kbit 1000)
pg_srv routes add --connection-id "$ID" --dst 10.99.0.0/24 > /dev/null
pg_srv pbr add bench-out --connection-id "$ID" --table 100 --via "$UPLINK_INET" --dev v-up --priority 1000 > /dev/null
lns_user bench pw-bench
LNS_PPPD_EXTRA="lcp-restart 1"
lns_start
client_add c1 bench pw-bench
client_opt c1 "lcp-restart 1"
fact bench.connects "$BENCH_CONNECTS"
fact bench.guest_cpus "$(nproc)"

# idle_facts PREFIX PID: private memory, RSS, threads and sockets of a pppd at idle, and the
# database connections open at that moment.
idle_facts() {
  local p=$1 pid=$2 k v _u priv=0 rss=0 threads= socks=0 fd
  while read -r k v _u; do
    case $k in
      Private_Clean: | Private_Dirty: | Private_Hugetlb:) priv=$((priv + v)) ;;
      Rss:) rss=$v ;;
    esac
  done < "/proc/$pid/smaps_rollup"
  while read -r k v _u; do
    [ "$k" = Threads: ] && threads=$v
  done < "/proc/$pid/status"
  for fd in /proc/"$pid"/fd/*; do
    [[ $(readlink "$fd") == socket:* ]] && socks=$((socks + 1))
  done
  cp "/proc/$pid/smaps_rollup" "$BENCH/$p-smaps_rollup"
  ls -l "/proc/$pid/fd" > "$BENCH/$p-fds" 2>&1
  ip netns exec srv ss -xanp > "$BENCH/$p-ss-x" 2>&1
  fact "$p.private_kb" "$priv"
  fact "$p.rss_kb" "$rss"
  fact "$p.threads" "$threads"
  fact "$p.sockets" "$socks"
  fact "$p.pg_unix_sockets" "$(grep "pid=$pid," "$BENCH/$p-ss-x" | grep -c 'PGSQL' || true)"
  fact "$p.db_clients" "$(sql "select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()")"
  sql "select pid, application_name, state, backend_start from pg_stat_activity where backend_type = 'client backend'" \
    > "$BENCH/$p-pg_stat_activity"
}

# The storm's connections: FULL, shaped both ways (a TBF on the interface and on its IFB), no
# routes (their table is shared; the lookup and the lock are what a storm contends for).
for ((i = 1; i <= BENCH_STORM; i++)); do
  pg_srv connection add --login "storm$i" --status CLAIMED --down-kbit 4000 --up-kbit 2000 > /dev/null
  lns_user "storm$i" "pw-storm$i"
  client_add "storm$i" "storm$i" "pw-storm$i"
  client_opt "storm$i" "lcp-restart 1"
done
fact bench.storm "$BENCH_STORM"
fact bench.storm_window "$(sql "select coalesce((select value from settings where key = 'connect_apply_window_s'), 'unset')")"

# storm_policed NAME: the session's address is in full_v4 on its interface and the interface
# has the plugin's TBF.
storm_policed() {
  local ip ifn
  cget "$1" client_ip && ip=$V || return 1
  cget "$1" lns_if && ifn=$V || return 1
  nft_member full_v4 "$ip" "$ifn" || return 1
  # Read whole, then matched: `tc | grep -q` under pipefail fails when grep exits before tc has
  # written its last line (SIGPIPE) — it counted 2 of 20 policed sessions as not policed.
  [[ $(tc -n srv qdisc show dev "$ifn") == *"qdisc tbf 2: root"* ]]
}

# storm_why NAME: logs what the kernel holds for a session storm_policed did not find policed.
storm_why() {
  local ip= ifn= set sets=
  cget "$1" client_ip && ip=$V
  cget "$1" lns_if && ifn=$V
  for set in connect_pending_v4 full_v4 restricted_v4 blocked_v4; do
    nft_member "$set" "$ip" && sets="$sets $set(any if)"
    [ -n "$ifn" ] && nft_member "$set" "$ip" "$ifn" && sets="$sets $set($ifn)"
  done
  log "storm: $1 (ip ${ip:-?}, LNS if ${ifn:-?}) not policed: sets:${sets:- none};" \
    "qdisc: $(tc -n srv qdisc show dev "${ifn:-none}" 2>&1 | head -2 | paste -sd '|' -)"
}

# storm TAG: all BENCH_STORM clients dial at once; every one gets 120 s to come up; then the
# counts (facts storm.TAG.*), the LNS log of the storm, and all hang up.
storm() {
  local tag=$1 i up=0 alive=0 policed=0 mark t0 since
  mark=$(lns_log_mark)
  now
  t0=$NOW
  for ((i = 1; i <= BENCH_STORM; i++)); do client_connect "storm$i"; done
  for ((i = 1; i <= BENCH_STORM; i++)); do
    if poll_until 120 client_is_up "storm$i"; then up=$((up + 1)); fi
  done
  now
  fact "storm.$tag.all_up_ms" $(( NOW - t0 ))
  # Let a late decision (the window) happen before counting who is alive.
  nap 3
  for ((i = 1; i <= BENCH_STORM; i++)); do
    if cget "storm$i" lns_pid && pid_alive "$V"; then alive=$((alive + 1)); fi
    if storm_policed "storm$i"; then
      policed=$((policed + 1))
    else
      storm_why "storm$i"
    fi
  done
  ksnap "storm-$tag"
  since=$(lns_log_since "$mark")
  printf '%s\n' "$since" > "$LAB_OUT/logs/storm-$tag-lns.log"
  fact "storm.$tag.up" "$up"
  fact "storm.$tag.alive" "$alive"
  fact "storm.$tag.policed" "$policed"
  fact "storm.$tag.ended" "$(grep -c 'ending session' <<< "$since" || true)"
  fact "storm.$tag.why" "$(grep 'ending session' <<< "$since" | sed 's/^.*ending session //' | tr -d '\r' \
    | sort | uniq -c | sed 's/^ *//' | paste -sd '|' - || true)"
  log "storm $tag: $up of $BENCH_STORM up, $alive alive, $policed policed"
  for ((i = 1; i <= BENCH_STORM; i++)); do
    if cget "storm$i" lac_pid && pid_alive "$V"; then client_hangup "storm$i"; fi
  done
  for ((i = 1; i <= BENCH_STORM; i++)); do
    poll_until 30 lac_pppd_gone "storm$i" || log "storm $tag: the LAC pppd of storm$i did not exit"
  done
  # Every LNS pppd of the storm gone before the next part (their ip-down cleans up).
  wait_for 60 "the LNS pppds of the storm to exit" storm_lns_gone
}

storm_lns_gone() {
  local i
  for ((i = 1; i <= BENCH_STORM; i++)); do
    cget "storm$i" lns_pid && pid_alive "$V" && return 1
  done
  return 0
}

cycle() {
  client_connect c1
  client_wait_up c1 40
  client_hangup c1
  client_wait_down c1 20
}

# --- idle, with the plugin (also the warm-up connect: the table is created here) ---------------
client_connect c1
client_wait_up c1 40
nap 3
idle_facts idle.plugin "$(client_get c1 lns_pid)"
client_hangup c1
client_wait_down c1 20

# --- the plugin: BENCH_CONNECTS connects ----------------------------------------------------------
# PostgreSQL logs each session's statements with their durations and its whole session time
# (backend start to exit), so the plugin's sql phase can be split into server and client time.
sql "alter system set log_min_duration_statement = 0"
sql "alter system set log_connections = on"
sql "alter system set log_disconnections = on"
sql "alter system set log_line_prefix = '%m [%p] app=%a '"
sql "select pg_reload_conf()" > /dev/null
pg_mark=$(stat -c %s "$PG_SOCK/postgres.log")
mark=$(lns_log_mark)
t0=$(uptime_ms)
for ((i = 1; i <= BENCH_CONNECTS; i++)); do
  cycle
done
fact bench.plugin_wall_ms $(( $(uptime_ms) - t0 ))
lns_log_since "$mark" > "$LAB_OUT/logs/bench-plugin-lns.log"
tail -c +$((pg_mark + 1)) "$PG_SOCK/postgres.log" > "$LAB_OUT/logs/bench-plugin-postgres.log"

# --- a storm, direct: every client dials at once, each connect with a fresh backend -------------
sql "alter system reset log_min_duration_statement"
sql "alter system reset log_connections"
sql "alter system reset log_disconnections"
sql "select pg_reload_conf()" > /dev/null
if [ "$BENCH_STORM" -gt 0 ]; then storm direct; fi

# --- the plugin through pgbouncer: BENCH_CONNECTS connects that reach a running backend ----------
# A local pgbouncer (session pooling) in front of PostgreSQL; pppgate.toml names it and says
# `pooler = true` (its session settings then go with SET). Nothing else changes.
if [ -x /usr/sbin/pgbouncer ]; then
  BOUNCER=$LAB_TMP/bouncer
  mkdir -p "$BOUNCER"
  {
    echo "[databases]"
    echo "* = host=$PG_SOCK port=5432"
    echo "[pgbouncer]"
    echo "listen_addr ="
    echo "listen_port = 6432"
    echo "unix_socket_dir = $BOUNCER"
    echo "auth_type = trust"
    echo "auth_file = $BOUNCER/users.txt"
    echo "pool_mode = session"
    echo "default_pool_size = 4"
    echo "server_reset_query = DISCARD ALL"
    echo "ignore_startup_parameters = extra_float_digits"
    echo "logfile = $BOUNCER/pgbouncer.log"
    echo "pidfile = $BOUNCER/pgbouncer.pid"
  } > "$BOUNCER/pgbouncer.ini"
  echo '"postgres" ""' > "$BOUNCER/users.txt"
  chown -R postgres "$BOUNCER"
  as_postgres /usr/sbin/pgbouncer -d "$BOUNCER/pgbouncer.ini" || die "pgbouncer did not start"
  wait_for 10 "pgbouncer's socket" test -S "$BOUNCER/.s.PGSQL.6432"
  cp "$PPPGATE_CONF" "$LAB_TMP/pppgate-direct.toml"
  sed -i "s|^dsn = .*|dsn = \"host=$BOUNCER port=6432 dbname=$PG_DB user=postgres\"\npooler = true|" "$PPPGATE_CONF"
  "$LAB_PPPGATE" -c "$PPPGATE_CONF" config check > /dev/null || die "the pooled pppgate.toml was rejected"
  # Warm the pool: one connect through it before the timed ones.
  cycle
  mark=$(lns_log_mark)
  t0=$(uptime_ms)
  for ((i = 1; i <= BENCH_CONNECTS; i++)); do
    cycle
  done
  fact bench.pooled_wall_ms $(( $(uptime_ms) - t0 ))
  lns_log_since "$mark" > "$LAB_OUT/logs/bench-plugin-pooled-lns.log"
  if [ "$BENCH_STORM" -gt 0 ]; then storm pooled; fi
  cp "$BOUNCER/pgbouncer.log" "$LAB_OUT/logs/pgbouncer.log" 2> /dev/null || true
  cp "$LAB_TMP/pppgate-direct.toml" "$PPPGATE_CONF"
  kill "$(cat "$BOUNCER/pgbouncer.pid")" 2> /dev/null || true
  fact bench.pooled yes
else
  fact bench.pooled "no (/usr/sbin/pgbouncer absent)"
fi

# --- idle without the plugin, and the shell hook on that session ---------------------------------
lns_stop
LNS_PLUGIN=0
lns_start
client_connect c1
client_wait_up c1 40
nap 3
idle_facts idle.noplugin "$(client_get c1 lns_pid)"
IF=$(client_get c1 lns_if)
IP=$(client_get c1 client_ip)
PID=$(client_get c1 lns_pid)
pg_bin
export PSQL="$PG_BIN/psql -X -h $PG_SOCK -U postgres -d $PG_DB" HOOK_STAMP="$BENCH/hook-ungate"
: > "$HOOK_STAMP"

# One run, checked against the kernel: the hook does the work it claims to.
ip netns exec srv env PPPD_PID="$PID" bash "$HOOK" up "$IF" "$IP" bench
ok=yes
nft_has full_v4 "$IP" || ok="no full_v4"
! nft_has connect_pending_v4 "$IP" || ok="still gated"
tc -n srv class show dev "$IF" | grep -q 'rate 2Mbit' || ok="no download class"
tc -n srv class show dev "pgi-$IF" | grep -q 'rate 1Mbit' || ok="no upload class"
ip -n srv rule show | grep -q "from $IP lookup 100" || ok="no rule"
ip -n srv route show dev "$IF" | grep -q '10.99.0.0/24' || ok="no route"
[ -s "$SESSIONS_DIR/$IF.env" ] || ok="no mapping"
ip netns exec srv env PPPD_PID="$PID" bash "$HOOK" down "$IF" "$IP" bench
nft_has full_v4 "$IP" && ok="full_v4 left"
ip -n srv link show "pgi-$IF" > /dev/null 2>&1 && ok="ifb left"
fact bench.hook_check "$ok"
: > "$HOOK_STAMP"

# The timed runs, driven from inside srv (pppd's namespace) so `ip netns exec` is not counted.
cat > "$LAB_TMP/hook-driver.sh" <<'EOF'
set -eu
n=$1 hook=$2 if=$3 ip=$4 out=$5
for ((i = 1; i <= n; i++)); do
  t0=$EPOCHREALTIME
  bash "$hook" up "$if" "$ip" bench
  t1=$EPOCHREALTIME
  bash "$hook" down "$if" "$ip" bench
  t2=$EPOCHREALTIME
  echo "$t0 $t1 $t2" >> "$out"
done
EOF
: > "$BENCH/hook-times"
t0=$(uptime_ms)
ip netns exec srv env PPPD_PID="$PID" bash "$LAB_TMP/hook-driver.sh" "$BENCH_CONNECTS" "$HOOK" "$IF" "$IP" "$BENCH/hook-times"
fact bench.hook_wall_ms $(( $(uptime_ms) - t0 ))
# hook.tsv: start, gate released, up half done, down half done (Unix seconds, µs resolution).
paste -d' ' "$BENCH/hook-times" "$HOOK_STAMP" | awk '{ print $1, $4, $2, $3 }' > "$BENCH/hook.tsv"
client_hangup c1
client_wait_down c1 20
fact bench.loadavg "$(cat /proc/loadavg)"

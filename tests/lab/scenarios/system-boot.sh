# B167 §9's boot and timer tests on a systemd-booted system with the package installed
# (tests/lab_boot.rs). Two boots over one persistent disk:
#
#   boot 1: apt install the .deb; the system's own PostgreSQL gets the pppgate database (role root
#           by peer authentication, as the units run); /etc/pppgate/pppgate.toml configured;
#           systemd's view of the shipped timers recorded; two open radacct rows written: one of
#           this NAS (stale after the reboot: no session behind it) and one of another NAS.
#   boot 2: the reboot. Boot-Reconcile ran once, after network-online, strongSwan, xl2tpd and
#           FreeRADIUS (systemd's timestamps, journal, critical-chain); Boot-Janitor ran after its
#           delay and closed this NAS's stale row, not the other NAS's; then the timers with a
#           test drop-in (shorter intervals): reconcile and collector fire repeatedly at the
#           interval, and a drift (pppgate's nft table deleted) is repaired by the reconcile
#           timer.
#
# Environment: LAB_DEB (the package), LAB_BOOT (1 or 2), LAB_TIMER_S (the test interval).
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/connect.sh"
. "$LAB_REPO/tests/lab/guest/system.sh"
lab_init

: "${LAB_DEB:?LAB_DEB is not set}"
: "${LAB_TIMER_S:=20}"
B=${LAB_BOOT:-1}
export DEBIAN_FRONTEND=noninteractive
NAS_IP=192.0.2.1
OTHER_NAS=192.0.2.99
RECONCILE=pppgate-boot-reconcile.service
JANITOR=pppgate-boot-janitor.service

# The system's PostgreSQL (postgresql@<v>-main), peer authentication on its socket.
PG_SOCK=/run/postgresql
psql_as() {
  local db=$1
  shift
  pg_bin
  as_postgres "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$PG_SOCK" -d "$db" "$@"
}

# µs (monotonic) of a unit property, as an integer.
ts() { unit_ts "$1" "$2"; }

# runs_at_least SERVICE N: SERVICE started N times since the timers' drop-in (journal cursor);
# sleeps a little when not yet (each journalctl costs under TCG).
runs_at_least() {
  [ "$(journalctl --after-cursor="$CURSOR" -u "$1.service" -o cat --no-pager | grep -c '^Starting ')" -ge "$2" ] && return 0
  sleep 2
  return 1
}

boot1() {
  sys_wait_booted 900
  # man-db's trigger rebuilds the manual index over 9p for minutes (system-package.sh).
  rm -f /var/lib/man-db/auto-update
  now
  local t0=$NOW
  apt-get install -y -q --no-install-recommends "$LAB_DEB" > "$LAB_OUT/logs/apt-install.log" 2>&1 ||
    die "apt install failed: $(tail -20 "$LAB_OUT/logs/apt-install.log")"
  now
  fact install.ms $((NOW - t0))
  local t
  for t in vpn-policy-reconcile vpn-accounting-collector vpn-stale-session-janitor; do
    fact "timer.$t" "$(systemctl show -P TimersMonotonic "$t.timer" | tr '\n' ' ')"
  done
  fact boot_units "$(systemctl is-enabled $RECONCILE) $(systemctl is-enabled $JANITOR)"

  wait_for 300 "the system's PostgreSQL" systemctl is-active -q postgresql.service
  pg_bin
  wait_for 120 "PostgreSQL accepting connections" "$PG_BIN/pg_isready" -q -h "$PG_SOCK"
  psql_as postgres -qc "create role root superuser login" || die "cannot create role root"
  psql_as postgres -qc "create database pppgate owner root" || die "cannot create database pppgate"
  cat > /etc/pppgate/pppgate.toml <<EOF
# written by the lab (system-boot.sh): the system's PostgreSQL, peer authentication as root
[database]
dsn = "host=$PG_SOCK dbname=pppgate"
connect_timeout_ms = 2000

[nas]
identity = "lns-1"
ip = "$NAS_IP"
EOF
  pppgate config check > "$LAB_OUT/logs/config-check.log" 2>&1 || die "config check: $(cat "$LAB_OUT/logs/config-check.log")"
  pppgate db migrate > "$LAB_OUT/logs/migrate.log" 2>&1 || die "db migrate: $(cat "$LAB_OUT/logs/migrate.log")"
  # The timers run now too: stop them so none closes the rows below before the reboot.
  systemctl stop vpn-policy-reconcile.timer vpn-accounting-collector.timer vpn-stale-session-janitor.timer
  sql "insert into radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime, acctupdatetime)
       values ('lab-stale', 'lab-stale-1', 'ghost', '$NAS_IP', now() - interval '2 hours', now() - interval '2 hours'),
              ('lab-other', 'lab-other-1', 'elsewhere', '$OTHER_NAS', now() - interval '2 hours', now() - interval '2 hours')"
  fact rows_before "$(sql "select count(*) from radacct where acctstoptime is null")"
  # A test drop-in: the janitor *timer* waits (its first run would close the row before the boot
  # janitor does); the boot janitor is what boot 2 checks.
  mkdir -p /etc/systemd/system/vpn-stale-session-janitor.timer.d
  printf '[Timer]\nOnBootSec=\nOnBootSec=60min\n' > /etc/systemd/system/vpn-stale-session-janitor.timer.d/lab.conf
  sys_collect boot
}

boot2() {
  # The boot janitor sleeps 90 s after the boot reconcile; the boot is finished after it.
  sys_wait_booted 1500
  local u
  for u in network-online.target strongswan.service xl2tpd.service freeradius.service postgresql.service; do
    fact "order.$u" "$(ts "$u" ActiveEnterTimestampMonotonic)"
  done
  fact reconcile.inactive_exit "$(ts $RECONCILE InactiveExitTimestampMonotonic)"
  fact reconcile.exec_start "$(ts $RECONCILE ExecMainStartTimestampMonotonic)"
  fact reconcile.active_enter "$(ts $RECONCILE ActiveEnterTimestampMonotonic)"
  fact reconcile.result "$(unit_prop $RECONCILE Result) $(unit_prop $RECONCILE ExecMainStatus)"
  fact reconcile.restarts "$(unit_prop $RECONCILE NRestarts)"
  journalctl -b -u $RECONCILE -o short-monotonic --no-pager > "$LAB_OUT/logs/boot-reconcile.journal" 2>&1
  fact reconcile.starts "$(grep -c 'Starting pppgate-boot-reconcile' "$LAB_OUT/logs/boot-reconcile.journal")"
  timeout 120 systemd-analyze critical-chain $RECONCILE > "$LAB_OUT/logs/critical-chain.txt" 2>&1
  fact reconcile.chain "$(grep -o -E 'network-online.target|strongswan.service|xl2tpd.service|freeradius.service' "$LAB_OUT/logs/critical-chain.txt" | sort -u | tr '\n' ' ')"
  fact reconcile.table "$(nft list table inet pppgate > /dev/null 2>&1 && echo present || echo absent)"

  fact janitor.inactive_exit "$(ts $JANITOR InactiveExitTimestampMonotonic)"
  fact janitor.exec_start "$(ts $JANITOR ExecMainStartTimestampMonotonic)"
  fact janitor.result "$(unit_prop $JANITOR Result) $(unit_prop $JANITOR ExecMainStatus)"
  journalctl -b -u $JANITOR -o cat --no-pager > "$LAB_OUT/logs/boot-janitor.journal" 2>&1
  fact janitor.said "$(grep -m1 -o 'closed [0-9]* stale radacct row(s)' "$LAB_OUT/logs/boot-janitor.journal" || echo none)"
  fact janitor.stale_row "$(sql "select acctstoptime is not null from radacct where acctuniqueid = 'lab-stale-1'")"
  fact janitor.other_row "$(sql "select acctstoptime is not null from radacct where acctuniqueid = 'lab-other-1'")"

  # Timers at a test interval (drop-ins); systemd's view and the effect.
  local t
  for t in vpn-policy-reconcile vpn-accounting-collector; do
    mkdir -p "/etc/systemd/system/$t.timer.d"
    printf '[Timer]\nOnBootSec=\nOnUnitActiveSec=\nOnActiveSec=1s\nOnUnitActiveSec=%ss\nAccuracySec=1s\n' "$LAB_TIMER_S" \
      > "/etc/systemd/system/$t.timer.d/lab.conf"
  done
  systemctl daemon-reload
  CURSOR=$(journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
  [ -n "$CURSOR" ] || die "no journal cursor"
  systemctl restart vpn-policy-reconcile.timer vpn-accounting-collector.timer
  fact timers.view "$(systemctl show -P TimersMonotonic vpn-policy-reconcile.timer | tr '\n' ' ')"
  # The guard (pppgate-guard.service, enabled by the package) restores a deleted table at once.
  fact guard.state "$(systemctl is-enabled pppgate-guard.service) $(systemctl is-active pppgate-guard.service)"
  nft delete table inet pppgate 2> /dev/null
  now
  local t0=$NOW
  wait_for 30 "the guard restoring the table" nft list table inet pppgate
  now
  fact guard.restore_ms $((NOW - t0))
  # The drift: pppgate's table gone while the guard is stopped; the reconcile timer's next run
  # must put it back. (Checks are functions: wait_for re-runs its command, a "$(…)" argument
  # would be evaluated once.)
  systemctl stop pppgate-guard.service
  wait_for 120 "the reconcile timer's first run" runs_at_least vpn-policy-reconcile 1
  nft delete table inet pppgate 2> /dev/null
  fact drift.deleted "$(nft list table inet pppgate > /dev/null 2>&1 && echo present || echo absent)"
  wait_for $((LAB_TIMER_S * 6)) "the reconcile timer repairing the drift" nft list table inet pppgate
  fact drift.repaired present
  # Three runs each since the drop-in, then systemd's record of when they started.
  wait_for $((LAB_TIMER_S * 8)) "three reconcile runs" runs_at_least vpn-policy-reconcile 3
  wait_for $((LAB_TIMER_S * 8)) "three collector runs" runs_at_least vpn-accounting-collector 3
  for t in vpn-policy-reconcile vpn-accounting-collector; do
    journalctl --after-cursor="$CURSOR" -u "$t.service" -o short-monotonic --no-pager > "$LAB_OUT/logs/$t.journal"
    fact "timers.$t.starts" "$(grep 'Starting ' "$LAB_OUT/logs/$t.journal" | sed 's/^\[ *\([0-9.]*\)\].*/\1/' | tr '\n' ' ')"
    fact "timers.$t.result" "$(unit_prop "$t.service" Result)"
  done
  systemctl start pppgate-guard.service
  # The next boot is the DB Down Boot: the system's PostgreSQL masked (it will not start).
  local v
  v=$(ls /etc/postgresql | sort -V | tail -1)
  [ -n "$v" ] || die "no PostgreSQL cluster under /etc/postgresql"
  systemctl mask postgresql.service "postgresql@$v-main.service" > /dev/null 2>&1 || die "cannot mask PostgreSQL"
  fact pg_masked "$(systemctl is-enabled "postgresql@$v-main.service" 2> /dev/null)"
  sys_collect boot
}

# own_lines UNIT: the lines UNIT's program logged this boot (systemd's own Starting/Finished/
# Deactivated/Consumed lines left out).
own_lines() {
  journalctl -b -u "$1" -o cat --no-pager 2> /dev/null |
    grep -v -E '^(Starting|Started|Finished|Stopping|Stopped) |\.service: (Deactivated|Consumed|Succeeded|Main process|Failed|Scheduled)' || true
}

# Boot 3, B167 §9 DB Down Boot: PostgreSQL masked. The boot finishes; the VPN stack and pppgate's
# units start; the boot reconcile and boot janitor end as designed (best effort, no loop); the
# timers run at the test interval without restarts or log spam; a login is refused fail-closed
# (the installed plugin cannot read SQL: the session is ended, nothing passes).
boot3() {
  sys_wait_booted 1500
  local v u
  v=$(ls /etc/postgresql | sort -V | tail -1)
  fact dbdown.pg "$(systemctl is-active "postgresql@$v-main.service" 2> /dev/null)"
  fact dbdown.pg_socket "$(test -S /run/postgresql/.s.PGSQL.5432 && echo present || echo absent)"
  fact dbdown.failed "$(systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  for u in strongswan.service xl2tpd.service freeradius.service pppgate-guard.service \
    vpn-policy-reconcile.timer vpn-accounting-collector.timer vpn-stale-session-janitor.timer; do
    fact "dbdown.active.$u" "$(systemctl is-active "$u")"
  done
  for u in $RECONCILE $JANITOR; do
    fact "dbdown.$u.result" "$(unit_prop "$u" Result) $(unit_prop "$u" ExecMainStatus)"
    fact "dbdown.$u.restarts" "$(unit_prop "$u" NRestarts)"
    fact "dbdown.$u.starts" "$(journalctl -b -u "$u" -o cat --no-pager | grep -c '^Starting ')"
    own_lines "$u" > "$LAB_OUT/logs/dbdown-$u.log"
    fact "dbdown.$u.lines" "$(wc -l < "$LAB_OUT/logs/dbdown-$u.log")"
  done
  # The timers (boot 2's test drop-ins persist): three runs each, their results and log volume.
  CURSOR=$(journalctl -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
  wait_for $((LAB_TIMER_S * 8)) "three reconcile runs" runs_at_least vpn-policy-reconcile 3
  wait_for $((LAB_TIMER_S * 8)) "three collector runs" runs_at_least vpn-accounting-collector 3
  local t
  for t in vpn-policy-reconcile vpn-accounting-collector; do
    journalctl --after-cursor="$CURSOR" -u "$t.service" -o cat --no-pager > "$LAB_OUT/logs/dbdown-$t.journal"
    fact "dbdown.$t.runs" "$(grep -c '^Starting ' "$LAB_OUT/logs/dbdown-$t.journal")"
    fact "dbdown.$t.result" "$(unit_prop "$t.service" Result) $(unit_prop "$t.service" ExecMainStatus)"
    fact "dbdown.$t.lines" "$(grep -v -E '^(Starting|Started|Finished) |\.service: (Deactivated|Consumed|Succeeded|Main process|Failed)' "$LAB_OUT/logs/dbdown-$t.journal" | grep -c .)"
  done

  # A login with SQL down: the installed plugin in the lab's LNS, the system's configuration.
  cl_init
  net_setup
  LAB_PPPGATE=/usr/sbin/pppgate
  LAB_PLUGIN=pppgate.so
  PPPGATE_CONF=/etc/pppgate/pppgate.toml
  lns_user alice pw-alice
  lns_start
  client_add alice alice pw-alice
  client_opt alice "lcp-restart 1"
  traffic_start dbdown alice
  client_connect alice
  lns_wait_peer_up alice 60
  client_wait_lns_gone alice 60
  traffic_stop dbdown
  fact dbdown.lns_said "$(grep -c 'database unavailable' "$LAB_TMP/pppd-lns.log")"
  fact dbdown.full_v4 "$(nft list set inet pppgate full_v4 2> /dev/null | grep -c "$(client_get alice client_ip)" || true)"
  cp "$LAB_TMP/pppd-lns.log" "$LAB_OUT/logs/dbdown-pppd-lns.log" 2> /dev/null || true
  sys_collect boot
}

case $B in
  1) boot1 ;;
  2) boot2 ;;
  3) boot3 ;;
  *) die "LAB_BOOT=$B: this scenario boots three times" ;;
esac

# Session identity under a stepped clock, a database restarted mid-commit, and a full accounting
# directory at ip-down (issue 16; R411, R412, R413), over real L2TP with pppgate.so, checked by
# tests/lab_identity.rs.
#
#   clock      alice and eve connect; the clock is stepped back one hour (the kernel's boot time
#              moves with it): both mappings stay VALID, a reconcile keeps their policy, the
#              collector counts on (SQL = alice's interface); eve hangs up while the clock is back
#              (a session that started before the step); bob connects while it is back; the clock
#              is stepped forward again: alice and bob VALID, policy kept, nothing closed as
#              vanished; bob and alice hang up. SQL: no stop before its start, no negative
#              duration, each session's final figures equal pppd's own.
#   pgrestart  carol connects; a collector commit is held on a table lock and PostgreSQL is
#              restarted with `pg_ctl restart -m fast` under it: exit 69, the outage marker, one
#              log line; after the restart one collector run brings SQL to the interface's
#              figures exactly.
#   diskfull   dave connects (ip-up reserves his final record); PostgreSQL is stopped and the
#              accounting directory (a small tmpfs) filled to the last page; dave hangs up:
#              ip-down's final record goes into the reservation (nothing is committed); space is
#              freed and PostgreSQL started, one collector run later SQL holds pppd's own final
#              figures.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/accounting.sh"
lab_init

ACCT_DIR=/var/lib/vpn-accounting
mkdir -p "$ACCT_DIR"
mount -t tmpfs -o size=1m,mode=0700 tmpfs "$ACCT_DIR" || die "cannot mount a tmpfs on $ACCT_DIR"
pg_start
pppgate_configure
# A commit held on a lock must outlive the restart (not end on the statement timeout first).
sed -i 's/^connect_timeout_ms = 2000$/connect_timeout_ms = 2000\nstatement_timeout_ms = 60000/' "$PPPGATE_CONF"
grep -q '^statement_timeout_ms = 60000$' "$PPPGATE_CONF" || die "cannot set statement_timeout_ms"
pppgate_migrate
net_setup
acct_quiet_links
for u in alice bob carol dave eve; do
  sql "insert into vpn_connections (subaccount_login, status) values ('$u', 'CLAIMED')"
  lns_user "$u" "pw-$u"
done
lns_start

pg_srv() { ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" "$@"; }
validity() { pg_srv --json session list | jq -r --arg i "$1" '.sessions[] | select(.ppp_if == $i) | .validity'; }
# session_sql LOGIN: "bytes_in bytes_out stopped" of LOGIN's last session.
session_sql() {
  sql "select bytes_in || ' ' || bytes_out || ' ' || (stop_time is not null) from pppgate_sessions
       where connection_id = (select id from vpn_connections where subaccount_login = '$1') order by start_time desc limit 1"
}
# pppd_final MARK: pppd's "Sent N bytes, received M bytes" since MARK, as "rx tx" (one hang-up
# after MARK: the LNS log has no pid prefix).
pppd_final() {
  local line
  line=$(lns_log_since "$1" | grep -o 'Sent [0-9]* bytes, received [0-9]* bytes' | tail -1)
  [ -n "$line" ] || { echo none; return; }
  set -- $line
  echo "$5 $2"
}
# in_full CLIENT: yes when srv's full_v4 holds the client's address on its LNS interface.
in_full() { nft_member full_v4 "$(client_get "$1" client_ip)" "$(client_get "$1" lns_if)" && echo yes || echo no; }
# since_base IFNAME "rx tx": the reading less the mapping's RX_BASE/TX_BASE, as "rx tx".
since_base() {
  local rx tx base_rx base_tx
  read -r rx tx <<< "$2"
  base_rx=$(sed -n 's/^RX_BASE=//p' "/run/vpn-sessions/$1.env")
  base_tx=$(sed -n 's/^TX_BASE=//p' "/run/vpn-sessions/$1.env")
  echo "$(( rx - ${base_rx:-0} )) $(( tx - ${base_tx:-0} ))"
}
btime() { sed -n 's/^btime //p' /proc/stat; }
step_clock() {
  date -s "@$(( $(date +%s) + $1 ))" > /dev/null || die "date -s failed"
  log "clock stepped by $1 s"
}

case_clock() {
  local a_if b_if e_if mark rc bt0 bt1 bt2
  # alice lives through both steps; eve comes up before the step back and hangs up while the
  # clock is back (by the wall clock her stop is an hour before her start); bob connects while
  # the clock is back and lives through the step forward (by the wall clock he started an hour
  # in the future of his process's own start).
  client_add alice alice pw-alice
  client_add eve eve pw-eve
  client_connect alice
  client_connect eve
  client_wait_up alice 60
  client_wait_up eve 60
  a_if=$(client_get alice lns_if)
  e_if=$(client_get eve lns_if)
  # The mapping carries the identity no clock step moves (else VALID below proves nothing new).
  fact clock.mapping_identity "$(grep -c '^START_TICKS=[0-9]\|^BOOT_ID=.' "/run/vpn-sessions/$a_if.env" || true)"
  ip netns exec cli ping -q -c 10 -i 0.05 -s 500 -W 2 -I "$(client_get alice lac_if)" "$PPP_LOCAL" > /dev/null
  ip netns exec cli ping -q -c 6 -i 0.05 -s 600 -W 2 -I "$(client_get eve lac_if)" "$PPP_LOCAL" > /dev/null
  run_collector clock0
  fact clock.before_validity "$(validity "$a_if") $(validity "$e_if")"
  fact clock.before_in_full "$(in_full alice) $(in_full eve)"

  bt0=$(btime)
  step_clock -3600
  bt1=$(btime)
  # What broke VALID: the kernel's boot time moves with the wall clock.
  fact clock.back_btime_shift "$(( bt1 - bt0 ))"
  fact clock.back_validity "$(validity "$a_if") $(validity "$e_if")"
  rc=0
  pg_srv --json reconcile > "$LAB_OUT/reconcile-back.json" 2>&1 || rc=$?
  fact clock.back_reconcile_rc "$rc"
  fact clock.back_in_full "$(in_full alice) $(in_full eve)"
  ip netns exec cli ping -q -c 10 -i 0.05 -s 700 -W 2 -I "$(client_get alice lac_if)" "$PPP_LOCAL" > /dev/null
  measure_quiet clock1 "$a_if"
  fact clock.back_collect_rc "$COLLECT_RC"
  fact clock.back_read "$(jq -r .sessions.read "$LAB_OUT/collect-clock1.json")"
  fact clock.back_not_valid "$(jq -r .sessions.not_valid "$LAB_OUT/collect-clock1.json")"
  fact clock.back_vanished "$(jq -r .sessions.closed_vanished "$LAB_OUT/collect-clock1.json")"
  # The collector counted on: SQL holds alice's interface octets as read while the clock is back.
  fact clock.back_alice_kernel "$(since_base "$a_if" "$MEASURE_AFTER") false"
  fact clock.back_alice_sql "$(session_sql alice)"

  # A hang-up while the clock is back, of a session that started before the step.
  settle "$e_if"
  mark=$(lns_log_mark)
  client_disconnect eve
  client_wait_down eve 30
  fact clock.eve_pppd "$(pppd_final "$mark")"
  fact clock.eve_sql "$(session_sql eve)"

  # A connect while the clock is back.
  client_add bob bob pw-bob
  client_connect bob
  client_wait_up bob 60
  b_if=$(client_get bob lns_if)
  fact clock.bob_in_full "$(in_full bob)"
  ip netns exec cli ping -q -c 8 -i 0.05 -s 900 -W 2 -I "$(client_get bob lac_if)" "$PPP_LOCAL" > /dev/null
  run_collector clock1b
  fact clock.back_bob_collect_rc "$COLLECT_RC"
  fact clock.back_bob_read "$(jq -r .sessions.read "$LAB_OUT/collect-clock1b.json")"

  step_clock 3600
  bt2=$(btime)
  fact clock.forward_btime_shift "$(( bt2 - bt1 ))"
  fact clock.forward_validity "$(validity "$a_if") $(validity "$b_if")"
  rc=0
  pg_srv --json reconcile > "$LAB_OUT/reconcile-forward.json" 2>&1 || rc=$?
  fact clock.forward_reconcile_rc "$rc"
  fact clock.forward_in_full "$(in_full alice) $(in_full bob)"
  run_collector clock2
  fact clock.forward_collect_rc "$COLLECT_RC"
  fact clock.forward_read "$(jq -r .sessions.read "$LAB_OUT/collect-clock2.json")"
  fact clock.forward_not_valid "$(jq -r .sessions.not_valid "$LAB_OUT/collect-clock2.json")"
  fact clock.forward_vanished "$(jq -r .sessions.closed_vanished "$LAB_OUT/collect-clock2.json")"

  settle "$b_if"
  mark=$(lns_log_mark)
  client_disconnect bob
  client_wait_down bob 30
  fact clock.bob_pppd "$(pppd_final "$mark")"
  fact clock.bob_sql "$(session_sql bob)"
  settle "$a_if"
  mark=$(lns_log_mark)
  client_disconnect alice
  client_wait_down alice 30
  fact clock.alice_pppd "$(pppd_final "$mark")"
  fact clock.alice_sql "$(session_sql alice)"
  fact clock.sessions_closed "$(sql "select count(*) from pppgate_sessions where stop_time is not null")"
  fact clock.stop_before_start "$(sql "select count(*) from pppgate_sessions where stop_time < start_time")"
  fact clock.radacct_closed "$(sql "select count(*) from radacct where acctstoptime is not null")"
  fact clock.radacct_negative "$(sql "select count(*) from radacct where acctstoptime < acctstarttime or acctsessiontime < 0 or acctupdatetime < acctstarttime")"
  clients_reset
}

case_pgrestart() {
  local c_if lock_pid col_pid rc
  client_add carol carol pw-carol
  client_connect carol
  client_wait_up carol 60
  c_if=$(client_get carol lns_if)
  run_collector pg0
  ip netns exec cli ping -q -c 12 -i 0.05 -s 800 -W 2 -I "$(client_get carol lac_if)" "$PPP_LOCAL" > /dev/null
  settle "$c_if"
  # Hold the commit: a transaction keeps pppgate_acct_batches locked.
  psql_as "$PG_DB" -q -c "begin; lock table pppgate_acct_batches in access exclusive mode; select pg_sleep(120)" > /dev/null 2>&1 &
  lock_pid=$!
  wait_for 20 "the table lock" sql_is 1 "select count(*) from pg_locks l join pg_class c on c.oid = l.relation where c.relname = 'pppgate_acct_batches' and l.mode = 'AccessExclusiveLock' and l.granted"
  rc=0
  # The subshell's status is the collector's (errexit would end it before any later command).
  ( exec ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" --json collect > "$LAB_OUT/collect-pg1.json" 2> "$LAB_OUT/collect-pg1.err" ) &
  col_pid=$!
  wait_for 30 "the collector's commit to wait for the lock" sql_is 1 "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
  pg_bin
  as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t 60 -m fast restart -l "$PG_SOCK/postgres.log" \
    -o "-k $PG_SOCK -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off" > /dev/null ||
    die "pg_ctl restart failed"
  rc=0
  wait "$col_pid" || rc=$?
  wait "$lock_pid" 2> /dev/null || true
  fact pg.collect_rc "$rc"
  fact pg.db_status "$(jq -r '.db.status // .db' "$LAB_OUT/collect-pg1.json" 2> /dev/null | head -1)"
  fact pg.log_lines "$(grep -c 'database unavailable' "$LAB_OUT/collect-pg1.err" || true)"
  fact pg.marker "$(ls "$ACCT_DIR" | grep -c outage || true)"
  fact pg.spooled "$(ls "$ACCT_DIR/spool" | grep -c '\.batch$' || true)"
  run_collector pg2
  fact pg.after_collect_rc "$COLLECT_RC"
  fact pg.replayed "$(jq -r .replay.records_applied "$LAB_OUT/collect-pg2.json")"
  fact pg.spooled_after "$(ls "$ACCT_DIR/spool" | grep -c '\.batch$' || true)"
  fact pg.marker_after "$(ls "$ACCT_DIR" | grep -c outage || true)"
  # SQL against the interface, read with nothing moving around a collector run.
  measure_quiet pg3 "$c_if"
  fact pg.quiet_collect_rc "$COLLECT_RC"
  fact pg.kernel "$(since_base "$c_if" "$MEASURE_AFTER")"
  fact pg.sql "$(session_sql carol)"
  clients_reset
}

case_diskfull() {
  local d_if mark i line
  client_add dave dave pw-dave
  client_connect dave
  client_wait_up dave 60
  d_if=$(client_get dave lns_if)
  fact full.reserved "$(ls -a "$ACCT_DIR/final" | grep -c '^\.reserve\.' || true)"
  run_collector full0
  ip netns exec cli ping -q -c 15 -i 0.05 -s 900 -W 2 -I "$(client_get dave lac_if)" "$PPP_LOCAL" > /dev/null
  settle "$d_if"
  fact full.spooled_before "$(ls "$ACCT_DIR/spool" | grep -c '\.batch$' || true)"
  # PostgreSQL down as well: ip-down's figures have nowhere to go but the full directory.
  pg_stop
  # Fill the directory's file system to the last page.
  dd if=/dev/zero of="$ACCT_DIR/filler" bs=4096 2> /dev/null || true
  i=0
  while echo x > "$ACCT_DIR/filler.$i" 2> /dev/null; do i=$((i + 1)); done
  fact full.free_kb "$(df -k --output=avail "$ACCT_DIR" | tail -1 | tr -d ' ')"
  mark=$(lns_log_mark)
  client_disconnect dave
  client_wait_down dave 30
  fact full.markers "$(ls "$ACCT_DIR/final" | grep -c '\.final$' || true)"
  fact full.reserves_after "$(ls -a "$ACCT_DIR/final" | grep -c '^\.reserve\.' || true)"
  # Where the figures are now: the marker (the journal write failed on ENOSPC) or, when the
  # reservation's spare pages held it, a spooled batch.
  fact full.spooled "$(ls "$ACCT_DIR/spool" | grep -c '\.batch$' || true)"
  line=$(lns_log_since "$mark" | grep -m1 'final accounting' || echo none)
  fact full.plugin_line "$line"
  fact full.committed_at_ip_down "$(grep -c 'outcome=Committed' <<< "$line" || true)"
  fact full.pppd "$(pppd_final "$mark")"
  rm -f "$ACCT_DIR"/filler*
  pg_start
  fact full.sql_before "$(session_sql dave)"
  run_collector full1
  fact full.collect_rc "$COLLECT_RC"
  fact full.sql "$(session_sql dave)"
  clients_reset
}

run_case clock case_clock
run_case pgrestart case_pgrestart
run_case diskfull case_diskfull

# Sessions and RADIUS against a real FreeRADIUS 3.2 (rlm_sql postgresql) and real pppd with
# `plugin radius.so` + pppgate.so over real L2TP: Simultaneous-Use without lockouts, the
# on-demand janitor, ghost mappings, `session kill`, PostgreSQL down. Facts: <case>.status plus
# per-case details; tests/lab_radius.rs asserts them.
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/radius.sh"
lab_init

pg_start
pppgate_configure
pppgate_migrate
net_setup
radius_prepare
radius_user alice secret 1
radius_user bob secret 1
radius_start
fact radius.freeradius "$(freeradius -v 2>&1 | head -1 | sed 's/,.*//')"

# The LNS pppd loads radius.so first, then pppgate.so (pppd runs ip-up notifiers in reverse load
# order: the mapping is written before radius.so's Acct-Start leaves).
LNS_PLUGIN=0
LNS_PPPD_EXTRA="plugin radius.so plugin $LAB_PLUGIN pppgate-config $PPPGATE_CONF"
lns_start

ALICE=$(conn_id alice)

# pppd and FreeRADIUS live in srv: pppgate's verbs look at that namespace's interfaces.
pg_srv() { ip netns exec srv "$LAB_PPPGATE" "$@"; }
auth_accepts() { [ "$(radius_auth "$1" "$2")" = accept ]; }

# ---------------------------------------------------------------------------------------------
case_login_simul_crash() {
  client_add c1 alice secret
  client_connect c1
  client_wait_up c1 60
  local ip pid row
  ip=$(client_get c1 client_ip)
  pid=$(client_get c1 lns_pid)
  wait_for 10 "alice's radacct row" open_rows_are alice 1
  row=$(sql "select radacctid from radacct where username = 'alice' and acctstoptime is null")
  fact login.radacct_framed_ip "$(sql "select host(framedipaddress) from radacct where radacctid = $row")"
  fact login.client_ip "$ip"
  fact login.mapping_validity "$(pg_srv --json session list | jq -r ".sessions[] | select(.connection_id == $ALICE) | .validity")"

  # Second login while the first is live: radclient and a real second dial are both rejected.
  fact simul.second_radclient "$(radius_auth alice secret)"
  local mark
  mark=$(fr_log_mark)
  client_add c2 alice secret
  client_connect c2
  poll_until 40 sh -c "tail -n +$(( mark + 1 )) $FR_LOG | grep -q 'Sent Access-Reject'" || true
  fact simul.second_dial_rejected "$(fr_log_since "$mark" | grep -c 'Sent Access-Reject' || true)"
  fact simul.second_dial_hook "$(fr_log_since "$mark" | grep -c 'allowed sessions online' || true)"
  sleep 2
  fact simul.second_dial_up "$(client_lac_up c2 && echo yes || echo no)"
  fact simul.open_rows_after_second "$(open_rows alice)"

  # The LNS pppd dies without Accounting-Stop (SIGKILL): the row stays open...
  kill -KILL "$pid"
  wait_for 10 "pppd $pid to die" pid_gone "$pid"
  fact crash.open_rows_after_kill "$(open_rows alice)"
  # ...past the janitor's grace period (a row younger than 10 s is never judged)...
  wait_for 30 "the row to be older than the grace period" \
    sql_is t "select (now() - acctstarttime) > interval '12 seconds' from radacct where radacctid = $row"
  # ...and the next login is accepted: the on-demand janitor closed it.
  fact crash.next_login "$(radius_auth alice secret)"
  fact crash.row_cause "$(sql "select coalesce(acctterminatecause, 'open') from radacct where radacctid = $row")"
}

# ---------------------------------------------------------------------------------------------
case_ghost_mapping() {
  # A mapping whose pppd is long gone, and an open row of that session.
  local dead
  sh -c 'exit 0' &
  dead=$!
  wait "$dead" || true
  printf 'CONNECTION_ID=%s\nPPP_IF=ppp77\nCLIENT_IP=198.51.100.77\nSTART_TS=%s\nPPPD_PID=%s\n' \
    "$ALICE" "$(( $(date +%s) - 120 ))" "$dead" > "$SESSIONS_DIR/ppp77.env"
  chgrp pppgate "$SESSIONS_DIR/ppp77.env"
  chmod 0640 "$SESSIONS_DIR/ppp77.env"
  sql "insert into radacct (acctsessionid, acctuniqueid, username, nasipaddress, framedipaddress, acctstarttime)
       values ('ghost', 'ghost-1', 'alice', '$LNS_IP', '198.51.100.77', now() - interval '2 minutes')"
  fact ghost.validity "$(pg_srv --json session list | jq -r '.sessions[] | select(.ppp_if == "ppp77") | .validity')"
  fact ghost.login "$(radius_auth alice secret)"
  fact ghost.row_cause "$(sql "select coalesce(acctterminatecause, 'open') from radacct where acctuniqueid = 'ghost-1'")"
  rm -f "$SESSIONS_DIR/ppp77.env"
}

# ---------------------------------------------------------------------------------------------
case_session_kill() {
  client_add k1 bob secret
  client_connect k1
  client_wait_up k1 60
  local pid row mark out rc=0
  pid=$(client_get k1 lns_pid)
  wait_for 10 "bob's radacct row" open_rows_are bob 1
  row=$(sql "select radacctid from radacct where username = 'bob' and acctstoptime is null")
  mark=$(fr_log_mark)
  out=$(SUDO_USER=panel pg_srv --json session kill "$(conn_id bob)") || rc=$?
  printf '%s\n' "$out" > "$LAB_OUT/logs/session-kill.json"
  fact kill.exit "$rc"
  fact kill.outcome "$(jq -r '.sessions[0].outcome' <<< "$out")"
  fact kill.janitor_closed "$(jq -r '.janitor.radacct.closed' <<< "$out")"
  fact kill.pppd_gone "$(pid_gone "$pid" && echo yes || echo no)"
  fact kill.mapping_left "$(ls "$SESSIONS_DIR" | grep -c . || true)"
  # radius.so's Accounting-Stop closed the row through FreeRADIUS (not the janitor).
  fact kill.acct_stop_seen "$(fr_log_since "$mark" | grep -c 'Acct-Status-Type = Stop' || true)"
  fact kill.row_cause "$(sql "select coalesce(acctterminatecause, 'open') from radacct where radacctid = $row")"
  fact kill.audit "$(tail -1 /var/log/pppgate/audit.log | jq -r '"\(.verb) \(.actor.sudo_user) \(.exit_code)"')"
  # Input validation: refused, audited, nothing killed.
  rc=0
  pg_srv session kill "$(conn_id bob); rm -rf /" > /dev/null 2>&1 || rc=$?
  fact kill.bad_id_exit "$rc"
}

# ---------------------------------------------------------------------------------------------
case_postgres_down() {
  pg_stop
  fact pgdown.login "$(radius_auth alice secret)"
  # FreeRADIUS's own sql fails first in authorize; the hook on its own, run as rlm_exec runs it
  # (as freerad, attributes in the environment), must fail too — never ok.
  local rc=0 out
  out=$(setpriv --reuid=freerad --regid=freerad --init-groups env -i USER_NAME='"alice"' NAS_IP_ADDRESS="$LNS_IP" \
    "$LAB_PPPGATE" --config "$PPPGATE_CONF" radius exec simultaneous-use --max=1 2> /dev/null) || rc=$?
  fact pgdown.hook_exit "$rc"
  fact pgdown.hook_output "$out"
  local i codes="" lines
  : > "$LAB_TMP/janitor-down.log"
  for i in 1 2 3; do
    rc=0
    pg_srv janitor 2>> "$LAB_TMP/janitor-down.log" || rc=$?
    codes="$codes$rc "
  done
  fact pgdown.janitor_exits "${codes% }"
  lines=$(grep -c 'database unavailable' "$LAB_TMP/janitor-down.log" || true)
  fact pgdown.janitor_log_lines "$lines"
  pg_start
  rc=0
  pg_srv janitor 2> "$LAB_TMP/janitor-up.log" || rc=$?
  fact pgup.janitor_exit "$rc"
  fact pgup.recovered_lines "$(grep -c 'database reachable again' "$LAB_TMP/janitor-up.log" || true)"
  # FreeRADIUS's own connection pool waits up to 30 s (retry_delay) before reconnecting.
  if poll_until 90 auth_accepts alice secret; then fact pgup.login accept; else fact pgup.login reject; fi
}

run_case login_simul_crash case_login_simul_crash
run_case ghost_mapping case_ghost_mapping
run_case session_kill case_session_kill
run_case postgres_down case_postgres_down
cp "$FR_LOG" "$LAB_OUT/logs/" 2> /dev/null || true

# The system lab boots: systemd is PID 1 over the persistent disk, the boot finishes, and nothing
# the lab itself owns has failed. Prints how long the boot took (systemd-analyze).
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/system.sh"
lab_init
sys_wait_booted 300
fact smoke.pid1 "$(cat /proc/1/comm)"
fact smoke.boot "${LAB_BOOT:-1}"
fact smoke.marker_before "$(cat /var/lib/pppgate-lab-marker 2> /dev/null || echo none)"
echo "boot ${LAB_BOOT:-1}" > /var/lib/pppgate-lab-marker

# A real journald receives pppgate's structured entries (issue 12, docs/operations.md "Journal
# fields"): the janitor, run twice with the database unreachable, writes db_outage_begin once.
journal_case() {
  local conf=/etc/pppgate-lab/journal.toml out=$LAB_OUT/logs/journal-outage.json rc=0 n0
  local id=9fc69114a67f4b8caf7c9d7b24bb308b
  mkdir -p /etc/pppgate-lab
  chmod 755 /etc/pppgate-lab
  rm -rf /run/pppgate-lab-journal
  printf '%s\n' '# written by the lab (system-smoke.sh): a database that is not there' \
    '[database]' 'dsn = "host=/run/pppgate-lab-nodb dbname=pppgate user=postgres"' 'connect_timeout_ms = 500' '' \
    '[nas]' 'identity = "lns-1"' 'ip = "192.0.2.1"' '' \
    '[paths]' 'run_dir = "/run/pppgate-lab-journal"' > "$conf"
  chmod 600 "$conf"
  n0=$(journalctl -o cat --no-pager "MESSAGE_ID=$id" | grep -c . || true)
  "$LAB_PPPGATE" -c "$conf" janitor > "$LAB_OUT/logs/journal-janitor-1.log" 2>&1 || rc=$?
  fact journal.rc1 "$rc"
  rc=0
  "$LAB_PPPGATE" -c "$conf" janitor > "$LAB_OUT/logs/journal-janitor-2.log" 2>&1 || rc=$?
  fact journal.rc2 "$rc"
  journalctl --sync 2> /dev/null || true
  journalctl -o json --no-pager "MESSAGE_ID=$id" | tail -n +$((n0 + 1)) > "$out"
  fact journal.entries "$(grep -c . "$out" || true)"
  fact journal.fields "$(head -1 "$out" | jq -r '[.SYSLOG_IDENTIFIER, .PRIORITY, .PPPGATE_EVENT, .PPPGATE_COMPONENT] | join(" ")')"
  fact journal.error "$(head -1 "$out" | jq -r '.PPPGATE_ERROR // ""' | grep -c .)"
  fact journal.plain_lines "$(cat "$LAB_OUT/logs/journal-janitor-1.log" "$LAB_OUT/logs/journal-janitor-2.log" | grep -c . || true)"
}
run_case journal journal_case
sys_collect smoke

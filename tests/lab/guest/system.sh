# shellcheck shell=bash
# System lab helpers (systemd is PID 1; see src/system.rs), on top of lib.sh:
#
#   sys_wait_booted TIMEOUT_S   waits for the boot to finish (systemctl is-system-running --wait);
#                               facts <tag>.boot_ms, records systemd-analyze time and failed units
#   sys_collect TAG             journal of this boot, failed units, critical chain into /out/logs
#   unit_prop UNIT PROP         prints a property (systemctl show -P)
#   unit_ts UNIT PROP           a monotonic timestamp property in µs (0 if never)

sys_wait_booted() {
  local tmo=${1:-300} state
  [ "$(cat /proc/1/comm)" = systemd ] || die "PID 1 is $(cat /proc/1/comm), not systemd"
  state=$(timeout "$tmo" systemctl is-system-running --wait 2> /dev/null) || true
  log "system state after boot: ${state:-timeout}"
  fact "boot${LAB_BOOT:-1}.state" "${state:-timeout}"
  timeout 60 systemd-analyze time > "$LAB_OUT/logs/boot${LAB_BOOT:-1}-analyze.txt" 2>&1 || true
  fact "boot${LAB_BOOT:-1}.userspace_ms" "$(( $(unit_ts multi-user.target ActiveEnterTimestampMonotonic) / 1000 ))"
  systemctl --failed --no-legend --plain > "$LAB_OUT/logs/boot${LAB_BOOT:-1}-failed.txt" 2>&1 || true
  timeout 60 systemd-analyze blame > "$LAB_OUT/logs/boot${LAB_BOOT:-1}-blame.txt" 2>&1 || true
  log "boot: $(head -1 "$LAB_OUT/logs/boot${LAB_BOOT:-1}-analyze.txt"); failed units: $(awk '{print $1}' "$LAB_OUT/logs/boot${LAB_BOOT:-1}-failed.txt" | tr '\n' ' ')"
  case $state in running | degraded) ;; *) die "the boot did not finish within ${tmo}s (state ${state:-timeout})" ;; esac
}

sys_collect() {
  local tag=$1 b=${LAB_BOOT:-1}
  # Bounded: a collector that hangs must not keep the VM from powering off.
  timeout 60 journalctl -b --no-pager -o short-monotonic > "$LAB_OUT/logs/boot$b-journal.txt" 2>&1 || true
  timeout 60 systemctl list-units --all --no-pager --plain > "$LAB_OUT/logs/boot$b-units.txt" 2>&1 || true
  log "$tag: journal and unit lists of boot $b collected"
}

unit_prop() { systemctl show -P "$2" "$1"; }

unit_ts() {
  local v
  v=$(systemctl show -P "$2" "$1" 2> /dev/null)
  echo "${v:-0}"
}

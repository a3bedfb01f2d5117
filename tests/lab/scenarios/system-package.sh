# The package on a systemd-booted system (tests/lab_system.rs): install the built .deb with apt,
# configure, dial over L2TP through the installed plugin, upgrade to a higher version while the
# session is up (it keeps its policy), remove with a session up (its policy stays, the timers
# stop), purge with unsent accounting (kept, and said so). Every step is read back from dpkg,
# systemd, the files and the kernel.
#
# Environment (from the Rust test): LAB_DEB (the package), LAB_DEB_UPGRADE (the same artifacts
# as a higher version).
. "$LAB_LIB"
. "$LAB_REPO/tests/lab/guest/connect.sh"
. "$LAB_REPO/tests/lab/guest/system.sh"
lab_init
cl_init
sys_wait_booted 600

: "${LAB_DEB:?LAB_DEB is not set}"
: "${LAB_DEB_UPGRADE:?LAB_DEB_UPGRADE is not set}"
export DEBIAN_FRONTEND=noninteractive
# man-db's dpkg trigger rebuilds the manual page index over the 9p root: minutes under TCG, per
# apt run. Operators keep it; the lab switches it off (man-db reads this flag file).
rm -f /var/lib/man-db/auto-update
APT=(apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold)
PG_PPPGATE=/usr/sbin/pppgate

timed() {
  local tag=$1 t0
  shift
  now
  t0=$NOW
  "$@"
  now
  fact "$tag.ms" $((NOW - t0))
}

enabled() { [ "$(systemctl is-enabled "$1" 2> /dev/null)" = enabled ]; }
active() { [ "$(systemctl is-active "$1" 2> /dev/null)" = active ]; }
TIMERS="vpn-policy-reconcile.timer vpn-accounting-collector.timer vpn-stale-session-janitor.timer pppgate-wg-reconcile.timer"

install_case() {
  timed install "${APT[@]}" "$LAB_DEB" > "$LAB_OUT/logs/apt-install.log" 2>&1 ||
    die "apt install failed: $(tail -20 "$LAB_OUT/logs/apt-install.log")"
  cat "$LAB_OUT/logs/apt-install.log"
  fact install.version "$(dpkg-query -W -f='${Version}' pppgate)"
  fact install.dpkg_status "$(dpkg-query -W -f='${Status}' pppgate)"
  local t
  for t in $TIMERS; do
    enabled "$t" || die "$t is not enabled after install"
    active "$t" || die "$t is not active after install"
  done
  fact install.timers enabled-active
  for t in pppgate-boot-reconcile.service pppgate-boot-janitor.service; do
    enabled "$t" || die "$t is not enabled after install"
    [ "$(systemctl is-active "$t")" = inactive ] || die "dpkg started $t"
  done
  fact install.boot_units enabled-not-started
  getent group pppgate > /dev/null || die "group pppgate was not created"
  fact install.sessions_dir "$(stat -c '%a %U %G' /run/vpn-sessions)"
  fact install.state_dir "$(stat -c '%a %U %G' /var/lib/vpn-accounting)"
  fact install.config "$(stat -c '%a %U %G' /etc/pppgate/pppgate.toml)"
  fact install.ip_forward "$(sysctl -n net.ipv4.ip_forward)"
  fact install.freerad_in_group "$(id -nG freerad | tr ' ' '\n' | grep -cx pppgate)"
  fact install.canonical "$(/usr/sbin/vpn-policy-apply --help > /dev/null 2>&1 && echo ok)"
  fact install.plugin "$(ls /usr/lib/pppd/*/pppgate.so)"
}

# The lab's LNS (xl2tpd + pppd in srv) loading the *installed* plugin by name, as
# /etc/ppp/options.xl2tpd would.
session_setup() {
  LAB_PPPGATE=$PG_PPPGATE
  LAB_PLUGIN=pppgate.so
  pg_start
  pppgate_configure
  pppgate_migrate
  net_setup
  ip netns exec srv "$PG_PPPGATE" -c "$PPPGATE_CONF" connection add --login alice --status CLAIMED --down-kbit 2000 --up-kbit 1000 > /dev/null
  ip netns exec srv "$PG_PPPGATE" -c "$PPPGATE_CONF" connection add --login bob --status CLAIMED --down-kbit 3000 > /dev/null
  lns_user alice pw-alice
  lns_user bob pw-bob
  lns_start
}

# policy_of NAME: "full <qdisc kind>" as the kernel has it for the client's session.
policy_of() {
  local ip lns_if q
  ip=$(client_get "$1" client_ip)
  lns_if=$(client_get "$1" lns_if)
  nft_has full_v4 "$ip" || { echo "not-in-full_v4"; return; }
  q=$(tc -n srv qdisc show dev "$lns_if" root | awk '{print $2}')
  echo "full $q"
}

upgrade_case() {
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 90
  local pid before
  pid=$(client_get alice lns_pid)
  wait_for 20 "alice's policy" test "$(policy_of alice)" = "full tbf"
  before=$(policy_of alice)
  fact upgrade.before "$before"
  timed upgrade "${APT[@]}" "$LAB_DEB_UPGRADE" > "$LAB_OUT/logs/apt-upgrade.log" 2>&1 ||
    die "apt upgrade failed: $(tail -20 "$LAB_OUT/logs/apt-upgrade.log")"
  cat "$LAB_OUT/logs/apt-upgrade.log"
  fact upgrade.version "$(dpkg-query -W -f='${Version}' pppgate)"
  fact upgrade.pppd_alive "$(pid_alive "$pid" && echo yes || echo no)"
  fact upgrade.after "$(policy_of alice)"
  fact upgrade.mapping "$(test -s "$SESSIONS_DIR/$(client_get alice lns_if).env" && echo present || echo missing)"
  fact upgrade.config_kept "$(grep -c 'written by the lab' "$PPPGATE_CONF")"
  local t
  for t in $TIMERS; do active "$t" || die "$t is not active after the upgrade"; done
  fact upgrade.timers active
  # A new session after the upgrade loads the new plugin file.
  client_add bob bob pw-bob
  client_connect bob
  client_wait_up bob 90
  wait_for 20 "bob's policy" test "$(policy_of bob)" = "full tbf"
  fact upgrade.new_session "$(policy_of bob)"
}

remove_case() {
  client_add alice alice pw-alice
  client_connect alice
  client_wait_up alice 90
  wait_for 20 "alice's policy" test "$(policy_of alice)" = "full tbf"
  local pid
  pid=$(client_get alice lns_pid)
  timed remove apt-get remove -y -q pppgate > "$LAB_OUT/logs/apt-remove.log" 2>&1 ||
    die "apt remove failed: $(tail -20 "$LAB_OUT/logs/apt-remove.log")"
  cat "$LAB_OUT/logs/apt-remove.log"
  fact remove.said "$(grep -c 'Live sessions keep their policy' "$LAB_OUT/logs/apt-remove.log")"
  fact remove.dpkg_status "$(dpkg-query -W -f='${Status}' pppgate)"
  fact remove.binary "$(test -e /usr/sbin/pppgate && echo present || echo gone)"
  fact remove.config "$(test -e /etc/pppgate/pppgate.toml && echo kept || echo gone)"
  fact remove.pppd_alive "$(pid_alive "$pid" && echo yes || echo no)"
  fact remove.policy "$(policy_of alice)"
  local t
  for t in $TIMERS; do
    ! active "$t" || die "$t still active after remove"
  done
  fact remove.timers stopped
  fact remove.table "$(ip netns exec srv nft list table inet pppgate > /dev/null 2>&1 && echo kept || echo gone)"
  client_hangup alice
  client_wait_down alice 30
}

purge_case() {
  mkdir -p /var/lib/vpn-accounting/spool
  echo "lab: an unsent batch" > /var/lib/vpn-accounting/spool/00000000000000000001.batch
  timed purge apt-get purge -y -q pppgate > "$LAB_OUT/logs/apt-purge.log" 2>&1 ||
    die "apt purge failed: $(tail -20 "$LAB_OUT/logs/apt-purge.log")"
  cat "$LAB_OUT/logs/apt-purge.log"
  fact purge.dpkg_status "$(dpkg-query -W -f='${Status}' pppgate 2> /dev/null || echo not-installed)"
  fact purge.spool "$(test -e /var/lib/vpn-accounting/spool/00000000000000000001.batch && echo kept || echo deleted)"
  fact purge.said "$(grep -c 'KEPT /var/lib/vpn-accounting' "$LAB_OUT/logs/apt-purge.log")"
  fact purge.config "$(test -e /etc/pppgate/pppgate.toml && echo kept || echo gone)"
  local t
  for t in $TIMERS; do
    [ "$(systemctl is-enabled "$t" 2> /dev/null)" != enabled ] || die "$t still enabled after purge"
  done
  fact purge.units gone
}

run_case install install_case
session_setup
run_case upgrade upgrade_case
run_case remove remove_case
run_case purge purge_case
sys_collect package

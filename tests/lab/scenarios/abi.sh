# The booted root and its pppd ABI (tests/lab_trixie.rs): the root's own kernel, pppd, PostgreSQL,
# FreeRADIUS and xl2tpd; the host-built `pppgate` runs; the plugin built for this pppd loads, and
# the plugins built for other pppds are refused by pppd itself (its own messages, kept in
# logs/pppd-<name>.log). LAB_PLUGIN_OTHER_ABI: the build for the other pppd ABI;
# LAB_PLUGIN_MISMATCH: a build for this ABI whose headers claim another version. LAB_DEB (optional):
# the .deb built for this root (scripts/build-deb.sh --root): `dpkg -i` here, then pppd loads the
# installed plugin by the name operators write, `plugin pppgate.so` (logs/dpkg-i.log, pppd-deb.log).
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init
: "${LAB_PLUGIN_OTHER_ABI:?}" "${LAB_PLUGIN_MISMATCH:?}"
fact abi.root "$LAB_ROOT"
fact abi.kernel "$(uname -r)"
fact abi.os "$(. /etc/os-release && echo "$VERSION_CODENAME $VERSION_ID")"
fact abi.pppd_version "$(pppd --version 2>&1 | awk '{print $3}')"
fact abi.pppgate_version "$("$LAB_PPPGATE" --version)"
pg_bin
fact abi.postgres_version "$("$PG_BIN/postgres" --version)"
fact abi.freeradius_version "$(freeradius -v | head -1)"
fact abi.xl2tpd_version "$(dpkg-query -W -f '${Version}' xl2tpd)"
fact abi.radius_so "$([ -r "/usr/lib/pppd/$LAB_PPPD_VERSION/radius.so" ] && echo "/usr/lib/pppd/$LAB_PPPD_VERSION/radius.so" || echo missing)"

# pppd_try NAME PLUGIN: pppd parses its options with PLUGIN loaded and stops there (dryrun; pppd
# wants a terminal when no device is given, hence script(1)). Output in logs/pppd-NAME.log.
pppd_try() {
  local name=$1 so=$2 rc=0
  # A bare name is looked up in pppd's own plugin directory.
  case $so in */*) [ -r "$so" ] || die "plugin $so is not readable in the guest" ;; esac
  script -qec "pppd file /dev/null plugin $so dryrun" /dev/null > "$LAB_OUT/logs/pppd-$name.log" 2>&1 < /dev/null || rc=$?
  fact "abi.$name.rc" "$rc"
  cat "$LAB_OUT/logs/pppd-$name.log" >&2
}
pppd_try own "$LAB_PLUGIN"
pppd_try other_abi "$LAB_PLUGIN_OTHER_ABI"
pppd_try mismatch "$LAB_PLUGIN_MISMATCH"

if [ -n "${LAB_DEB:-}" ]; then
  [ -r "$LAB_DEB" ] || die "LAB_DEB $LAB_DEB is not readable in the guest"
  rc=0
  now; t0=$NOW
  dpkg -i "$LAB_DEB" > "$LAB_OUT/logs/dpkg-i.log" 2>&1 || rc=$?
  now
  fact abi.deb.dpkg_rc "$rc"
  fact abi.deb.dpkg_ms $(( NOW - t0 ))
  cat "$LAB_OUT/logs/dpkg-i.log" >&2
  fact abi.deb.status "$(dpkg-query -W -f '${Status} ${Version}' pppgate 2>&1)"
  fact abi.deb.depends "$(dpkg-query -W -f '${Depends}' pppgate 2>&1)"
  fact abi.deb.breaks "$(dpkg-query -W -f '${Breaks}' pppgate 2>&1)"
  fact abi.deb.plugin "$(dpkg -L pppgate | grep '/pppd/.*\.so$' | tr '\n' ' ')"
  fact abi.deb.units "$(dpkg -L pppgate | grep -c '^/usr/lib/systemd/system/.*\.\(service\|timer\)$')"
  fact abi.deb.missing_deps "$(dpkg -C 2>&1 | tr '\n' ' ')"
  fact abi.deb.pppgate_version "$(/usr/sbin/pppgate --version 2>&1)"
  pppd_try deb pppgate.so
fi

#!/usr/bin/env bash
# Installs every Debian package pppgate's build, demo and tests use (only what is missing),
# without letting package installs start services: tests and the demo start their own
# PostgreSQL, FreeRADIUS, xl2tpd and pppd inside VMs or network namespaces. Root only.
set -euo pipefail

# Every Debian package the build and the tests use (one line per purpose).
PACKAGES=(
  build-essential pkg-config clang libclang-dev   # cc for -sys crates, libclang for bindgen
  ppp ppp-dev                                     # pppd and the headers the shim binds to
  xl2tpd                                          # LNS and LAC inside the lab
  postgresql postgresql-client                    # PostgreSQL 15 (initdb/pg_ctl/psql in tests and the lab)
  pgbouncer                                       # the connect path through a pooler (policy_apply benchmark, lab connect bench)
  freeradius freeradius-postgresql freeradius-utils
  qemu-system-x86 linux-image-amd64 busybox-static  # the lab VM: emulator, guest kernel + modules, initramfs shell
  iproute2 iputils-ping nftables kmod util-linux procps  # namespaces, ping, nft, modprobe, setpriv, sysctl
  iperf3 socat tcpdump                            # traffic tests
  python3                                         # TUN helpers of the accounting kernel tests
  python3-jsonschema                              # --json outputs validated against docs/schemas (tests/testkit/src/schema.rs)
  prometheus prometheus-node-exporter             # promtool check metrics; node_exporter's textfile collector scraped in tests
  wireguard-tools wireguard-go python3-venv       # wg(8) key/config checks, userspace WireGuard for host tests, venv for routeros-lsp
  systemd                                         # systemd-tmpfiles/-sysusers: the lab applies packaging/{tmpfiles,sysusers}.d
  bsdutils binutils dpkg apt                      # script(1) for pppd_load; nm, dpkg-deb, apt-get for build-pppd-variants.sh
  dpkg-dev debhelper lintian sudo                 # scripts/build-deb.sh (dpkg-buildpackage, dh), tests/package_deb.rs (lintian, visudo)
  charon-systemd strongswan-swanctl strongswan-pki libstrongswan-standard-plugins  # L2TP over IPsec in the lab (charon, swanctl, pki, openssl: ECDSA)
  mmdebstrap debian-archive-keyring xz-utils      # the Debian 13 lab root (src/root.rs): built from Debian's registry, trixie's keys, .ko.xz modules
)

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2> /dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: missing packages (${missing[*]}) and not root to install them" >&2; exit 1; }
  echo "install-deps: installing: ${missing[*]}"
  # Keep package installs from starting services (PostgreSQL, FreeRADIUS, xl2tpd): the tests
  # start their own, inside namespaces or VMs.
  created_policy=no
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=yes
  fi
  trap '[ "$created_policy" = yes ] && rm -f /usr/sbin/policy-rc.d' EXIT
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}" < /dev/null
  [ "$created_policy" = yes ] && rm -f /usr/sbin/policy-rc.d
  trap - EXIT
else
  echo "install-deps: all ${#PACKAGES[@]} packages present"
fi


# routeros-lsp from PyPI into target/routeros-lsp (a venv; the RouterOS script tests use it).
bash "$(dirname "$0")/install-routeros-lsp.sh" > /dev/null

#!/usr/bin/env bash
# Builds pppgate and runs every test, as CI does (root, a fresh Debian 12 clone, CI=true, no
# stdin): installs the Debian packages the build and the tests use, then
#   cargo build --release --workspace (+ scripts/build-pppd-variants.sh)
#   cargo test --release --workspace
# The lab tests (tests/lab_*.rs) boot Debian's kernel under qemu (TCG) with the host's root over
# 9p; they run the release artifacts this script builds first. Nothing global is started: every
# server the tests need (PostgreSQL, xl2tpd, pppd, FreeRADIUS) runs inside a VM or a network
# namespace the test creates.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every Debian package the build and the tests use (one line per purpose).
PACKAGES=(
  build-essential pkg-config clang libclang-dev   # cc for -sys crates, libclang for bindgen
  ppp ppp-dev                                     # pppd and the headers the shim binds to
  xl2tpd                                          # LNS and LAC inside the lab
  postgresql postgresql-client                    # PostgreSQL 15 (initdb/pg_ctl/psql in tests and the lab)
  freeradius freeradius-postgresql freeradius-utils
  qemu-system-x86 linux-image-amd64 busybox-static  # the lab VM: emulator, guest kernel + modules, initramfs shell
  iproute2 iputils-ping nftables kmod util-linux procps  # namespaces, ping, nft, modprobe, setpriv, sysctl
  iperf3 socat tcpdump                            # traffic tests
  bsdutils binutils dpkg apt                      # script(1) for pppd_load; nm, dpkg-deb, apt-get for build-pppd-variants.sh
)

log() { printf '[test-all %(%H:%M:%S)T] %s\n' -1 "$*"; }

missing=()
for p in "${PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2> /dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "test-all: missing packages (${missing[*]}) and not root to install them" >&2; exit 1; }
  log "installing: ${missing[*]}"
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
  log "all ${#PACKAGES[@]} packages present"
fi

command -v cargo > /dev/null || { echo "test-all: cargo not found (the machine's Rust toolchain is missing)" >&2; exit 1; }
log "$(cargo --version), $(rustc --version)"

start=$SECONDS
log "cargo build --release --workspace"
cargo build --release --workspace
if [ -x scripts/build-pppd-variants.sh ]; then
  log "scripts/build-pppd-variants.sh (plugin builds for tests/pppd_load.rs)"
  scripts/build-pppd-variants.sh
fi
log "build took $((SECONDS - start)) s"

start=$SECONDS
log "cargo test --release --workspace"
cargo test --release --workspace
log "tests took $((SECONDS - start)) s"

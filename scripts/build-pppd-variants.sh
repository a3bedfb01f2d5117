#!/usr/bin/env bash
# Builds pppgate.so against two other header sets, into target/pppd-variants/:
#  1. Debian 13's ppp-dev 2.5.2 (the pppd 2.5 plugin API): fetched with apt from Debian's registry
#     using a trixie source list in a private apt state dir (the system's apt state is untouched).
#     It must compile; it cannot be loaded here (Debian 12 runs pppd 2.4.9).
#  2. Debian 12's own headers with VERSION changed to "2.4.9-mismatch": a plugin built for a
#     different pppd, which tests/pppd_load.rs proves pppd refuses.
# Usage: scripts/build-pppd-variants.sh   (needs: apt-get, dpkg-deb, cargo, libclang)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/target/pppd-variants"
mkdir -p "$out"
export CARGO_TARGET_DIR="$out/target"

# --- 1. pppd 2.5.2 headers from Debian 13 -------------------------------------------------------
hdr25="$out/ppp-dev-2.5"
if [ ! -f "$hdr25/usr/include/pppd/pppdconf.h" ]; then
  st="$out/apt-trixie"
  mkdir -p "$st/lists/partial" "$st/cache/archives/partial" "$st/etc" "$st/state"
  touch "$st/state/status"
  echo 'deb http://deb.debian.org/debian trixie main' > "$st/etc/sources.list"
  apt_opts=(-o Dir::State="$st/state" -o Dir::State::Lists="$st/lists" -o Dir::Cache="$st/cache"
            -o Dir::Etc::SourceList="$st/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o APT::Sandbox::User=root -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -q >/dev/null
  (cd "$st" && apt-get "${apt_opts[@]}" download ppp-dev >/dev/null)
  deb=$(ls "$st"/ppp-dev_2.5*_all.deb | head -1)
  rm -rf "$hdr25" && mkdir -p "$hdr25"
  dpkg-deb -x "$deb" "$hdr25"
  echo "fetched $(basename "$deb")"
fi
grep -q 'PPPD_VERSION "2.5' "$hdr25/usr/include/pppd/pppdconf.h"
echo "== building pppgate.so against pppd $(sed -n 's/#define PPPD_VERSION "\(.*\)"/\1/p' "$hdr25/usr/include/pppd/pppdconf.h") headers (2.5 API)"
PPPD_INCLUDE_DIR="$hdr25/usr/include" cargo build -q -p pppgate-plugin
cp "$CARGO_TARGET_DIR/debug/libpppgate.so" "$out/libpppgate-pppd-2.5.so"
syms=$(nm -D "$out/libpppgate-pppd-2.5.so")
grep -q ' T plugin_init$' <<<"$syms" || { echo "2.5 build exports no plugin_init" >&2; exit 1; }
grep -q ' U ppp_add_notify$' <<<"$syms" || { echo "2.5 build does not use ppp_add_notify" >&2; exit 1; }
echo "ok: $out/libpppgate-pppd-2.5.so (imports ppp_add_notify)"

# --- 2. a plugin built for a pppd version that is not installed ----------------------------------
hdrmm="$out/ppp-dev-mismatch"
rm -rf "$hdrmm" && mkdir -p "$hdrmm/pppd"
cp /usr/include/pppd/*.h "$hdrmm/pppd/"
sed -i 's/^#define VERSION.*/#define VERSION\t\t"2.4.9-mismatch"/' "$hdrmm/pppd/patchlevel.h"
echo "== building pppgate.so against headers claiming pppd 2.4.9-mismatch"
PPPD_INCLUDE_DIR="$hdrmm" cargo build -q -p pppgate-plugin
cp "$CARGO_TARGET_DIR/debug/libpppgate.so" "$out/libpppgate-mismatch.so"
echo "ok: $out/libpppgate-mismatch.so"

#!/usr/bin/env bash
# Builds pppgate.so for the other pppd ABIs, into target/pppd-variants/ (one source tree, one build
# per pppd ABI; the host's own build is target/release/libpppgate.so):
#  1. libpppgate-pppd-2.5.so (release): against the pppd 2.5.2 headers of the Debian 13 lab root
#     (`pppgate-lab root trixie` builds that root with mmdebstrap from Debian's registry the first
#     time), so it matches the pppd the trixie lab boots exactly. The trixie lab runs it.
#  2. libpppgate-mismatch.so: Debian 12's own headers with VERSION "2.4.9-mismatch".
#  3. libpppgate-pppd-2.5-mismatch.so: the trixie root's headers with PPPD_VERSION "2.5.2-mismatch".
#     tests/pppd_load.rs and tests/lab_trixie.rs prove each pppd refuses the plugins not built for it.
# Usage: scripts/build-pppd-variants.sh   (root: needs mmdebstrap the first time; cargo, libclang)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
out="$target/pppd-variants"
mkdir -p "$out"

# --- 1. pppd 2.5.2: the Debian 13 lab root's own headers ------------------------------------------
cargo build -q --release -p pppgate-lab --bin pppgate-lab
root=$("$target/release/pppgate-lab" root trixie)
hdr25="$root/usr/include"
grep -q 'PPPD_VERSION "2.5' "$hdr25/pppd/pppdconf.h"
v25=$(sed -n 's/#define PPPD_VERSION "\(.*\)"/\1/p' "$hdr25/pppd/pppdconf.h")
export CARGO_TARGET_DIR="$out/target"
echo "== building pppgate.so (release) against pppd $v25 headers of the trixie lab root (2.5 API)"
PPPD_INCLUDE_DIR="$hdr25" cargo build -q --release -p pppgate-plugin
cp "$CARGO_TARGET_DIR/release/libpppgate.so" "$out/libpppgate-pppd-2.5.so.tmp"
mv "$out/libpppgate-pppd-2.5.so.tmp" "$out/libpppgate-pppd-2.5.so"
syms=$(nm -D "$out/libpppgate-pppd-2.5.so")
grep -q ' T plugin_init$' <<<"$syms" || { echo "2.5 build exports no plugin_init" >&2; exit 1; }
grep -q ' U ppp_add_notify$' <<<"$syms" || { echo "2.5 build does not use ppp_add_notify" >&2; exit 1; }
echo "ok: $out/libpppgate-pppd-2.5.so (pppd $v25, imports ppp_add_notify)"

# --- 2. a plugin built for a pppd 2.4 version that is not installed ------------------------------
hdrmm="$out/ppp-dev-mismatch"
rm -rf "$hdrmm" && mkdir -p "$hdrmm/pppd"
cp /usr/include/pppd/*.h "$hdrmm/pppd/"
sed -i 's/^#define VERSION.*/#define VERSION\t\t"2.4.9-mismatch"/' "$hdrmm/pppd/patchlevel.h"
echo "== building pppgate.so against headers claiming pppd 2.4.9-mismatch"
PPPD_INCLUDE_DIR="$hdrmm" cargo build -q -p pppgate-plugin
cp "$CARGO_TARGET_DIR/debug/libpppgate.so" "$out/libpppgate-mismatch.so"
echo "ok: $out/libpppgate-mismatch.so"

# --- 3. the same for pppd 2.5 ---------------------------------------------------------------------
hdr25mm="$out/ppp-dev-2.5-mismatch"
rm -rf "$hdr25mm" && mkdir -p "$hdr25mm/pppd"
cp "$hdr25"/pppd/*.h "$hdr25mm/pppd/"
sed -i "s/^#define PPPD_VERSION .*/#define PPPD_VERSION \"$v25-mismatch\"/" "$hdr25mm/pppd/pppdconf.h"
echo "== building pppgate.so against headers claiming pppd $v25-mismatch"
PPPD_INCLUDE_DIR="$hdr25mm" cargo build -q -p pppgate-plugin
cp "$CARGO_TARGET_DIR/debug/libpppgate.so" "$out/libpppgate-pppd-2.5-mismatch.so"
echo "ok: $out/libpppgate-pppd-2.5-mismatch.so"

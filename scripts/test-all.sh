#!/usr/bin/env bash
# Builds pppgate and runs every test, as CI does (root, a fresh Debian 12 clone, CI=true, no
# stdin): installs the Debian packages the build and the tests use, then
#   the gates: cargo fmt --check, cargo clippy -D warnings (an unformatted file or a lint fails CI)
#   cargo build --release --workspace (+ scripts/build-pppd-variants.sh)
#   scripts/build-deb.sh --no-build (the .deb, from those artifacts; and Debian 13's, --root)
#   cargo test --release --workspace
#   scripts/lab-matrix.sh's CI cell: lab scenario families on Debian 13 (PPPGATE_LAB_MATRIX_CI=1)
#   with PPPGATE_LAB_LONG=1: scripts/lab-matrix.sh, the full lab matrix on both roots (long run,
#   not CI; tests/lab/README.md, "CI and the long run")
# The lab tests (tests/lab_*.rs) boot Debian's kernel under qemu (TCG) with the host's root over
# 9p; they run the release artifacts this script builds first. Nothing global is started: every
# server the tests need (PostgreSQL, xl2tpd, pppd, FreeRADIUS) runs inside a VM or a network
# namespace the test creates.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test-all %(%H:%M:%S)T] %s\n' -1 "$*"; }

bash "$(dirname "$0")/install-deps.sh"

command -v cargo > /dev/null || { echo "test-all: cargo not found (the machine's Rust toolchain is missing)" >&2; exit 1; }
log "$(cargo --version), $(rustc --version)"

start=$SECONDS
log "gates: cargo fmt --all --check; cargo clippy --workspace --all-targets -- -D warnings"
cargo fmt --all --check || { echo "test-all: unformatted files (cargo fmt --all fixes them)" >&2; exit 1; }
cargo clippy --workspace --all-targets -- -D warnings
log "gates took $((SECONDS - start)) s"

start=$SECONDS
log "cargo build --release --workspace"
cargo build --release --workspace
log "scripts/build-pppd-variants.sh (pppd 2.5.2 headers build + mismatched-version plugin for tests/pppd_load.rs)"
bash scripts/build-pppd-variants.sh
log "build took $((SECONDS - start)) s"

start=$SECONDS
log "scripts/build-deb.sh --no-build (the .deb tests/package_deb.rs checks)"
bash scripts/build-deb.sh --no-build
# The system lab's upgrade test (tests/lab_system.rs) installs the same artifacts as a higher version.
bash scripts/build-deb.sh --no-build --version "$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)+lab1"
# The Debian 13 variant (plugin built against trixie's ppp-dev 2.5.2, Depends from its substvars):
# tests/lab_trixie.rs installs it in the trixie root.
PPPGATE_DEB_PLUGIN=target/pppd-variants/libpppgate-pppd-2.5.so \
  bash scripts/build-deb.sh --no-build --root "$(target/release/pppgate-lab root trixie)"
log "package took $((SECONDS - start)) s"

rc=0
start=$SECONDS
log "cargo test --release --workspace --no-fail-fast"
cargo test --release --workspace --no-fail-fast || rc=$?
log "tests took $((SECONDS - start)) s"

# Debian 13 in CI: tests/lab_trixie.rs above (root built and booted, pppd 2.5.2 loads the 2.5
# build and refuses the others, the Debian 13 .deb installs), then the CI cell of the lab matrix
# on the trixie root (R814): lab_foundation, lab_connect and lab_accounting, one VM boot each,
# with the cases that depend on Debian 13 (ci_selection in scripts/lab-matrix.sh; ~15 min at load
# 5-6, lab_connect alone 195 s in the last quiet CI run). The rest of those families, RADIUS and
# the 4 GiB session on trixie are the long run (tests/lab/README.md, "CI and the long run").
start=$SECONDS
log "scripts/lab-matrix.sh with PPPGATE_LAB_MATRIX_CI=1 (the Debian 13 CI cell)"
PPPGATE_LAB_MATRIX_CI=1 bash scripts/lab-matrix.sh || rc=$?
log "Debian 13 CI cell took $((SECONDS - start)) s"

if [ "${PPPGATE_LAB_LONG:-0}" = 1 ]; then
  start=$SECONDS
  log "PPPGATE_LAB_LONG=1: scripts/lab-matrix.sh (every lab scenario family on both roots + 4 GiB accounting)"
  bash scripts/lab-matrix.sh || rc=$?
  log "lab matrix took $((SECONDS - start)) s"
  # The package's life cycle on the systemd-booted system lab (install, upgrade and remove with a
  # live session, purge): four apt runs under TCG.
  start=$SECONDS
  log "PPPGATE_LAB_LONG=1: cargo test --release --test lab_package -- --ignored"
  cargo test --release --no-fail-fast --test lab_package -- --ignored || rc=$?
  log "lab_package took $((SECONDS - start)) s"
  # Login-name conformance: every accepted name of the list dialled over L2TP (CI dials 9).
  start=$SECONDS
  log "PPPGATE_LAB_LONG=1: cargo test --release --test lab_radius_names -- --ignored"
  cargo test --release --no-fail-fast --test lab_radius_names -- --ignored || rc=$?
  log "lab_radius_names (long run) took $((SECONDS - start)) s"
  # The boot and timer tests on the installed package (three boots over one disk: the boot
  # reconcile and janitor, start order, the timers, the DB Down Boot).
  start=$SECONDS
  log "PPPGATE_LAB_LONG=1: cargo test --release --test lab_boot -- --ignored"
  cargo test --release --no-fail-fast --test lab_boot -- --ignored || rc=$?
  log "lab_boot took $((SECONDS - start)) s"
fi
exit "$rc"

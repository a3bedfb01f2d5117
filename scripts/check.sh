#!/usr/bin/env bash
# The fast inner loop (a few minutes): formatting, lints, unit tests and host tests (network
# namespaces, private PostgreSQL) — everything but the lab VM. Root, like the host tests need.
#   scripts/check.sh            fmt + clippy + unit + host tests
#   scripts/check.sh --lint     fmt + clippy only
# The full suite, lab included, is scripts/test-all.sh (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[check %(%H:%M:%S)T] %s\n' -1 "$*"; }
t0=$SECONDS

log "cargo fmt --all --check"
cargo fmt --all --check || { echo "check: unformatted files (run: cargo fmt --all)" >&2; exit 1; }
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
[ "${1:-}" = --lint ] && { log "lints ok in $((SECONDS - t0)) s"; exit 0; }

bash scripts/install-deps.sh > /dev/null
log "cargo test --release --workspace --exclude pppgate-lab (unit + host tests, no VM)"
cargo test --release --workspace --exclude pppgate-lab --no-fail-fast
log "ok in $((SECONDS - t0)) s"

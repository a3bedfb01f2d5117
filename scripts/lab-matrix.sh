#!/usr/bin/env bash
# The full lab matrix (tests/lab/README.md, "The matrix"): every end-to-end scenario family on both
# roots — Debian 12 (pppd 2.4.9) and Debian 13 (pppd 2.5.2) — plus the 4 GiB accounting session,
# each as its Rust lab test, with the duration of every cell and of the whole run printed.
# CI runs the lean part (scripts/test-all.sh); this is the documented longer run:
#
#   scripts/lab-matrix.sh                       # everything below, both roots
#   PPPGATE_LAB_MATRIX_ROOTS=trixie scripts/lab-matrix.sh
#   PPPGATE_LAB_MATRIX_TESTS="lab_radius" scripts/lab-matrix.sh
#   PPPGATE_LAB_LONG=1 scripts/test-all.sh      # CI's suite, then this
#   PPPGATE_LAB_MATRIX_CI=1 PPPGATE_LAB_MATRIX_ROOTS=trixie \
#     PPPGATE_LAB_MATRIX_TESTS="lab_foundation lab_connect lab_accounting" scripts/lab-matrix.sh
#                                               # the Debian 13 CI cell (scripts/test-all.sh)
#
# PPPGATE_LAB_MATRIX_CI=1 runs lab_connect with CI's case set ($CI_CONNECT_CASES below: the
# iperf rate case and the 50-cycle loop are the long run's) and skips the tests of the other
# cases; every other test runs whole.
#
# Needs what scripts/test-all.sh built: the release artifacts and scripts/build-pppd-variants.sh.
# Exits non-zero when any cell failed (every cell runs regardless).
set -uo pipefail
cd "$(dirname "$0")/.."

roots=${PPPGATE_LAB_MATRIX_ROOTS:-bookworm trixie}
tests=${PPPGATE_LAB_MATRIX_TESTS:-lab_foundation lab_connect lab_accounting lab_radius lab_accounting_4g}

log() { printf '[lab-matrix %(%H:%M:%S)T] %s\n' -1 "$*"; }

# The connect cases of the CI cell: zero unpoliced packets from the first moment (ipup), the lock
# window (lockrel, lockexhaust, fallback), fail closed (applyfail, sqldown, noauth).
CI_CONNECT_CASES="ipup lockrel lockexhaust fallback applyfail sqldown noauth"
CI_CONNECT_SKIP=(--skip a_panel_change_applies --skip fifty_cycles_of_two_sessions)
ci=${PPPGATE_LAB_MATRIX_CI:-0}

t_all=$SECONDS
results=()
failed=0
for root in $roots; do
  for t in $tests; do
    # The 4 GiB session is #[ignore]d in the ordinary suite (it takes long under TCG).
    extra=()
    cases=
    [ "$t" = lab_accounting_4g ] && extra=(--ignored)
    if [ "$ci" = 1 ] && [ "$t" = lab_connect ]; then
      cases=$CI_CONNECT_CASES
      extra=("${CI_CONNECT_SKIP[@]}")
    fi
    log "$t on $root${cases:+ (cases: $cases)}"
    t0=$SECONDS
    rc=0
    PPPGATE_LAB_ROOT=$root PPPGATE_LAB_CASES=$cases cargo test --release --no-fail-fast --test "$t" -- "${extra[@]}" || rc=$?
    secs=$((SECONDS - t0))
    [ "$rc" = 0 ] && verdict=ok || { verdict="FAILED ($rc)"; failed=1; }
    results+=("$(printf '%-20s %-9s %6d s  %s%s' "$t" "$root" "$secs" "$verdict" "${cases:+  (cases: $cases)}")")
    log "$t on $root: $verdict in $secs s"
  done
done

echo
echo "lab matrix (test, root, duration, result):"
printf '  %s\n' "${results[@]}"
echo "  total $((SECONDS - t_all)) s"
exit "$failed"

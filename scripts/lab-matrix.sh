#!/usr/bin/env bash
# The lab matrix (tests/lab/README.md, "CI and the long run"): end-to-end scenario families on
# both roots — Debian 12 (pppd 2.4.9) and Debian 13 (pppd 2.5.2) — plus the 4 GiB accounting
# session, each as its Rust lab test, with the duration of every cell and of the whole run printed.
#
#   scripts/lab-matrix.sh                       # the long run: everything below, both roots
#   PPPGATE_LAB_MATRIX_ROOTS=trixie scripts/lab-matrix.sh
#   PPPGATE_LAB_MATRIX_TESTS="lab_radius" scripts/lab-matrix.sh
#   PPPGATE_LAB_LONG=1 scripts/test-all.sh      # CI's suite, then this
#   PPPGATE_LAB_MATRIX_CI=1 scripts/lab-matrix.sh
#                                               # the Debian 13 CI cell (scripts/test-all.sh runs it)
#
# PPPGATE_LAB_MATRIX_CI=1 is CI's part of the matrix: on trixie only (Debian 12 runs every
# tests/lab_*.rs whole in `cargo test --workspace`), the families in $CI_TESTS, each with the cases
# and tests ci_selection gives it: the cases whose outcome depends on Debian 13 (pppd 2.5.2, its
# kernel, PostgreSQL 17, FreeRADIUS 3.2), not those Debian 12's run already proves for pppgate's
# own code — CI has 90 minutes for the whole suite; everything else is the long run.
# PPPGATE_LAB_MATRIX_ROOTS/_TESTS still narrow it.
#
# Any single cell by hand: PPPGATE_LAB_ROOT=trixie cargo test --release --test lab_radius
#
# Needs what scripts/test-all.sh built: the release artifacts and scripts/build-pppd-variants.sh.
# Exits non-zero when any cell failed (every cell runs regardless).
set -uo pipefail
cd "$(dirname "$0")/.."

ci=${PPPGATE_LAB_MATRIX_CI:-0}

# The Debian 13 CI cell (R814): foundation, connect and accounting on trixie, three VM boots.
# RADIUS (radius.so 2.5.2) and the 4 GiB session are the long run (tests/lab/README.md, "CI and
# the long run").
CI_TESTS="lab_foundation lab_connect lab_accounting"

if [ "$ci" = 1 ]; then
  roots=${PPPGATE_LAB_MATRIX_ROOTS:-trixie}
  tests=${PPPGATE_LAB_MATRIX_TESTS:-$CI_TESTS}
else
  roots=${PPPGATE_LAB_MATRIX_ROOTS:-bookworm trixie}
  tests=${PPPGATE_LAB_MATRIX_TESTS:-lab_foundation lab_connect lab_accounting lab_radius lab_accounting_4g}
fi

log() { printf '[lab-matrix %(%H:%M:%S)T] %s\n' -1 "$*"; }

# ci_selection TEST: sets cases (PPPGATE_LAB_CASES) and extra (test harness arguments) for TEST
# in CI's cell; a test whose case is not run is skipped by name (or it fails: LabRun::expect_case).
ci_selection() {
  case $1 in
    lab_connect)
      # Zero unpoliced packets from the first moment (ipup), the lock window (lockrel,
      # lockexhaust, fallback), fail closed (applyfail, sqldown, noauth); the iperf rate case
      # and the 50-cycle loop are the long run's.
      cases="ipup lockrel lockexhaust fallback applyfail sqldown noauth"
      extra=(--skip a_panel_change_applies --skip fifty_cycles_of_two_sessions)
      ;;
    lab_foundation)
      # What depends on Debian 13 itself: diag on a healthy trixie box (pppd 2.5.2's version and
      # plugin directory, FreeRADIUS 3.2's files, R715), a refusal by the lookup ended through
      # pppd 2.5.2 (norow), PostgreSQL 17's constraint (unique) and the plugin's connect counters
      # (metrics, R714). Left to Debian 12's run and the long run: known (connect's ipup proves
      # the VALID mapping and its removal on trixie), concurrent and malformed (pppgate's own
      # files, no pppd difference), disabled (norow's path) and pgdown (sqldown's, stricter).
      cases="unique norow diag metrics"
      extra=(--skip known_user_gets_a_valid_mapping --skip concurrent_sessions_each_get_their_own_mapping
        --skip a_malformed_leftover_mapping --skip disabled_row_is_terminated
        --skip postgres_down_terminates_the_session)
      ;;
    lab_accounting)
      # pppd 2.5.2's 64-bit final figures exactly in SQL (session) and through a PostgreSQL
      # outage (outage). quota is the collector's and the planner's, no pppd difference: Debian
      # 12's run and the long run. The second boot (radius.so's row, accounting-radius) belongs
      # to the RADIUS family: long run.
      cases="session outage"
      extra=(--skip crossing_the_quota_restricts
        --skip radius_so_row_is_bound_by_session_identity_and_agrees_with_pppd_at_the_end)
      ;;
  esac
}

t_all=$SECONDS
results=()
failed=0
for root in $roots; do
  for t in $tests; do
    extra=()
    cases=
    # The 4 GiB session is #[ignore]d in the ordinary suite (it takes long under TCG).
    [ "$t" = lab_accounting_4g ] && extra=(--ignored)
    [ "$ci" = 1 ] && ci_selection "$t"
    log "$t on $root${cases:+ (cases: $cases)}${extra[*]:+ (${extra[*]})}"
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
[ "$ci" = 1 ] && what="lab matrix, CI cell" || what="lab matrix"
echo "$what (test, root, duration, result):"
printf '  %s\n' "${results[@]}"
echo "  total $((SECONDS - t_all)) s"
exit "$failed"

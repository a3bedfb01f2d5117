# Kernel WireGuard (issue 13): the host test radius-helper/tests/wg_host.rs, run inside the VM
# with PPPGATE_WG_KERNEL=1 — pppgate's generic netlink backend drives a kernel WireGuard server
# interface, the routers are kernel interfaces configured from the generated wg-quick configs,
# and the ping matrix of tenant isolation is counted at the far side. The test binary comes from
# the host's build (LAB_WG_HOST_TEST), PostgreSQL is the testkit's private server.
# shellcheck source=tests/lab/guest/lib.sh
. "$LAB_LIB"
lab_init
[ -x "${LAB_WG_HOST_TEST:-}" ] || die "LAB_WG_HOST_TEST is not an executable test binary: ${LAB_WG_HOST_TEST:-<unset>}"
modprobe wireguard || die "modprobe wireguard failed"
grep -qw '^wireguard' /proc/modules || die "the wireguard module is not loaded"
fact wg.kernel "$(uname -r)"
fact wg.module loaded
now
start=$NOW
set +e
PPPGATE_WG_KERNEL=1 RUST_BACKTRACE=1 "$LAB_WG_HOST_TEST" --test-threads=1 --nocapture > "$LAB_OUT/cases/wg_host.log" 2>&1
rc=$?
set -e
now
fact wg.test_ms $((NOW - start))
fact wg.test_rc "$rc"
# With --nocapture a test's output interleaves its "test NAME ... ok" line, so the names come
# from --list and the verdict from libtest's summary line.
listed=$("$LAB_WG_HOST_TEST" --list 2>/dev/null | grep -c ': test$' || true)
fact wg.tests_listed "$listed"
summary=$(grep -E '^test result: ' "$LAB_OUT/cases/wg_host.log" | tail -n 1)
fact wg.tests_passed "$(sed -n 's/^test result: [a-zA-Z]*\. \([0-9]*\) passed.*/\1/p' <<< "$summary")"
fact wg.tests_failed "$(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<< "$summary")"
grep -E '^  [a-z].*: [0-9]+ of 3$' "$LAB_OUT/cases/wg_host.log" | sed 's/^  //' > "$LAB_OUT/isolation.txt" || true
tail -n 40 "$LAB_OUT/cases/wg_host.log"

# shellcheck shell=bash
# Accounting helpers for lab scenarios (accounting.sh, accounting-radius.sh): the LNS interface's
# counters and collector runs in srv, compared without a packet landing in between.
#
# Source after lib.sh:  . "$LAB_REPO/tests/lab/guest/accounting.sh"

# counters_now IFNAME: "rx tx" of the LNS interface (sysfs).
counters_now() {
  echo "$(ip netns exec srv cat "/sys/class/net/$1/statistics/rx_bytes") $(ip netns exec srv cat "/sys/class/net/$1/statistics/tx_bytes")"
}

# settle IFNAME: waits (up to 10 s) until the counters stand still for a second. The client's
# kernel sends the odd packet of its own (an IGMP report after the link came up) that would
# otherwise land between our reading and the collector's.
settle() {
  local a b i
  a=$(counters_now "$1")
  for i in 1 2 3 4 5 6 7 8 9 10; do
    nap 1
    b=$(counters_now "$1")
    [ "$a" = "$b" ] && return 0
    a=$b
  done
  log "WARNING: counters of $1 still moving"
}

# acct_quiet_links: no IPv6 router solicitations from either end's ppp links (run after
# net_setup, before any session). A kernel keeps soliciting with backoff for as long as a link is
# up (1, 5, 13, 29, 61, 125 s …); one 48-byte RS landing between the scenario's reading of the
# interface and pppd's own final reading (pppd 2.5 reads afresh at ip-down) made the two differ
# by exactly that packet on the Debian 13 root.
acct_quiet_links() {
  local ns k
  for ns in cli srv; do
    for k in all default; do
      ip netns exec "$ns" sysctl -qw "net.ipv6.conf.$k.router_solicitations=0" ||
        die "cannot switch off router solicitations in $ns"
    done
  done
}

# run_collector STEP: one collector run in srv (JSON in $LAB_OUT/collect-STEP.json); its exit
# status in COLLECT_RC.
run_collector() {
  COLLECT_RC=0
  ip netns exec srv "$LAB_PPPGATE" -c "$PPPGATE_CONF" --json collect > "$LAB_OUT/collect-$1.json" 2> "$LAB_OUT/collect-$1.err" || COLLECT_RC=$?
}

# measure_quiet STEP IFNAME: the interface's counters, a collector run, the counters again;
# repeated (up to 4 times) until nothing moved around the run (pppd's LCP echoes, the client's
# odd packet), so SQL can be compared with a reading the collector saw too. Sets
# MEASURE_BEFORE / MEASURE_AFTER ("rx tx"), MEASURE_ATTEMPTS and COLLECT_RC.
measure_quiet() {
  local step=$1 ifname=$2 i
  for i in 1 2 3 4; do
    settle "$ifname"
    MEASURE_BEFORE=$(counters_now "$ifname")
    run_collector "$step"
    MEASURE_AFTER=$(counters_now "$ifname")
    [ "$MEASURE_BEFORE" = "$MEASURE_AFTER" ] && break
    log "counters of $ifname moved around the collector run ($MEASURE_BEFORE -> $MEASURE_AFTER); again"
  done
  MEASURE_ATTEMPTS=$i
}

#!/usr/bin/env bash
# What one more session's shaping costs the kernel on a box that already carries N shaped
# sessions, for pppgate's HTB layout and for a TBF layout, with the tc tool only (no pppgate).
# Figures only (docs/ARCHITECTURE.md, "Measured"): every tc block a qdisc or class binds (HTB
# qdisc, HTB class, ingress) walks a list of every bound block on the box
# (flow_indr_dev_setup_offload), so a layout's cost per session grows with N times its blocks:
# HTB down + HTB on the IFB + ingress = 5 blocks per session, TBF down + TBF on the IFB + ingress
# = 1.
#
# Usage (root): scripts/bench-tc-layouts.sh [N...]   (default: 100 1000 5000)
# Each size and layout runs in a network namespace of its own: N TUN devices pppI and IFBs
# pgi-pppI with the layout (one `tc -batch`), then 200 more sessions timed.
set -euo pipefail

one() {
    local layout=$1 n=$2 extra=200 dir
    dir=$(mktemp -d)
    # shellcheck disable=SC2016
    unshare -n bash -c '
        set -euo pipefail
        layout=$1 n=$2 extra=$3 dir=$4
        sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1
        ip link set lo up
        for ((i = 0; i < n + extra; i++)); do
            printf "tuntap add dev ppp%d mode tun\nlink set ppp%d up\nlink add pgi-ppp%d type ifb\nlink set pgi-ppp%d up\n" $i $i $i $i
        done > "$dir/links"
        ip -batch "$dir/links"
        shaping() {
            for ((i = $1; i < $2; i++)); do
                if [ "$layout" = htb ]; then
                    echo "qdisc add dev ppp$i root handle 1: htb default 10"
                    echo "class add dev ppp$i parent 1: classid 1:10 htb rate 8mbit ceil 8mbit burst 11600 cburst 11600 quantum 100000"
                    echo "qdisc add dev ppp$i parent 1:10 handle 10: pfifo limit 66"
                    echo "qdisc add dev pgi-ppp$i root handle 1: htb default 10"
                    echo "class add dev pgi-ppp$i parent 1: classid 1:10 htb rate 2mbit ceil 2mbit burst 4100 cburst 4100 quantum 25000"
                    echo "qdisc add dev pgi-ppp$i parent 1:10 handle 10: pfifo limit 16"
                else
                    echo "qdisc add dev ppp$i root handle 1: tbf rate 8mbit burst 11600 limit 99000"
                    echo "qdisc add dev pgi-ppp$i root handle 1: tbf rate 2mbit burst 4100 limit 24000"
                fi
                echo "qdisc add dev ppp$i handle ffff: ingress"
                echo "filter add dev ppp$i parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect dev pgi-ppp$i"
            done
        }
        shaping 0 "$n" > "$dir/base"
        shaping "$n" $((n + extra)) > "$dir/more"
        t0=$(date +%s%N); tc -batch "$dir/base"; t1=$(date +%s%N)
        tc -batch "$dir/more"; t2=$(date +%s%N)
        printf "%-4s %6d sessions: all installed in %6.1f s; one more: %7.3f ms (load %s)\n" \
            "$layout" "$n" "$(echo "($t1 - $t0) / 1000000000" | bc -l)" \
            "$(echo "($t2 - $t1) / 1000000 / $extra" | bc -l)" "$(cut -d" " -f1-3 /proc/loadavg)"
    ' _ "$layout" "$n" "$extra" "$dir"
    rm -rf "$dir"
}

sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100 1000 5000)
for n in "${sizes[@]}"; do
    for layout in htb tbf; do
        one "$layout" "$n"
    done
done

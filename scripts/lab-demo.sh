#!/usr/bin/env bash
# Demo for the README: boots the lab VM (Debian's kernel under qemu TCG, this machine's root
# read-only over 9p), connects a user over real L2TP through pppgate.so while another process
# holds the apply lock (her address waits in the connect gate, nothing applied), releases it
# (the policy lands, then the gate goes), shows the applied policy read back from the kernel
# (nft state, TBF rates both ways, route, policy routing, mapping), measures the speed with a TCP
# transfer, doubles it from the "panel" and measures again, hangs up (everything gone), and shows
# a refused user. Run as root on Debian 12: installs what it needs (scripts/install-deps.sh),
# builds the release artifacts, then boots the lab. A few minutes the first time, ~2 min after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace
exec target/release/pppgate-lab run demo --follow --timeout 600

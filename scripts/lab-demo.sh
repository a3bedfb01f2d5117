#!/usr/bin/env bash
# Demo for the README: boots the lab VM (Debian's kernel under qemu TCG, this machine's root
# read-only over 9p), connects a user over real L2TP through pppgate.so, shows the session
# mapping and the plugin's log lines, disconnects, shows the mapping gone, and shows a refused
# user. Needs root and the packages scripts/test-all.sh installs. Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
exec target/release/pppgate-lab run demo --follow --timeout 600

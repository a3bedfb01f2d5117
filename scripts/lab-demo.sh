#!/usr/bin/env bash
# Demo for the README: boots the lab VM (Debian's kernel under qemu TCG, this machine's root
# read-only over 9p), connects a user over real L2TP through pppgate.so, shows the session
# mapping and the plugin's log lines, disconnects, shows the mapping gone, and shows a refused
# user. Run as root on Debian 12: installs what it needs (scripts/install-deps.sh), builds the
# release artifacts, then boots the lab. Takes a few minutes the first time, about a minute after.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace
exec target/release/pppgate-lab run demo --follow --timeout 600

#!/usr/bin/env bash
# Installs routeros-lsp (PyPI: a RouterOS 7 command database and script checker) into a venv under
# target/, pinned, for the tests that check generated RouterOS scripts with
# `routeros-lsp check --strict`. Idempotent; Debian's python3 + python3-venv (install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/routeros-lsp
VERSION=0.2.3
if [ -x "$VENV/bin/routeros-lsp" ] && "$VENV/bin/routeros-lsp" --version 2> /dev/null | grep -qF "$VERSION"; then
  exit 0
fi
rm -rf "$VENV"
mkdir -p target
/usr/bin/python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input "routeros-lsp==$VERSION"
"$VENV/bin/routeros-lsp" --version

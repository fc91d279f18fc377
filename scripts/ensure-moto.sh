#!/usr/bin/env bash
# Ensure a moto server is installed in a private virtualenv and print the path of its
# `moto_server` executable on stdout (and nothing else on stdout).
#
# Idempotent and fast when already installed. Used by the stackpulse-cfn integration
# tests (crates/stackpulse-cfn/tests) and by anyone trying stackpulse locally:
#
#     MOTO=$(scripts/ensure-moto.sh) && "$MOTO" -p 5000
#
# Environment:
#   STACKPULSE_MOTO_VENV  where the venv lives
#                         (default ${XDG_CACHE_HOME:-$HOME/.cache}/stackpulse/venv)
#   PYTHON                the interpreter used to create it (default python3)
set -euo pipefail

venv="${STACKPULSE_MOTO_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/stackpulse/venv}"
python="${PYTHON:-python3}"
moto="$venv/bin/moto_server"

# Fast path: already installed and importable.
if [ -x "$moto" ] && "$venv/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
    echo "$moto"
    exit 0
fi

mkdir -p "$(dirname "$venv")"
# Serialize concurrent installs (parallel test binaries, CI and a developer).
lock="$venv.lock"
exec 9>"$lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

if [ ! -x "$moto" ] || ! "$venv/bin/python" -c 'import moto.server' >/dev/null 2>&1; then
    echo "ensure-moto: installing moto[server] into $venv" >&2
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv" >&2
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 || true
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'moto[server]' >&2
fi

if [ ! -x "$moto" ]; then
    echo "ensure-moto: $moto was not installed" >&2
    exit 1
fi
echo "$moto"

#!/usr/bin/env bash
# Ensure redis-server is installed (Debian package `redis-server`) and print its path.
# Used by the test harness (crates/stackpulse-testkit) before starting its own Redis
# on a free port; never touches a Redis that is already running.
set -euo pipefail
if ! command -v redis-server >/dev/null 2>&1; then
    echo "ensure-redis: installing redis-server" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >&2 || true
    $SUDO apt-get install -y -qq redis-server >&2
fi
command -v redis-server

#!/usr/bin/env bash
# Ensure promtool is installed (Debian package `prometheus`) and print its path.
# Used by scripts/test-specs.sh to unit-test deploy/prometheus/alerts.yaml; never
# starts a Prometheus server (the package's service is not enabled here).
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
    echo "ensure-promtool: installing prometheus (for promtool)" >&2
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2; then
        $SUDO apt-get update -qq >&2 || true
        $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
    fi
fi
command -v promtool

#!/usr/bin/env bash
# Measures server RSS per idle, subscribed WebSocket connection (default 5000).
# Usage: bench/idle-rss.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-5000}
cargo build --release -p stackpulse --bin stackpulse --example idle_rss
ulimit -n "$(ulimit -Hn)" || true
out=$(mktemp)
./target/release/stackpulse serve --bind 127.0.0.1:0 --connect-rate-per-ip 1000000 >"$out" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 100); do grep -q listening "$out" && break; sleep 0.1; done
addr=$(sed -n 's|^stackpulse listening on http://||p' "$out")
./target/release/examples/idle_rss "$pid" "ws://$addr/ws" "$n"

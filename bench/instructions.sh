#!/usr/bin/env bash
# User-space instructions per delivery, counted by valgrind's callgrind: unlike CPU
# seconds, the count is the same run after run whatever else the machine does, so
# small changes to the fan-out show up. Kernel work (the write itself) is not counted.
#
#   bench/instructions.sh                    # stackpulse, stackpulse without direct writes, nchan
#   TARGETS="stackpulse queued" bench/instructions.sh
#
# For each target it runs the server under callgrind twice with the same
# [SUBS=200] subscribers on one topic: once with [FEW=100] events, once with
# [MANY=400], both at [RATE=50]/s, and prints (instructions of the second run -
# instructions of the first) / ((MANY - FEW) × SUBS): the instructions one more
# delivery costs, start-up, connects and shutdown cancelled out. Targets:
#   stackpulse  the release binary as it ships (1 tokio worker thread)
#   queued      the same with the fan-out's direct writes off (STACKPULSE_BENCH_NO_DIRECT=1)
#   nchan       nginx + nchan, one process (master_process off), as compare.sh configures it
# Results: [OUT=target/bench/instructions-<time>]/table.md and the callgrind files.
set -euo pipefail
cd "$(dirname "$0")/.."

SUBS=${SUBS:-200}
FEW=${FEW:-100}
MANY=${MANY:-400}
RATE=${RATE:-50}
TARGETS=${TARGETS:-stackpulse queued nchan}
NCHAN_PORT=${NCHAN_PORT:-18091}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
OUT=${OUT:-target/bench/instructions-$(date -u +%Y%m%dT%H%M%SZ)}
KEY=bench-publisher-key
BIN=target/release/stackpulse

die() { echo "instructions.sh: $*" >&2; exit 2; }
command -v valgrind >/dev/null 2>&1 || die "valgrind not found: apt-get install valgrind"
if [[ " $TARGETS " == *" nchan "* ]]; then
  command -v nginx >/dev/null 2>&1 && [[ -f $NCHAN_MODULE ]] ||
    die "nginx with nchan not found: run bench/compare.sh once (it installs them) or apt-get install nginx libnginx-mod-nchan"
fi
echo "== cargo build --release" >&2
cargo build --release -p stackpulse --bin stackpulse >&2
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
tmp=$(mktemp -d)
server_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# start TARGET CALLGRIND_FILE: starts the server under callgrind; sets server_pid,
# ws_url, pub_url, key_flag.
start() {
  local target=$1 file=$2
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$file" --trace-children=no)
  case $target in
    stackpulse | queued)
      local env=(TOKIO_WORKER_THREADS=1)
      [[ $target == queued ]] && env+=(STACKPULSE_BENCH_NO_DIRECT=1)
      env "${env[@]}" "${vg[@]}" "$BIN" serve --bind 127.0.0.1:0 --publisher-key "$KEY" \
        --connect-rate-per-ip 1000000 --max-connections 100000 \
        >"$tmp/out" 2>"$tmp/err" &
      server_pid=$!
      local addr=""
      for _ in $(seq 600); do
        addr=$(sed -n 's|^stackpulse listening on http://||p' "$tmp/out" 2>/dev/null || true)
        [[ -n $addr ]] && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/err" >&2; die "stackpulse exited"; }
        sleep 0.1
      done
      [[ -n $addr ]] || die "stackpulse did not start under valgrind"
      ws_url="ws://$addr/ws"
      pub_url="http://$addr/v1/events"
      key_flag=(--publisher-key "$KEY")
      ;;
    nchan)
      local dir=$tmp/nginx
      rm -rf "$dir" && mkdir -p "$dir/tmp"
      local user_line=""
      [[ $(id -u) -eq 0 ]] && user_line="user root;"
      cat >"$dir/nginx.conf" <<CONF
load_module $NCHAN_MODULE;
$user_line
worker_processes 1;
daemon off;
master_process off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$NCHAN_PORT backlog=1024;
    location ~ ^/pub/([^/]+)\$ { nchan_publisher http; nchan_channel_id \$1; }
    location ~ ^/sub/([^/]+)\$ { nchan_subscriber websocket; nchan_channel_id \$1; }
  }
}
CONF
      "${vg[@]}" nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
      server_pid=$!
      for _ in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$NCHAN_PORT/" && break
        kill -0 "$server_pid" 2>/dev/null || { cat "$dir/stderr" >&2; die "nginx exited"; }
        sleep 0.1
      done
      ws_url="ws://127.0.0.1:$NCHAN_PORT/sub/{topic}"
      pub_url="http://127.0.0.1:$NCHAN_PORT/pub/{topic}"
      key_flag=()
      ;;
    *) die "unknown target $target (stackpulse queued nchan)" ;;
  esac
}

# run TARGET EVENTS: one server under callgrind, one load; prints its instructions.
run() {
  local target=$1 events=$2 file=$OUT/callgrind.$1.$2
  start "$target" "$file"
  local protocol=$target
  [[ $target == queued ]] && protocol=stackpulse
  "$BIN" bench run --json --label "$target-$events" --target "$protocol" \
    --ws-url "$ws_url" --publish-url "$pub_url" "${key_flag[@]}" --server-pid "$server_pid" \
    --connections "$SUBS" --topics 1 --events "$events" --rate "$RATE" --connect-rate 200 \
    --settle 1 --drain-timeout 60 >"$OUT/$target-$events.json"
  jq -e '.deliveries == .expected_deliveries' "$OUT/$target-$events.json" >/dev/null ||
    die "$target with $events events: not every delivery arrived (see $OUT/$target-$events.json)"
  kill -INT "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  # "summary: N" (or "totals: N") is the whole run's instruction count.
  awk '/^(summary|totals):/ { print $2; exit }' "$file"
}

{
  echo "| target | instructions, $FEW events | instructions, $MANY events | instructions per delivery |"
  echo "|---|---:|---:|---:|"
  for t in $TARGETS; do
    echo "== $t: $FEW then $MANY events to $SUBS subscribers under callgrind" >&2
    few=$(run "$t" "$FEW")
    many=$(run "$t" "$MANY")
    per=$(awk -v a="$many" -v b="$few" -v n="$(((MANY - FEW) * SUBS))" 'BEGIN { printf "%.0f", (a - b) / n }')
    echo "| $t | $few | $many | $per |"
  done
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2

#!/usr/bin/env bash
# Runs the benchmark scenarios against stackpulse and nchan on loopback, with the
# same load generator (`stackpulse bench run`), and prints one table of both
# servers' results and their ratio.
#
#   bench/compare.sh                 # every scenario, both servers, full counts
#   SCENARIOS="a c" bench/compare.sh # some scenarios
#   SMOKE=1 bench/compare.sh         # tiny counts (a minute), to check the setup
#
# Scenarios (counts overridable by the environment variables in brackets):
#   a  idle connections [IDLE_CONNS=15000]: server RSS per connection
#   b  1 topic x [FANOUT_SUBS=10000] subscribers, [FANOUT_EVENTS=30] events at
#      [FANOUT_RATE=1]/s: fan-out latency
#   c  [THRU_SUBS=1000] subscribers on [THRU_TOPICS=1] topic(s), [THRU_EVENTS=2000]
#      events at [THRU_RATE=200]/s: deliveries per server CPU-second
#   d  connect storm: [STORM_CONNS=5000] connects at [STORM_RATE=1000]/s, each with a
#      subscribe: connect latency
#   e  as c, with auth on (an RS256 token verified against a JWKS; stackpulse only:
#      nchan has no JWT verification of its own)
# TARGETS may also name `axum`: stackpulse with `/ws` written through axum's
# WebSocket (STACKPULSE_BENCH_AXUM_WRITER=1, the writer before prepared frames),
# from the same binary, for before/after runs; its figures get a table of their own.
# TARGETS may also name `queued`: stackpulse with the fan-out's direct writes off
# (STACKPULSE_BENCH_NO_DIRECT=1: every event goes through the connection's writer
# task, as before issue 14's direct writes), same binary, a table of its own too.
# STACKPULSE_BENCH_DIRECT_BUDGET=N in the environment sets how many sockets one
# event's fan-out writes to directly (default 64; see hub/outbox.rs) for every
# stackpulse target of the run.
# TARGETS may also name `delayed`: stackpulse with `--write-delay [WRITE_DELAY=0.02]`
# (a connection's writes at least that many seconds apart, what queues meanwhile
# written together), same binary, a table of its own.
# TARGETS may also name `redis`: two stackpulse nodes sharing a redis-server (started
# here on [REDIS_PORT=18379]); the load generator publishes to node A and subscribes
# on node B, and the server CPU counted is both nodes' and redis-server's. Its
# figures are compared with single-node stackpulse in a table of their own.
# Both servers get the same cores: stackpulse's tokio runtime runs [WORKERS=nproc]
# worker threads (TOKIO_WORKER_THREADS) and nginx runs as many worker processes.
# Every scenario starts a fresh server. [REPEAT=1] runs of each scenario alternate
# between the servers; with more than one, the table shows each server's run with the
# median headline figure and lists every run's. Results (one JSON report per run) go to
# [OUT=target/bench/<time>]; the table is also written to $OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n "${SMOKE:-}" ]]; then
  : "${IDLE_CONNS:=200}" "${FANOUT_SUBS:=200}" "${FANOUT_EVENTS:=3}" "${FANOUT_RATE:=2}"
  : "${THRU_SUBS:=50}" "${THRU_EVENTS:=100}" "${STORM_CONNS:=200}"
fi
IDLE_CONNS=${IDLE_CONNS:-15000}
IDLE_CONNECT_RATE=${IDLE_CONNECT_RATE:-2000}
FANOUT_SUBS=${FANOUT_SUBS:-10000}
FANOUT_EVENTS=${FANOUT_EVENTS:-30}
FANOUT_RATE=${FANOUT_RATE:-1}
THRU_SUBS=${THRU_SUBS:-1000}
THRU_TOPICS=${THRU_TOPICS:-1}
THRU_EVENTS=${THRU_EVENTS:-2000}
THRU_RATE=${THRU_RATE:-200}
STORM_CONNS=${STORM_CONNS:-5000}
STORM_RATE=${STORM_RATE:-1000}
WORKERS=${WORKERS:-$(nproc)}
SCENARIOS=${SCENARIOS:-a b c d e}
REPEAT=${REPEAT:-1}
TARGETS=${TARGETS:-stackpulse nchan}
NCHAN_PORT=${NCHAN_PORT:-18090}
REDIS_PORT=${REDIS_PORT:-18379}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
OUT=${OUT:-target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
KEY=bench-publisher-key
BIN=target/release/stackpulse

die() { echo "compare.sh: $*" >&2; exit 2; }

# --- prerequisites -------------------------------------------------------------
if [[ " $TARGETS " == *" nchan "* ]]; then
  if ! command -v nginx >/dev/null 2>&1 || [[ ! -f $NCHAN_MODULE ]]; then
    echo "== installing nginx and libnginx-mod-nchan (apt-get)" >&2
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx libnginx-mod-nchan >&2 ||
        { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y \
          --no-install-recommends nginx libnginx-mod-nchan >&2; } || true
    fi
    command -v nginx >/dev/null 2>&1 ||
      die "nginx not found: apt-get install nginx (or run with TARGETS=stackpulse)"
    [[ -f $NCHAN_MODULE ]] ||
      die "nginx nchan module not found at $NCHAN_MODULE: apt-get install libnginx-mod-nchan"
  fi
fi
if [[ " $TARGETS " == *" redis "* ]]; then
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found: apt-get install redis-server"
fi
command -v jq >/dev/null 2>&1 || die "jq not found: apt-get install jq"

echo "== cargo build --release" >&2
cargo build --release -p stackpulse --bin stackpulse >&2

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)
mkdir -p "$OUT"
tmp=$(mktemp -d)
server_pid=""
extra_pids=()
issuer_pid=""
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  for p in "${extra_pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  [[ -n $issuer_pid ]] && kill "$issuer_pid" 2>/dev/null && wait "$issuer_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

# --- servers ---------------------------------------------------------------------
# Sets: server_pid, pids (flags for --server-pid), ws_url, pub_url, key_flag.
start_stackpulse() {
  TOKIO_WORKER_THREADS=$WORKERS "$BIN" serve --bind 127.0.0.1:0 --publisher-key "$KEY" \
    --connect-rate-per-ip 1000000 --max-connections 100000 "$@" \
    >"$tmp/stackpulse.out" 2>"$tmp/stackpulse.err" &
  server_pid=$!
  local addr=""
  for _ in $(seq 200); do
    addr=$(sed -n 's|^stackpulse listening on http://||p' "$tmp/stackpulse.out" 2>/dev/null || true)
    [[ -n $addr ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/stackpulse.err" >&2; die "stackpulse exited"; }
    sleep 0.05
  done
  [[ -n $addr ]] || die "stackpulse did not start"
  pids=(--server-pid "$server_pid")
  ws_url="ws://$addr/ws"
  pub_url="http://$addr/v1/events"
  key_flag=(--publisher-key "$KEY")
}

# Two nodes on one redis-server: subscribers on B (ws_url), publisher on A (pub_url).
start_redis_pair() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$tmp/redis.out" 2>&1 &
  local redis_pid=$!
  for _ in $(seq 200); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
    kill -0 "$redis_pid" 2>/dev/null || { cat "$tmp/redis.out" >&2; die "redis-server exited (port $REDIS_PORT busy? set REDIS_PORT)"; }
    sleep 0.05
  done
  start_stackpulse --redis-url "redis://127.0.0.1:$REDIS_PORT" "$@"
  local node_a=$server_pid a_pub=$pub_url
  mv "$tmp/stackpulse.out" "$tmp/stackpulse-a.out"
  start_stackpulse --redis-url "redis://127.0.0.1:$REDIS_PORT" "$@"
  extra_pids=("$node_a" "$redis_pid")
  pids=(--server-pid "$server_pid" --server-pid "$node_a" --server-pid "$redis_pid")
  pub_url=$a_pub
}

start_nchan() {
  local dir=$tmp/nginx
  rm -rf "$dir" && mkdir -p "$dir/tmp"
  local user_line=""
  [[ $(id -u) -eq 0 ]] && user_line="user root;"
  cat >"$dir/nginx.conf" <<CONF
load_module $NCHAN_MODULE;
$user_line
worker_processes $WORKERS;
worker_rlimit_nofile $FDS;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $FDS; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$NCHAN_PORT backlog=1024;
    location ~ ^/pub/([^/]+)$ {
      nchan_publisher http;
      nchan_channel_id \$1;
    }
    location ~ ^/sub/([^/]+)$ {
      nchan_subscriber websocket;
      nchan_channel_id \$1;
    }
  }
}
CONF
  nginx -p "$dir" -c "$dir/nginx.conf" 2>"$dir/stderr" &
  server_pid=$!
  local workers=""
  for _ in $(seq 200); do
    workers=$(pgrep -P "$server_pid" | tr '\n' ' ' || true)
    [[ $(wc -w <<<"$workers") -ge $WORKERS ]] && curl -s -o /dev/null "http://127.0.0.1:$NCHAN_PORT/" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$dir/stderr" "$dir/error.log" >&2 2>/dev/null; die "nginx exited (port $NCHAN_PORT busy? set NCHAN_PORT)"; }
    sleep 0.05
  done
  pids=(--server-pid "$server_pid")
  for w in $workers; do pids+=(--server-pid "$w"); done
  ws_url="ws://127.0.0.1:$NCHAN_PORT/sub/{topic}"
  pub_url="http://127.0.0.1:$NCHAN_PORT/pub/{topic}"
  key_flag=()
}

stop_server() {
  if [[ -n $server_pid ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
  for p in "${extra_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  extra_pids=()
  sleep 1 # let the kernel reap the closed sockets
}

start_issuer() {
  "$BIN" bench issuer --issuer https://issuer.bench.invalid --client-id bench \
    --token-file "$tmp/token" >"$tmp/issuer.out" &
  issuer_pid=$!
  for _ in $(seq 200); do
    jwks_url=$(sed -n 's|^jwks at ||p' "$tmp/issuer.out" 2>/dev/null || true)
    [[ -n $jwks_url ]] && return
    sleep 0.05
  done
  die "bench issuer did not start"
}

# bench_run TARGET SCENARIO ARGS...: one run on a fresh server; the report lands in
# $OUT/TARGET-SCENARIO.json.
bench_run() {
  local target=$1 scenario=$2
  shift 2
  local serve_args=()
  local run_args=()
  if [[ $scenario == e ]]; then
    [[ -z $issuer_pid ]] && start_issuer
    serve_args=(--jwt-issuer https://issuer.bench.invalid --jwks-url "$jwks_url"
      --cognito-client-id bench --max-connections-per-user 1000000
      --connect-rate-per-user 1000000)
    run_args=(--token-file "$tmp/token")
  fi
  case $target in
    stackpulse) start_stackpulse "${serve_args[@]}" ;;
    axum) STACKPULSE_BENCH_AXUM_WRITER=1 start_stackpulse "${serve_args[@]}" ;;
    queued) STACKPULSE_BENCH_NO_DIRECT=1 start_stackpulse "${serve_args[@]}" ;;
    delayed) start_stackpulse --write-delay "${WRITE_DELAY:-0.02}" "${serve_args[@]}" ;;
    redis) start_redis_pair "${serve_args[@]}" ;;
    nchan) start_nchan ;;
  esac
  echo "== ($scenario) $target" >&2
  local rc=0 protocol=$target
  [[ $target == axum || $target == queued || $target == delayed || $target == redis ]] &&
    protocol=stackpulse
  "$BIN" bench run --json --label "$scenario" --target "$protocol" --ws-url "$ws_url" \
    --publish-url "$pub_url" "${key_flag[@]}" "${pids[@]}" "${run_args[@]}" "$@" \
    >"$OUT/$target-$scenario$suffix.json" || rc=$?
  [[ $rc -eq 0 ]] || echo "   (incomplete run, exit $rc: see the counts above)" >&2
  stop_server
}

# headline S: the jq expression of scenario S's headline figure (picks the median run).
headline() {
  case $1 in
    a) echo '.rss_per_connection_bytes' ;;
    b) echo '.latency.p99_ms' ;;
    c | e) echo '.deliveries_per_cpu_s' ;;
    d) echo '.connect.p99_ms' ;;
  esac
}

for s in $SCENARIOS; do
  for r in $(seq "$REPEAT"); do
    suffix=""
    [[ $REPEAT -gt 1 ]] && suffix="-r$r"
    for t in $TARGETS; do
      [[ $s == e && $t == nchan ]] && continue
      case $s in
        a) bench_run "$t" a --connections "$IDLE_CONNS" --topics 100 --events 0 \
             --connect-rate "$IDLE_CONNECT_RATE" --settle 3 ;;
        b) bench_run "$t" b --connections "$FANOUT_SUBS" --topics 1 \
             --events "$FANOUT_EVENTS" --rate "$FANOUT_RATE" --connect-rate 2000 ;;
        c) bench_run "$t" c --connections "$THRU_SUBS" --topics "$THRU_TOPICS" \
             --events "$THRU_EVENTS" --rate "$THRU_RATE" ;;
        d) bench_run "$t" d --connections "$STORM_CONNS" --topics 100 --events 0 \
             --connect-rate "$STORM_RATE" --settle 0.5 ;;
        e) bench_run "$t" e --connections "$THRU_SUBS" --topics "$THRU_TOPICS" \
             --events "$THRU_EVENTS" --rate "$THRU_RATE" ;;
        *) die "unknown scenario $s (a b c d e)" ;;
      esac
    done
  done
  # With REPEAT > 1 the table shows, per server, the run with the median headline.
  if [[ $REPEAT -gt 1 ]]; then
    for t in $TARGETS; do
      [[ $s == e && $t == nchan ]] && continue
      expr=$(headline "$s")
      for f in "$OUT/$t-$s"-r*.json; do
        [[ -s $f ]] && echo "$(jq -r "$expr" "$f") $f"
      done | sort -g >"$OUT/$t-$s.runs"
      n=$(wc -l <"$OUT/$t-$s.runs")
      [[ $n -gt 0 ]] || continue
      cp "$(sed -n "$(((n + 1) / 2))p" "$OUT/$t-$s.runs" | cut -d' ' -f2)" "$OUT/$t-$s.json"
    done
  fi
done

# --- table -----------------------------------------------------------------------
# get TARGET SCENARIO JQ-EXPR: a number from a report, or "" when it is missing.
get() {
  local f=$OUT/$1-$2.json
  [[ -s $f ]] || { echo ""; return; }
  jq -r "$3 // empty" "$f"
}
complete() { # every run of TARGET SCENARIO (all repeats) was complete
  local f files=("$OUT/$1-$2".json)
  [[ $REPEAT -gt 1 ]] && files=("$OUT/$1-$2"-r*.json)
  for f in "${files[@]}"; do
    [[ -s $f ]] || { echo "no"; return; }
    [[ $(jq -r 'if .connected == .connections and .publish_errors == 0 and
      .published == .events and .deliveries == .expected_deliveries and
      .ended_early == 0 then "yes" else "no" end' "$f") == yes ]] || { echo "no"; return; }
  done
  echo "yes"
}
fmt() { [[ -z $1 ]] && echo "–" || printf "%.${2:-2}f" "$1"; }
ratio() { [[ -z $1 || -z $2 ]] && echo "–" || awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "–"; else printf "%.2f", a / b }'; }

row() { # row SCENARIO LABEL JQ DIGITS [NCHAN_SCENARIO]
  local sp np
  sp=$(get stackpulse "$1" "$3")
  np=$(get nchan "${5:-$1}" "$3")
  [[ $1 == e ]] && np=""
  echo "| $1 | $2 | $(fmt "$sp" "$4") | $(fmt "$np" "$4") | $(ratio "$sp" "$np") |"
}

{
  echo "| | metric | stackpulse | nchan | stackpulse ÷ nchan |"
  echo "|---|---|---:|---:|---:|"
  for s in $SCENARIOS; do
    case $s in
      a) row a "RSS per idle connection, KiB (lower is better)" '.rss_per_connection_bytes / 1024' 2
         row a "connections open" '.connected' 0 ;;
      b) row b "fan-out latency p50, ms" '.latency.p50_ms' 2
         row b "fan-out latency p99, ms" '.latency.p99_ms' 2
         row b "fan-out latency max, ms" '.latency.max_ms' 2 ;;
      c) row c "deliveries per server CPU-second (higher is better)" '.deliveries_per_cpu_s' 0
         row c "deliveries per second" '.deliveries_per_s' 0
         row c "server CPU seconds" '.server_cpu_load_s' 2
         row c "… of which in the kernel" '.server_sys_load_s' 2
         row c "delivery latency p99, ms" '.latency.p99_ms' 2 ;;
      d) row d "connect+subscribe p50, ms" '.connect.p50_ms' 2
         row d "connect+subscribe p99, ms" '.connect.p99_ms' 2 ;;
      e) row e "deliveries per server CPU-second, auth on" '.deliveries_per_cpu_s' 0
         row e "server CPU seconds" '.server_cpu_load_s' 2
         row e "… of which in the kernel" '.server_sys_load_s' 2
         row e "delivery latency p99, ms" '.latency.p99_ms' 2
         if [[ -s $OUT/stackpulse-c.json && -s $OUT/stackpulse-e.json ]]; then
           echo "| e | stackpulse with auth ÷ without (c) | $(ratio "$(get stackpulse e .deliveries_per_cpu_s)" "$(get stackpulse c .deliveries_per_cpu_s)") | | |"
         fi ;;
    esac
  done
  echo
  if [[ $REPEAT -gt 1 ]]; then
    echo "median of $REPEAT runs per server; every run's headline figure:"
    for s in $SCENARIOS; do for t in $TARGETS; do
      [[ -s $OUT/$t-$s.runs ]] || continue
      echo "- $s $t ($(headline "$s")): $(cut -d' ' -f1 "$OUT/$t-$s.runs" | xargs printf '%.6g ')"
    done; done
  fi
  for before in axum queued delayed redis; do
    [[ " $TARGETS " == *" $before "* ]] || continue
    # Before/after: stackpulse against the same binary with the older writer
    # (axum), without direct writes (queued), with a write delay (delayed) or as
    # two nodes through Redis (redis),
    # and user vs kernel time per delivery (µs: server CPU seconds ÷ deliveries).
    echo "| | metric | stackpulse | stackpulse, $before | stackpulse ÷ $before |"
    echo "|---|---|---:|---:|---:|"
    for s in $SCENARIOS; do
      ab() { # ab LABEL JQ DIGITS
        local r a
        r=$(get stackpulse "$s" "$2")
        a=$(get "$before" "$s" "$2")
        echo "| $s | $1 | $(fmt "$r" "$3") | $(fmt "$a" "$3") | $(ratio "$r" "$a") |"
      }
      case $s in
        b) ab "fan-out latency p50, ms" '.latency.p50_ms' 2
           ab "fan-out latency p99, ms" '.latency.p99_ms' 2 ;;
        c | e) ab "deliveries per server CPU-second" '.deliveries_per_cpu_s' 0
           ab "user µs per delivery" '(.server_cpu_load_s - .server_sys_load_s) * 1e6 / .deliveries' 3
           ab "kernel µs per delivery" '.server_sys_load_s * 1e6 / .deliveries' 3
           ab "delivery latency p50, ms" '.latency.p50_ms' 2
           ab "delivery latency p99, ms" '.latency.p99_ms' 2 ;;
      esac
    done
    echo
  done
  echo -n "complete runs:"
  for s in $SCENARIOS; do for t in $TARGETS; do
    [[ $s == e && $t == nchan ]] && continue
    echo -n " $t-$s=$(complete "$t" "$s")"
  done; done
  echo
  echo "workers: $WORKERS (stackpulse tokio threads, nginx worker processes); load: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/table.md"
echo "reports: $OUT" >&2

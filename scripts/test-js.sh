#!/usr/bin/env bash
# JavaScript tests, against the real stackpulse binary:
#   - clients/js: the TypeScript client (@stackpulse/client) in Node (node --test);
#   - web: the dashboard served at / by the binary, in headless Chromium driven by
#     playwright-core (Debian's /usr/bin/chromium; no browser is ever downloaded);
#   - tests/graphql-clients: unmodified aws-amplify 6 and graphql-ws clients against
#     the binary on TLS (a self-signed certificate made with openssl), with Cognito
#     tokens from moto (scripts/ensure-moto.sh installs it).
# Sets up everything itself on a fresh Debian machine: chromium (apt-get), the npm
# packages (npm ci from the committed lockfiles), the client build (tsc), the server
# binary (cargo build). Artifacts: target/dashboard.png, target/dashboard-phone.png,
# target/artifacts/timeline-*.png (the timeline chart, web/test/timeline.test.mjs).
#
# Environment: STACKPULSE_BIN (use this binary, skip cargo build), CHROMIUM_PATH
# (default /usr/bin/chromium), STACKPULSE_JS_COVERAGE=<dir> (set by
# scripts/coverage-js.sh: builds <dir>/bundle/assets/app.js, the dashboard unminified
# with a source map, which the dashboard tests load in place of the binary's bundle
# (web/test/support/browser.mjs); runs the client and dashboard tests with
# NODE_V8_COVERAGE=<dir>/node-v8 and the browser's coverage in <dir>/v8; skips the
# GraphQL-clients suite, which runs no client or dashboard code).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in node npm cargo; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool not found (needs Node.js 20+ with npm, and Rust)" >&2
    exit 2
  fi
done
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "error: Node.js 20+ needed, found $(node --version)" >&2
  exit 2
fi

chromium=${CHROMIUM_PATH:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  echo "== installing chromium (Debian package)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y chromium; then
    $sudo apt-get update
    $sudo apt-get install -y chromium
  fi
fi
"$chromium" --version

scripts/ensure-openssl.sh

echo "== npm ci (clients/js, web, tests/graphql-clients)"
(cd clients/js && npm ci --no-audit --no-fund --loglevel=error)
(cd web && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/graphql-clients && npm ci --no-audit --no-fund --loglevel=error)

echo "== tsc: build the client, type-check the dashboard"
(cd clients/js && npx tsc -p tsconfig.json)
(cd web && npx tsc -p tsconfig.json)
echo "== web/dist matches its sources"
scripts/build-web.sh --check

if [ -z "${STACKPULSE_BIN:-}" ]; then
  echo "== cargo build -p stackpulse --bin stackpulse"
  cargo build -p stackpulse --bin stackpulse
  target_dir=$(cargo metadata --format-version 1 --no-deps |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => console.log(JSON.parse(s).target_directory))')
  export STACKPULSE_BIN="$target_dir/debug/stackpulse"
fi
export CHROMIUM_PATH="$chromium"

coverage=()
if [ -n "${STACKPULSE_JS_COVERAGE:-}" ]; then
  echo "== coverage build of the dashboard ($STACKPULSE_JS_COVERAGE/bundle)"
  # build-web.sh's bundle, not minified and with a source map (c8 maps it to web/src).
  web/node_modules/.bin/esbuild web/src/main.ts --bundle --format=esm --target=es2020 \
    --sourcemap --charset=utf8 --log-level=warning \
    --outfile="$STACKPULSE_JS_COVERAGE/bundle/assets/app.js"
  coverage=(env NODE_V8_COVERAGE="$STACKPULSE_JS_COVERAGE/node-v8" STACKPULSE_WEB_COVERAGE="$STACKPULSE_JS_COVERAGE")
fi

echo "== node --test (client in Node, dashboard in Chromium; server: $STACKPULSE_BIN)"
${coverage[@]+"${coverage[@]}"} node --test --test-reporter=spec --test-concurrency=1 \
  clients/js/test/*.test.mjs web/test/*.test.mjs
if [ -n "${STACKPULSE_JS_COVERAGE:-}" ]; then
  echo "== coverage run: the GraphQL-clients suite is left to the ordinary run"
  exit 0
fi
echo "== node --test (GraphQL clients: aws-amplify 6, graphql-ws; server: $STACKPULSE_BIN)"
node --test --test-reporter=spec --test-concurrency=1 tests/graphql-clients/test/*.test.mjs
echo "== JavaScript tests passed"

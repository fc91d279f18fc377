#!/usr/bin/env bash
# Builds the dashboard into web/dist/: index.html, assets/app.js (one ES module
# bundling web/src/ and the TypeScript client from clients/js/src/), assets/app.css.
# The output is checked in and embedded in the stackpulse binary
# (crates/stackpulse/src/http/dashboard.rs), so a Rust build needs no Node.
#
# Reproducible: pinned esbuild (web/package-lock.json), no timestamps; the same
# sources give the same bytes. index.html references the assets with `?v=<sha256
# prefix>` of their content, which the server uses for immutable caching.
#
#   scripts/build-web.sh          rebuild web/dist
#   scripts/build-web.sh --check  build into a temporary directory and fail if
#                                 web/dist differs (stale checked-in output)
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
out=web/dist
if [ "${1:-}" = "--check" ]; then
  check=1
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi

if [ ! -x web/node_modules/.bin/esbuild ]; then
  (cd web && npm ci --no-audit --no-fund)
fi
esbuild=web/node_modules/.bin/esbuild

rm -rf "$out/assets" "$out/index.html"
mkdir -p "$out/assets"
"$esbuild" web/src/main.ts --bundle --format=esm --target=es2020 --minify \
  --legal-comments=none --charset=utf8 --log-level=warning --outfile="$out/assets/app.js"
"$esbuild" web/src/style.css --bundle --minify --charset=utf8 --log-level=warning \
  --outfile="$out/assets/app.css"

hash() { sha256sum "$1" | cut -c1-16; }
sed -e "s/__JS_HASH__/$(hash "$out/assets/app.js")/" \
    -e "s/__CSS_HASH__/$(hash "$out/assets/app.css")/" \
    web/index.html > "$out/index.html"

if [ "$check" = 1 ]; then
  if ! diff -r web/dist "$out" >/dev/null; then
    echo "error: web/dist is out of date with web/src, web/index.html or clients/js/src;" >&2
    echo "       run scripts/build-web.sh and commit web/dist" >&2
    diff -r web/dist "$out" | head -20 >&2 || true
    exit 1
  fi
  echo "web/dist is up to date"
else
  ls -l web/dist web/dist/assets
fi

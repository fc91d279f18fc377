#!/usr/bin/env bash
# Line coverage of the TypeScript client (clients/js/src) and of the dashboard
# (web/src), by their tests against the real stackpulse binary.
#
# Runs scripts/test-js.sh (same setup) with STACKPULSE_JS_COVERAGE set, which
#   - runs the client's tests (Node) with NODE_V8_COVERAGE: V8's coverage of
#     clients/js/dist/*.js, which tsc compiled with source maps;
#   - runs the dashboard's tests with Chromium's own JS coverage (playwright-core's
#     page.coverage, web/test/support/browser.mjs) of an unminified, source-mapped
#     build of the dashboard bundle that the pages load in place of the binary's
#     minified one (same sources, same esbuild; only minification and the map differ).
# `c8 report` (c8, a devDependency in both lockfiles; web's is used) maps both back through
# the source maps to the .ts sources. Parts written (format: scripts/coverage reads them):
#   target/coverage/parts/ts-client.json   clients/js/src/*.ts, from the client's tests
#   target/coverage/parts/dashboard.json   web/src/*.ts, from the code run in the browser
# (The client's code bundled into the dashboard and run there is not counted for the
# ts-client part: that part is what the client's own tests cover.)
# Exits non-zero if the tests fail. Environment: as scripts/test-js.sh.
#   scripts/coverage-js.sh --report-only   report again from the last run's data
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cov="$root/target/coverage/js"
mkdir -p "$root/target/coverage/parts"
if [ "${1:-}" != "--report-only" ]; then
  rm -rf "$cov"
  mkdir -p "$cov"
  STACKPULSE_JS_COVERAGE="$cov" scripts/test-js.sh
fi

c8=web/node_modules/.bin/c8
# part, V8 data, the generated JavaScript to report on. (Filtering the sources after
# the source map instead, c8's --exclude-after-remap, loses the uncovered ranges of a
# bundle whose map also names sources left out: every line came out covered.)
report() {
  "$c8" report --temp-directory="$2" --report-dir="$cov/$1" --include="$3" \
    --reporter=json --reporter=text-summary
}
echo "== ts-client (clients/js/src through clients/js/dist, Node)"
report ts-client "$cov/node-v8" 'clients/js/dist/**'
echo "== dashboard (web/src through the coverage bundle, Chromium)"
report dashboard "$cov/v8" 'target/coverage/js/bundle/**'

# The parts. A line counts when the compiled JavaScript has code from it (a source-map
# mapping points at it): comments, blank lines and type-only declarations, which
# c8 counts as lines too, are left out. It is covered when c8 gives it a count > 0.
node --input-type=module - "$root" "$cov" <<'JS'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const [root, cov] = process.argv.slice(2);
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';

/** Source path (absolute) -> set of 1-based lines that some generated code maps to. */
function mappedLines(mapFiles) {
  const lines = new Map();
  for (const file of mapFiles) {
    const map = JSON.parse(readFileSync(file, 'utf8'));
    const sources = map.sources.map((s) => resolve(dirname(file), map.sourceRoot ?? '', s));
    let src = 0;
    let line = 0;
    for (const genLine of map.mappings.split(';')) {
      for (const seg of genLine.split(',')) {
        if (!seg) continue;
        const fields = [];
        let value = 0;
        let shift = 0;
        for (const ch of seg) {
          const digit = B64.indexOf(ch);
          value += (digit & 31) << shift;
          if (digit & 32) {
            shift += 5;
          } else {
            fields.push(value & 1 ? -(value >>> 1) : value >>> 1);
            value = 0;
            shift = 0;
          }
        }
        if (fields.length < 4) continue;
        src += fields[1];
        line += fields[2];
        if (!lines.has(sources[src])) lines.set(sources[src], new Set());
        lines.get(sources[src]).add(line + 1);
      }
    }
  }
  return lines;
}

const parts = {
  'ts-client': {
    dir: 'clients/js/src',
    maps: readdirSync(join(root, 'clients/js/dist'))
      .filter((f) => f.endsWith('.js.map'))
      .map((f) => join(root, 'clients/js/dist', f)),
  },
  dashboard: { dir: 'web/src', maps: [join(cov, 'bundle/assets/app.js.map')] },
};
for (const [part, { dir, maps }] of Object.entries(parts)) {
  const code = mappedLines(maps);
  const final = JSON.parse(readFileSync(join(cov, part, 'coverage-final.json'), 'utf8'));
  const files = [];
  for (const [path, fc] of Object.entries(final)) {
    const rel = relative(root, path);
    if (!rel.startsWith(`${dir}/`)) continue; // e.g. the client's sources in the dashboard bundle
    const counts = new Map();
    for (const [id, loc] of Object.entries(fc.statementMap)) {
      const n = loc.start.line;
      counts.set(n, Math.max(counts.get(n) ?? 0, fc.s[id]));
    }
    const lines = [...(code.get(path) ?? [])];
    const uncovered = lines.filter((n) => !(counts.get(n) > 0)).sort((a, b) => a - b);
    files.push({ path: rel, covered: lines.length - uncovered.length, total: lines.length, uncovered });
  }
  files.sort((a, b) => a.path.localeCompare(b.path));
  // Every TypeScript source of the part must be there (V8 reports only loaded scripts).
  const expected = readdirSync(join(root, dir)).filter((f) => f.endsWith('.ts')).map((f) => `${dir}/${f}`);
  const missing = expected.filter((p) => !files.some((f) => f.path === p));
  if (missing.length) {
    console.error(`error: ${part}: no coverage data for ${missing.join(', ')}`);
    process.exit(1);
  }
  const out = {
    part,
    covered: files.reduce((n, f) => n + f.covered, 0),
    total: files.reduce((n, f) => n + f.total, 0),
    files: files.map(({ path, covered, total }) => ({ path, covered, total })),
  };
  writeFileSync(join(root, 'target/coverage/parts', `${part}.json`), JSON.stringify(out, null, 2) + '\n');
  console.log(`${part}: ${out.covered}/${out.total} lines (${((100 * out.covered) / out.total).toFixed(1)} %)`);
  for (const f of files) {
    const pct = ((100 * f.covered) / f.total).toFixed(1);
    console.log(`  ${f.path}: ${f.covered}/${f.total} (${pct} %) uncovered: ${f.uncovered.join(',') || '-'}`);
  }
}
JS

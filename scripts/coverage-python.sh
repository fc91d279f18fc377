#!/usr/bin/env bash
# Line coverage of the Python client (clients/python/src/stackpulse_client) by its test
# suite, which runs against the real stackpulse binary.
#
# Runs scripts/test-python.sh (same venv target/py-venv, same setup) with pytest under
# coverage.py (pinned in clients/python/pyproject.toml, extra `test`; its settings are
# the [tool.coverage.*] tables there), then writes
#   target/coverage/parts/python-client.json   (format: scripts/coverage reads it)
#   target/coverage/python/coverage.json       (coverage.py's own JSON report)
# and prints the per-file table. Exits non-zero if the tests fail.
# Extra arguments go to pytest. Environment: as scripts/test-python.sh (STACKPULSE_BIN).
#
# Interpreter: coverage.py under Python 3.11 misses lines that do run, after some
# awaits in coroutines (a CPython 3.11 tracing bug fixed in 3.12; coveragepy issues
# 1792 and 1911: here _supervise's lines after `await self._read_loop(ws)`), so a
# Python >= 3.12 is used when one runs (PYTHON, else python3.13/python3.12 on PATH,
# else the newest 3.12+ pyenv knows), in its own virtualenv target/py-venv-coverage
# set up by scripts/test-python.sh exactly like target/py-venv. Without one, the
# default interpreter and target/py-venv are used and the figure is a lower bound.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

runs_312() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.13 python3.12; do
    if runs_312 "$candidate"; then python=$(command -v "$candidate"); break; fi
  done
fi
if [ -z "$python" ] && command -v pyenv >/dev/null 2>&1; then
  version=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)*$' | sort -V | tail -1 || true)
  if [ -n "$version" ] && runs_312 "$(pyenv prefix "$version")/bin/python"; then
    python="$(pyenv prefix "$version")/bin/python"
  fi
fi
venv="$root/target/py-venv"
if [ -n "$python" ] && runs_312 "$python"; then
  venv="$root/target/py-venv-coverage"
  export PYTHON="$python" STACKPULSE_PY_VENV="$venv"
else
  echo "warning: no Python >= 3.12 found; coverage.py under 3.11 misses some lines that run" >&2
fi
echo "== coverage interpreter: ${PYTHON:-default of scripts/test-python.sh} (venv $venv)"
out="$root/target/coverage/python"
mkdir -p "$out" "$root/target/coverage/parts"
rm -f "$out/.coverage" "$out/coverage.json"

STACKPULSE_COVERAGE_DATA="$out/.coverage" scripts/test-python.sh "$@"

py="$venv/bin/python"
cd clients/python
"$py" -m coverage report --data-file="$out/.coverage" --show-missing
"$py" -m coverage json --data-file="$out/.coverage" -o "$out/coverage.json" -q
"$py" - "$out/coverage.json" "$root/target/coverage/parts/python-client.json" <<'PY'
import json, re, sys
from pathlib import Path

report = json.loads(Path(sys.argv[1]).read_text())
files, excluded = [], []
pragma = re.compile(r"#\s*pragma:\s*no cover\s*-\s*(.+)$")
for path, data in sorted(report["files"].items()):
    rel = f"clients/python/{path}"
    summary = data["summary"]
    files.append({"path": rel, "covered": summary["covered_lines"], "total": summary["num_statements"]})
    lines = Path(path).read_text().splitlines()
    for n in data.get("excluded_lines", []):
        if not lines[n - 1].strip():
            continue
        m = pragma.search(lines[n - 1])
        if m:
            reason = m.group(1).strip()
        else:  # coverage.py's own default, e.g. an `if TYPE_CHECKING:` block
            reason = f"coverage.py default exclusion (only type checkers run it): {lines[n - 1].strip()}"
        excluded.append({"path": f"{rel}:{n}", "reason": reason})
part = {
    "part": "python-client",
    "covered": sum(f["covered"] for f in files),
    "total": sum(f["total"] for f in files),
    "files": files,
    "excluded": excluded,
}
Path(sys.argv[2]).write_text(json.dumps(part, indent=2) + "\n")
print(f"python-client: {part['covered']}/{part['total']} lines -> {sys.argv[2]}")
PY

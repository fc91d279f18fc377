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
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/target/coverage/python"
mkdir -p "$out" "$root/target/coverage/parts"
rm -f "$out/.coverage" "$out/coverage.json"

STACKPULSE_COVERAGE_DATA="$out/.coverage" scripts/test-python.sh "$@"

py="$root/target/py-venv/bin/python"
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
        m = pragma.search(lines[n - 1])
        if m:
            excluded.append({"path": f"{rel}:{n}", "reason": m.group(1).strip()})
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

#!/usr/bin/env bash
# Tests the Python client (clients/python) against the real stackpulse binary.
#
# Needs only Python >= 3.9 with venv/pip and cargo: builds the server, ensures a
# redis-server (scripts/ensure-redis.sh), creates (or reuses) the virtualenv
# target/py-venv, installs the client in editable mode with pytest, pytest-asyncio and
# mypy, type-checks the package and runs the tests with STACKPULSE_BIN pointing at the
# freshly built binary.
# Extra arguments go to pytest (e.g. scripts/test-python.sh -k restart -x).
# STACKPULSE_COVERAGE_DATA=<file>: run pytest under coverage.py, writing that data file
# (scripts/coverage-python.sh sets it; ordinary runs are not slowed down).
# PYTHON: the interpreter; STACKPULSE_PY_VENV: the virtualenv (default target/py-venv).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
if [ -z "$python" ]; then
  echo "error: python3 not found (Python >= 3.9 is needed)" >&2
  exit 2
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
  echo "error: $python is older than Python 3.9" >&2
  exit 2
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust from https://rustup.rs" >&2
  exit 2
fi

# STACKPULSE_BIN: use this binary (scripts/test passes the one `cargo test` built,
# so the dependency graph is not compiled a second time with other features).
bin=${STACKPULSE_BIN:-}
if [ -z "$bin" ]; then
  echo "== build the server (cargo build -p stackpulse --bin stackpulse)"
  cargo build -p stackpulse --bin stackpulse
  target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | "$python" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null \
    || echo "$root/target")
  bin="$target_dir/debug/stackpulse"
fi
[ -x "$bin" ] || { echo "error: $bin was not built" >&2; exit 1; }

# A real redis-server for the multi-node test (installed from Debian when missing).
redis_server=""
if [ -x scripts/ensure-redis.sh ]; then
  redis_server=$(scripts/ensure-redis.sh)
fi

# openssl makes the certificate of the TLS (gql) tests.
scripts/ensure-openssl.sh

venv=${STACKPULSE_PY_VENV:-$root/target/py-venv}
echo "== python environment ($venv)"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
stamp="$venv/.stackpulse-client-installed"
if [ ! -f "$stamp" ] || [ clients/python/pyproject.toml -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -e "clients/python[test]"
  touch "$stamp"
fi

echo "== mypy --strict (clients/python)"
(cd clients/python && "$venv/bin/python" -m mypy)

echo "== pytest (clients/python)"
cd clients/python
if [ -n "$redis_server" ]; then
  export REDIS_SERVER="$redis_server" STACKPULSE_REQUIRE_REDIS=1
fi
runner=(-m pytest)
if [ -n "${STACKPULSE_COVERAGE_DATA:-}" ]; then
  runner=(-m coverage run --data-file="$STACKPULSE_COVERAGE_DATA" -m pytest)
fi
STACKPULSE_BIN="$bin" exec "$venv/bin/python" "${runner[@]}" -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Line coverage of every Rust crate of the workspace, one part file per crate
# (target/coverage/parts/<crate>.json, format: see scripts/coverage).
#
# How it measures: cargo-tarpaulin's LLVM engine builds the workspace's tests with
# `-C instrument-coverage` (into target/coverage/build, so the normal target/debug
# cache is untouched) and runs every test binary. The integration tests start the real
# `stackpulse` binary; that binary is instrumented too, inherits LLVM_PROFILE_FILE from
# the test and writes its own .profraw, and `--objects` maps its counters to source, so
# code that only runs inside the server counts.
#
# Servers the tests stop with SIGKILL (tokio's kill_on_drop) never reach the profile
# runtime's exit hook. So the profiles are written in LLVM's continuous mode: counters
# live in an mmap of the .profraw file from the start (`-runtime-counter-relocation`,
# and `%c` in LLVM_PROFILE_FILE), and a killed process's counts are already on disk.
# tarpaulin builds LLVM_PROFILE_FILE as <profraw folder>/<test>_%m-%p.profraw; the
# folder is named `profraws%c` (tarpaulin's config file) and the runtime, which strips
# the `%c`, writes into `profraws`, a symlink to it.
#
# Usage: scripts/coverage-rust.sh [extra cargo-tarpaulin args]
# Runs: the workspace's tests (as `cargo test --workspace`), then the suites scripts/test
# runs again against serverless mode (STACKPULSE_TEST_SERVER=lambda-local); a line
# counts as covered if any run executed it.
# Output: target/coverage/rust/{,lambda-local/,lambda-local-auth/}tarpaulin-report.json
#         and tarpaulin.log (tarpaulin's raw reports and logs),
#         target/coverage/parts/<crate>.json (one per crate).
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned: tarpaulin parses rustc's .profraw format itself, and this version is known to
# read the stable toolchain's (rustc 1.95, LLVM 22) files.
TARPAULIN_VERSION=0.37.5
if ! cargo tarpaulin --version 2>/dev/null | grep -q "$TARPAULIN_VERSION"; then
  echo "coverage-rust: installing cargo-tarpaulin $TARPAULIN_VERSION (crates.io; several minutes)" >&2
  cargo install cargo-tarpaulin --locked --version "$TARPAULIN_VERSION" >&2
fi
scripts/ensure-openssl.sh  # the TLS tests make certificates with it

out=target/coverage/rust
build=target/coverage/build
mkdir -p "$out" "$build/tarpaulin" target/coverage/parts
# The continuous-mode trick described above.
ln -sfn 'profraws%c' "$build/tarpaulin/profraws"
cat >"$out/tarpaulin.toml" <<'EOF'
[rust]
profraw_folder = "profraws%c"
EOF

# Files no test can sensibly run, as "path|reason" (the reason is shown in the table).
# None so far: main.rs runs in every server the tests start, and is counted.
excluded=()
exclude_args=()
for e in ${excluded[@]+"${excluded[@]}"}; do exclude_args+=(--exclude-files "${e%%|*}"); done

export RUSTFLAGS="${RUSTFLAGS:-} -Cllvm-args=-runtime-counter-relocation"
tarpaulin() {  # $1: report folder; the rest: selection and extra args
  local dir=$1
  shift
  mkdir -p "$dir"
  cargo tarpaulin \
    --config "$out/tarpaulin.toml" \
    --engine llvm \
    --target-dir "$build" \
    --objects "$build/debug/stackpulse" \
    --skip-clean \
    --no-fail-fast \
    --timeout 900 \
    --out Json --output-dir "$dir" \
    ${exclude_args[@]+"${exclude_args[@]}"} \
    "$@" 2>&1 | tee "$dir/tarpaulin.log"
  return "${PIPESTATUS[0]}"
}
start=$(date +%s)
status=0
# 1. What `cargo test --workspace` runs.
tarpaulin "$out" --workspace "$@" || status=$?
# 2. The suites scripts/test runs a second time against serverless mode (lambda-local
#    on moto): the same tests and filters as there.
STACKPULSE_TEST_SERVER=lambda-local tarpaulin "$out/lambda-local" -p stackpulse \
  --test ws_protocol "$@" || status=$?
STACKPULSE_TEST_SERVER=lambda-local tarpaulin "$out/lambda-local-auth" -p stackpulse \
  --test auth "$@" -- every_bad_token topics_are_visible deny_policy publishers_use a_narrower_acl || status=$?
echo "coverage-rust: tarpaulin runs took $(( $(date +%s) - start )) s (last failing status: $status)" >&2
rm -f build_rs_cov.profraw  # tarpaulin's build-script profile, written to the repo root

printf '%s\n' ${excluded[@]+"${excluded[@]}"} >"$out/excluded.txt"
python3 - "$out/excluded.txt" target/coverage/parts \
  "$out/tarpaulin-report.json" "$out/lambda-local/tarpaulin-report.json" \
  "$out/lambda-local-auth/tarpaulin-report.json" <<'PY'
import json, os, sys
excluded_txt, parts_dir, *reports = sys.argv[1:]
root = os.getcwd()
# A line is executable if any run's report lists it, covered if any run hit it.
lines = {}
for report in reports:
    if not os.path.exists(report):
        print(f"coverage-rust: no {report}", file=sys.stderr)
        continue
    for f in json.load(open(report))["files"]:
        path = os.path.relpath(os.path.join(*f["path"]), root)
        seen = lines.setdefault(path, {})
        for t in f["traces"]:
            hits = t["stats"].get("Line", 0)
            seen[t["line"]] = seen.get(t["line"], False) or hits > 0
excluded = [l.split("|", 1) for l in open(excluded_txt).read().splitlines() if l]
parts = {}
for path, seen in sorted(lines.items()):
    bits = path.split(os.sep)
    if len(bits) < 3 or bits[0] != "crates":
        continue
    crate = bits[1]
    part = parts.setdefault(crate, {"part": crate, "covered": 0, "total": 0, "files": [], "excluded": []})
    covered, total = sum(seen.values()), len(seen)
    part["files"].append({"path": path, "covered": covered, "total": total})
    part["covered"] += covered
    part["total"] += total
for path, reason in excluded:
    crate = path.split("/")[1]
    if crate in parts:
        parts[crate]["excluded"].append({"path": path, "reason": reason})
for crate, part in sorted(parts.items()):
    part["files"].sort(key=lambda x: x["path"])
    with open(os.path.join(parts_dir, crate + ".json"), "w") as fh:
        json.dump(part, fh, indent=1)
    print(f"coverage-rust: {crate}: {part['covered']}/{part['total']}", file=sys.stderr)
PY
exit "$status"

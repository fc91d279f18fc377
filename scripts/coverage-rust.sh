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
# Output: target/coverage/rust/tarpaulin-report.json (tarpaulin's raw report),
#         target/coverage/rust/tarpaulin.log, target/coverage/parts/<crate>.json.
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
start=$(date +%s)
set +e
cargo tarpaulin \
  --config "$out/tarpaulin.toml" \
  --engine llvm \
  --workspace \
  --target-dir "$build" \
  --objects "$build/debug/stackpulse" \
  --skip-clean \
  --no-fail-fast \
  --timeout 900 \
  --out Json --output-dir "$out" \
  ${exclude_args[@]+"${exclude_args[@]}"} \
  "$@" 2>&1 | tee "$out/tarpaulin.log"
status=${PIPESTATUS[0]}
set -e
echo "coverage-rust: tarpaulin exited $status after $(( $(date +%s) - start )) s" >&2
rm -f build_rs_cov.profraw  # tarpaulin's build-script profile, written to the repo root

printf '%s\n' ${excluded[@]+"${excluded[@]}"} >"$out/excluded.txt"
python3 - "$out/tarpaulin-report.json" "$out/excluded.txt" target/coverage/parts <<'PY'
import json, os, sys
report, excluded_txt, parts_dir = sys.argv[1:]
root = os.getcwd()
data = json.load(open(report))
excluded = [l.split("|", 1) for l in open(excluded_txt).read().splitlines() if l]
parts = {}
for f in data["files"]:
    path = os.path.relpath(os.path.join(*f["path"]), root)
    bits = path.split(os.sep)
    if len(bits) < 3 or bits[0] != "crates":
        continue
    crate = bits[1]
    part = parts.setdefault(crate, {"part": crate, "covered": 0, "total": 0, "files": [], "excluded": []})
    part["files"].append({"path": path, "covered": f["covered"], "total": f["coverable"]})
    part["covered"] += f["covered"]
    part["total"] += f["coverable"]
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

#!/usr/bin/env bash
# Builds the Lambda package of serverless mode: target/lambda/stackpulse/bootstrap.zip,
# the stackpulse binary under the name `bootstrap` (started under that name it runs
# `stackpulse lambda`), for the provided.al2023 runtime. deploy/aws/serverless.yaml's
# CodeUri points at it; `sam deploy` uploads it. Not run in CI (a release build).
#
# Usage: scripts/package-lambda.sh [--arch arm64|x86_64] [--plain-cargo | --from BINARY]
#                                  [-- CARGO_ARGS...]
#   --arch arm64 (default, the template's default Architecture): `cargo lambda build
#       --release --arm64`. cargo-lambda comes from PyPI (`cargo-lambda`, with zig as
#       its cross-linker, installed into target/lambda-venv when not on PATH); it also
#       needs Rust's aarch64-unknown-linux-gnu standard library
#       (`rustup target add aarch64-unknown-linux-gnu`).
#   --arch x86_64: `cargo lambda build --release --x86-64`; deploy with
#       `--parameter-overrides Architecture=x86_64`.
#   --plain-cargo (x86_64 only, on an x86_64 Linux host): plain `cargo build --release`
#       without cargo-lambda. The binary then links against the host's glibc, so the
#       script refuses it when it needs a glibc newer than AL2023's 2.34.
#   --from BINARY: package a stackpulse binary built elsewhere (checked like the others).
#   The binary is stripped of debug info (STACKPULSE_KEEP_SYMBOLS=1 keeps it).
#   CARGO_ARGS are passed to the build (e.g. `-- --features ...`).
# Everything it writes stays under target/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

arch=arm64
plain=0
from=
cargo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:-}; shift 2 ;;
    --arch=*) arch=${1#--arch=}; shift ;;
    --plain-cargo) plain=1; shift ;;
    --from) from=${2:-}; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --) shift; cargo_args=("$@"); break ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  arm64) triple=aarch64-unknown-linux-gnu; lambda_flag=--arm64; elf_machine=183 ;;
  x86_64) triple=x86_64-unknown-linux-gnu; lambda_flag=--x86-64; elf_machine=62 ;;
  *) echo "error: --arch must be arm64 or x86_64, not '$arch'" >&2; exit 2 ;;
esac

target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out="$target_dir/lambda/stackpulse"
mkdir -p "$out"
rm -f "$out/bootstrap" "$out/bootstrap.zip" "$out/ARCH"

if [ -n "$from" ]; then
  [ -f "$from" ] || { echo "error: --from $from: no such file" >&2; exit 2; }
  cp "$from" "$out/bootstrap"
elif [ "$plain" = 1 ]; then
  if [ "$arch" != x86_64 ] || [ "$(uname -m)" != x86_64 ]; then
    echo "error: --plain-cargo builds for the host only: use it with --arch x86_64 on an x86_64 host" >&2
    exit 2
  fi
  echo "== cargo build --release -p stackpulse --bin stackpulse (plain cargo, host glibc)"
  cargo build --release -p stackpulse --bin stackpulse "${cargo_args[@]}"
  cp "$target_dir/release/stackpulse" "$out/bootstrap"
else
  if ! command -v cargo-lambda >/dev/null 2>&1; then
    venv="$target_dir/lambda-venv"
    if [ ! -x "$venv/bin/cargo-lambda" ]; then
      echo "== pip install cargo-lambda (into $venv)"
      python3 -m venv "$venv"
      "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'cargo-lambda==1.9.2'
    fi
    export PATH="$venv/bin:$PATH"
  fi
  if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$triple"; then
    echo "error: Rust's $triple standard library is missing: rustup target add $triple" >&2
    [ "$arch" = arm64 ] && echo "       (or build for x86_64: $0 --arch x86_64, or $0 --arch x86_64 --plain-cargo)" >&2
    exit 1
  fi
  echo "== cargo lambda build --release $lambda_flag --bin stackpulse"
  cargo lambda build --release "$lambda_flag" --bin stackpulse "${cargo_args[@]}"
  # cargo-lambda names the executable bootstrap already.
  [ -f "$out/bootstrap" ] || { echo "error: cargo lambda left no $out/bootstrap" >&2; exit 1; }
fi

# The release profile keeps line tables (backtraces); Lambda logs no backtraces worth
# 150 MB, so drop the debug info (STACKPULSE_KEEP_SYMBOLS=1 keeps it). The host's
# binutils strip only its own architecture: otherwise the package keeps it.
if [ "${STACKPULSE_KEEP_SYMBOLS:-0}" != 1 ] && command -v strip >/dev/null 2>&1; then
  if strip "$out/bootstrap" 2>/dev/null; then
    echo "== stripped $out/bootstrap"
  else
    echo "note: this host's strip cannot strip a $arch binary; the package keeps its debug info" >&2
  fi
fi

# Check the binary is for the chosen CPU and the runtime's glibc, then zip it with
# the executable bit Lambda needs.
if ! python3 - "$out/bootstrap" "$elf_machine" "$arch" <<'PY'
import re, struct, sys, zipfile
path, machine, arch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(path, "rb").read()
if data[:4] != b"\x7fELF":
    sys.exit(f"error: {path} is not an ELF executable")
found = struct.unpack_from("<H", data, 18)[0]
if found != machine:
    sys.exit(f"error: {path} is for ELF machine {found}, not {arch} ({machine})")
versions = [tuple(map(int, v.split(b"."))) for v in set(re.findall(rb"GLIBC_(2\.\d+(?:\.\d+)?)", data))]
newest = max(versions, default=(2, 0))
if newest > (2, 34):
    sys.exit(f"error: {path} needs glibc {'.'.join(map(str, newest))}, newer than provided.al2023's 2.34: "
             "build with cargo-lambda (without --plain-cargo)")
with zipfile.ZipFile(path + ".zip", "w", zipfile.ZIP_DEFLATED) as z:
    info = zipfile.ZipInfo("bootstrap")
    info.external_attr = 0o100755 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    z.writestr(info, data)
print(f"glibc needed: {'.'.join(map(str, newest))} (provided.al2023 has 2.34)")
PY
then
  rm -f "$out/bootstrap" "$out/bootstrap.zip"
  exit 1
fi
echo "$arch" > "$out/ARCH"
ls -l "$out/bootstrap" "$out/bootstrap.zip"
echo "== $out/bootstrap.zip ($arch): deploy with"
echo "   sam deploy --guided --template-file deploy/aws/serverless.yaml --capabilities CAPABILITY_IAM \\"
echo "     --parameter-overrides Architecture=$arch"

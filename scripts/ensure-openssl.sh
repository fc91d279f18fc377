#!/usr/bin/env bash
# Ensure the `openssl` command is installed (Debian package): the GraphQL/TLS tests
# make a self-signed certificate with it at test time (Rust, Python and Node tests).
set -euo pipefail
if command -v openssl >/dev/null 2>&1; then
  exit 0
fi
echo "ensure-openssl: installing openssl (Debian package)" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y openssl >&2; then
  $sudo apt-get update >&2
  $sudo apt-get install -y openssl >&2
fi
command -v openssl >/dev/null 2>&1 || { echo "ensure-openssl: openssl was not installed" >&2; exit 1; }

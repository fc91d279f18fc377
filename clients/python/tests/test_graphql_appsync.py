"""gql's ``AppSyncWebsocketsTransport`` (unmodified) against the real binary's AppSync
real-time endpoint over WSS, with ``AppSyncJWTAuthentication`` and real Cognito access
tokens from moto (``scripts/ensure-moto.sh`` installs it). The server runs on TLS with a
self-signed certificate made with openssl for the test."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Sequence, Tuple

import pytest
from gql import Client, GraphQLRequest
from gql.transport.appsync_auth import AppSyncJWTAuthentication
from gql.transport.appsync_websockets import AppSyncWebsocketsTransport
from gql.transport.exceptions import TransportQueryError, TransportServerError

from conftest import Server

ROOT = Path(__file__).resolve().parents[3]

SUB = """
subscription OnDeploymentUpdated($deploymentId: ID!) {
  onDeploymentUpdated(deployment_id: $deploymentId) {
    deployment_id
    status
    updated_at
  }
}
"""


class Cognito:
    """A moto server with a user pool, an app client and signed-in users."""

    def __init__(self, workdir: Path) -> None:
        exe = subprocess.run(
            ["bash", str(ROOT / "scripts" / "ensure-moto.sh")],
            check=True, stdout=subprocess.PIPE, text=True,
        ).stdout.strip().splitlines()[-1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/", timeout=2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        self.pool = self.call("CreateUserPool", {"PoolName": "stackpulse"})["UserPool"]["Id"]
        self.client_id = self.call(
            "CreateUserPoolClient",
            {"UserPoolId": self.pool, "ClientName": "web", "ExplicitAuthFlows": ["USER_PASSWORD_AUTH"]},
        )["UserPoolClient"]["ClientId"]

    def call(self, action: str, body: Dict[str, Any]) -> Dict[str, Any]:
        req = urllib.request.Request(
            f"{self.endpoint}/",
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "x-amz-target": f"AWSCognitoIdentityProviderService.{action}",
                "content-type": "application/x-amz-json-1.1",
                "authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/"
                "cognito-idp/aws4_request, SignedHeaders=host, Signature=0",
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read()
        result: Dict[str, Any] = json.loads(text) if text else {}
        return result

    def access_token(self, user: str, groups: Sequence[str] = ()) -> str:
        self.call("AdminCreateUser", {"UserPoolId": self.pool, "Username": user,
                                      "TemporaryPassword": "Tmp-Passw0rd!", "MessageAction": "SUPPRESS"})
        self.call("AdminSetUserPassword", {"UserPoolId": self.pool, "Username": user,
                                           "Password": "Passw0rd!xx", "Permanent": True})
        for g in groups:
            self.call("CreateGroup", {"UserPoolId": self.pool, "GroupName": g})
            self.call("AdminAddUserToGroup", {"UserPoolId": self.pool, "Username": user, "GroupName": g})
        auth = self.call("InitiateAuth", {
            "ClientId": self.client_id, "AuthFlow": "USER_PASSWORD_AUTH",
            "AuthParameters": {"USERNAME": user, "PASSWORD": "Passw0rd!xx"},
        })
        token: str = auth["AuthenticationResult"]["AccessToken"]
        return token

    def server_args(self) -> List[str]:
        return [
            "--cognito-region", "us-east-1", "--cognito-user-pool-id", self.pool,
            "--cognito-client-id", self.client_id,
            "--jwks-url", f"{self.endpoint}/{self.pool}/.well-known/jwks.json",
        ]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def cognito(tmp_path: Path) -> Iterator[Cognito]:
    made = Cognito(tmp_path)
    yield made
    made.stop()


def self_signed(tmp_path: Path) -> Tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-addext", "basicConstraints=critical,CA:FALSE",
         "-addext", "extendedKeyUsage=serverAuth",
         "-keyout", str(key), "-out", str(cert)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    return str(cert), str(key)


@pytest.fixture
def tls_server(
    start_server: Callable[..., Server], cognito: Cognito, tmp_path: Path
) -> Server:
    cert, key = self_signed(tmp_path)
    server = start_server(*cognito.server_args(), "--tls-cert", cert, "--tls-key", key)
    assert server.scheme == "https"
    server.ssl_context = ssl.create_default_context(cafile=cert)
    return server


def subscribers(server: Server, topic: str, token: str) -> int:
    req = urllib.request.Request(
        f"{server.http}/v1/topics/{topic}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=server.ssl_context) as resp:
            count: int = json.loads(resp.read())["local_subscribers"]
            return count
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return 0
        raise


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def transport(server: Server, token: str) -> AppSyncWebsocketsTransport:
    host = f"127.0.0.1:{server.port}"
    auth = AppSyncJWTAuthentication(host=host, jwt=token)
    assert server.ssl_context is not None
    return AppSyncWebsocketsTransport(
        url=f"wss://{host}/graphql/realtime", auth=auth, ssl=server.ssl_context
    )


async def test_gql_subscribes_receives_an_update_and_stops(tls_server: Server, cognito: Cognito) -> None:
    token = cognito.access_token("alice")

    async def subscribed(n: int) -> bool:
        return await asyncio.to_thread(subscribers, tls_server, "dep-gql", token) == n

    async with Client(transport=transport(tls_server, token), fetch_schema_from_transport=False) as session:
        updates = session.subscribe(GraphQLRequest(SUB, variable_values={"deploymentId": "dep-gql"}))
        first = asyncio.ensure_future(updates.__anext__())
        await until(lambda: subscribed(1), "the subscription")
        seq = await tls_server.apublish("dep-gql", {"status": "deploying"})
        assert seq == 1
        result = await asyncio.wait_for(first, 15)
        update = result["onDeploymentUpdated"]
        assert sorted(update) == ["deployment_id", "status", "updated_at"]
        assert (update["deployment_id"], update["status"]) == ("dep-gql", "deploying")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", update["updated_at"])
        await updates.aclose()  # gql sends `stop` and waits for `complete`
        await until(lambda: subscribed(0), "the stop")


async def test_gql_with_a_refused_token_gets_a_connection_error(tls_server: Server, cognito: Cognito) -> None:
    forged = cognito.access_token("mallory")[:-4] + "AAAA"
    with pytest.raises(TransportServerError) as refused:
        async with Client(transport=transport(tls_server, forged), fetch_schema_from_transport=False):
            pass
    assert "Unauthorized" in str(refused.value)


async def test_gql_subscribing_to_a_forbidden_topic_gets_an_error_not_data(
    tls_server: Server, cognito: Cognito
) -> None:
    await tls_server.apublish("dep-ops", {"status": "secret"}, acl={"groups": ["ops"]})
    token = cognito.access_token("eve")
    async with Client(transport=transport(tls_server, token), fetch_schema_from_transport=False) as session:
        with pytest.raises(TransportQueryError) as refused:
            async for _ in session.subscribe(
                GraphQLRequest(SUB, variable_values={"deploymentId": "dep-ops"})
            ):
                pytest.fail("data for a forbidden topic")
    assert "Not Authorized to access onDeploymentUpdated" in str(refused.value)

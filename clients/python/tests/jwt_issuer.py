"""A test token issuer: an RSA key made at run time, RS256 JWTs and a JWKS endpoint.

Pure standard library (the client's only dependency is ``websockets``): the key is
generated with Miller-Rabin primes, signatures are PKCS#1 v1.5 over SHA-256, and the
public key is served as a JWKS over HTTP on 127.0.0.1 for ``stackpulse serve
--jwks-url``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional

ISSUER = "https://issuer.stackpulse.test"
AUDIENCE = "python-client-tests"
KID = "py-test-key"

_SMALL_PRIMES = [p for p in range(3, 2000, 2) if all(p % d for d in range(3, int(p**0.5) + 1, 2))]
# DER DigestInfo prefix of SHA-256 (RFC 8017, section 9.2).
_SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _probable_prime(n: int, rng: random.Random, rounds: int = 24) -> bool:
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int, rng: random.Random) -> int:
    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if _probable_prime(candidate, rng):
            return candidate


class RsaKey:
    """A 2048-bit RSA key (e = 65537) for RS256."""

    def __init__(self, bits: int = 2048, seed: Optional[int] = None) -> None:
        rng = random.Random(seed)
        e = 65537
        while True:
            p, q = _prime(bits // 2, rng), _prime(bits // 2, rng)
            phi = (p - 1) * (q - 1)
            if p != q and phi % e != 0:
                break
        self.n, self.e = p * q, e
        self.d = pow(e, -1, phi)
        self.size = (self.n.bit_length() + 7) // 8

    def sign_rs256(self, message: bytes) -> bytes:
        t = _SHA256_PREFIX + hashlib.sha256(message).digest()
        em = b"\x00\x01" + b"\xff" * (self.size - len(t) - 3) + b"\x00" + t
        return pow(int.from_bytes(em, "big"), self.d, self.n).to_bytes(self.size, "big")

    def jwk(self) -> Dict[str, str]:
        return {
            "kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
            "n": _b64url(_int_bytes(self.n)), "e": _b64url(_int_bytes(self.e)),
        }


class Issuer:
    """Signs tokens and serves its JWKS at ``jwks_url`` until ``close()``."""

    def __init__(self) -> None:
        self.key = RsaKey()
        body = json.dumps({"keys": [self.key.jwk()]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.jwks_url = f"http://127.0.0.1:{self._http.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def token(self, sub: str = "alice", ttl: float = 3600, groups: Optional[List[str]] = None) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": sub, "aud": AUDIENCE, "iat": now,
            "exp": now + int(ttl), "cognito:groups": groups or [],
            "jti": f"{random.getrandbits(64):016x}",
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": KID}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        return signing_input + "." + _b64url(self.key.sign_rs256(signing_input.encode()))

    def server_args(self) -> List[str]:
        return [
            "--jwt-issuer", ISSUER, "--jwks-url", self.jwks_url,
            "--cognito-client-id", AUDIENCE, "--jwt-leeway", "0",
        ]

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

"""The lab's stand-in of nvcr.io's token service (the realm nvcr.io names,
https://nvcr.io/proxy_auth).

nvcr.io answers a registry request without a token with `401` and a `Bearer` challenge;
the client logs in to the realm (`$oauthtoken` and the NGC API key, as HTTP basic
authentication) and gets a signed token for the repositories and actions it asked for.
The lab registry (Docker's distribution) checks those tokens (`auth: token`), so that
`docker login`, the hosts' pulls and a pull-through cache log in to it as they do to
nvcr.io. A wrong login gets 401 and no token, as from nvcr.io. Tokens are JWTs signed
with RS256, their certificate in the `x5c` header, which the registry verifies against
the certificate it is given (`rootcertbundle`).

    python -m thorfleet.lab.registry_auth --config registry-auth.json
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import ssl
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

LIFETIME = 600  # seconds a token is good for


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def access_of(scopes: list[str]) -> list[dict]:
    """The token's `access` claim for the scope parameters a client sent
    (`repository:nvidia/vllm:pull,push`; several, or several in one, space-separated)."""
    access = []
    for scope in scopes:
        for part in scope.split():
            kind, _, rest = part.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind and name:
                access.append({"type": kind, "name": name,
                               "actions": [a for a in actions.split(",") if a]})
    return access


def sign(key, certificate: x509.Certificate, claims: dict) -> str:
    """A JWT of `claims`, signed with RS256, the certificate in its `x5c` header."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
    signing_input = (f"{_b64url(json.dumps(header).encode())}."
                     f"{_b64url(json.dumps(claims).encode())}")
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def make_handler(settings: dict):
    key = serialization.load_pem_private_key(Path(settings["key"]).read_bytes(), None)
    certificate = x509.load_pem_x509_certificate(Path(settings["certificate"]).read_bytes())
    login = f"{settings['user']}:{settings['password']}".encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            if url.path != "/proxy_auth":
                self._answer(404, {"errors": [{"code": "NOT_FOUND"}]})
                return
            if not self._logged_in():
                self._answer(401, {"details": "incorrect username or password"},
                             {"WWW-Authenticate": 'Basic realm="thorfleet lab"'})
                return
            query = parse_qs(url.query)
            now = int(time.time())
            claims = {"iss": settings["issuer"], "sub": settings["user"],
                      "aud": query.get("service", [settings["service"]])[0],
                      "exp": now + LIFETIME, "nbf": now - 10, "iat": now,
                      "jti": uuid.uuid4().hex, "access": access_of(query.get("scope", []))}
            token = sign(key, certificate, claims)
            self._answer(200, {"token": token, "access_token": token, "expires_in": LIFETIME,
                               "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                          time.gmtime(now))})

        def _logged_in(self) -> bool:
            scheme, _, value = self.headers.get("Authorization", "").partition(" ")
            try:
                given = base64.b64decode(value, validate=True)
            except ValueError:
                return False
            return scheme.lower() == "basic" and hmac.compare_digest(given, login)

        def _answer(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):  # the client and the request line, never a token
            print(f"{self.address_string()} - {fmt % args}", flush=True)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, type=Path)
    settings = json.loads(parser.parse_args().config.read_text())
    server = ThreadingHTTPServer((settings["host"], settings["port"]), make_handler(settings))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings["tls_certificate"], settings["tls_key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

"""The lab's stand-in of nvcr.io's token service: a token for the right login, with the
access asked for, signed so that the registry can check it; 401 for any other login."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from thorfleet.lab import registry_auth

LOGIN = ("$oauthtoken", "lab-key")


@pytest.fixture
def service(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem"),
                    "-subj", "/CN=signer"], check=True, capture_output=True, timeout=60)
    settings = {"key": str(tmp_path / "k.pem"), "certificate": str(tmp_path / "c.pem"),
                "user": LOGIN[0], "password": LOGIN[1], "issuer": "lab-auth",
                "service": "lab-registry"}
    server = ThreadingHTTPServer(("127.0.0.1", 0), registry_auth.make_handler(settings))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "c.pem"
    server.shutdown()


def ask(base, login, query="service=lab-registry&scope=repository:nvidia/vllm:pull"):
    credentials = base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(f"{base}/proxy_auth?{query}",
                                     headers={"Authorization": f"Basic {credentials}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["token"]


def _part(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_the_right_login_gets_a_token_for_what_it_asked_signed_by_its_certificate(service):
    base, certificate = service
    token = ask(base, LOGIN)
    header, claims, signature = token.split(".")
    header, claims = json.loads(_part(header)), json.loads(_part(claims))
    assert header["alg"] == "RS256"
    signer = x509.load_pem_x509_certificate(certificate.read_bytes())
    assert base64.b64decode(header["x5c"][0]) == signer.public_bytes(
        serialization.Encoding.DER)
    signer.public_key().verify(_part(signature), token.rsplit(".", 1)[0].encode(),
                               padding.PKCS1v15(), hashes.SHA256())
    assert (claims["iss"], claims["aud"], claims["sub"]) == ("lab-auth", "lab-registry",
                                                             "$oauthtoken")
    assert claims["access"] == [{"type": "repository", "name": "nvidia/vllm",
                                 "actions": ["pull"]}]
    assert claims["nbf"] < claims["exp"]


@pytest.mark.parametrize("login", [("$oauthtoken", "wrong"), ("someone", "lab-key"),
                                   ("$oauthtoken", "")])
def test_any_other_login_gets_401_and_no_token(service, login):
    base, _certificate = service
    with pytest.raises(urllib.error.HTTPError) as refused:
        ask(base, login)
    assert refused.value.code == 401


def test_scopes_become_the_access_claim():
    assert registry_auth.access_of(["repository:nvidia/vllm:pull,push",
                                    "repository:a/b:pull registry:catalog:*"]) == [
        {"type": "repository", "name": "nvidia/vllm", "actions": ["pull", "push"]},
        {"type": "repository", "name": "a/b", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]}]

"""url_file: a file by URL pinned by sha256, from a real HTTP server on loopback."""

from __future__ import annotations

import base64
import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import load, run_module

url_file = load("library/url_file.py")
TEMPLATE = b"{%- for message in messages -%}{{ message.content }}{%- endfor -%}\n"
SUM = hashlib.sha256(TEMPLATE).hexdigest()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "t.jinja").write_bytes(TEMPLATE)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()


@pytest.fixture
def fetch(tmp_path, monkeypatch):
    dest = tmp_path / "models" / "Qwen" / "Qwen3-8B" / "t.jinja"

    def run(url, sha256="", check=False):
        args = {"url": url, "dest": str(dest), "sha256": sha256, "mode": "0644"}
        return run_module(url_file, args, monkeypatch, check=check)
    run.dest = dest
    return run


def test_a_first_fetch_places_the_file_and_reports_its_sum(server, fetch):
    base, _ = server
    done = fetch(f"{base}/t.jinja")
    assert not done.failed and done.result["changed"] and done.result["fetched"]
    assert done.result["sha256"] == SUM
    assert fetch.dest.read_bytes() == TEMPLATE
    assert oct(fetch.dest.stat().st_mode & 0o777) == "0o644"


def test_a_pinned_file_in_place_is_not_fetched_again(server, fetch):
    base, _ = server
    fetch(f"{base}/t.jinja", sha256=SUM)
    again = fetch("http://127.0.0.1:9/t.jinja", sha256=SUM)  # nothing listens there
    assert not again.failed and again.result["changed"] is False and not again.result["fetched"]


def test_a_wrong_sum_fails_naming_the_url_and_both_sums_and_keeps_dest(server, fetch):
    base, www = server
    fetch(f"{base}/t.jinja", sha256=SUM)
    (www / "t.jinja").write_bytes(TEMPLATE + b"changed upstream\n")
    fetch.dest.write_bytes(b"edited on the host\n")
    done = fetch(f"{base}/t.jinja", sha256=SUM)
    assert done.failed
    assert f"{base}/t.jinja: sha256 mismatch: expected {SUM}, got " in done.result["msg"]
    assert done.result["got"] == hashlib.sha256(TEMPLATE + b"changed upstream\n").hexdigest()
    assert fetch.dest.read_bytes() == b"edited on the host\n"
    assert [p.name for p in fetch.dest.parent.iterdir()] == ["t.jinja"]


def test_an_edited_file_is_put_back_from_its_pin(server, fetch):
    base, _ = server
    fetch(f"{base}/t.jinja", sha256=SUM)
    fetch.dest.write_bytes(b"edited on the host\n")
    done = fetch(f"{base}/t.jinja", sha256=SUM)
    assert done.result["changed"] and fetch.dest.read_bytes() == TEMPLATE


def test_check_mode_fetches_nothing(server, fetch):
    base, _ = server
    preview = fetch(f"{base}/t.jinja", check=True)
    assert preview.result["changed"] and not fetch.dest.exists()


def test_a_missing_url_fails_naming_it(server, fetch):
    base, _ = server
    done = fetch(f"{base}/nope.jinja")
    assert done.failed and done.result["msg"].startswith(f"{base}/nope.jinja: cannot fetch (404")
    assert not fetch.dest.exists()


def test_bytes_read_elsewhere_are_written_only_with_the_pinned_sum(fetch, monkeypatch):
    # A site's bundle: the bytes were read over Ansible's connection; nothing is fetched
    # (the URL answers nothing here), and bytes of another sum leave dest as it was.
    def given(content, sha256=SUM):
        args = {"url": "http://127.0.0.1:9/t.jinja", "dest": str(fetch.dest), "sha256": sha256,
                "mode": "0644", "content": base64.b64encode(content).decode()}
        return run_module(url_file, args, monkeypatch)

    done = given(TEMPLATE)
    assert not done.failed and done.result["changed"] and fetch.dest.read_bytes() == TEMPLATE
    assert done.result["fetched"] is False  # written from the bytes given, not fetched
    assert given(TEMPLATE).result["changed"] is False
    fetch.dest.write_bytes(b"edited on the host\n")
    wrong = given(TEMPLATE + b"changed in the bundle\n")
    assert wrong.failed and f"sha256 mismatch: expected {SUM}" in wrong.result["msg"]
    assert fetch.dest.read_bytes() == b"edited on the host\n"
    unpinned = given(TEMPLATE, sha256="")
    assert unpinned.failed and unpinned.result["msg"].startswith("sha256: ")
    assert fetch.dest.read_bytes() == b"edited on the host\n"

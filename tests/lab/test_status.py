"""`thorfleet status` on the lab fleet: thor01's services as they are, read over SSH."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.lab.conftest import ROOT, fingerprint, left_changed, thorfleet
from tests.lab.test_services import PORTS


def status(*args: str):
    return thorfleet("status", "-l", "thor01", *args)


def test_status_shows_each_service_active_answering_and_what_it_runs(thor01):
    shown = status("--json")
    assert shown.returncode == 0, shown.stderr
    (host,) = json.loads(shown.stdout)["hosts"]
    assert host["host"] == "thor01" and host["reachable"]
    services = {s["service"]: s for s in host["services"]}
    assert {name: s["port"] for name, s in services.items()} == PORTS
    assert all(s["state"] == "active" and s["health"] == "ok" for s in services.values())
    lock = yaml.safe_load((ROOT / "inventory/lab/.thorfleet.lock.yml").read_text())
    assert services["qwen3-vllm"]["runs"].endswith(lock["images"]["nvcr.io/nvidia/vllm:25.10-py3"])
    manifest = json.loads(thor01.file("/models/Qwen/Qwen3-8B-GGUF/thorfleet-manifest.json")
                          .content_string)
    assert (services["qwen3"]["model"], services["qwen3"]["commit"]) == (
        "/models/Qwen/Qwen3-8B-GGUF", manifest["commit"])
    assert services["qwen3"]["runs"].startswith("build-")
    table = status()
    assert table.returncode == 0
    assert [line.split()[1] for line in table.stdout.splitlines()[1:]] == sorted(PORTS)


@pytest.fixture
def stopped(thor01):
    thor01.check_output("systemctl stop thorfleet-whisper")
    yield thor01
    thor01.check_output("systemctl reset-failed thorfleet-whisper; "
                        "systemctl start thorfleet-whisper")


def test_a_stopped_service_shows_as_such_and_status_fails(stopped):
    shown = status()
    assert shown.returncode == 1
    row = next(line for line in shown.stdout.splitlines() if line.split()[1] == "whisper")
    assert row.split()[2:5] == ["inactive", "down", "8080"]


def test_thor01s_fingerprint_holds_still_and_moves_with_what_a_converge_sets(thor01):
    # The thor01 fixture skips the main job when this is as the last passing run left it
    # (tests/lab/conftest.py): it must not move by itself, and it must move when a
    # service restarts or a file a converge writes changes. About 3 s; the next module's
    # thor01 fixture, which finds it moved, converges thor01 back.
    before = fingerprint("thor01")
    assert fingerprint("thor01") == before
    thor01.check_output("systemctl restart thorfleet-whisper")
    restarted = fingerprint("thor01")
    assert restarted != before
    thor01.check_output("echo '# edited' >> /etc/thorfleet/services/whisper.env")
    left_changed("thor01")
    assert fingerprint("thor01") != restarted

"""The status table and verdict of `thorfleet status`, from what hosts report."""

from __future__ import annotations

from thorfleet import status

DIGEST = "458da3c1270cef659bbaace85733a8b8e8216bd6145f9adb132ebd51fa755eb6"


def service(name, state="active", health="ok", runs=f"10.213.0.1:5000/nvidia/vllm@sha256:{DIGEST}"):
    return {"service": name, "unit": f"thorfleet-{name}.service", "state": state,
            "substate": "running", "health": health, "port": 8001, "runs": runs,
            "model": "/models/Qwen/Qwen3-8B", "commit": "a1af6a7a0be8f3fe51ed"}


def test_one_row_per_service_with_short_digests_and_commits():
    text = status.table([{"host": "thor01", "reachable": True,
                          "services": [service("qwen3-vllm")]}])
    header, row = text.splitlines()
    assert header.split() == ["host", "service", "state", "health", "port", "running", "tok/s",
                              "runs", "model", "power", "memory"]
    assert row.split() == ["thor01", "qwen3-vllm", "active", "ok", "8001", "-", "-",
                           f"nvidia/vllm@sha256:{DIGEST[:12]}", "Qwen/Qwen3-8B@a1af6a7a0be8",
                           "-", "-"]


def test_requests_tokens_per_second_and_memory_against_the_budget():
    gib = 1024 ** 3
    host = {"host": "thor01", "reachable": True,
            "services": [{**service("qwen3-vllm"), "running": 2.0, "tokens_per_second": 41.25},
                         {**service("whisper"), "running": None, "tokens_per_second": None}],
            "memory": {"used": 23 * gib, "total": 128 * gib, "budget": int(115.2 * gib)}}
    rows = [row.split() for row in status.table([host]).splitlines()[1:]]
    assert [row[5:7] for row in rows] == [["2", "41.2"], ["-", "-"]]
    assert [row[-1] for row in rows] == ["23.0/115.2G", "23.0/115.2G"]


def test_a_jetsons_power_mode_and_clocks_are_shown_on_each_of_its_rows():
    host = {"host": "thor01", "reachable": True, "services": [service("a"), service("b")],
            "power": {"mode": "MAXN", "clocks": True}}
    rows = status.table([host]).splitlines()[1:]
    assert [row.split()[-2] for row in rows] == ["MAXN+clocks", "MAXN+clocks"]
    idle = {"host": "thor02", "reachable": True, "services": [],
            "power": {"mode": "90W", "clocks": False}}
    assert status.table([idle]).splitlines()[1].split()[-2] == "90W"


def test_the_verdict_wants_every_host_reached_and_every_service_answering():
    good = {"host": "thor01", "reachable": True, "services": [service("a")]}
    assert status.healthy([good])
    assert not status.healthy([good, {"host": "thor02", "reachable": False, "error": "timed out",
                                      "services": []}])
    assert not status.healthy([{**good, "services": [service("a", health="down")]}])
    assert not status.healthy([{**good, "services": [service("a", state="failed")]}])
    assert "unreachable" in status.table([{"host": "thor02", "reachable": False,
                                           "error": "timed out", "services": []}])

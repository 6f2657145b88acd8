"""Two labs on one machine (THORFLEET_LAB_NUMBER): each on its own network, bridge and
host links, the default lab's names as they always were, a lab command refused when the
number is wrong or is not the one the checkout's lab was brought up with, the machine's
cache filled by one lab at a time, and forwarding put back by the last lab down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from thorfleet import bounded
from thorfleet.lab import config

SHOW = ("import json; from thorfleet.lab import config as c; print(json.dumps(["
        "str(c.NETWORK), c.GATEWAY, c.BRIDGE, c.BRIDGE_MAC, c.REGISTRY, c.HF_MIRROR, "
        "c.host_address(1), c.machine_name('thor01')]))")


def names_in_lab(number: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "THORFLEET_LAB_NUMBER"}
    if number is not None:
        env["THORFLEET_LAB_NUMBER"] = number
    proc = bounded.run([sys.executable, "-c", SHOW], 60, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_default_lab_keeps_its_names_and_lab_1_has_its_own():
    lab0 = ["10.213.0.0/24", "10.213.0.1", "thorlab0", "02:54:48:4f:52:01",
            "10.213.0.1:5000", "http://10.213.0.1:8090", "10.213.0.11", "thor01"]
    assert names_in_lab(None) == lab0
    assert names_in_lab("0") == lab0
    assert names_in_lab("1") == [
        "10.213.1.0/24", "10.213.1.1", "thorlab1", "02:54:48:4f:52:02",
        "10.213.1.1:5000", "http://10.213.1.1:8090", "10.213.1.11", "thor01-1"]


@pytest.mark.parametrize("said", ["x", "-1", "10", "1\n", "1;", "\u0661", ""])
def test_a_lab_number_that_is_not_0_to_9_is_refused_naming_the_variable(said):
    with pytest.raises(config.LabError, match="THORFLEET_LAB_NUMBER must be a whole number"):
        config.lab_number({"THORFLEET_LAB_NUMBER": said})
    assert config.lab_number({}) == 0


def test_every_lab_command_stops_on_a_wrong_number_before_acting():
    env = {**os.environ, "THORFLEET_LAB_NUMBER": "12"}
    proc = bounded.run([sys.executable, "-m", "thorfleet.cli", "lab", "status"], 60, env=env)
    assert proc.returncode == 1
    assert "THORFLEET_LAB_NUMBER must be a whole number from 0 to 9, got '12'" in proc.stderr


def test_a_checkouts_lab_is_acted_on_only_under_its_own_number(tmp_path):
    from thorfleet.lab import Lab
    (tmp_path / ".lab").mkdir()
    (tmp_path / ".lab" / "number").write_text("1\n")
    with pytest.raises(config.LabError, match="THORFLEET_LAB_NUMBER=1"):
        Lab(tmp_path)
    (tmp_path / ".lab" / "number").write_text(f"{config.LAB_NUMBER}\n")
    assert Lab(tmp_path).state == tmp_path / ".lab"


def test_lab_1s_inventory_points_its_hosts_at_lab_1s_upstreams():
    env = {**os.environ, "THORFLEET_LAB_NUMBER": "1"}
    show = ("import json, yaml; from thorfleet.lab.inventory import profile; "
            "print(json.dumps(yaml.safe_load(profile())))")
    proc = bounded.run([sys.executable, "-c", show], 60, env=env)
    assert proc.returncode == 0, proc.stderr
    lab1 = json.loads(proc.stdout)
    assert lab1["thorfleet_source_mirror"] == "git://10.213.1.1"
    assert lab1["thorfleet_hf_endpoint"] == "http://10.213.1.1:8090"
    assert lab1["thorfleet_registry_mirror"] == "10.213.1.1:5000"
    assert lab1["model_store_pip_env"]["PIP_TRUSTED_HOST"] == "10.213.1.1"
    assert "10.213.0." not in proc.stdout


def test_a_second_up_waits_for_the_machine_cache_the_first_is_filling(tmp_path):
    from thorfleet.lab import Lab
    first, second = Lab(tmp_path / "one", cache=tmp_path / "cache"), \
        Lab(tmp_path / "two", cache=tmp_path / "cache")
    entered = []

    def fill():
        with first._cache_locked():
            entered.append(("first", time.monotonic()))
            time.sleep(1.5)
            entered.append(("first done", time.monotonic()))

    filling = threading.Thread(target=fill)
    filling.start()
    while not entered:
        time.sleep(0.05)
    with second._cache_locked():
        entered.append(("second", time.monotonic()))
    filling.join()
    assert [name for name, _ in entered] == ["first", "first done", "second"]


def test_forwarding_is_put_back_only_when_no_other_lab_has_its_bridge(monkeypatch):
    from thorfleet.lab import machine
    said = {"out": ""}
    monkeypatch.setattr(machine.bounded, "run", lambda argv, timeout: subprocess.CompletedProcess(
        argv, 0, said["out"], ""))
    said["out"] = ("3: docker0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500\n"
                   "7: br-lan: <BROADCAST,MULTICAST,UP> mtu 1500\n")
    assert machine.Machine._other_labs_up() is False
    said["out"] += "9: thorlab1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n"
    assert machine.Machine._other_labs_up() is True

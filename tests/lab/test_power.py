"""A Jetson's power mode by name and jetson_clocks, on a lab host made to look like a Thor:
its nvpmodel and jetson_clocks are stand-ins (src/thorfleet/lab/thor.py) with a
Thor-shaped nvpmodel.conf, that answer as the real ones do and record what they were
asked. The power phase runs alone (`--tags power`, preflight always runs)."""

from __future__ import annotations

import json

import pytest

from tests.lab.conftest import CLOCKS_UNIT, Playbook, thorfleet
from thorfleet.lab.thor import POWER_LOG

# thor02 only: these run beside thor01's first converge.
pytestmark = pytest.mark.beside_first_converge

POWER = ("site.yml", "-l", "thor02", "--tags", "power")
STORE = "/var/lib/thorfleet/jetson_clocks.conf"


def asked(on) -> list[str]:
    """What nvpmodel and jetson_clocks were asked to change (queries left out)."""
    lines = on(f"cat {POWER_LOG} 2>/dev/null || true").splitlines()
    return [line for line in lines if line not in ("nvpmodel -q", "jetson_clocks --show")]


def mode(on) -> str:
    return on("nvpmodel -q").splitlines()[0]


def said(run: Playbook) -> str:
    """The run's output with YAML's line folding undone."""
    return " ".join(run.output.split())


def test_a_mode_is_set_by_name_kept_with_its_clocks_and_shown(jetson, tmp_path):
    run = Playbook(*POWER, "-e", "thorfleet_power_mode=120W", "-e",
                   "thorfleet_jetson_clocks=true")
    assert run.rc == 0 and run.recap["thor02"]["changed"] == 1, run
    assert mode(jetson) == "NV Power Mode: 120W"
    # By name: 120W is mode 1 in this host's nvpmodel.conf.
    assert asked(jetson) == ["nvpmodel -m 1", f"jetson_clocks --store {STORE}", "jetson_clocks"]
    assert "clocks: maximum" in jetson("jetson_clocks --show")
    assert jetson(f"systemctl is-enabled {CLOCKS_UNIT.rsplit('/', 1)[1]}").strip() == "enabled"

    again = Playbook(*POWER, "-e", "thorfleet_power_mode=120W", "-e",
                     "thorfleet_jetson_clocks=true")
    assert again.rc == 0 and again.recap["thor02"]["changed"] == 0, again
    assert len(asked(jetson)) == 3

    status = thorfleet("status", "-l", "thor02", "--json")
    (host,) = json.loads(status.stdout)["hosts"]
    assert host["power"] == {"mode": "120W", "clocks": True}
    table = thorfleet("status", "-l", "thor02").stdout.splitlines()
    # thor02 has no services: its one row says so; power is its last column but memory.
    assert table[0].split()[-2] == "power" and table[1].split()[-2] == "120W+clocks"

    bench = Playbook("playbooks/bench.yml", "-l", "thor02", "-e",
                     f"service_bench_results_dir={tmp_path}")
    assert bench.rc == 0, bench
    recorded = json.loads((tmp_path / "thor02.json").read_text())
    assert recorded["power"] == {"mode": "120W", "mode_id": 1, "jetson_clocks": True}

    # Clocks no longer wanted: thorfleet's unit goes, and the mode's own clocks come back.
    off = Playbook(*POWER, "-e", "thorfleet_power_mode=120W")
    assert off.rc == 0 and off.recap["thor02"]["changed"] == 1, off
    assert asked(jetson)[-1] == f"jetson_clocks --restore {STORE}"
    assert "clocks: the power mode's defaults" in jetson("jetson_clocks --show")
    assert jetson(f"test -e {CLOCKS_UNIT} && echo kept || echo gone").strip() == "gone"


def test_a_mode_the_host_does_not_have_is_refused_naming_those_it_has(jetson):
    run = Playbook(*POWER, "-e", "thorfleet_power_mode=MAXQ")
    assert run.rc != 0, run
    assert run.recap["thor02"]["failed"] == 1 and run.recap["thor02"]["changed"] == 0, run
    assert ("thor02 is not fit for thorfleet: thorfleet_power_mode 'MAXQ' is not a power "
            "mode of this host; its modes (/etc/nvpmodel.conf): MAXN (0), 120W (1), 90W (2), "
            "70W (3)") in said(run), run
    assert asked(jetson) == [] and mode(jetson) == "NV Power Mode: MAXN"


def test_a_mode_that_needs_a_reboot_is_reported_and_the_host_left_serving(jetson):
    boot = jetson("cat /proc/sys/kernel/random/boot_id")
    run = Playbook(*POWER, "-e", "thorfleet_power_mode=90W")
    assert run.rc == 0 and run.recap["thor02"]["changed"] == 0, run
    assert ("thor02: power mode 90W needs a reboot (nvpmodel says so); the host stays at "
            "MAXN until it reboots into it. Set thorfleet_allow_reboot to true") in said(run), run
    # nvpmodel was asked and said no; the host did not reboot.
    assert asked(jetson) == ["nvpmodel -m 2"]
    assert mode(jetson) == "NV Power Mode: MAXN"
    assert jetson("cat /proc/sys/kernel/random/boot_id") == boot


def test_with_reboots_allowed_the_host_reboots_into_the_mode_and_keeps_its_clocks(jetson):
    boot = jetson("cat /proc/sys/kernel/random/boot_id")
    args = ("-e", "thorfleet_power_mode=90W", "-e", "thorfleet_jetson_clocks=true",
            "-e", "thorfleet_allow_reboot=true")
    run = Playbook(*POWER, *args)
    assert run.rc == 0, run
    assert jetson("cat /proc/sys/kernel/random/boot_id") != boot
    assert mode(jetson) == "NV Power Mode: 90W"
    # The clocks unit put the mode's own clocks back on the way down, and raised the new
    # mode's at boot.
    record = asked(jetson)
    rebooted = record.index("reboot for mode 2")
    assert record[rebooted + 1:] == [f"jetson_clocks --restore {STORE}",
                                     f"jetson_clocks --store {STORE}", "jetson_clocks"], record
    assert "clocks: maximum" in jetson("jetson_clocks --show")
    again = Playbook(*POWER, *args)
    assert again.rc == 0 and again.recap["thor02"]["changed"] == 0, again

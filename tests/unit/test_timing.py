"""The suite's own bookkeeping under two workers: which worker a test goes to, when the unit
tests leave the cores to thor01's first converge, and what a worker records reaching the
summary (tests/conftest.py, tests/timing.py)."""

from __future__ import annotations

import subprocess
import tempfile
import threading
from types import SimpleNamespace

import pytest

from tests import timing
from tests.conftest import (
    converge_file,
    hold_while_first_converge_runs,
    wait_until_first_converge_over,
    work_unit,
)


def test_every_lab_test_is_one_unit_of_work_and_each_other_test_its_own():
    lab = {work_unit("tests/lab/test_rollout.py::test_a"),
           work_unit("tests/lab/test_site.py::test_b[stock-sample]"),
           work_unit("tests/lab/test_bundle.py::test_c")}
    assert lab == {"tests/lab"}
    unit = "tests/unit/test_fleet.py::test_d"
    assert work_unit(unit) == unit
    assert work_unit("tests/unit/test_lab_profile.py::test_e") != "tests/lab"


@pytest.fixture
def area():
    """A made-up lab module's area in the summary, removed again after the test."""
    name = "tests/lab/test_made_up_for_timing.py"
    yield name
    for counted in (timing._tests, timing._runs, timing._fixtures):
        for key in [key for key in counted if str(key).startswith(name)]:
            del counted[key]
    timing._phases.pop("a made-up phase", None)


def report_of(nodeid: str):
    """A report as xdist hands the controller one: only its fields, no live objects."""
    report = SimpleNamespace(nodeid=nodeid, duration=2.0, user_properties=[])
    timing.attach_pending(report)
    return report


def test_a_workers_runs_fixtures_and_phases_reach_the_summary_with_its_report(area):
    timing.record_run(3.0, ["ansible-playbook", "made-up.yml"])
    timing.record_run(4.5, ["ansible-playbook", "made-up.yml"])
    timing.record_phase("a made-up phase", 1.5)
    timing._pending.setdefault("fixtures", []).append(["thor01 (module)", 6.0])
    report = report_of(f"{area}::test_x")
    assert not timing._pending  # sent with this report, not again with the next
    timing.pytest_runtest_logreport(report)
    assert timing._runs[area] == [2, 7.5]
    assert timing._fixtures[area] == [("thor01 (module)", 6.0)]
    assert timing._phases["a made-up phase"] == (f"{area}::test_x", 1.5)
    assert timing._tests[f"{area}::test_x"] == 2.0
    # A report with nothing recorded counts its duration only.
    timing.pytest_runtest_logreport(report_of(f"{area}::test_y"))
    assert timing._runs[area] == [2, 7.5]


def test_unit_tests_hold_while_the_first_converge_runs_and_not_after(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("THORFLEET_TESTS_CONVERGE_FILE", raising=False)
    config = SimpleNamespace(workerinput={"testrunuid": "made-up-run"})
    published = converge_file(config)
    assert published.parent == tmp_path
    # No converge started (yet, or at all): no wait.
    assert hold_while_first_converge_runs(config, bound=8) < 1
    # A converge that runs for 2 s (and is not waited for at once: a zombie then, as the
    # lab's worker waits for it only when a test needs it).
    converge = subprocess.Popen(["sleep", "2"])
    published.write_text(f"{converge.pid}\n")
    try:
        assert 1.5 <= hold_while_first_converge_runs(config, bound=8) < 8
        assert hold_while_first_converge_runs(config, bound=8) < 1
    finally:
        converge.kill()
        converge.wait()
    published.write_text("over\n")
    assert hold_while_first_converge_runs(config, bound=8) < 1
    # Without workers, and without `make test`'s file, there is nothing to hold for.
    assert converge_file(SimpleNamespace()) is None
    assert hold_while_first_converge_runs(SimpleNamespace(), bound=8) < 1
    # `make test` names the file for both labs' sessions.
    monkeypatch.setenv("THORFLEET_TESTS_CONVERGE_FILE", str(tmp_path / "named"))
    assert converge_file(SimpleNamespace()) == tmp_path / "named"


def test_the_second_lab_waits_for_the_first_labs_converge_even_before_it_starts(tmp_path):
    published = tmp_path / "converge"
    writer = threading.Timer(1.5, published.write_text, ["over\n"])
    writer.start()
    try:
        assert 1.2 <= wait_until_first_converge_over(published, bound=8) < 8
    finally:
        writer.cancel()
    assert wait_until_first_converge_over(published, bound=8) < 1
    # Nothing ever written: it gives up at its bound and goes on.
    assert 1.5 <= wait_until_first_converge_over(tmp_path / "never", bound=1.5) < 5

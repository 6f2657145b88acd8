"""Where the suite's time goes, printed at the end of every run: lint (timed by `make test`,
passed as THORFLEET_LINT_SECONDS), the unit tests, the lab's bring-up and take-down, each
lab module (with the fixtures it shares among its tests), the ten slowest tests, and the
total against the suite's budget (pyproject.toml, `suite_budget_minutes`), so that growth
is seen at once. Times are wall-clock seconds of each test's setup, call and teardown.

The hooks are pytest's own; tests/conftest.py brings them in. `make test` runs the suite on
two pytest-xdist workers (the lab tests on one, the unit tests beside them on the other):
what a worker records (ansible-playbook runs, shared fixtures, the lab's phases) travels
to the controller with each test report (`user_properties`), and is counted there, the
same way in a run without workers.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict

import pytest

# What the running test recorded since its last report, sent with the next one:
# {"phases": {phase: seconds}, "fixtures": [[name, seconds]], "runs": [count, seconds]}.
# The lab's phases are the lab session fixture's own (tests/lab/conftest.py).
_pending: dict = {}
_running = {"nodeid": ""}
PROPERTY = "thorfleet-timing"
# Counted from the reports (on the controller under xdist).
_tests: dict[str, float] = defaultdict(float)
_fixtures: dict[str, list[tuple[str, float]]] = defaultdict(list)
_phases: dict[str, tuple[str, float]] = {}  # phase: (the test that ran it, seconds)
# ansible-playbook runs per area: [count, seconds].
_runs: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
_started = time.monotonic()


def record_phase(phase: str, seconds: float) -> None:
    """A phase of the lab itself (bring-up, thor01's first converge, take-down), run in the
    setup or teardown of the running test."""
    _pending.setdefault("phases", {})[phase] = seconds


def pytest_addoption(parser):
    parser.addini("suite_budget_minutes", "The suite's budget: `make test`'s lint and tests, "
                  "in minutes, on the 2-core CI machine", default="35")


def record_run(seconds: float, argv: list[str] | None = None) -> None:
    """One ansible-playbook run of the running test (tests/lab/conftest.py's Playbook)."""
    runs = _pending.setdefault("runs", [0, 0.0])
    runs[0] += 1
    runs[1] += seconds
    record_command(argv or ["ansible-playbook"], seconds)


def record_command(argv: list[str], seconds: float) -> None:
    """With THORFLEET_RUN_LOG set, each command a lab test starts (an ansible-playbook
    run, a thorfleet command) is appended to that file as a JSON line: the test, the
    command, its seconds. For finding which runs a change could save."""
    path = os.environ.get("THORFLEET_RUN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"test": _running["nodeid"], "argv": argv,
                                  "seconds": round(seconds, 1)}) + "\n")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logstart(nodeid, location):
    _running["nodeid"] = nodeid


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    start = time.monotonic()
    try:
        return (yield)
    finally:
        if fixturedef.scope in ("module", "class", "session"):
            _pending.setdefault("fixtures", []).append(
                [f"{fixturedef.argname} ({fixturedef.scope})", time.monotonic() - start])


def attach_pending(report) -> None:
    """What the running test recorded since its last report goes with this one."""
    if _pending:
        report.user_properties.append((PROPERTY, dict(_pending)))
        _pending.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    attach_pending(report)
    return report


def pytest_runtest_logreport(report):
    _tests[report.nodeid] += report.duration
    area = _area(report.nodeid)
    for name, recorded in report.user_properties:
        if name != PROPERTY:
            continue
        for phase, seconds in recorded.get("phases", {}).items():
            _phases[phase] = (report.nodeid, seconds)
        _fixtures[area] += [tuple(fixture) for fixture in recorded.get("fixtures", [])]
        count, seconds = recorded.get("runs", (0, 0.0))
        _runs[area][0] += count
        _runs[area][1] += seconds


def _area(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "unit tests" if path.startswith("tests/unit/") else path


def _workers(config) -> int:
    """How many pytest-xdist workers ran the tests (0 without xdist)."""
    return int(getattr(config.option, "numprocesses", 0) or 0)


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def pytest_terminal_summary(terminalreporter, config):
    if not _tests:
        return
    areas: dict[str, float] = defaultdict(float)
    for nodeid, seconds in _tests.items():
        areas[_area(nodeid)] += seconds
    rows = []
    lint = os.environ.get("THORFLEET_LINT_SECONDS", "")
    if lint.isdigit():
        rows.append(("lint (ruff, yamllint, ansible-lint)", float(lint)))
    phases = []
    for phase, (nodeid, seconds) in sorted(_phases.items()):
        areas[_area(nodeid)] -= seconds  # it ran in that test's setup or teardown
        phases.append((phase, seconds))
    if "unit tests" in areas:
        beside = " (on a second worker, beside the lab)" if _workers(config) > 1 else ""
        rows.append((f"unit tests{beside}", areas.pop("unit tests")))
    rows += phases + sorted(areas.items())
    write = terminalreporter.write_line
    terminalreporter.section("where the time went")
    for name, seconds in rows:
        count, spent = _runs.get(name, (0, 0.0))
        runs = f" ({count} ansible-playbook runs, {minutes(spent)})" if count else ""
        write(f"{minutes(seconds):>14}  {name}{runs}")
        shared = sorted(_fixtures.get(name, []), key=lambda f: -f[1])
        for fixture, spent in shared:
            if spent >= 30 and not fixture.startswith("lab ("):
                write(f"{'':>14}    of which fixture {fixture}: {minutes(spent)}")
    write("ten slowest tests (setup, call and teardown):")
    for nodeid, seconds in sorted(_tests.items(), key=lambda t: -t[1])[:10]:
        write(f"{minutes(seconds):>14}  {nodeid}")
    total = time.monotonic() - _started + (float(lint) if lint.isdigit() else 0)
    part = os.environ.get("THORFLEET_SUITE_PART")  # one of `make test`'s two (tests/suite.py)
    if part:
        write(f"{part}: {minutes(total)} (the suite's total and budget: at the end)")
        return
    line, over = verdict(total, float(config.getini("suite_budget_minutes")) * 60)
    write(line, bold=True, red=over)


def verdict(total: float, budget: float) -> tuple[str, bool]:
    """The suite's last line, and whether it is over its budget."""
    over = total > budget
    return (f"suite: {minutes(total)}, {'OVER' if over else 'within'} its budget of "
            f"{minutes(budget)} (README, Tests)"), over

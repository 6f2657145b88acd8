"""Shared test helpers: load thorfleet's Ansible modules and filters as Python modules."""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import ansible.module_utils
import pytest
import yaml
from ansible.module_utils.testing import patch_module_args

# Where the suite's time goes, printed at the end of every run (tests/timing.py).
from tests.timing import (  # noqa: F401
    pytest_addoption,
    pytest_fixture_setup,
    pytest_runtest_logreport,
    pytest_runtest_logstart,
    pytest_runtest_makereport,
    pytest_terminal_summary,
    record_phase,
)
from thorfleet import catalogue

ROOT = Path(__file__).resolve().parents[1]

# The code the filters and the pipeline's action plugin share, the collection thorfleet.lib
# (collections/ beside site.yml, where ansible-playbook finds it): importable here too.
if str(ROOT / "collections") not in sys.path:
    sys.path.append(str(ROOT / "collections"))
PLUGIN_UTILS = "ansible_collections.thorfleet.lib.plugins.plugin_utils"


def plugin_utils(name: str):
    """A module of the collection's plugin_utils (rules, models, services, artefacts)."""
    return importlib.import_module(f"{PLUGIN_UTILS}.{name}")

# The shared settings' defaults, as a fleet gets them when its inventory says nothing.
SHARED_DEFAULTS = yaml.safe_load((ROOT / "roles/thorfleet/defaults/main.yml").read_text())
BUILDS_ROOT = SHARED_DEFAULTS["ggml_build_root"]


# Roles' own module_utils (roles/<role>/module_utils), which Ansible makes importable as
# ansible.module_utils.<name> for the role's modules: the same for modules loaded here.
ansible.module_utils.__path__.extend(
    str(p) for p in sorted(ROOT.glob("roles/*/module_utils"))
    if str(p) not in ansible.module_utils.__path__)


def load(relative: str):
    """Import a file of the project (a module in library/ or a role's library/, a filter
    plugin) by path."""
    path = ROOT / relative
    name = "thorfleet_test_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The recipe catalogue as every role reads it: the project's catalogue/ folder, read by the
# roles' lookup (thorfleet.catalogue), with recipes that extend another resolved and every
# entry checked by the filter the roles use (merge_catalogue).
CATALOGUE = load("filter_plugins/catalogue.py").merge_catalogue(catalogue.load(ROOT))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


class ModuleDone(Exception):
    """How a module run through run_module ended: failed or not, and its result."""

    def __init__(self, failed: bool, result: dict):
        super().__init__(result.get("msg", ""))
        self.failed = failed
        self.result = result


def run_module(module, args: dict, monkeypatch, check: bool = False) -> ModuleDone:
    """Run a module's main() with args, as Ansible would, and return how it ended."""

    def exit_json(self, **kwargs):
        raise ModuleDone(False, kwargs)

    def fail_json(self, **kwargs):
        raise ModuleDone(True, kwargs)

    monkeypatch.setattr(module.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(module.AnsibleModule, "fail_json", fail_json)
    with patch_module_args({**args, "_ansible_check_mode": check}), \
            pytest.raises(ModuleDone) as done:
        module.main()
    return done.value


@contextlib.contextmanager
def loopback_server(handler: type[http.server.BaseHTTPRequestHandler]):
    """An HTTP server on the loopback address answering with `handler`, for the length of
    the block; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to under pytest-xdist (`make test` runs two
    workers): every lab test is in one, run by one worker in order (they share one lab),
    and each other test is a unit of its own."""
    return "tests/lab" if nodeid.startswith("tests/lab/") else nodeid


def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, with `work_unit` as the scope. The largest unit goes
    first: the lab starts at once on one worker, and the unit tests run on the other
    beside it. (xdist's own `--dist loadgroup` names the group in the node id, which
    pytest 9.2 no longer lets a plugin change.)"""
    from xdist.scheduler import LoadScopeScheduling

    class LabApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return LabApart(config, log)


def converge_file(config) -> Path | None:
    """Where the worker that runs the lab tests writes the pid of thor01's first converge
    while it runs, and `over` after (tests/lab/conftest.py): THORFLEET_TESTS_CONVERGE_FILE
    when `make test` sets it (its second lab's session reads it too, tests/suite.py), else
    under pytest-xdist a file of the run's own, shared by its workers; None otherwise."""
    if os.environ.get("THORFLEET_TESTS_CONVERGE_FILE"):
        return Path(os.environ["THORFLEET_TESTS_CONVERGE_FILE"])
    run = getattr(config, "workerinput", {}).get("testrunuid")
    return Path(tempfile.gettempdir()) / f"thorfleet-tests-{run}.converge" if run else None


def converge_running(path: Path | None) -> bool | None:
    """True while the converge written to `path` runs; False once it is `over` or its
    process has ended (a zombie not yet waited for by the lab's worker included); None
    while nothing is written (none started yet, or none at all)."""
    try:
        said = path.read_text().strip() if path is not None else ""
    except OSError:
        said = ""
    if not said:
        return None
    if not said.isdigit():
        return False  # over
    try:
        stat = Path(f"/proc/{said}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# The longest a test waits for thor01's first converge: its own bound (a playbook run's,
# tests/lab/conftest.py), after which it is killed anyway.
HOLD_BOUND = 2400


def hold_while_first_converge_runs(config, bound: float = HOLD_BOUND) -> float:
    """While thor01's first converge runs (two engines compiled on 2 cores, the longest
    part of the lab's start), the unit tests on the other worker wait between tests and
    leave it the cores; they run during the lab's bring-up before it and beside the lab
    tests after it, which leave a core idle. Returns the seconds waited."""
    path = converge_file(config)
    start = time.monotonic()
    while converge_running(path) and time.monotonic() - start < bound:
        time.sleep(0.5)
    return time.monotonic() - start


def wait_until_first_converge_over(path: Path, bound: float = HOLD_BOUND) -> float:
    """Wait until the converge written to `path` is over, also while nothing is written
    yet (the second lab's session, whose hosts share the first lab's compiler cache: its
    own builds then hit it). Returns the seconds waited; at `bound` it goes on anyway."""
    start = time.monotonic()
    while converge_running(path) is not False and time.monotonic() - start < bound:
        time.sleep(0.5)
    return time.monotonic() - start


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if work_unit(item.nodeid) == item.nodeid:  # not a lab test
        waited = hold_while_first_converge_runs(item.config)
        if waited >= 1:
            record_phase("unit tests held while thor01's first converge ran "
                         "(leaving it the cores)", waited)

"""`make test`'s tests: two pytest sessions at once, each with a lab of its own on this
machine, so that both cores work through the lab tests (one Ansible run at a time keeps
one core busy, and the lab tests are runs one after another).

- In this checkout, lab 0: `pytest -n 2` over tests/ but the second lab's modules: the
  unit tests on one worker, the other lab tests on the other (tests/conftest.py).
- In a copy of this checkout (its tracked files and the untracked ones git does not
  ignore) under .lab-1/checkout, lab 1 (THORFLEET_LAB_NUMBER=1): the modules and tests
  of SECOND_LAB, one after another. Its output goes to .lab-1/pytest.log and is printed
  after the first session's.

The second lab's thor01 converges once the first lab's has, so that its engines' builds
hit the compiler cache the labs share (THORFLEET_TESTS_CONVERGE_FILE, which the first
session writes, and THORFLEET_TESTS_AFTER_CONVERGE, which the second reads). Each session
has a bound; the total is checked against the suite's budget (pyproject.toml).

    python -m tests.suite [pytest arguments for both sessions]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

from tests.timing import minutes, verdict
from thorfleet import bounded

ROOT = Path(__file__).resolve().parents[1]
SECOND = ROOT / ".lab-1"
CHECKOUT = SECOND / "checkout"
# The second lab's modules: the fleet's (rollouts, fetching once per fleet, the bundle)
# and the power tests (thor02 only: they run while its thor01 waits for the first lab's
# converge), so that both sessions take about as long.
SECOND_LAB = ("tests/lab/test_power.py", "tests/lab/test_rollout.py",
              "tests/lab/test_fleet_fetch.py", "tests/lab/test_bundle.py",
              # Preflight on thor01 (marked before_first_converge): run while this lab
              # waits for the first lab's converge, when the machine has a core to spare.
              "tests/lab/test_docs.py::test_an_inventory_snippet_passes_preflight")
# Both sessions end within this (CI stops the whole job at 90 minutes).
BOUND = 85 * 60


def copy_checkout() -> None:
    """This checkout's files as they are now (changes not committed included) in
    CHECKOUT, after bringing down a lab 1 that a stopped run left up there."""
    bring_down_second_lab()
    copy_tree(ROOT, CHECKOUT)


def copy_tree(source: Path, target: Path) -> None:
    """A git work tree's files as they are (tracked, and untracked ones git does not
    ignore; tracked ones deleted and not yet committed left out) in `target`, made anew."""
    shutil.rmtree(target, ignore_errors=True)
    listed = bounded.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         120, cwd=source, check=True).stdout
    for name in filter(None, listed.split("\0")):
        here, there = source / name, target / name
        if not here.exists() and not here.is_symlink():
            continue
        there.parent.mkdir(parents=True, exist_ok=True)
        if here.is_symlink():
            there.symlink_to(os.readlink(here))
        else:
            shutil.copy2(here, there)


def left_out(selected: str) -> str:
    """The first session's argument that leaves out a module or test of SECOND_LAB."""
    return f"--deselect={selected}" if "::" in selected else f"--ignore={selected}"


def second_lab_env() -> dict[str, str]:
    env = {**os.environ, "THORFLEET_LAB_NUMBER": "1"}
    env.pop("THORFLEET_LINT_SECONDS", None)  # counted once, by the first session
    return env


def bring_down_second_lab() -> None:
    if (CHECKOUT / ".lab" / "number").exists():
        down = bounded.run(["thorfleet", "lab", "down"], 600, cwd=CHECKOUT,
                           env=second_lab_env())
        print(down.stdout + down.stderr, end="", flush=True)


def session(argv: list[str], cwd: Path, env: dict, stdout=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pytest", *argv], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.STDOUT if stdout else None,
                            start_new_session=True)


def finished(proc: subprocess.Popen, deadline: float, name: str) -> int:
    """Its exit status; past `deadline`, the session and what it started are stopped
    (SIGINT first, as a Ctrl-C: pytest then runs its teardowns, the lab's included)."""
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        print(f"\ntests.suite: {name} ran past its bound of {minutes(BOUND)}: stopped",
              file=sys.stderr)
        stop(proc)
        return 124


def stop(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGINT, 300), (signal.SIGKILL, 60)):
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


def main(args: list[str]) -> int:
    started = time.monotonic()
    deadline = started + BOUND
    copy_checkout()
    log_path = SECOND / "pytest.log"
    print(f"tests.suite: the fleet modules and a few more run on a second lab beside these "
          f"tests, in "
          f"{CHECKOUT.relative_to(ROOT)}; their output is printed at the end (and kept in "
          f"{log_path.relative_to(ROOT)})", flush=True)
    with tempfile.TemporaryDirectory(prefix="thorfleet-suite-") as scratch, \
            open(log_path, "w") as log:
        told = Path(scratch) / "converge"
        second = session(["-q", "--durations=10", *args, *SECOND_LAB], CHECKOUT,
                         {**second_lab_env(), "THORFLEET_TESTS_AFTER_CONVERGE": str(told),
                          "THORFLEET_SUITE_PART": "the second lab's session"}, stdout=log)
        first = session(["-q", "-n", "2", "--durations=10", *args, "tests",
                         *map(left_out, SECOND_LAB)], ROOT,
                        {**os.environ, "THORFLEET_TESTS_CONVERGE_FILE": str(told),
                         "THORFLEET_SUITE_PART": "this session"})
        try:
            first_rc = finished(first, deadline, "the first session")
            told.write_text("over\n")  # however it ended, nothing more comes from it
            second_rc = finished(second, deadline, "the second lab's session")
        except KeyboardInterrupt:
            stop(first)
            stop(second)
            raise
        finally:
            bring_down_second_lab()  # only when its session could not
    title = f" the second lab (lab 1): {', '.join(Path(m).name for m in SECOND_LAB)} "
    print(f"\n{title:=^79}")
    print(log_path.read_text(), end="", flush=True)
    lint = os.environ.get("THORFLEET_LINT_SECONDS", "")
    total = time.monotonic() - started + (float(lint) if lint.isdigit() else 0)
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())
    line, _over = verdict(total, float(
        settings["tool"]["pytest"]["ini_options"]["suite_budget_minutes"]) * 60)
    print(f"\n{line}; sessions: {'passed' if first_rc == 0 else f'failed ({first_rc})'}"
          f" here, {'passed' if second_rc == 0 else f'failed ({second_rc})'} on lab 1")
    return first_rc or second_rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

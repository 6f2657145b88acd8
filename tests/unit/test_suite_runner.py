"""`make test`'s two sessions (tests/suite.py): the second lab's checkout is this one's
files as they are, a session past its bound is stopped, failing the suite, and the two
sessions split the lab tests between them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests import suite
from thorfleet import bounded


def git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=60)


def test_the_copy_holds_the_work_tree_as_it_is_and_nothing_git_ignores(tmp_path):
    repo, copy = tmp_path / "repo", tmp_path / "copy"
    (repo / "roles").mkdir(parents=True)
    (repo / ".gitignore").write_text(".lab/\n")
    (repo / "roles/tracked.yml").write_text("committed\n")
    (repo / "gone.yml").write_text("deleted later\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (repo / "roles/tracked.yml").write_text("changed, not committed\n")
    (repo / "roles/new.yml").write_text("untracked\n")
    (repo / "gone.yml").unlink()
    (repo / ".lab").mkdir()
    (repo / ".lab/state").write_text("ignored\n")
    (copy / "stale").mkdir(parents=True)
    suite.copy_tree(repo, copy)
    files = sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file())
    assert files == [".gitignore", "roles/new.yml", "roles/tracked.yml"]
    assert (copy / "roles/tracked.yml").read_text() == "changed, not committed\n"


def test_a_session_past_its_bound_is_stopped_and_fails():
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    start = time.monotonic()
    assert suite.finished(proc, time.monotonic() + 1, "a made-up session") == 124
    assert proc.poll() is not None and time.monotonic() - start < 30
    done = subprocess.Popen(["true"], start_new_session=True)
    assert suite.finished(done, time.monotonic() + 30, "a made-up session") == 0


def collected(*selection: str, env: dict | None = None) -> list[str]:
    """The node ids pytest selects, in the order it would run them (no lab is started
    for a collection)."""
    proc = bounded.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", *selection], 300, cwd=suite.ROOT,
                       env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_the_two_sessions_split_the_lab_tests_none_left_out_none_run_twice():
    first = collected("tests/lab", *map(suite.left_out, suite.SECOND_LAB))
    second = collected(*suite.SECOND_LAB)
    everything = collected("tests/lab")
    assert second and not set(first) & set(second)
    assert sorted(first + second) == sorted(everything)


def test_the_second_lab_runs_its_preflight_tests_while_it_waits_for_the_first_labs(tmp_path):
    # In the second lab's session, the tests marked before_first_converge run with those
    # beside it (the power tests), before the tests that need its thor01 converged; in
    # any other session, after its first converge, with the rest.
    def order(env):
        ids = collected(*suite.SECOND_LAB, env=env)
        first_converged = next(i for i, node in enumerate(ids) if "test_rollout.py" in node)
        return [i < first_converged for i, node in enumerate(ids)
                if "test_an_inventory_snippet_passes_preflight" in node]
    waiting = order({"THORFLEET_TESTS_AFTER_CONVERGE": str(tmp_path / "converge")})
    assert waiting and all(waiting)
    assert not any(order({"THORFLEET_TESTS_AFTER_CONVERGE": ""}))

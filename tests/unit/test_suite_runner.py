"""`make test`'s two sessions (tests/suite.py): the second lab's checkout is this one's
files as they are, and a session past its bound is stopped, failing the suite."""

from __future__ import annotations

import subprocess
import time

from tests import suite


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

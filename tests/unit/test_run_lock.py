"""The run lock: thorfleet_run_lock (one run of site.yml at a time per host) and the
filters that name a run and judge whether the run holding a lock is gone
(filter_plugins/runlock.py). The playbooks around them are run by
tests/unit/test_rollout_play.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import load, run_module

run_lock = load("library/thorfleet_run_lock.py")
runlock = load("filter_plugins/runlock.py")
MINE = {"run": "me@here:10:2026-12-05T10:00:00Z", "holder": "me@here", "controller": "here",
        "pid": 10, "since": "2026-12-05T10:00:00Z"}
OTHER = {**MINE, "run": "you@there:20:2026-12-05T09:00:00Z", "holder": "you@there",
         "controller": "there", "pid": 20, "since": "2026-12-05T09:00:00Z"}


def lock(tmp_path, monkeypatch, **args):
    path = tmp_path / "run" / "thorfleet" / "run.lock"
    return run_module(run_lock, {"path": str(path), **args}, monkeypatch), path


def test_a_free_host_is_locked_for_the_run_and_again_by_the_same_run(tmp_path, monkeypatch):
    done, path = lock(tmp_path, monkeypatch, run=MINE)
    assert not done.failed and done.result["changed"] and done.result["acquired"]
    assert json.loads(path.read_text()) == MINE
    again, _ = lock(tmp_path, monkeypatch, run=MINE)
    assert again.result["acquired"] and not again.result["changed"]


def test_a_lock_another_run_holds_is_reported_and_left_as_it_is(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, run=OTHER)
    done, path = lock(tmp_path, monkeypatch, run=MINE)
    assert not done.failed and not done.result["acquired"] and not done.result["changed"]
    assert done.result["locked_by"] == OTHER
    assert json.loads(path.read_text()) == OTHER
    # Taken over only from the run named as gone.
    wrong, _ = lock(tmp_path, monkeypatch, run=MINE, replace="someone@else:1:x")
    assert not wrong.result["acquired"] and json.loads(path.read_text()) == OTHER
    taken, _ = lock(tmp_path, monkeypatch, run=MINE, replace=OTHER["run"])
    assert taken.result["acquired"] and taken.result["changed"]
    assert taken.result["locked_by"] == OTHER and json.loads(path.read_text()) == MINE


def test_a_file_that_is_no_lock_is_held_by_an_unknown_run(tmp_path, monkeypatch):
    path = tmp_path / "run" / "thorfleet" / "run.lock"
    path.parent.mkdir(parents=True)
    for text in ("not json", "[]", '{"run": 5}'):
        path.write_text(text)
        done, _ = lock(tmp_path, monkeypatch, run=MINE, replace="")
        assert not done.result["acquired"], text
        assert done.result["locked_by"]["holder"] == "unknown (not a lock file)"
        assert path.read_text() == text


def test_only_the_run_that_holds_the_lock_releases_it_unless_forced(tmp_path, monkeypatch):
    _, path = lock(tmp_path, monkeypatch, run=OTHER)
    kept, _ = lock(tmp_path, monkeypatch, run=MINE, state="absent")
    assert not kept.result["changed"] and path.exists()
    cleared, _ = lock(tmp_path, monkeypatch, state="absent", force=True)
    assert cleared.result["changed"] and cleared.result["locked_by"] == OTHER
    assert not path.exists()
    lock(tmp_path, monkeypatch, run=MINE)
    released, _ = lock(tmp_path, monkeypatch, run=MINE, state="absent")
    assert released.result["changed"] and not path.exists()
    nothing, _ = lock(tmp_path, monkeypatch, run=MINE, state="absent")
    assert not nothing.result["changed"] and nothing.result["locked_by"] == {}


@pytest.mark.parametrize("run", [{}, {"run": ""}, {"run": 5}])
def test_a_run_without_a_name_is_refused(tmp_path, monkeypatch, run):
    done, path = lock(tmp_path, monkeypatch, run=run)
    assert done.failed and done.result["msg"].startswith("run: ")
    assert not path.exists()


def test_a_run_is_named_by_its_user_controller_playbook_and_time():
    # Not under ansible-playbook: no process to name (pid 0), so never judged gone.
    me = runlock.run_identity("2026-12-05T10:00:00Z")
    assert me["controller"] == socket.gethostname() and me["holder"].endswith(
        "@" + socket.gethostname())
    assert me["pid"] == 0 and me["run"] == f"{me['holder']}:0:2026-12-05T10:00:00Z"
    assert not runlock.run_lock_stale(me)


def test_the_outermost_ansible_playbook_names_the_run(tmp_path):
    # A process named ansible-playbook whose child is one too (Ansible's workers are forks
    # of it, with its command line): the filter, run in the child, names the outer one.
    inner, outer = tmp_path / "inner.py", tmp_path / "outer.py"
    inner.write_text(f"import sys; sys.path.insert(0, {os.path.dirname(runlock.__file__)!r})\n"
                     "import runlock; print(runlock.run_identity('t')['pid'])\n")
    outer.write_text("import os, subprocess\n"
                     f"subprocess.run(['bash', '-c', 'exec -a ansible-playbook {sys.executable} "
                     f"{inner}'], check=True, timeout=30)\n"
                     "print(os.getpid())\n")
    ran = subprocess.run(["bash", "-c", f"exec -a ansible-playbook {sys.executable} {outer}"],
                         capture_output=True, text=True, timeout=60, check=True)
    named, outer_pid = ran.stdout.split()
    assert named == outer_pid, ran.stdout


def live_playbook():
    """A process whose command line is ansible-playbook's, once it is."""
    live = subprocess.Popen(["bash", "-c", "exec -a ansible-playbook sleep 60"])
    for _ in range(100):
        if runlock._is_ansible_playbook(live.pid):
            return live
        time.sleep(0.05)
    live.kill()
    raise AssertionError("the stand-in ansible-playbook did not start")


def test_a_run_of_this_controller_is_gone_when_its_playbook_no_longer_runs():
    here = socket.gethostname()
    ended = subprocess.run(["true"], check=True, timeout=30)
    assert ended.returncode == 0
    gone = subprocess.Popen(["true"])
    gone.wait(timeout=30)
    assert runlock.run_lock_stale({"controller": here, "pid": gone.pid})
    # A live process that is not ansible-playbook (its pid taken again): gone too.
    assert runlock.run_lock_stale({"controller": here, "pid": os.getpid()})
    with live_playbook() as live:
        try:
            assert not runlock.run_lock_stale({"controller": here, "pid": live.pid})
        finally:
            live.kill()
    # Another controller's run, or one without a usable pid, is never judged.
    assert not runlock.run_lock_stale({"controller": "elsewhere", "pid": gone.pid})
    for pid in (0, 1, True, "12", None, -5):
        assert not runlock.run_lock_stale({"controller": here, "pid": pid}), pid
    assert not runlock.run_lock_stale("not a lock")


def test_the_refusal_names_the_run_since_when_and_the_way_out():
    said = runlock.run_lock_refusal(OTHER, "thor07")
    assert said == ("thor07 is locked by another run of site.yml: the run of you@there "
                    "(ansible-playbook pid 20), since 2026-12-05T09:00:00Z. If that run is "
                    "over, clear its lock with: ansible-playbook playbooks/unlock.yml -l thor07")
    odd = runlock.run_lock_refusal({"holder": "x" * 500, "pid": 0}, "thor07")
    assert "x" * 120 + "," in odd and "x" * 121 not in odd and "pid" not in odd
    assert "the run of unknown, since an unknown time" in runlock.run_lock_refusal(None, "h")

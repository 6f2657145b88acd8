"""jit_caches: which images' compile caches a host holds, and a copy of a cache it lacks
from a peer, moved into place only once complete. rsync itself runs in the lab test
(tests/lab/test_fleet_fetch.py); here the module's run_command is given a copy that does
what rsync would, or fails as a peer that went away."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import load, run_module

jit_caches = load("roles/inference_services/library/jit_caches.py")

DIGEST = "sha256:" + "b" * 64
URL = "rsync://10.0.0.1:873/thorfleet-jit/sha256-" + "b" * 64


@pytest.fixture
def peer_tree(tmp_path):
    """What the peer holds of the digest's caches (a kernel vLLM compiled)."""
    tree = tmp_path / "peer"
    (tree / "root/.cache/vllm").mkdir(parents=True)
    (tree / "root/.cache/vllm/kernel.bin").write_bytes(b"\x7fELF kernels")
    return tree


@pytest.fixture
def rsync(monkeypatch, peer_tree):
    """run_command as rsync from the peer (or failing, with `calls.fail`)."""

    class Calls(list):
        fail = False

    calls = Calls()
    calls.warnings = []

    def run_command(self, argv, **_kwargs):
        calls.append(argv)
        dest = argv[-1]
        if calls.fail:  # a peer lost halfway: part of a file came over
            with open(os.path.join(dest, "half"), "w") as half:
                half.write("k")
            return 10, "", "rsync: failed to connect to 10.0.0.1: Connection refused (111)"
        shutil.copytree(peer_tree, dest, dirs_exist_ok=True)
        return 0, "", ""

    monkeypatch.setattr(jit_caches.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(jit_caches.AnsibleModule, "warn",
                        lambda self, warning: calls.warnings.append(warning))
    monkeypatch.setattr(jit_caches.AnsibleModule, "get_bin_path", lambda *a, **k: "rsync")
    return calls


def test_a_cache_this_host_lacks_is_copied_into_place(tmp_path, rsync, monkeypatch):
    root = tmp_path / "jit"
    # What the services role made for the image: its cache directories, empty.
    (root / ("sha256-" + "b" * 64) / "root/.triton").mkdir(parents=True)
    done = run_module(jit_caches, {"root": str(root), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL}]}, monkeypatch)
    assert not done.failed and done.result["changed"]
    # Copied, but not offered on: this host's own switch has not passed verify on it yet.
    assert done.result["copied"] == [DIGEST] and done.result["held"] == []
    place = root / ("sha256-" + "b" * 64)
    assert (place / "root/.cache/vllm/kernel.bin").read_bytes() == b"\x7fELF kernels"
    assert rsync[0][-2:] == [URL + "/", str(root / f".sha256-{'b' * 64}.partial") + "/"]
    # No link of the peer's that leads out of the cache comes over, nor the peer's mark.
    assert "--safe-links" in rsync[0] and "--exclude=/.thorfleet-complete" in rsync[0]
    assert sorted(os.listdir(root)) == ["sha256-" + "b" * 64]  # no partial left

    # There now: asked again, nothing is copied over it.
    again = run_module(jit_caches, {"root": str(root), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL}]}, monkeypatch)
    assert not again.result["changed"] and len(rsync) == 1


def test_a_failed_copy_is_a_warning_and_leaves_the_host_as_it_was(tmp_path, rsync,
                                                                   monkeypatch):
    root = tmp_path / "jit"
    (root / ("sha256-" + "b" * 64) / "root/.triton").mkdir(parents=True)
    rsync.fail = True
    done = run_module(jit_caches, {"root": str(root), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL}]}, monkeypatch)
    # Not `failed` in the result: Ansible would fail the task (and the host's switch).
    assert not done.failed and not done.result["changed"] and "failed" not in done.result
    assert done.result["not_copied"] == [{"digest": DIGEST, "peer": "thor01", "error":
                                          "rsync: failed to connect to 10.0.0.1: Connection "
                                          "refused (111)"}]
    assert "the engine compiles them" in rsync.warnings[0]
    assert sorted(os.listdir(root)) == ["sha256-" + "b" * 64]
    assert not list((root / ("sha256-" + "b" * 64)).rglob("half"))


def test_held_counts_only_caches_marked_complete(tmp_path, monkeypatch):
    root = tmp_path / "jit"
    (root / ("sha256-" + "a" * 64) / "root/.triton").mkdir(parents=True)  # made, never used
    for digit in "cd":  # both written by an engine; c's host passed verify on it
        (root / ("sha256-" + digit * 64) / "x").mkdir(parents=True)
        (root / ("sha256-" + digit * 64) / "x/k").write_text("k")
    (root / ("sha256-" + "c" * 64) / ".thorfleet-complete").write_text("")
    (root / "not-a-digest").mkdir()
    (root / "not-a-digest/k").write_text("k")
    (root / "not-a-digest/.thorfleet-complete").write_text("")
    done = run_module(jit_caches, {"root": str(root)}, monkeypatch)
    assert done.result["held"] == ["sha256:" + "c" * 64] and not done.result["changed"]
    assert run_module(jit_caches, {"root": str(tmp_path / "none")}, monkeypatch
                      ).result["held"] == []


def test_a_cache_is_offered_only_once_its_host_marked_it_after_verify(tmp_path, monkeypatch):
    # The switch marks the caches of a host's images once its services passed verify; a
    # host whose switch failed marks nothing, and its partial cache is never offered.
    root = tmp_path / "jit"
    partial = root / ("sha256-" + "d" * 64)
    (partial / "root/.cache/vllm").mkdir(parents=True)
    (partial / "root/.cache/vllm/half-compiled").write_text("k")
    assert run_module(jit_caches, {"root": str(root)}, monkeypatch).result["held"] == []
    digest = "sha256:" + "d" * 64
    absent = "sha256:" + "e" * 64  # no cache directory: nothing to mark
    check = run_module(jit_caches, {"root": str(root), "mark": [digest, absent]}, monkeypatch,
                       check=True)
    assert check.result["marked"] == [digest] and check.result["held"] == []
    done = run_module(jit_caches, {"root": str(root), "mark": [digest, absent]}, monkeypatch)
    assert done.result["changed"] and done.result["marked"] == [digest]
    assert done.result["held"] == [digest] and (partial / ".thorfleet-complete").is_file()
    again = run_module(jit_caches, {"root": str(root), "mark": [digest]}, monkeypatch)
    assert not again.result["changed"] and again.result["marked"] == []
    bad = run_module(jit_caches, {"root": str(root), "mark": ["sha256:x; rm -rf /"]},
                     monkeypatch)
    assert bad.failed and "mark: " in bad.result["msg"]


@pytest.mark.parametrize(("peer", "field"), [
    ({"digest": "sha256:" + "b" * 63, "url": URL}, "digest"),
    ({"digest": DIGEST, "url": URL + "; rm -rf /"}, "url"),
    ({"digest": DIGEST, "url": URL.replace("b" * 64, "c" * 64)}, "url"),
    ({"digest": DIGEST, "url": "/etc/" + "x"}, "url"),
    ({"digest": DIGEST, "url": URL.replace(":873/", ":100000/")}, "url"),  # six digits
    ({"digest": DIGEST, "url": URL.replace("10.0.0.1", "[fe80::1%eth0]")}, "url"),
])
def test_a_peer_entry_that_is_not_a_share_path_is_refused(tmp_path, rsync, monkeypatch, peer,
                                                          field):
    done = run_module(jit_caches, {"root": str(tmp_path), "peers": [{**peer, "name": "x"}]},
                      monkeypatch)
    assert done.failed and done.result["msg"].startswith(f"jit_caches: peers: {field} ")
    assert rsync == []


def test_check_mode_says_what_it_would_copy_and_copies_nothing(tmp_path, rsync, monkeypatch):
    done = run_module(jit_caches, {"root": str(tmp_path / "jit"), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL}]}, monkeypatch, check=True)
    assert done.result["changed"] and done.result["copied"] == [DIGEST]
    assert rsync == [] and not (tmp_path / "jit").exists()

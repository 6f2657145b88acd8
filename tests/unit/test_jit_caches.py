"""jit_caches: which images' compile caches a host holds, with each one's manifest, and a
copy of a cache it lacks from a peer, checked against the peer's manifest and moved into
place only once complete. rsync itself runs in the lab test
(tests/lab/test_fleet_fetch.py); here the module's run_command is given a copy that does
what rsync would, or fails as a peer that went away."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from tests.conftest import load, run_module

jit_caches = load("roles/inference_services/library/jit_caches.py")

DIGEST = "sha256:" + "b" * 64
URL = "rsync://10.0.0.1:873/thorfleet-jit/sha256-" + "b" * 64


@pytest.fixture
def peer_tree(tmp_path):
    """What the peer holds of the digest's caches (a kernel vLLM compiled, a link to it),
    marked complete: its manifest written as its switch passed verify."""
    tree = tmp_path / "peer"
    (tree / "root/.cache/vllm").mkdir(parents=True)
    (tree / "root/.cache/vllm/kernel.bin").write_bytes(b"\x7fELF kernels")
    (tree / "root/.cache/vllm/latest").symlink_to("kernel.bin")
    jit_caches.mark(str(tree))
    return tree


def manifest_sum(tree) -> str:
    return jit_caches.sha256(str(tree / ".thorfleet-complete"))


@pytest.fixture
def rsync(monkeypatch, peer_tree):
    """run_command as rsync from the peer's share: the manifest, then the files listed in
    --files-from (NUL-separated), links as links; or failing, with `calls.fail`;
    `calls.extra` sends a file the manifest does not list."""

    class Calls(list):
        fail = False
        extra = False

    calls = Calls()
    calls.warnings = []

    def run_command(self, argv, **_kwargs):
        calls.append(argv)
        dest = argv[-1]
        if calls.fail:  # a peer lost halfway: part of a file came over
            with open(os.path.join(os.path.dirname(dest), "half"), "w") as half:
                half.write("k")
            return 10, "", "rsync: failed to connect to 10.0.0.1: Connection refused (111)"
        listed = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--files-from=")]
        if not listed:  # one file: the manifest
            shutil.copyfile(peer_tree / ".thorfleet-complete", dest)
            return 0, "", ""
        with open(listed[0], "rb") as names:
            for rel in names.read().decode().split("\0")[:-1]:
                source, target = peer_tree / rel, os.path.join(dest, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                if source.is_symlink():
                    os.symlink(os.readlink(source), target)
                else:
                    shutil.copyfile(source, target)
        if calls.extra:
            with open(os.path.join(dest, "root/.cache/vllm/planted.py"), "w") as planted:
                planted.write("import os")
        return 0, "", ""

    monkeypatch.setattr(jit_caches.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(jit_caches.AnsibleModule, "warn",
                        lambda self, warning: calls.warnings.append(warning))
    monkeypatch.setattr(jit_caches.AnsibleModule, "get_bin_path", lambda *a, **k: "rsync")
    return calls


def copy_from_thor01(tmp_path, monkeypatch, manifest):
    """The module asked to copy the digest's cache from thor01, its manifest's sum as
    Ansible's connection gave it; (the result, the cache's directory here)."""
    root = tmp_path / "jit"
    # What the services role made for the image: its cache directories, empty.
    (root / ("sha256-" + "b" * 64) / "root/.triton").mkdir(parents=True)
    done = run_module(jit_caches, {"root": str(root), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL, "manifest": manifest}]},
        monkeypatch)
    return done, root / ("sha256-" + "b" * 64)


def test_a_cache_this_host_lacks_is_copied_into_place(tmp_path, rsync, monkeypatch,
                                                        peer_tree):
    done, place = copy_from_thor01(tmp_path, monkeypatch, manifest_sum(peer_tree))
    assert not done.failed and done.result["changed"]
    # Copied, but not offered on: this host's own switch has not passed verify on it yet.
    assert done.result["copied"] == [DIGEST] and done.result["held"] == []
    assert (place / "root/.cache/vllm/kernel.bin").read_bytes() == b"\x7fELF kernels"
    assert os.readlink(place / "root/.cache/vllm/latest") == "kernel.bin"
    assert not (place / ".thorfleet-complete").exists()  # not the peer's mark
    partial = str(tmp_path / "jit" / f".sha256-{'b' * 64}.partial")
    # First the manifest, then exactly what it lists.
    assert rsync[0][-2:] == [URL + "/.thorfleet-complete", partial + "/.thorfleet-complete"]
    assert rsync[1][-2:] == [URL + "/", partial + "/"] and "--from0" in rsync[1]
    assert sorted(os.listdir(tmp_path / "jit")) == ["sha256-" + "b" * 64]  # nothing left

    # There now: asked again, nothing is copied over it.
    again = run_module(jit_caches, {"root": str(tmp_path / "jit"), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL, "manifest": manifest_sum(peer_tree)}]},
        monkeypatch)
    assert not again.result["changed"] and len(rsync) == 2


def refused_copy(done, rsync, place, tmp_path):
    """The copy refused as a warning, the host's cache as it was (its empty directories),
    nothing left beside it; the reason."""
    assert not done.failed and not done.result["changed"] and "failed" not in done.result
    assert done.result["copied"] == [] and len(done.result["not_copied"]) == 1
    assert "the engine compiles them" in rsync.warnings[0]
    assert sorted(os.listdir(tmp_path / "jit")) == ["sha256-" + "b" * 64]
    assert sorted(str(p.relative_to(place)) for p in place.rglob("*")) == ["root", "root/.triton"]
    return done.result["not_copied"][0]["error"]


def test_a_failed_copy_is_a_warning_and_leaves_the_host_as_it_was(tmp_path, rsync,
                                                                   monkeypatch, peer_tree):
    rsync.fail = True
    done, place = copy_from_thor01(tmp_path, monkeypatch, manifest_sum(peer_tree))
    # Not `failed` in the result: Ansible would fail the task (and the host's switch).
    assert refused_copy(done, rsync, place, tmp_path) == \
        "rsync: failed to connect to 10.0.0.1: Connection refused (111)"
    assert done.result["not_copied"][0]["peer"] == "thor01"


def test_a_file_changed_after_the_peers_manifest_is_refused_naming_it(tmp_path, rsync,
                                                                      monkeypatch,
                                                                      peer_tree):
    trusted = manifest_sum(peer_tree)
    kernel = peer_tree / "root/.cache/vllm/kernel.bin"
    kernel.write_bytes(b"\x7fELF kernelS")  # one byte, on the way or on the peer
    done, place = copy_from_thor01(tmp_path, monkeypatch, trusted)
    error = refused_copy(done, rsync, place, tmp_path)
    assert error.startswith("root/.cache/vllm/kernel.bin: differs from thor01's manifest")
    assert "kernel.bin" in rsync.warnings[0] and "thor01" in rsync.warnings[0]


def test_a_manifest_that_is_not_the_one_ansible_read_is_refused(tmp_path, rsync,
                                                                 monkeypatch, peer_tree):
    trusted = manifest_sum(peer_tree)
    # Whoever sits on the path rewrites the manifest to match a planted kernel.
    (peer_tree / "root/.cache/vllm/kernel.bin").write_bytes(b"planted")
    jit_caches.mark(str(peer_tree))
    done, place = copy_from_thor01(tmp_path, monkeypatch, trusted)
    error = refused_copy(done, rsync, place, tmp_path)
    assert error.startswith("thor01's manifest has sha256 ") and trusted in error
    assert len(rsync) == 1  # nothing but the manifest came over


def test_a_file_the_manifest_does_not_list_is_refused(tmp_path, rsync, monkeypatch,
                                                      peer_tree):
    rsync.extra = True
    done, place = copy_from_thor01(tmp_path, monkeypatch, manifest_sum(peer_tree))
    assert refused_copy(done, rsync, place, tmp_path) == \
        "root/.cache/vllm/planted.py: not in thor01's manifest: refused"


@pytest.mark.parametrize("entry", [
    {"files": {"../../etc/cron.d/x": {"size": 1, "sha256": "0" * 64}}, "links": {}},
    {"files": {"/etc/passwd": {"size": 1, "sha256": "0" * 64}}, "links": {}},
    {"files": {"k": {"size": "1", "sha256": "0" * 64}}, "links": {}},
    {"files": {}, "links": {"root/out": "../../../etc"}},
    {"files": {}, "links": {"root/out": "/etc"}},
])
def test_a_manifest_naming_a_place_outside_the_cache_is_refused(tmp_path, rsync, monkeypatch,
                                                                peer_tree, entry):
    (peer_tree / ".thorfleet-complete").write_text(json.dumps(entry))
    done, place = copy_from_thor01(tmp_path, monkeypatch, manifest_sum(peer_tree))
    want = "a file of the cache" if entry["files"] else "a link inside the cache"
    assert refused_copy(done, rsync, place, tmp_path).endswith(
        f"in thor01's manifest is not {want}: refused")
    assert len(rsync) == 1  # nothing listed in it was asked for


def test_held_counts_only_caches_marked_complete(tmp_path, monkeypatch):
    root = tmp_path / "jit"
    (root / ("sha256-" + "a" * 64) / "root/.triton").mkdir(parents=True)  # made, never used
    for digit in "cd":  # both written by an engine; c's host passed verify on it
        (root / ("sha256-" + digit * 64) / "x").mkdir(parents=True)
        (root / ("sha256-" + digit * 64) / "x/k").write_text("k")
    jit_caches.mark(str(root / ("sha256-" + "c" * 64)))
    # An earlier release's mark holds no manifest: nothing to check a copy against.
    (root / ("sha256-" + "e" * 64) / "x").mkdir(parents=True)
    (root / ("sha256-" + "e" * 64) / "x/k").write_text("k")
    (root / ("sha256-" + "e" * 64) / ".thorfleet-complete").write_text("passed verify\n")
    (root / "not-a-digest").mkdir()
    (root / "not-a-digest/k").write_text("k")
    jit_caches.mark(str(root / "not-a-digest"))
    done = run_module(jit_caches, {"root": str(root)}, monkeypatch)
    assert done.result["held"] == ["sha256:" + "c" * 64] and not done.result["changed"]
    assert done.result["manifests"] == {"sha256:" + "c" * 64: jit_caches.sha256(
        str(root / ("sha256-" + "c" * 64) / ".thorfleet-complete"))}
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
    # The mark is the cache's manifest, as it was when its host's services passed verify.
    assert json.loads((partial / ".thorfleet-complete").read_text()) == {
        "files": {"root/.cache/vllm/half-compiled": {
            "size": 1, "sha256": hashlib.sha256(b"k").hexdigest()}}, "links": {}}
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
    ({"digest": DIGEST, "url": URL}, "manifest"),  # nothing to check the copy against
    ({"digest": DIGEST, "url": URL, "manifest": "0" * 63}, "manifest"),
])
def test_a_peer_entry_that_is_not_a_share_path_is_refused(tmp_path, rsync, monkeypatch, peer,
                                                          field):
    peer = {"manifest": "0" * 64, **peer} if field != "manifest" else peer
    done = run_module(jit_caches, {"root": str(tmp_path), "peers": [{**peer, "name": "x"}]},
                      monkeypatch)
    assert done.failed and done.result["msg"].startswith(f"jit_caches: peers: {field} ")
    assert rsync == []


def test_check_mode_says_what_it_would_copy_and_copies_nothing(tmp_path, rsync, monkeypatch):
    done = run_module(jit_caches, {"root": str(tmp_path / "jit"), "peers": [
        {"digest": DIGEST, "name": "thor01", "url": URL, "manifest": "0" * 64}]}, monkeypatch,
        check=True)
    assert done.result["changed"] and done.result["copied"] == [DIGEST]
    assert rsync == [] and not (tmp_path / "jit").exists()

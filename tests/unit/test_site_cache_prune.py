"""The site cache's prune: images the cache no longer keeps leave its registry's storage,
one previous kept per repository, and the registry's garbage collection runs only when
something went."""

from __future__ import annotations

import os
import stat

import pytest

from tests.conftest import load, run_module

image_filters = load("filter_plugins/images.py")
site_cache_prune = load("roles/site_cache/library/site_cache_prune.py")

A, B, C, D = ("sha256:" + x * 64 for x in "abcd")


def test_the_cache_keeps_what_a_run_asked_for_and_one_previous_per_repository():
    before = {"nvidia/vllm": [B, A], "nvidia/sglang": [C]}
    assert image_filters.cache_kept({"nvidia/vllm": [C]}, before) == {
        "nvidia/vllm": [C, B], "nvidia/sglang": [C]}
    # Two digests asked for in one run (a canary on a new tag, the others on the old):
    # both, and the one before them.
    assert image_filters.cache_kept({"nvidia/vllm": [D, C]}, {"nvidia/vllm": [C, B]}) == {
        "nvidia/vllm": [D, C, B]}
    # The same again: nothing moves.
    assert image_filters.cache_kept({"nvidia/vllm": [C]}, {"nvidia/vllm": [C, B]}) == {
        "nvidia/vllm": [C, B]}
    assert image_filters.cache_kept({"ghcr.io/o/i": [A]}, None) == {"ghcr.io/o/i": [A]}


@pytest.fixture
def storage(tmp_path):
    """A registry's storage holding manifests A, B and C of nvidia/vllm and A of
    nvidia/sglang, and a garbage collector that records its argv."""
    root = tmp_path / "storage"
    for path, digests in {"nvidia/vllm": [A, B, C], "nvidia/sglang": [A]}.items():
        for digest in digests:
            link = (root / "docker/registry/v2/repositories" / path / "_manifests/revisions"
                    / "sha256" / digest.removeprefix("sha256:") / "link")
            link.parent.mkdir(parents=True)
            link.write_text(digest)
    collector = tmp_path / "registry"
    collector.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'collected'}\n")
    collector.chmod(collector.stat().st_mode | stat.S_IXUSR)
    return root


def held(root, path):
    directory = site_cache_prune.revisions(str(root), path)
    return sorted("sha256:" + name for name in os.listdir(directory))


def prune(root, keep, monkeypatch, check=False, command=None):
    return run_module(site_cache_prune, {
        "storage": str(root), "keep": keep, "config": "/etc/thorfleet/site-cache/fill.yml",
        "command": command or str(root.parent / "registry"), "timeout": 30},
        monkeypatch, check=check)


def test_what_the_cache_no_longer_keeps_is_removed_and_collected(storage, monkeypatch):
    done = prune(storage, {"nvidia/vllm": [C, B]}, monkeypatch)
    assert not done.failed and done.result["changed"]
    assert done.result["removed"] == [f"nvidia/vllm@{A}"]
    assert held(storage, "nvidia/vllm") == [B, C]
    # A repository the run did not name keeps everything, though it holds A too.
    assert held(storage, "nvidia/sglang") == [A]
    assert (storage.parent / "collected").read_text() == \
        "garbage-collect /etc/thorfleet/site-cache/fill.yml\n"


def test_nothing_to_remove_runs_no_collection(storage, monkeypatch):
    done = prune(storage, {"nvidia/vllm": [A, B, C], "nvidia/other": [A]}, monkeypatch)
    assert not done.failed and not done.result["changed"] and done.result["removed"] == []
    assert not (storage.parent / "collected").exists()


def test_check_mode_says_what_would_go_and_removes_nothing(storage, monkeypatch):
    done = prune(storage, {"nvidia/vllm": [C]}, monkeypatch, check=True)
    assert done.result["removed"] == [f"nvidia/vllm@{A}", f"nvidia/vllm@{B}"]
    assert held(storage, "nvidia/vllm") == [A, B, C]
    assert not (storage.parent / "collected").exists()


def test_an_empty_keep_list_removes_nothing(storage, monkeypatch):
    done = prune(storage, {"nvidia/vllm": []}, monkeypatch)
    assert not done.failed and done.result["removed"] == []
    assert held(storage, "nvidia/vllm") == [A, B, C]


@pytest.mark.parametrize(("keep", "says"), [
    ({"../../etc": [A]}, "is not a repository path"),
    ({"nvidia/vllm": ["sha256:x"]}, "not a list of sha256 digests"),
])
def test_bad_keep_values_are_refused_before_anything_is_removed(storage, monkeypatch, keep,
                                                                says):
    done = prune(storage, {**keep, "nvidia/sglang": [B]}, monkeypatch)
    assert done.failed and says in done.result["msg"]
    assert held(storage, "nvidia/sglang") == [A]


def test_a_failed_collection_is_named(storage, monkeypatch, tmp_path):
    failing = tmp_path / "failing"
    failing.write_text("#!/bin/sh\necho 'panic: storage driver' >&2\nexit 1\n")
    failing.chmod(0o755)
    done = prune(storage, {"nvidia/vllm": [C]}, monkeypatch, command=str(failing))
    assert done.failed and "garbage-collect failed: panic: storage driver" in done.result["msg"]

"""A new revision of a model in service staged beside it (model_download's `stage`), seen
as present by model_manifests, then switched in, put back and forgotten by
model_revisions: against the unit hubs on loopback, for both hubs."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load, run_module

model_download = load("roles/model_store/library/model_download.py")
model_manifests = load("roles/model_store/library/model_manifests.py")
model_revisions = load("roles/model_store/library/model_revisions.py")

HUBS = ["huggingface", "modelscope"]


@pytest.fixture
def model(hubs, tmp_path, monkeypatch):
    dest = tmp_path / "models" / "m"

    def download(source, revision, check=False):
        args = {"source": source, "repo_id": "unit/tiny", "dest": str(dest),
                "endpoint": hubs.endpoints[source], "revision": revision, "stage": True}
        return run_module(model_download, args, monkeypatch, check=check)

    def revisions(state, check=False):
        return run_module(model_revisions, {"dests": [str(dest)], "state": state},
                          monkeypatch, check=check)

    def manifests(source, revision):
        request = {"dest": str(dest), "source": source, "repo_id": "unit/tiny",
                   "revision": revision}
        return run_module(model_manifests, {"models": [request]}, monkeypatch).result

    def state():
        """The model's commit and every file's size, the manifest and the dirs beside."""
        manifest = json.loads((dest / model_download.MANIFEST).read_text())
        files = {p.name: p.stat().st_size for p in dest.iterdir()}
        beside = sorted(p.name for p in dest.parent.iterdir() if p.name != "m")
        return manifest["commit"], files, beside

    return dest, download, revisions, manifests, state


@pytest.mark.parametrize("source", HUBS)
def test_a_new_revision_waits_beside_the_running_one_until_the_switch(source, model, hubs):
    dest, download, revisions, manifests, state = model
    v1, v2 = hubs.commits[source]["v1"], hubs.commits[source]["v2"]
    assert not download(source, "v1").failed  # a first download goes in place
    first = state()
    assert first[0] == v1 and first[2] == []

    staged = download(source, "v2")
    assert staged.result["changed"] and staged.result["staged"], staged.result
    assert staged.result["commit"] == v2 and staged.result["fetched"] == ["weights.bin"]
    assert state()[:2] == first[:2]  # the running revision untouched
    seen = manifests(source, "v2")
    assert seen["missing"] == [] and seen["staged"] == [str(dest)]
    assert seen["results"][0]["commit"] == v2
    again = download(source, "v2")  # staged already: nothing fetched, nothing changed
    assert not again.result["changed"] and again.result["staged"]

    preview = revisions("switched", check=True)
    assert preview.result["changed"] and state()[:2] == first[:2]
    switched = revisions("switched")
    assert switched.result == {"changed": True, "dests": [str(dest)]}
    commit, files, beside = state()
    assert commit == v2 and files["weights.bin"] == 50_000 and beside == [".m.previous"]
    assert manifests(source, "v2")["staged"] == []
    assert not revisions("switched").result["changed"]

    back = revisions("previous")
    assert back.result["changed"] and state() == first  # v1 exactly as it ran

    download(source, "v2")
    revisions("switched")
    assert revisions("committed").result["changed"]
    assert state()[0] == v2 and state()[2] == []
    assert not revisions("previous").result["changed"]  # nothing left to go back to


@pytest.mark.parametrize("source", HUBS)
def test_a_staged_revision_no_one_asks_for_is_dropped(source, model, hubs):
    dest, download, revisions, manifests, state = model
    download(source, "v1")
    download(source, "v2")
    # Back to v1 before any switch: the staged v2 must never be moved in.
    assert manifests(source, "v1")["missing"] == [str(dest)]
    dropped = download(source, "v1")
    assert dropped.result["changed"] and not dropped.result["staged"]
    assert state()[0] == hubs.commits[source]["v1"] and state()[2] == []
    assert not revisions("switched").result["changed"]

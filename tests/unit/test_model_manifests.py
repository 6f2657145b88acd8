"""The models phase's one read on the host's own Python: which models already hold the
revision asked for (then model_download, on the hub clients' interpreter, is not run for
them), judged by their manifests exactly as model_download judges them."""

from __future__ import annotations

import hashlib
import json
import os

from tests.conftest import load, run_module

manifests = load("roles/model_store/library/model_manifests.py")

COMMIT = "c" * 40


def model(tmp_path, name, **request):
    dest = tmp_path / name
    dest.mkdir()
    (dest / "model.gguf").write_bytes(b"x" * 10)
    asked = {"dest": str(dest), "source": "huggingface", "repo_id": f"org/{name}",
             "revision": "main", "lock_key": f"huggingface:org/{name}@main", **request}
    (dest / "thorfleet-manifest.json").write_text(json.dumps({
        "source": "huggingface", "repo_id": f"org/{name}", "revision": "main",
        "commit": COMMIT, "allow_patterns": [], "ignore_patterns": [],
        "files": {"model.gguf": {"size": 10, "sha256": "0" * 64}}}))
    return asked


def test_present_models_are_reported_as_a_download_that_changed_nothing(tmp_path, monkeypatch):
    present = model(tmp_path, "present")
    pinned = model(tmp_path, "pinned", revision=COMMIT)  # the lock's commit, not the branch
    done = run_module(manifests, {"models": [present, pinned]}, monkeypatch, check=True)
    assert not done.failed and done.result["changed"] is False
    assert done.result["missing"] == []
    # Shaped as model_download's registered loop, for the lock's filter; the manifest's
    # digest, for the lock to pin (its commit and each file's size and sha256).
    digest = hashlib.sha256(json.dumps(
        {"commit": COMMIT, "files": {"model.gguf": {"sha256": "0" * 64, "size": 10}}},
        sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert done.result["results"] == [
        {"item": present, "changed": False, "commit": COMMIT, "files": ["model.gguf"],
         "first_sums": {}, "manifest_digest": digest},
        {"item": pinned, "changed": False, "commit": COMMIT, "files": ["model.gguf"],
         "first_sums": {}, "manifest_digest": digest}]


def test_anything_else_is_missing(tmp_path, monkeypatch):
    other_revision = model(tmp_path, "moved", revision="d" * 40)
    other_patterns = model(tmp_path, "patterns", allow_patterns=["*.safetensors"])
    truncated = model(tmp_path, "truncated")
    (tmp_path / "truncated" / "model.gguf").write_bytes(b"x" * 3)
    no_manifest = model(tmp_path, "new")
    (tmp_path / "new" / "thorfleet-manifest.json").unlink()
    never = {"dest": str(tmp_path / "never"), "source": "modelscope", "repo_id": "a/b",
             "revision": "master"}
    asked = [other_revision, other_patterns, truncated, no_manifest, never]
    done = run_module(manifests, {"models": asked}, monkeypatch)
    assert done.result["missing"] == [m["dest"] for m in asked]
    assert done.result["results"] == []


def test_an_entry_without_its_request_is_refused(tmp_path, monkeypatch):
    done = run_module(manifests, {"models": [{"dest": str(tmp_path), "source": "huggingface",
                                              "revision": "main"}]}, monkeypatch)
    assert done.failed and done.result["msg"] == "models: an entry has no repo_id"


def test_files_by_url_are_present_only_at_their_pinned_sum_as_url_file_leaves_them(
        tmp_path, monkeypatch):
    def fetched(name, content=b"{{ messages }}", mode=0o644):
        path = tmp_path / name
        path.write_bytes(content)
        os.chmod(path, mode)
        return str(path)

    pinned = hashlib.sha256(b"{{ messages }}").hexdigest()
    files = [
        {"dest": fetched("present.jinja"), "sha256": pinned.upper()},  # any case
        {"dest": fetched("changed.jinja", b"edited"), "sha256": pinned},
        {"dest": fetched("open.jinja", mode=0o666), "sha256": pinned},
        {"dest": fetched("unpinned.jinja"), "sha256": ""},  # fetched to record its sum
        {"dest": str(tmp_path / "never.jinja"), "sha256": pinned}]
    done = run_module(manifests, {"models": [], "files": files}, monkeypatch, check=True)
    assert not done.failed and done.result["changed"] is False
    assert done.result["files_missing"] == [f["dest"] for f in files[1:]]

"""model_download treats what a hub answers as data: a commit, a file list, hashes. A hub
that answers nonsense (a broken mirror, or a man in the middle of a plain-http one) is
refused before anything is written, and files are checked against every hash there is.

The hub here is a stand-in class in place of the clients, so a test can make it answer
anything; test_model_download.py runs the same module against the real clients.
"""

from __future__ import annotations

import hashlib
import json

import pytest

# A role's module_utils: importable once tests/conftest.py has run, as under Ansible.
from ansible.module_utils.thorfleet_model_files import RemoteFile

from tests.conftest import load, run_module

model_download = load("roles/model_store/library/model_download.py")
COMMIT_1, COMMIT_2 = "1" * 40, "2" * 40


def git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324


class AnsweringHub:
    """Answers what the test set: a commit per revision, files with the hashes a hub lists
    (`sha256`, `git` for a blob id, `none`), and the bytes it serves (`served`, when they
    differ from what it lists)."""

    commits: dict[str, str] = {}
    files: dict[str, dict[str, bytes]] = {}  # commit -> path -> bytes
    hashes: str = "sha256"
    served: dict[str, bytes] = {}
    fetched: list[str] = []

    def __init__(self, endpoint, token):
        pass

    def resolve(self, repo_id, revision):
        commit = self.commits.get(revision, revision)
        listed = {}
        for path, data in self.files[commit].items():
            listed[path] = RemoteFile(
                path, len(data), hashlib.sha256(data).hexdigest() if self.hashes == "sha256"
                else None, git_blob(data) if self.hashes == "git" else None)
        return commit, listed

    def download(self, repo_id, commit, remote_files, staging):
        for remote in remote_files:
            target = f"{staging}/{remote.path}"
            model_download.os.makedirs(model_download.os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as out:
                out.write(self.served.get(remote.path, self.files[commit][remote.path]))
            AnsweringHub.fetched.append(remote.path)


@pytest.fixture
def hub(monkeypatch):
    answering = type("Hub", (AnsweringHub,), {
        "commits": {"v1": COMMIT_1, "v2": COMMIT_2},
        "files": {COMMIT_1: {"config.json": b"{}\n", "weights.bin": b"w" * 4096,
                             "old.bin": b"o" * 100},
                  COMMIT_2: {"config.json": b"{}\n", "weights.bin": b"W" * 4096}},
        "served": {}})
    AnsweringHub.fetched = []
    monkeypatch.setitem(model_download.HUBS, "huggingface", answering)
    return answering


@pytest.fixture
def download(hub, tmp_path, monkeypatch):
    def run(revision="v1", **args):
        args = {"source": "huggingface", "repo_id": "unit/m", "revision": revision,
                "dest": str(tmp_path / "models" / "m"), **args}
        return run_module(model_download, args, monkeypatch)
    return run


def model(tmp_path):
    return tmp_path / "models" / "m"


@pytest.mark.parametrize("commit", [
    "abc", "a" * 39, "a" * 41, "A" * 40, "g" * 40, "a" * 40 + "\n",
    "a" * 40 + "\nExecStartPre=+/bin/sh -c id", "",
])
def test_a_commit_that_is_not_40_hex_characters_is_refused(commit, hub, download, tmp_path):
    hub.commits = {"v1": commit}
    hub.files = {commit: {"config.json": b"{}\n"}}
    done = download()
    assert done.failed, done.result
    assert done.result["msg"].startswith("model unit/m@v1 (huggingface): the hub answered "
                                         "commit"), done.result["msg"]
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("path", [
    "/etc/cron.d/x", "../escape", "a/../../escape", "a//b", "./a", "a/./b", "a/", "",
    "a\nb", "a\rb", "a\x00b", model_download.MANIFEST, "x" * 4097,
])
def test_a_listed_path_that_leaves_the_model_is_refused(path, hub, download, tmp_path):
    hub.files = {COMMIT_1: {"config.json": b"{}\n", path: b"x"}}
    outside = tmp_path / "escape"
    outside.write_text("kept")
    done = download()
    assert done.failed, done.result
    assert "the hub lists path" in done.result["msg"] and "outside the model" in done.result["msg"]
    assert done.result["msg"].startswith("model unit/m@v1 (huggingface)")
    assert not (tmp_path / "models").exists() and outside.read_text() == "kept"


@pytest.mark.parametrize("tamper", [
    {"commit": "a" * 40 + "\nExecStartPre=+/bin/sh"},
    {"files": {"../../escape": {"size": 1}}},
    {"files": {"config.json": {"size": "3"}}},
])
def test_a_manifest_that_fails_the_same_checks_is_not_trusted(tamper, download, tmp_path):
    assert not download().failed
    path = model(tmp_path) / model_download.MANIFEST
    path.write_text(json.dumps({**json.loads(path.read_text()), **tamper}))
    again = download()
    assert not again.failed and again.result["changed"], again.result
    assert json.loads(path.read_text())["commit"] == COMMIT_1


def test_a_file_the_hub_gives_no_hash_for_is_pinned_on_first_fetch(hub, download, tmp_path):
    hub.hashes = "none"
    first = download()
    assert not first.failed
    sums = first.result["first_sums"]
    assert sums == {p: hashlib.sha256(d).hexdigest() for p, d in hub.files[COMMIT_1].items()}
    # Another host, the lock's sums given: the same bytes pass and pin nothing new...
    second = download(dest=str(tmp_path / "other"), sha256s=sums)
    assert not second.failed and second.result["first_sums"] == {}
    # ... other bytes of the same size fail, naming the file.
    hub.served = {"weights.bin": b"x" * 4096}
    third = download(dest=str(tmp_path / "third"), sha256s=sums)
    assert third.failed and "weights.bin: sha256" in third.result["msg"], third.result
    assert not (tmp_path / "third").exists()


def test_a_small_file_is_checked_against_its_git_blob_id(hub, download, tmp_path):
    hub.hashes = "git"
    hub.served = {"config.json": b"[]\n"}  # the same size, other bytes
    done = download()
    assert done.failed and "config.json: git blob" in done.result["msg"], done.result
    assert not model(tmp_path).exists()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_manifest_match_with_a_file_missing_or_cut_fetches_it_again(damage, hub, download,
                                                                    tmp_path):
    assert not download().failed
    weights = model(tmp_path) / "weights.bin"
    if damage == "truncate":
        weights.write_bytes(b"w" * 100)
    else:
        weights.unlink()
    again = download()
    assert not again.failed and again.result["changed"]
    assert "weights.bin" in again.result["fetched"]
    assert weights.read_bytes() == b"w" * 4096


def test_a_file_of_the_same_size_but_other_hash_is_fetched(hub, download, tmp_path):
    assert not download().failed
    AnsweringHub.fetched.clear()
    bump = download("v2")
    assert not bump.failed and bump.result["fetched"] == ["weights.bin"], bump.result
    assert AnsweringHub.fetched == ["weights.bin"]
    assert (model(tmp_path) / "weights.bin").read_bytes() == b"W" * 4096


def test_files_of_the_old_revision_are_removed(hub, download, tmp_path):
    assert not download().failed
    assert (model(tmp_path) / "old.bin").exists()
    assert not download("v2").failed
    assert sorted(p.name for p in model(tmp_path).iterdir()) == [
        "config.json", model_download.MANIFEST, "weights.bin"]


# --- what a hub's answer may hold, at its edges ------------------------------------------

model_files = __import__("ansible.module_utils.thorfleet_model_files", fromlist=["confined"])


@pytest.mark.parametrize(("path", "inside"), [
    ("weights.bin", True), ("sub/dir/w.bin", True), ("p" * 4096, True), ("..x", True),
    ("", False), ("p" * 4097, False), ("/etc/passwd", False), ("a//b", False),
    ("a/./b", False), ("a/../b", False), ("..", False), ("a/", False),
    ("a\nb", False), ("a\x7fb", False), ("thorfleet-manifest.json", False), (7, False)])
def test_a_listed_path_stays_inside_the_models_directory(path, inside):
    assert model_files.confined(path) is inside


@pytest.mark.parametrize(("commit", "taken"), [
    ("a" * 40, True), ("a" * 39, False), ("a" * 41, False), ("A" * 40, False),
    ("a" * 40 + "\n", False), (None, False)])
def test_a_commit_is_exactly_40_lower_case_hex_characters(commit, taken):
    if taken:
        assert model_files.check_commit(commit) == commit
    else:
        with pytest.raises(model_files.HubError, match="not 40 hex characters"):
            model_files.check_commit(commit)


def test_a_file_is_reused_only_with_its_size_a_matching_hash_and_its_bytes_in_place(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"12345")
    sha = hashlib.sha256(b"12345").hexdigest()
    old = {"w.bin": {"size": 5, "sha256": sha, "git_sha1": git_blob(b"12345")}}
    assert model_files.reusable(old, RemoteFile("w.bin", 5, sha256=sha), tmp_path)
    assert model_files.reusable(old, RemoteFile("w.bin", 5, git_sha1=git_blob(b"12345")),
                                tmp_path)
    assert not model_files.reusable(old, RemoteFile("w.bin", 5, sha256="0" * 64), tmp_path)
    assert not model_files.reusable(old, RemoteFile("w.bin", 5, git_sha1="0" * 40), tmp_path)
    assert not model_files.reusable(old, RemoteFile("w.bin", 6, sha256=sha), tmp_path)
    assert not model_files.reusable(old, RemoteFile("w.bin", 5), tmp_path)  # no hash listed
    assert not model_files.reusable(None, RemoteFile("w.bin", 5, sha256=sha), tmp_path)
    (tmp_path / "w.bin").write_bytes(b"1234")  # cut short on disk since
    assert not model_files.reusable(old, RemoteFile("w.bin", 5, sha256=sha), tmp_path)
    (tmp_path / "w.bin").unlink()
    assert not model_files.reusable(old, RemoteFile("w.bin", 5, sha256=sha), tmp_path)


def test_a_staged_revision_is_read_only_when_its_record_holds_together(tmp_path):
    dest = tmp_path / "m"
    staging = tmp_path / ".m.partial"
    dest.mkdir()
    staging.mkdir()
    (dest / "config.json").write_bytes(b"{}")
    (staging / "w.bin").write_bytes(b"12345")
    good = {"manifest": {"commit": COMMIT_2, "files": {"w.bin": {"size": 5},
                                                       "config.json": {"size": 2}}},
            "fetched": ["w.bin"], "stale": ["old.bin"]}

    def read(staged):
        (staging / model_files.STAGED).write_text(json.dumps(staged))
        return model_files.read_staged(str(dest))

    assert read(good) == good
    for bad in ({**good, "fetched": "w.bin"}, {**good, "stale": None},
                {**good, "fetched": ["w.bin", "x.bin"]},  # fetched, but not in the revision
                {**good, "stale": ["../escape"]},
                {**good, "manifest": {**good["manifest"], "commit": "main"}},
                {**good, "manifest": {**good["manifest"], "files": {
                    "w.bin": {"size": 6}, "config.json": {"size": 2}}}}):  # cut short
        assert read(bad) is None, bad


def test_a_staged_revision_serves_only_the_request_it_was_made_for():
    manifest = {"source": "huggingface", "repo_id": "o/m", "allow_patterns": [],
                "ignore_patterns": [], "revision": "v2", "commit": COMMIT_2}
    request = {key: manifest[key] for key in ("source", "repo_id", "allow_patterns",
                                              "ignore_patterns", "revision")}
    staged = {"manifest": manifest}
    assert model_files.staged_satisfies(staged, request)
    assert model_files.staged_satisfies(staged, {**request, "revision": COMMIT_2})
    for other in ({"revision": "v3"}, {"repo_id": "o/n"}, {"allow_patterns": ["*.bin"]},
                  {"source": "modelscope"}):
        assert not model_files.staged_satisfies(staged, {**request, **other}), other
    assert not model_files.staged_satisfies(None, request)

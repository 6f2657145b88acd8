"""model_download against real clients and hubs on loopback: olah for Hugging Face, the
ModelScope stand-in for ModelScope. Each behaviour is checked for both hubs."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

# A role's module_utils: importable once tests/conftest.py has run, as under Ansible.
from ansible.module_utils.thorfleet_model_files import manifest_digest, select

from tests.conftest import load, run_module
from tests.unit.conftest import GATED_TOKEN

model_download = load("roles/model_store/library/model_download.py")

HUBS = ["huggingface", "modelscope"]
# Each unit hub's default branch, as tests/unit/conftest.py makes them.
BRANCH = {"huggingface": "main", "modelscope": "master"}
UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture
def download(hubs, tmp_path, monkeypatch):
    def run(source, repo="unit/tiny", check=False, endpoint=None, revision=None, **args):
        # A revision is always given (the catalogue names one); by default the hub's
        # default branch, which the unit hubs are made with.
        args = {"source": source, "repo_id": repo, "dest": str(tmp_path / "models" / "m"),
                "endpoint": endpoint or hubs.endpoints[source],
                "revision": revision or BRANCH[source], **args}
        return run_module(model_download, args, monkeypatch, check=check)
    return run


def manifest(tmp_path):
    return json.loads((tmp_path / "models" / "m" / model_download.MANIFEST).read_text())


def listing(tmp_path):
    return sorted(p.name for p in (tmp_path / "models" / "m").iterdir())


@pytest.mark.parametrize("source", HUBS)
def test_a_tag_is_resolved_to_its_commit_and_every_file_verified(source, download, hubs,
                                                                 tmp_path):
    done = download(source, revision="v1")
    assert not done.failed, done.result
    assert done.result["changed"] and done.result["commit"] == hubs.commits[source]["v1"]
    assert listing(tmp_path) == ["README.md", "config.json", "other.bin", "thorfleet-manifest.json",
                                 "weights.bin"]
    record = manifest(tmp_path)
    assert record["commit"] == hubs.commits[source]["v1"] and record["revision"] == "v1"
    assert record["files"]["weights.bin"]["size"] == 40_000
    weights = (tmp_path / "models" / "m" / "weights.bin").read_bytes()
    assert record["files"]["weights.bin"]["sha256"] == hashlib.sha256(
        weights).hexdigest()
    assert done.result["bytes_downloaded"] >= 43_000
    assert not (tmp_path / "models" / ".m.partial").exists()


@pytest.mark.parametrize("source", HUBS)
def test_a_matching_manifest_is_not_changed_and_needs_no_hub(source, download, tmp_path):
    download(source, revision="v1")
    mtime = (tmp_path / "models" / "m" / "weights.bin").stat().st_mtime_ns
    again = download(source, revision="v1", endpoint=UNREACHABLE)
    assert not again.failed and again.result["changed"] is False
    assert again.result["bytes_downloaded"] == 0
    by_commit = download(source, revision=manifest(tmp_path)["commit"], endpoint=UNREACHABLE)
    assert by_commit.result["changed"] is False
    assert (tmp_path / "models" / "m" / "weights.bin").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("source", HUBS)
def test_allow_and_ignore_patterns_choose_the_files(source, download, tmp_path):
    done = download(source, revision="v1", allow_patterns=["*.bin"], ignore_patterns=["other*"])
    assert done.result["files"] == ["weights.bin"]
    assert listing(tmp_path) == ["thorfleet-manifest.json", "weights.bin"]
    nothing = download(source, revision="v1", allow_patterns=["*.gguf"])
    assert nothing.failed and "no file at commit" in nothing.result["msg"]


@pytest.mark.parametrize("source", HUBS)
def test_check_mode_reports_files_and_bytes_and_writes_nothing(source, download, tmp_path):
    preview = download(source, revision="v1", check=True)
    assert preview.result["changed"] and preview.result["fetched"] == [
        "README.md", "config.json", "other.bin", "weights.bin"]
    assert preview.result["bytes_to_fetch"] == sum(
        len(b) for b in (b"# tiny\n", b'{"model_type": "qwen3"}\n')) + 43_000
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("source", HUBS)
def test_a_new_revision_fetches_only_changed_files_and_diff_shows_both(source, download, hubs,
                                                                      tmp_path):
    download(source, revision="v1")
    bump = download(source, revision="v2")
    assert bump.result["fetched"] == ["weights.bin"]
    before, after = (json.loads(bump.result["diff"][k]) for k in ("before", "after"))
    assert before == {"revision": "v1", "commit": hubs.commits[source]["v1"]}
    assert after == {"revision": "v2", "commit": hubs.commits[source]["v2"]}
    assert (tmp_path / "models" / "m" / "weights.bin").stat().st_size == 50_000


@pytest.mark.parametrize("source", HUBS)
def test_a_file_that_fails_verification_never_reaches_dest(source, download, tmp_path):
    done = download(source, repo="unit/corrupt")
    assert done.failed and "weights.bin" in done.result["msg"]
    assert not (tmp_path / "models" / "m").exists()


@pytest.mark.parametrize(("source", "repo", "revision", "cause"), [
    ("huggingface", "unit/none", None, "repository not found"),
    ("modelscope", "unit/none", None, "repository or revision not found"),
    ("huggingface", "unit/tiny", "v9", "revision v9 not found"),
    ("modelscope", "unit/tiny", "v9", "revision v9 not found"),
    ("modelscope", "unit/gated", None, "gated: set a token"),
])
def test_bad_requests_name_the_model_and_the_cause(source, repo, revision, cause, download,
                                                   tmp_path):
    done = download(source, repo=repo, revision=revision)
    assert done.failed
    assert done.result["msg"].startswith(f"model {repo}@")
    assert cause in done.result["msg"]
    assert not (tmp_path / "models" / "m").exists()


def test_a_gated_repository_downloads_with_its_token_and_never_records_it(download, hubs,
                                                                          tmp_path):
    done = download("modelscope", repo="unit/gated", token=GATED_TOKEN)
    assert not done.failed and done.result["files"] == ["config.json"]
    assert GATED_TOKEN not in (tmp_path / "models" / "m" / model_download.MANIFEST).read_text()
    assert GATED_TOKEN not in hubs.modelscope_log.read_text()


@pytest.mark.parametrize("source", HUBS)
def test_an_unreachable_hub_fails_a_first_download(source, download, tmp_path):
    done = download(source, endpoint=UNREACHABLE)
    assert done.failed and "hub unreachable at http://127.0.0.1:9" in done.result["msg"]
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("source", HUBS)
def test_too_little_disk_fails_before_fetching(source, download, tmp_path, monkeypatch):
    real = os.statvfs

    class Full:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(model_download.os, "statvfs",
                        lambda p: Full if str(p).startswith(str(tmp_path)) else real(p))
    done = download(source, revision="v1")
    assert done.failed and "needs 43031 bytes" in done.result["msg"]
    assert "only 40960 free" in done.result["msg"]
    assert not (tmp_path / "models" / "m").exists()


def test_patterns_match_as_the_hubs_do():
    paths = ["a.gguf", "sub/b.gguf", "x.bin"]
    assert select(paths, ["*.gguf"], []) == ["a.gguf", "sub/b.gguf"]
    assert select(paths, [], ["sub/*"]) == ["a.gguf", "x.bin"]


# A host of the fleet as the source (peer): its manifest, read over Ansible's connection,
# is the listing; one that is not what was asked for is refused before anything is copied.
PEER_MANIFEST = {"source": "huggingface", "repo_id": "unit/tiny", "revision": "main",
                 "commit": "a" * 40, "allow_patterns": [], "ignore_patterns": [],
                 "files": {"weights.bin": {"size": 3, "sha256": "0" * 64}}}


@pytest.mark.parametrize(("change", "cause"), [
    ({"repo_id": "unit/other"}, "does not hold unit/tiny as asked"),
    ({"source": "modelscope"}, "does not hold unit/tiny as asked"),
    ({"allow_patterns": ["*.gguf"]}, "does not hold unit/tiny as asked"),
    ({"commit": "main\n"}, "not 40 hex characters: refused"),
    ({"revision": "v2", "commit": "b" * 40}, f"holds unit/tiny@{'b' * 40}, not main"),
    ({"files": {"../../etc/cron.d/x": {"size": 3, "sha256": "0" * 64}}},
     "outside the model's directory: refused"),
    ({"files": {"weights.bin": {"size": 3}}}, "without a size and sha256: refused"),
    ({"files": {"weights.bin": {"size": "3", "sha256": "0" * 64}}},
     "without a size and sha256: refused")])
def test_a_peers_manifest_that_is_not_the_request_is_refused(change, cause, tmp_path,
                                                             monkeypatch):
    dest = tmp_path / "models" / "unit" / "tiny"
    done = run_module(model_download, {
        "source": "huggingface", "repo_id": "unit/tiny", "revision": "main", "dest": str(dest),
        "peer": {"name": "thor02", "url": "rsync://10.0.0.2:873/thorfleet-models/unit/tiny",
                 "staging_url": "rsync://10.0.0.2:873/thorfleet-models/unit/.tiny.partial",
                 "manifest": {**PEER_MANIFEST, **change}}}, monkeypatch)
    assert done.failed, done.result
    assert done.result["msg"].startswith("model unit/tiny@main (huggingface, from peer thor02): ")
    assert cause in done.result["msg"]
    assert not dest.exists() and not (dest.parent / ".tiny.partial").exists()


def test_a_peers_manifest_whose_digest_is_not_the_locks_pin_is_refused_before_any_copy(
        tmp_path, monkeypatch):
    # A bundle (or a fleet peer) whose file was changed and its manifest and sums written
    # again to match: the manifest is not the one the first fetch from the hub made.
    pinned = manifest_digest(PEER_MANIFEST)
    changed = {**PEER_MANIFEST, "files": {"weights.bin": {"size": 3, "sha256": "1" * 64}}}
    dest = tmp_path / "models" / "unit" / "tiny"
    copied = []
    monkeypatch.setattr(model_download.AnsibleModule, "run_command",
                        lambda self, argv, **kw: copied.append(argv) or (10, "", "no rsync"))
    monkeypatch.setattr(model_download.AnsibleModule, "get_bin_path", lambda *a, **k: "rsync")

    def copy(manifest):
        return run_module(model_download, {
            "source": "huggingface", "repo_id": "unit/tiny", "revision": "main",
            "dest": str(dest), "manifest_digest": pinned,
            "peer": {"name": "the bundle on thor03",
                     "url": "rsync://10.0.0.3:8873/thorfleet-bundle/models/x",
                     "staging_url": "rsync://10.0.0.3:8873/thorfleet-bundle/models/x",
                     "manifest": manifest}}, monkeypatch)

    done = copy(changed)
    assert done.failed and done.result["msg"] == (
        "model unit/tiny@main (huggingface, from peer the bundle on thor03): the bundle on "
        f"thor03's manifest has digest {manifest_digest(changed)}, not the {pinned} the lock "
        "pins (model_manifests): refused, nothing copied")
    assert copied == [] and not dest.exists()
    # The pinned manifest itself goes on to the copy (here, a peer that is not there).
    done = copy(PEER_MANIFEST)
    assert done.failed and "the lock pins" not in done.result["msg"] and copied


@pytest.mark.parametrize("source", HUBS)
def test_a_download_gives_its_manifests_digest_for_the_lock(source, download, tmp_path):
    done = download(source, revision="v1")
    assert done.result["manifest_digest"] == manifest_digest(manifest(tmp_path))
    again = download(source, revision="v1")  # held: the same digest, from the manifest
    assert not again.result["changed"]
    assert again.result["manifest_digest"] == done.result["manifest_digest"]


@pytest.mark.parametrize("source", HUBS)
def test_bytes_already_partly_downloaded_count_against_what_is_still_needed(
        source, download, tmp_path, monkeypatch):
    # 43031 bytes to fetch, 2071 of them already in the staging directory of a run that
    # was cut off: 40960 still needed, and 40960 free is just enough.
    staging = tmp_path / "models" / ".m.partial"
    staging.mkdir(parents=True)
    (staging / "cut-off.part").write_bytes(b"\0" * 2071)
    real = os.statvfs

    class Almost:
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(model_download.os, "statvfs",
                        lambda p: Almost if str(p).startswith(str(tmp_path)) else real(p))
    done = download(source, revision="v1", check=True)
    assert not done.failed, done.result
    (staging / "cut-off.part").write_bytes(b"\0" * 2070)  # one byte short
    done = download(source, revision="v1", check=True)
    assert done.failed and "needs 40961 bytes" in done.result["msg"], done.result

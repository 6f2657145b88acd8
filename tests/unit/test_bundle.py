"""The bundle for sites with no internet: what an inventory's hosts need, each thing once
at the lock's pins (filter_plugins/bundle.py); what a bundle lacks, named; its settings;
its images written to and read from OCI archives (site_cache_fill); and `bundle verify`
(src/thorfleet/bundle.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import load, plugin_utils, run_module
from tests.unit.test_site_cache import ARM64, AUTH, LISTING, digest, skopeo  # noqa: F401
from thorfleet import bundle as bundles
from thorfleet import cli

bundle_filters = load("filter_plugins/bundle.py")
fleet_filters = load("filter_plugins/fleet.py")
site_cache_fill = load("roles/site_cache/library/site_cache_fill.py")

COMMIT = "a" * 40
LISTED = "sha256:" + "b" * 64
PLATFORM = "sha256:" + "c" * 64


def model(revision=COMMIT, allow=()):
    return {"path": "Qwen/Qwen3-8B", "source": "huggingface", "repo_id": "Qwen/Qwen3-8B",
            "requested_revision": "main", "revision": revision, "allow_patterns": list(allow),
            "ignore_patterns": [], "lock_key": "huggingface:Qwen/Qwen3-8B@main",
            "dest": "/models/Qwen/Qwen3-8B", "sha256s": {}}


FILE = {"name": "qwen3_nonthinking.jinja", "upstream_url": "https://example.org/t.jinja",
        "url": "https://example.org/t.jinja", "sha256": "d" * 64}
IMAGE = {"ref": "nvcr.io/nvidia/vllm:25.10-py3", "upstream": "nvcr.io/nvidia/vllm",
         "path": "nvidia/vllm", "tag": "25.10-py3", "locked": LISTED,
         "platform": "linux/arm64"}
ENGINE = {"name": "whisper.cpp", "ref": "v1.8.5", "lock_key": "whisper.cpp@v1.8.5",
          "pin": "e" * 40}


def need(host, **parts):
    return {"host": host, "models": [], "files": [], "images": [], "engines": [], **parts}


def index_of(contents):
    return bundle_filters.bundle_index(contents, {LISTED: {"linux/arm64": PLATFORM}},
                                       {"thor01": ["rsync"]})


def test_what_two_hosts_need_alike_is_bundled_once_and_patterns_make_another_copy():
    contents = bundle_filters.bundle_contents([
        need("thor01", models=[model()], files=[FILE], images=[IMAGE], engines=[ENGINE]),
        need("thor02", models=[model(), model(allow=["*.gguf"])], files=[FILE],
             images=[IMAGE], engines=[ENGINE])])
    assert contents["unpinned"] == []
    assert len(contents["models"]) == 2
    assert [len(contents[part]) for part in ("files", "images", "sources")] == [1, 1, 1]
    index = index_of(contents)
    assert index["images"][0]["digest"] == PLATFORM
    assert index["images"][0]["archive"] == f"images/{'c' * 64}.tar"
    assert index["sources"][0]["repository"] == "sources/whisper.cpp.git"


def test_what_the_lock_does_not_pin_is_named_with_a_host_that_needs_it():
    contents = bundle_filters.bundle_contents([need(
        "thor04", models=[model(revision="main")], files=[{**FILE, "sha256": ""}],
        images=[{**IMAGE, "locked": ""}], engines=[{**ENGINE, "pin": ""}])])
    assert contents["models"] == contents["files"] == contents["images"] == []
    unpinned = " ".join(contents["unpinned"])
    for named in ("model Qwen/Qwen3-8B", "huggingface:Qwen/Qwen3-8B@main", "file "
                  "qwen3_nonthinking.jinja", "image nvcr.io/nvidia/vllm:25.10-py3",
                  "engine whisper.cpp", "whisper.cpp@v1.8.5"):
        assert named in unpinned
    assert unpinned.count(", for thor04") == 4


def test_a_bundle_lacking_a_model_names_it_and_the_host_and_holds_the_rest():
    full = index_of(bundle_filters.bundle_contents([need(
        "thor01", models=[model()], files=[FILE], images=[IMAGE], engines=[ENGINE])]))
    wants = {"models": [model()], "files": [FILE], "images": [IMAGE], "engines": [ENGINE]}
    assert bundle_filters.bundle_problems(json.dumps(full), "thor04", **wants) == []
    lacking = {**full, "models": []}
    assert bundle_filters.bundle_problems(json.dumps(lacking), "thor04", **wants) == [
        f"model Qwen/Qwen3-8B (huggingface Qwen/Qwen3-8B@{COMMIT}), for thor04"]
    # Another commit, another image or another engine commit is not held either.
    other = {"models": [model(revision="f" * 40)], "images": [{**IMAGE, "locked": PLATFORM}],
             "engines": [{**ENGINE, "pin": "0" * 40}], "files": [{**FILE, "sha256": "1" * 64}]}
    assert len(bundle_filters.bundle_problems(full, "thor04", **other)) == 4


@pytest.mark.parametrize("section, field, value", [
    ("images", "archive", "../../etc/shadow"),
    ("images", "archive", "images/x.tar; rm -rf /"),
    ("images", "digest", "sha256:zz"),
    ("models", "id", "../x"),
    ("files", "name", "a/../../b"),
    ("files", "name", "t.jinja\nExecStart=/bin/sh"),
    ("sources", "commit", "HEAD"),
])
def test_an_index_with_a_hostile_field_is_refused_naming_it(section, field, value):
    index = index_of(bundle_filters.bundle_contents([need(
        "thor01", models=[model()], files=[FILE], images=[IMAGE], engines=[ENGINE])]))
    index[section][0][field] = value
    with pytest.raises(bundle_filters.BundleError, match=f"{section}: field {field}"):
        bundle_filters.bundle_checked(json.dumps(index))
    for text in ("nonsense", json.dumps({"format": 99})):
        with pytest.raises(bundle_filters.BundleError):
            bundle_filters.bundle_checked(text)


@pytest.mark.parametrize("bundle, cache, rsync, git, named", [
    ("/srv/bundle", [], 8873, 9418, "thorfleet_site_cache"),
    ("srv/bundle", ["thor03"], 8873, 9418, "thorfleet_bundle:"),
    ("/srv/b%n", ["thor03"], 8873, 9418, "thorfleet_bundle:"),
    ("/srv/b\nx", ["thor03"], 8873, 9418, "thorfleet_bundle:"),
    ("/srv/../etc", ["thor03"], 8873, 9418, "thorfleet_bundle:"),
    ("/srv/bundle", ["thor03"], "87;3", 9418, "thorfleet_bundle_rsync_port"),
    ("/srv/bundle", ["thor03"], 8873, 0, "thorfleet_bundle_git_port"),
])
def test_bad_bundle_settings_are_refused_naming_the_field(bundle, cache, rsync, git, named):
    problems = fleet_filters.bundle_problems(bundle, cache, rsync, git)
    assert len(problems) == 1 and named in problems[0], problems


@pytest.mark.parametrize("address", ["10.0.0.1\nhosts allow = *", "thor 05", "a;b", "%h"])
def test_a_hosts_address_the_bundles_rsync_daemon_would_read_is_refused_naming_it(address):
    problems = fleet_filters.bundle_problems("/srv/b", ["thor03"], 8873, 9418,
                                             {"thor01": "10.0.0.1", "thor05": address})
    assert len(problems) == 1 and problems[0].startswith("thor05: ansible_host:"), problems


def test_no_bundle_and_a_good_one_pass():
    assert fleet_filters.bundle_problems("", [], "x", None) == []
    assert fleet_filters.bundle_problems("/srv/thorfleet-bundle", ["thor03"], 8873, 9418,
                                         {"thor01": "10.0.0.1", "thor02": ""}) == []


artefacts = plugin_utils("artefacts")


def test_one_loop_writes_every_kind_of_the_bundle_with_the_kinds_own_module():
    # `thorfleet bundle create` writes the contents with one loop (roles/artefacts,
    # tasks/bundle.yml): each thing once, by the module of its kind in the table.
    contents = bundle_filters.bundle_contents([
        need("thor01", models=[model()], files=[FILE], images=[IMAGE],
             engines=[{**ENGINE, "repo": "https://github.com/ggml-org/whisper.cpp"}]),
        need("thor02", models=[model()], files=[FILE], images=[IMAGE])])
    writes = artefacts.bundle_writes(contents)
    assert [w["section"] for w in writes] == ["models", "files", "images", "sources"]
    settings = {"endpoints": {"huggingface": "http://mirror:8080", "modelscope": ""},
                "tokens": {"huggingface": "hf_secret", "modelscope": "ms_other"},
                "authfile": "/tmp/login.json", "image_platforms": {}, "timeout": None}
    calls = {w["section"]: artefacts.bundle_call(w["section"], w["item"], "/srv/bundle",
                                                 settings) for w in writes}
    module, args = calls["models"]
    assert module == "model_download"
    assert args["dest"] == f"/srv/bundle/models/{contents['models'][0]['id']}"
    assert (args["endpoint"], args["token"]) == ("http://mirror:8080", "hf_secret")
    # No value, no argument: the module's own default holds (no patterns).
    assert not {"allow_patterns", "ignore_patterns"} & set(args)
    assert calls["files"] == ("url_file", {"url": FILE["url"], "sha256": FILE["sha256"],
                                           "mode": "0644",
                                           "dest": "/srv/bundle/files/qwen3_nonthinking.jinja"})
    module, args = calls["images"]
    assert module == "site_cache_fill" and "timeout" not in args
    assert (args["archive_dir"], args["authfile"], args["images"]) == (
        "/srv/bundle/images", "/tmp/login.json", [IMAGE])
    module, args = calls["sources"]
    assert module == "ansible.legacy.command"
    assert args["argv"][:4] == ["git", "-C", "/srv/bundle/sources/whisper.cpp.git", "fetch"]
    assert args["argv"][-2:] == ["https://github.com/ggml-org/whisper.cpp",
                                 f"+{'e' * 40}:refs/thorfleet/{'e' * 40}"]
    # A commit the bundle holds is not fetched again.
    assert args["creates"] == f"/srv/bundle/sources/whisper.cpp.git/refs/thorfleet/{'e' * 40}"
    assert [w["label"] for w in writes][-1] == f"sources/whisper.cpp.git v1.8.5 = {'e' * 12}"


@pytest.mark.parametrize(("section", "directory", "named"), [
    ("jit", "/srv/bundle", "section"), ("builds", "/srv/bundle", "section"),
    ("models", "bundle", "directory"), ("models", None, "directory")])
def test_a_bundle_write_of_no_section_or_outside_an_absolute_directory_is_refused(
        section, directory, named):
    with pytest.raises(artefacts.ArtefactError, match=f"^{named}: "):
        artefacts.bundle_call(section, model(), directory, {})


def test_what_the_bundles_image_copies_found_goes_into_the_lock_over_what_it_had():
    other = "sha256:" + "f" * 64
    known = {LISTED: {"linux/amd64": other}}
    results = [{"platforms": {LISTED: {"linux/arm64": PLATFORM}}}, {"skipped": True},
               {"changed": False}]
    assert artefacts.bundle_lock_writes(results, known) == [
        {"section": "image_platforms",
         "entries": {LISTED: {"linux/amd64": other, "linux/arm64": PLATFORM}}}]
    # Nothing new: nothing to write.
    assert artefacts.bundle_lock_writes([{"platforms": known}], known)[0]["entries"] == {}


def test_a_kind_that_goes_no_host_to_host_is_refused_for_the_rounds():
    # Files and images are bundled, but the rounds copy neither: a file is read in the
    # bundle over Ansible's connection; an image comes through the site cache's registry.
    with pytest.raises(artefacts.ArtefactError, match="artefacts_kind: files goes no host "
                                                      "to host"):
        fleet_filters.artefact_role("files")
    with pytest.raises(artefacts.ArtefactError, match="artefacts_kind: images goes through "
                                                      "the site cache"):
        fleet_filters.artefact_role("images")
    for kind in ("files", "images"):
        assert artefacts.kind_of(kind, moved=False)["bundle"]


def fill(monkeypatch, **options):
    entry = {**IMAGE, "locked": digest(LISTING)}
    return run_module(site_cache_fill, {"images": [entry], "platforms": {},
                                        "authfile": AUTH["file"], **options}, monkeypatch)


def test_an_image_goes_into_the_bundle_as_an_archive_of_its_platform_once(
        skopeo, monkeypatch, tmp_path):  # noqa: F811
    skopeo.serve(f"nvcr.io/nvidia/vllm@{digest(LISTING)}", LISTING)
    done = fill(monkeypatch, archive_dir=str(tmp_path))
    assert not done.failed, done.result
    archive = tmp_path / f"{digest(ARM64).removeprefix('sha256:')}.tar"
    assert archive.read_text() == f"docker://nvcr.io/nvidia/vllm@{digest(ARM64)}"
    assert done.result["platforms"] == {digest(LISTING): {"linux/arm64": digest(ARM64)}}
    assert not list(tmp_path.glob("*.partial"))
    again = fill(monkeypatch, archive_dir=str(tmp_path),
                 platforms=done.result["platforms"])
    assert not again.failed and not again.result["changed"]


def test_on_the_site_the_cache_loads_from_the_bundle_and_asks_no_registry(
        skopeo, monkeypatch, tmp_path):  # noqa: F811
    platforms = {digest(LISTING): {"linux/arm64": digest(ARM64)}}
    archive = str(tmp_path / "images" / "x.tar")
    done = fill(monkeypatch, registry="127.0.0.1:5444", platforms=platforms,
                archives={digest(ARM64): archive})
    assert not done.failed and done.result["changed"]
    assert [call.split()[-2:] for call in skopeo.calls()] == [
        [f"oci-archive:{archive}", f"docker://127.0.0.1:5444/nvidia/vllm@{digest(ARM64)}"]]
    missing = fill(monkeypatch, registry="127.0.0.1:5444", platforms=platforms, archives={})
    assert missing.failed and "the bundle has no linux/arm64 image" in missing.result["msg"]


def test_verify_finds_a_changed_a_missing_and_an_added_file(tmp_path):
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "w.bin").write_bytes(b"weights")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "t.jinja").write_text("template")
    (tmp_path / "bundle.json").write_text(json.dumps({
        "format": 1, "models": [{"dir": "models/m"}], "files": [{"file": "files/t.jinja"}],
        "images": [], "sources": []}))
    assert bundles.write_sums(tmp_path) == 3
    assert bundles.verify(tmp_path) == []
    (tmp_path / "models" / "m" / "w.bin").write_bytes(b"weightz")
    (tmp_path / "files" / "t.jinja").unlink()
    (tmp_path / "extra").write_text("")
    problems = bundles.verify(tmp_path)
    assert problems == [
        "files/t.jinja: listed in SHA256SUMS, missing",
        "extra: not listed in SHA256SUMS",
        "models/m/w.bin: its sha256 is not the one SHA256SUMS lists",
        "bundle.json: files: files/t.jinja: not in the bundle"]
    (tmp_path / "SHA256SUMS").unlink()
    assert bundles.verify(tmp_path) == ["SHA256SUMS: missing (not a bundle, or one not finished)"]


def test_verify_against_sums_kept_apart_finds_a_file_changed_and_resummed_in_the_bundle(
        tmp_path, capsys):
    bundle = tmp_path / "bundle"
    (bundle / "models" / "m").mkdir(parents=True)
    (bundle / "models" / "m" / "w.bin").write_bytes(b"weights")
    (bundle / "bundle.json").write_text(json.dumps({
        "format": 1, "models": [{"dir": "models/m"}], "files": [], "images": [],
        "sources": []}))
    bundles.write_sums(bundle)
    kept = tmp_path / "SHA256SUMS.kept"  # with the lock, not on the disk that travels
    kept.write_bytes((bundle / "SHA256SUMS").read_bytes())
    (bundle / "models" / "m" / "w.bin").write_bytes(b"weightz")
    bundles.write_sums(bundle)  # whoever changed it summed the bundle again
    assert bundles.verify(bundle) == []
    assert bundles.verify(bundle, kept) == [
        f"models/m/w.bin: its sha256 is not the one {kept} lists"]
    assert cli.main(["bundle", "verify", str(bundle), "--sums", str(kept)]) == 1
    assert f"models/m/w.bin: its sha256 is not the one {kept} lists" in capsys.readouterr().err
    assert bundles.verify(bundle, tmp_path / "none") == [
        f"{tmp_path / 'none'}: missing (not a bundle, or one not finished)"]


# --- at the edges ---------------------------------------------------------------------


def test_a_pinned_revision_is_one_the_lock_resolved_or_a_commit_asked_for():
    assert bundle_filters.bundle_contents([need("thor01", models=[model()])])["unpinned"] == []
    asked_a_commit = {**model(), "requested_revision": COMMIT}
    assert bundle_filters.bundle_contents([need("thor01", models=[asked_a_commit])])[
        "models"][0]["revision"] == COMMIT
    branch = model(revision="main")
    assert bundle_filters.bundle_contents([need("thor01", models=[branch])])["models"] == []


def test_a_host_that_says_nothing_needs_nothing():
    assert bundle_filters.bundle_need({"inventory_hostname": "thor01"}) == need("thor01")


def test_a_bundle_is_of_format_1_and_an_index_of_another_shape_is_refused():
    index = index_of(bundle_filters.bundle_contents([need("thor01", models=[model()])]))
    assert index["format"] == 1
    for shape in ([index], {**index, "format": 2}, {**index, "files": {}},
                  {**index, "images": ["archive"]}):
        with pytest.raises(bundle_filters.BundleError):
            bundle_filters.bundle_checked(shape)


@pytest.mark.parametrize(("section", "field", "value", "taken"), [
    ("files", "name", "n" * 128, True), ("files", "name", "n" * 129, False),
    ("models", "revision", "r" * 200, True), ("models", "revision", "r" * 201, False)])
def test_an_index_field_is_taken_up_to_its_length(section, field, value, taken):
    index = index_of(bundle_filters.bundle_contents([need(
        "thor01", models=[model()], files=[FILE])]))
    index[section][0][field] = value
    if taken:
        assert bundle_filters.bundle_checked(index)[section][0][field] == value
    else:
        with pytest.raises(bundle_filters.BundleError, match=f"{section}: field {field}"):
            bundle_filters.bundle_checked(index)


@pytest.mark.parametrize("found", [None, "sha256:zz", 42, {}])
def test_an_image_whose_platform_digest_the_copy_did_not_find_is_refused(found):
    contents = bundle_filters.bundle_contents([need("thor01", images=[IMAGE])])
    with pytest.raises(bundle_filters.BundleError, match="no linux/arm64 image"):
        bundle_filters.bundle_index(contents, {LISTED: {"linux/arm64": found}}, {})


def test_the_bundles_platforms_go_over_the_locks():
    other = "sha256:" + "9" * 64
    known = {LISTED: {"linux/amd64": other}}
    index = index_of(bundle_filters.bundle_contents([need("thor01", images=[IMAGE])]))
    merged = bundle_filters.bundle_platforms(index, known)
    assert merged == {LISTED: {"linux/amd64": other, "linux/arm64": PLATFORM}}
    assert known == {LISTED: {"linux/amd64": other}}  # the lock's own, unchanged
    assert bundle_filters.bundle_platforms(None, known) == known
    assert bundle_filters.bundle_platforms(index, None) == {LISTED: {"linux/arm64": PLATFORM}}


def test_a_link_in_a_bundle_is_refused_by_write_and_by_verify(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "t.jinja").write_text("template")
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 1}))
    assert bundles.write_sums(tmp_path) == 2
    (tmp_path / "files" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(bundles.BundleError, match="files/passwd: not a plain file"):
        bundles.write_sums(tmp_path)
    with pytest.raises(bundles.BundleError, match="files/passwd: not a plain file"):
        bundles.verify(tmp_path)
    (tmp_path / "files" / "passwd").unlink()
    (tmp_path / "files" / "dir").symlink_to(tmp_path)
    with pytest.raises(bundles.BundleError, match="files/dir: not a plain file"):
        bundles.verify(tmp_path)


@pytest.mark.parametrize("name", ["a\nb", "a\\b"])
def test_a_file_name_sha256sum_cannot_list_is_refused(tmp_path, name):
    (tmp_path / name).write_text("x")
    with pytest.raises(bundles.BundleError, match="a file name sha256sum cannot list"):
        bundles.write_sums(tmp_path)


@pytest.mark.parametrize("line", [f"{'a' * 64} x", f"{'a' * 63}  x", f"{'a' * 64}  "])
def test_a_sums_line_not_of_sha256sums_format_is_named_by_its_number(tmp_path, line):
    (tmp_path / "x").write_text("")
    (tmp_path / "SHA256SUMS").write_text(f"{'b' * 64}  x\n{line}\n")
    assert bundles.verify(tmp_path) == ["SHA256SUMS: line 2 is not `<sha256>  <file>`"]


def test_verify_finds_an_engine_source_the_bundle_lacks(tmp_path):
    commit = "e" * 40
    refs = tmp_path / "sources" / "whisper.cpp.git" / "refs" / "thorfleet"
    refs.mkdir(parents=True)
    (tmp_path / "bundle.json").write_text(json.dumps({"format": 1, "sources": [
        {"engine": "whisper.cpp", "commit": commit}]}))
    (refs / commit).write_text(commit + "\n")
    bundles.write_sums(tmp_path)
    assert bundles.verify(tmp_path) == []
    (refs / commit).unlink()
    bundles.write_sums(tmp_path)
    assert bundles.verify(tmp_path) == [
        f"bundle.json: sources: whisper.cpp at {commit}: not in the bundle"]


def test_create_runs_the_bundle_playbook_then_writes_the_sums_only_when_it_passed(
        tmp_path, monkeypatch):
    ran, status = [], {"rc": 2}

    def playbook(argv, cwd, timeout, check):
        ran.append(argv)
        where = json.loads(argv[argv.index("-e") + 1])["thorfleet_bundle_create"]
        (Path(where) / "bundle.json").write_text("{}")
        return subprocess.CompletedProcess(argv, status["rc"])

    monkeypatch.setattr(bundles.subprocess, "run", playbook)
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "SHA256SUMS").write_text("from an earlier bundle\n")
    assert bundles.create(tmp_path, ["inv/a", "inv/b"], directory, 60) == 2
    assert not (directory / "SHA256SUMS").exists()  # a failed bundle is never taken as whole
    assert ran[0][1:6] == ["playbooks/bundle.yml", "-i", str(Path("inv/a").resolve()),
                           "-i", str(Path("inv/b").resolve())]
    status["rc"] = 0
    fresh = tmp_path / "new" / "bundle"  # made, with its parents
    assert bundles.create(tmp_path, ["inv/a"], fresh, 60) == 0
    assert bundles.verify(fresh) == []


def test_create_past_its_bound_says_so_and_exits_124(tmp_path, monkeypatch, capsys):
    def hangs(argv, cwd, timeout, check):
        raise subprocess.TimeoutExpired(argv, timeout)

    monkeypatch.setattr(bundles.subprocess, "run", hangs)
    assert bundles.create(tmp_path, ["inv"], tmp_path / "b", 5) == 124
    assert "did not finish within 5 s" in capsys.readouterr().err
    assert not (tmp_path / "b" / "SHA256SUMS").exists()

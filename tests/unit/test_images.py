"""Images: each tag a host's services use, pinned by digest, with a history for rollback."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, load
from thorfleet import bounded

catalogue_filters = load("filter_plugins/catalogue.py")
image_filters = load("filter_plugins/images.py")

VLLM = "nvcr.io/nvidia/vllm:25.10-py3"
SGLANG = "nvcr.io/nvidia/sglang:25.10-py3"
OLD, NEW, NEWER = "sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64


def spec(name, image=None):
    if image is None:
        return {"name": name, "kind": "native"}
    return {"name": name, "kind": "container", "image": image}


SPECS = [spec("chat", VLLM), spec("asr", VLLM), spec("sg", SGLANG), spec("llama")]


def plan(**kwargs):
    return image_filters.image_plan(SPECS, **kwargs)


def test_each_image_once_with_the_services_that_run_it():
    entries = plan()
    assert [(e["ref"], e["services"]) for e in entries] == [
        (SGLANG, ["sg"]), (VLLM, ["chat", "asr"])]
    assert entries[1]["repository"] == "nvcr.io/nvidia/vllm" and entries[1]["tag"] == "25.10-py3"


def test_a_new_tag_is_pulled_by_tag_and_a_locked_one_by_digest():
    entries = {e["ref"]: e for e in plan(lock_images={VLLM: OLD})}
    assert (entries[VLLM]["digest"], entries[VLLM]["image"]) == (
        OLD, f"nvcr.io/nvidia/vllm@{OLD}")
    assert (entries[SGLANG]["digest"], entries[SGLANG]["image"]) == (
        "", "nvcr.io/nvidia/sglang:25.10-py3")


def test_a_refresh_resolves_locked_tags_again():
    refreshed = image_filters.image_refresh(plan(lock_images={VLLM: OLD}))
    assert [(e["locked"], e["digest"], e["image"]) for e in refreshed] == [
        ("", "", "nvcr.io/nvidia/sglang:25.10-py3"), ("", "", "nvcr.io/nvidia/vllm:25.10-py3")]


def test_the_registry_mirror_serves_nvcr_paths_and_the_lock_keeps_nvcr_names():
    entries = plan(lock_images={VLLM: OLD}, registry_mirror="registry.lan:5000/")
    vllm = next(e for e in entries if e["ref"] == VLLM)
    assert vllm["repository"] == "registry.lan:5000/nvidia/vllm"
    assert vllm["image"] == f"registry.lan:5000/nvidia/vllm@{OLD}"
    assert vllm["registry"] == "registry.lan:5000"  # whose login it needs
    other = image_filters.image_plan([spec("x", "docker.io/library/foo:1")],
                                     registry_mirror="registry.lan:5000")
    assert (other[0]["registry"], other[0]["upstream"]) == ("docker.io", "docker.io/library/foo")


# Where an image comes from, by its name as Docker reads it; Docker Hub's repositories by
# the short names Docker reports them under (RepoDigests), so that a pulled image is found.
@pytest.mark.parametrize(("ref", "registry", "upstream", "repository", "path"), [
    ("ubuntu:24.04", "docker.io", "docker.io/library/ubuntu", "ubuntu",
     "docker.io/library/ubuntu"),
    ("dustynv/vllm:r36", "docker.io", "docker.io/dustynv/vllm", "dustynv/vllm",
     "docker.io/dustynv/vllm"),
    ("docker.io/ubuntu:24.04", "docker.io", "docker.io/library/ubuntu", "ubuntu",
     "docker.io/library/ubuntu"),
    ("ghcr.io/org/team/img:1", "ghcr.io", "ghcr.io/org/team/img", "ghcr.io/org/team/img",
     "ghcr.io/org/team/img"),
    ("registry.lan:5000/community/vllm:1", "registry.lan:5000",
     "registry.lan:5000/community/vllm", "registry.lan:5000/community/vllm",
     "registry.lan-5000/community/vllm"),
    ("localhost/x:1", "localhost", "localhost/x", "localhost/x", "localhost/x"),
    (VLLM, "nvcr.io", "nvcr.io/nvidia/vllm", "nvcr.io/nvidia/vllm", "nvidia/vllm"),
])
def test_an_image_from_any_registry_is_named_by_its_registry_and_path(ref, registry, upstream,
                                                                       repository, path):
    (entry,) = image_filters.image_plan([spec("x", ref)])
    assert (entry["registry"], entry["upstream"], entry["repository"], entry["path"]) == (
        registry, upstream, repository, path)
    assert not entry["cached"]
    # Through a site cache, under its path there, whatever registry it comes from.
    (cached,) = image_filters.image_plan([spec("x", ref)], cache="cache.lan:5443")
    assert cached["cached"] and cached["repository"] == f"cache.lan:5443/{path}"
    assert cached["upstream"] == upstream


def test_two_registries_images_of_one_path_stay_apart_in_the_cache():
    paths = {e["path"] for e in image_filters.image_plan(
        [spec("a", "ghcr.io/nvidia/vllm:1"), spec("b", "nvcr.io/nvidia/vllm:1"),
         spec("c", "quay.io/nvidia/vllm:1"), spec("d", "nvidia/vllm:1")], cache="c:5443")}
    assert len(paths) == 4, paths


GHCR = {"username": "me", "password": "ghp-secret"}


def test_each_registry_logs_in_with_its_own_credentials_and_public_ones_with_none():
    entries = image_filters.image_plan([spec("a", VLLM), spec("b", "ghcr.io/org/img:1"),
                                        spec("c", "ubuntu:24.04"), spec("d", "quay.io/x/y:1")])
    logins = image_filters.registry_logins(entries, {"ghcr.io": GHCR, "other.io": GHCR},
                                           "ngc-key", "$oauthtoken")
    assert [(login["registry"], login["url"], login["username"], login["password"],
             login["setting"]) for login in logins] == [
        ("ghcr.io", "ghcr.io", "me", "ghp-secret", "thorfleet_registry_credentials['ghcr.io']"),
        ("nvcr.io", "nvcr.io", "$oauthtoken", "ngc-key", "thorfleet_ngc_api_key")]
    # Docker Hub's login is kept under its index's URL, as `docker login` keeps it.
    hub = image_filters.registry_logins(entries, {"docker.io": GHCR})
    assert [(login["registry"], login["url"]) for login in hub] == [
        ("docker.io", "https://index.docker.io/v1/")]
    # NGC's key goes to the mirror standing for nvcr.io; an entry for it replaces the key.
    mirrored = image_filters.image_plan([spec("a", VLLM)], registry_mirror="mirror.lan:5000")
    assert [(login["registry"], login["password"]) for login in image_filters.registry_logins(
        mirrored, {}, "ngc-key", registry_mirror="mirror.lan:5000")] == [
        ("mirror.lan:5000", "ngc-key")]
    assert [(login["registry"], login["password"]) for login in image_filters.registry_logins(
        mirrored, {"mirror.lan:5000": GHCR}, "ngc-key", registry_mirror="mirror.lan:5000")] == [
        ("mirror.lan:5000", "ghp-secret")]


def test_the_site_caches_login_file_holds_every_registrys_login():
    logins = image_filters.registry_logins(None, {"ghcr.io": GHCR}, "ngc-key", "$oauthtoken")
    auth = image_filters.registry_auth(logins)
    assert auth == {"auths": {"ghcr.io": {"auth": "bWU6Z2hwLXNlY3JldA=="},
                              "nvcr.io": {"auth": "JG9hdXRodG9rZW46bmdjLWtleQ=="}}}
    assert image_filters.registry_auth(image_filters.registry_logins(None, {}, "")) == {
        "auths": {}}


@pytest.mark.parametrize(("credentials", "says"), [
    ({"GHCR.io": GHCR}, "thorfleet_registry_credentials['GHCR.io']: a registry"),
    ({"ghcr.io/org": GHCR}, "thorfleet_registry_credentials['ghcr.io/org']: a registry"),
    ({"ghcr.io\nx": GHCR}, "a registry"),
    ({"ghcr.io": {"username": "me"}}, "give username and password"),
    ({"ghcr.io": {**GHCR, "email": "x"}}, "give username and password"),
    ({"ghcr.io": {"username": "me:x", "password": "p"}}, "field username"),
    ({"ghcr.io": {"username": "me", "password": "ghp-secret\nExecStartPre=/bin/id"}},
     "field password"),
    ({"ghcr.io": {"username": "me", "password": ""}}, "field password"),
    ({"ghcr.io": {"username": "me", "password": 7}}, "field password"),
    (["ghcr.io"], "thorfleet_registry_credentials: a mapping"),
])
def test_bad_registry_credentials_are_named_without_the_password(credentials, says):
    problems = image_filters.registry_credentials_problems(credentials)
    assert len(problems) == 1 and says in problems[0], problems
    assert "ghp-secret" not in problems[0]


def test_good_registry_credentials_have_no_problems():
    assert image_filters.registry_credentials_problems(
        {"ghcr.io": GHCR, "registry.lan:5000": GHCR, "localhost:5000": GHCR}) == []
    assert image_filters.registry_credentials_problems({}) == []


def test_an_image_without_a_tag_is_refused_naming_the_field():
    with pytest.raises(catalogue_filters.CatalogueError, match="field image"):
        image_filters.image_plan([spec("x", "registry.lan:5000/nvidia/vllm")])


def pulled(ref, repository, *repo_digests, failed=False):
    return {"item": {"ref": ref, "repository": repository}, "failed": failed,
            "image": {"RepoDigests": list(repo_digests)}}


def test_digests_come_from_the_repository_that_was_pulled():
    host1 = {"results": [pulled(VLLM, "mirror/nvidia/vllm", f"other/vllm@{NEWER}",
                                f"mirror/nvidia/vllm@{NEW}")]}
    host2 = {"results": [pulled(SGLANG, "mirror/nvidia/sglang", f"mirror/nvidia/sglang@{OLD}",
                                failed=True)]}
    assert image_filters.image_digests([host1, host2, None]) == {VLLM: NEW}


def test_the_history_keeps_the_running_digest_and_the_one_before():
    entry = {"ref": VLLM, "repository": "r/vllm", "digest": NEW}
    assert image_filters.image_history([entry], {"r/vllm": [OLD]}) == {
        "r/vllm": [NEW, OLD]}
    newer = {**entry, "digest": NEWER}
    assert image_filters.image_history([newer], {"r/vllm": [NEW, OLD]}) == {
        "r/vllm": [NEWER, NEW]}
    # The same digest again (a re-run) leaves the history as it was.
    assert image_filters.image_history([entry], {"r/vllm": [NEW, OLD]}) == {
        "r/vllm": [NEW, OLD]}
    # Just resolved (no lock entry yet): the digest the pull gave.
    fresh = {**entry, "digest": ""}
    assert image_filters.image_history([fresh], {}, {VLLM: NEW}) == {"r/vllm": [NEW]}
    # Check mode resolves nothing: nothing to remember.
    assert image_filters.image_history([fresh], {"r/vllm": [OLD]}, {}) == {"r/vllm": [OLD]}


def test_only_images_out_of_the_history_are_pruned():
    def image(image_id, *digests):
        return {"Id": image_id, "RepoDigests": [f"r/vllm@{d}" for d in digests]}
    results = [{"item": "r/vllm", "images": [image("id-new", NEW), image("id-old", OLD),
                                             image("id-older", NEWER),
                                             {"Id": "id-local", "RepoDigests": []}]}]
    pruned = image_filters.images_to_prune(results, {"r/vllm": [NEW, OLD]})
    assert [i["Id"] for i in pruned] == ["id-older"]


def test_compile_caches_are_kept_per_image_digest():
    specs = [{**s, "caches": ["/root/.cache/vllm", "/root/.triton"]} if s.get("image") == VLLM
             else {**s, "caches": ["/root/.cache/flashinfer"]} for s in SPECS]
    images = plan(lock_images={VLLM: OLD})  # sglang not resolved yet (check mode)
    mounts = image_filters.jit_mounts(specs, images, "/var/cache/thorfleet/jit/")
    root = "/var/cache/thorfleet/jit/sha256-" + "a" * 64
    assert mounts == [
        {"service": name, "digest": OLD, "container": cache, "host": root + cache,
         "volume": f"--volume={root}{cache}:{cache}"}
        for name in ("chat", "asr") for cache in ("/root/.cache/vllm", "/root/.triton")]
    # A bump: the same service, a cache of its own under the new digest.
    bumped = image_filters.jit_mounts(specs, plan(lock_images={VLLM: NEW}), "/c")
    assert bumped[0]["host"] == "/c/sha256-" + "b" * 64 + "/root/.cache/vllm"


def test_the_caches_of_images_no_longer_kept_are_pruned():
    found = {"files": [{"path": f"/c/{d.replace(':', '-')}"} for d in (OLD, NEW, NEWER)]}
    keep = {"reg/nvidia/vllm": [NEW], "reg/nvidia/sglang": [NEWER]}
    assert image_filters.jit_caches_to_prune(found, keep) == ["/c/sha256-" + "a" * 64]
    assert image_filters.jit_caches_to_prune(found, {}) == sorted(
        f["path"] for f in found["files"])


def test_bundle_create_refuses_bad_registry_credentials_before_writing_anything(tmp_path):
    # `thorfleet bundle create` runs no preflight: its play checks the logins it writes
    # into skopeo's login file. The sample inventory's hosts are never contacted.
    bundle = tmp_path / "bundle"
    done = bounded.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "playbooks/bundle.yml",
         "-i", "inventory/sample", "-e", f"thorfleet_bundle_create={bundle}",
         "-e", json.dumps({"thorfleet_registry_credentials": {
             "ghcr.io": {"username": "me", "password": "ghp-secret\nx"}}})],
        120, cwd=ROOT, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    assert done.returncode != 0, done.stdout
    assert "thorfleet_registry_credentials['ghcr.io']: field password" in done.stdout
    assert "ghp-secret" not in done.stdout + done.stderr
    assert not bundle.exists()

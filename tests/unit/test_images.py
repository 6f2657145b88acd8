"""Images: each tag a host's services use, pinned by digest, with a history for rollback."""

from __future__ import annotations

import pytest

from tests.conftest import load

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
    assert all(e["digest"] == "" for e in plan(lock_images={VLLM: OLD}, refresh=True))


def test_the_registry_mirror_serves_nvcr_paths_and_the_lock_keeps_nvcr_names():
    entries = plan(lock_images={VLLM: OLD}, registry_mirror="registry.lan:5000/")
    vllm = next(e for e in entries if e["ref"] == VLLM)
    assert vllm["repository"] == "registry.lan:5000/nvidia/vllm"
    assert vllm["image"] == f"registry.lan:5000/nvidia/vllm@{OLD}"
    other = image_filters.image_plan([spec("x", "docker.io/library/foo:1")],
                                         registry_mirror="registry.lan:5000")
    assert other[0]["repository"] == "docker.io/library/foo"  # not an NGC image


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

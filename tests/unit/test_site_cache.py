"""The site cache: which images come through it, what the hosts pull from it, and
site_cache_fill, which copies an image's platform image into it with skopeo. skopeo
itself runs in the lab test (tests/lab/test_fleet_fetch.py); here a stand-in on PATH
answers from files and records what it was asked to copy."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import stat
import sys

import pytest

from tests.conftest import load, loopback_server, plugin_utils, run_module

image_filters = load("filter_plugins/images.py")
fleet_filters = load("filter_plugins/fleet.py")
artefacts = plugin_utils("artefacts")
site_cache_fill = load("roles/site_cache/library/site_cache_fill.py")

VLLM = "nvcr.io/nvidia/vllm:25.10-py3"
CACHE = "10.0.0.2:5443"
MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
AUTH = {"file": "/etc/thorfleet/site-cache/auth.json"}  # the fixture `skopeo` writes one


def digest(raw):
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def image_manifest(name):
    return json.dumps({"schemaVersion": 2, "mediaType": MANIFEST, "layers": [],
                       "config": {"digest": "sha256:" + name * 64}}).encode()


ARM64, AMD64 = image_manifest("a"), image_manifest("b")
LISTING = json.dumps({"schemaVersion": 2, "mediaType": LIST, "manifests": [
    {"mediaType": MANIFEST, "digest": digest(AMD64), "size": len(AMD64),
     "platform": {"architecture": "amd64", "os": "linux"}},
    {"mediaType": MANIFEST, "digest": digest(ARM64), "size": len(ARM64),
     "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}}]}).encode()

# skopeo's stand-in: `inspect --raw docker://REF` prints the file named after REF in
# $FAKE_SKOPEO/manifests (or fails as skopeo does for an unknown manifest); `copy`
# records its arguments, and writes an OCI archive destination (its source's name in
# it); $FAKE_SKOPEO/hang makes it hang.
FAKE = """#!{python}
import os, sys, time
home = os.environ["FAKE_SKOPEO"]
if os.path.exists(os.path.join(home, "hang")):
    time.sleep(60)
with open(os.path.join(home, "calls"), "a") as calls:
    calls.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1] == "inspect":
    ref = sys.argv[-1].removeprefix("docker://")
    path = os.path.join(home, "manifests", ref.replace("/", "_"))
    if not os.path.exists(path):
        sys.stderr.write('time="x" level=fatal msg="Error reading manifest: manifest unknown"\\n')
        sys.exit(1)
    sys.stdout.buffer.write(open(path, "rb").read())
if sys.argv[1] == "copy" and sys.argv[-1].startswith("oci-archive:"):
    with open(sys.argv[-1].removeprefix("oci-archive:"), "w") as archive:
        archive.write(sys.argv[-2])
"""


@pytest.fixture
def skopeo(tmp_path, monkeypatch):
    home = tmp_path / "skopeo"
    (home / "manifests").mkdir(parents=True)
    script = tmp_path / "bin" / "skopeo"
    script.parent.mkdir()
    script.write_text(FAKE.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SKOPEO", str(home))
    # skopeo's login file, as the site cache role writes it.
    (home / "auth.json").write_text('{"auths": {}}')
    monkeypatch.setitem(AUTH, "file", str(home / "auth.json"))
    held = set()
    monkeypatch.setattr(site_cache_fill, "held",
                        lambda _registry, path, found: f"{path}@{found}" in held)

    class Skopeo:
        def serve(self, ref, raw):
            (home / "manifests" / ref.replace("/", "_")).write_bytes(raw)

        def calls(self):
            path = home / "calls"
            return path.read_text().splitlines() if path.exists() else []

        def hang(self):
            (home / "hang").write_text("")

    fake = Skopeo()
    fake.held = held
    return fake


def fill(monkeypatch, check=False, platforms=None, timeout=60, **image):
    entry = {"ref": VLLM, "upstream": "nvcr.io/nvidia/vllm", "path": "nvidia/vllm",
             "tag": "25.10-py3", "locked": "", "platform": "linux/arm64", **image}
    return run_module(site_cache_fill, {
        "images": [entry], "platforms": platforms or {}, "registry": "127.0.0.1:5444",
        "authfile": AUTH["file"], "timeout": timeout},
        monkeypatch, check=check)


def test_a_new_tag_is_resolved_and_only_the_hosts_platform_image_is_copied(skopeo,
                                                                          monkeypatch):
    skopeo.serve("nvcr.io/nvidia/vllm:25.10-py3", LISTING)
    done = fill(monkeypatch)
    assert not done.failed and done.result["changed"]
    listed = digest(LISTING)
    assert done.result["resolved"] == {VLLM: listed}
    assert done.result["platforms"] == {listed: {"linux/arm64": digest(ARM64)}}
    assert done.result["copied"] == [f"nvidia/vllm@{digest(ARM64)}"]
    copies = [call for call in skopeo.calls() if call.startswith("copy")]
    # The arm64 image alone, by digest, its digest kept; the login file for the upstream.
    assert copies == [
        "copy --quiet --preserve-digests --retry-times 3 --src-authfile "
        f"{AUTH['file']} --dest-tls-verify=false "
        f"docker://nvcr.io/nvidia/vllm@{digest(ARM64)} "
        f"docker://127.0.0.1:5444/nvidia/vllm@{digest(ARM64)}"]


def test_a_locked_image_the_cache_holds_asks_no_registry(skopeo, monkeypatch):
    listed = digest(LISTING)
    skopeo.held.add(f"nvidia/vllm@{digest(ARM64)}")
    done = fill(monkeypatch, locked=listed,
                platforms={listed: {"linux/arm64": digest(ARM64)}})
    assert not done.failed and not done.result["changed"]
    assert done.result == {"changed": False, "resolved": {}, "platforms": {}, "copied": [],
                           "wanted": {"nvidia/vllm": [digest(ARM64)]}}
    assert skopeo.calls() == []


def test_a_locked_list_is_read_for_the_platform_and_checked_against_its_digest(skopeo,
                                                                            monkeypatch):
    listed = digest(LISTING)
    skopeo.serve(f"nvcr.io/nvidia/vllm@{listed}", LISTING)
    done = fill(monkeypatch, locked=listed, platform="linux/amd64")
    assert done.result["platforms"] == {listed: {"linux/amd64": digest(AMD64)}}
    assert done.result["resolved"] == {}  # the lock's pin stays
    # A registry that answers other bytes for that digest is refused, naming the image.
    skopeo.serve(f"nvcr.io/nvidia/vllm@{listed}", LISTING + b" ")
    refused = fill(monkeypatch, locked=listed)
    assert refused.failed and VLLM in refused.result["msg"] \
        and "does not have that digest" in refused.result["msg"]


def test_a_single_platform_image_is_its_own_platform_image(skopeo, monkeypatch):
    skopeo.serve("nvcr.io/nvidia/vllm:25.10-py3", ARM64)
    done = fill(monkeypatch)
    assert done.result["platforms"] == {digest(ARM64): {"linux/arm64": digest(ARM64)}}


@pytest.mark.parametrize(("answer", "message"), [
    (json.dumps({"schemaVersion": 2, "mediaType": LIST, "manifests": [
        {"digest": digest(AMD64), "platform": {"architecture": "amd64", "os": "linux"}}]}),
     "has no linux/arm64 image (it has linux/amd64)"),
    (json.dumps({"schemaVersion": 2, "mediaType": LIST, "manifests": [
        {"digest": "sha256:../../x", "platform": {"architecture": "arm64", "os": "linux"}}]}),
     "names no valid digest for linux/arm64"),
    ("<html>rate limited</html>", "is not JSON"),
    (json.dumps(["a list"]), "is not a manifest"),
    (json.dumps({"mediaType": "application/vnd.oci.artifact.manifest.v1+json"}),
     "of a kind thorfleet does not copy"),
])
def test_a_registry_answering_nonsense_fails_naming_the_image(skopeo, monkeypatch, answer,
                                                              message):
    skopeo.serve("nvcr.io/nvidia/vllm:25.10-py3", answer.encode())
    done = fill(monkeypatch)
    assert done.failed and message in done.result["msg"] and VLLM in done.result["msg"]
    assert not [call for call in skopeo.calls() if call.startswith("copy")]


def test_a_missing_tag_fails_with_skopeos_reason(skopeo, monkeypatch):
    done = fill(monkeypatch, tag="25.99-py3")
    assert done.failed and "manifest unknown" in done.result["msg"] \
        and VLLM in done.result["msg"]


@pytest.mark.parametrize(("field", "value"), [
    ("tag", "25.10;reboot"), ("tag", "25.10\nx"), ("upstream", "nvcr.io/nvidia/vllm --all"),
    ("path", "../nvidia/vllm"), ("platform", "linux/arm64;x"), ("locked", "sha256:%00"),
])
def test_hostile_values_are_refused_naming_the_field_before_skopeo_runs(skopeo, monkeypatch,
                                                                        field, value):
    done = fill(monkeypatch, **{field: value})
    assert done.failed and (field in done.result["msg"] or "lock" in done.result["msg"])
    assert skopeo.calls() == []


def test_check_mode_resolves_and_copies_nothing(skopeo, monkeypatch):
    skopeo.serve("nvcr.io/nvidia/vllm:25.10-py3", LISTING)
    done = fill(monkeypatch, check=True)
    assert done.result["changed"] and done.result["copied"] == [f"nvidia/vllm@{digest(ARM64)}"]
    assert not [call for call in skopeo.calls() if call.startswith("copy")]


def test_check_mode_on_a_new_cache_without_skopeo_says_what_it_would_copy(monkeypatch,
                                                                        tmp_path, skopeo):
    # skopeo there, its login file not written yet (the fake skopeo would answer).
    skopeo.serve("nvcr.io/nvidia/vllm:25.10-py3", LISTING)
    os.remove(AUTH["file"])
    done = fill(monkeypatch, check=True)
    assert not done.failed and done.result["copied"] == ["nvidia/vllm:25.10-py3"]
    assert skopeo.calls() == []
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no skopeo
    done = fill(monkeypatch, check=True)
    assert not done.failed and done.result["copied"] == ["nvidia/vllm:25.10-py3"]
    # Not in check mode, a missing skopeo is an error that says so.
    failed = fill(monkeypatch)
    assert failed.failed and "skopeo is not installed" in failed.result["msg"]


def test_a_hung_skopeo_fails_naming_the_setting(skopeo, monkeypatch):
    skopeo.hang()
    done = fill(monkeypatch, timeout=1)
    assert done.failed and "site_cache_copy_timeout" in done.result["msg"]


# The images phase's plan through the cache.

def spec(name, image):
    return {"name": name, "kind": "container", "image": image}


def test_through_the_cache_hosts_pull_and_run_their_platforms_image_from_it():
    listed, arm64 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    plan = image_filters.image_plan(
        [spec("chat", VLLM), spec("other", "docker.io/library/foo:1")],
        {VLLM: listed, "docker.io/library/foo:1": "sha256:" + "3" * 64},
        registry_mirror="mirror.lan:5000", cache=CACHE,
        platforms={listed: {"linux/arm64": arm64}}, platform="linux/arm64")
    foo, vllm = plan
    assert (vllm["cached"], vllm["repository"], vllm["upstream"], vllm["path"]) == (
        True, f"{CACHE}/nvidia/vllm", "mirror.lan:5000/nvidia/vllm", "nvidia/vllm")
    assert (vllm["locked"], vllm["digest"], vllm["image"]) == (
        listed, arm64, f"{CACHE}/nvidia/vllm@{arm64}")
    # Not NGC's: through the cache as well, under its registry's name there.
    assert (foo["cached"], foo["upstream"], foo["path"]) == (
        True, "docker.io/library/foo", "docker.io/library/foo")
    assert foo["locked"] == "sha256:" + "3" * 64 and foo["digest"] == ""
    # A platform the cache has not copied yet: no digest, so the images phase fills it
    # (and the services phase stops, asking for the images phase).
    unknown = image_filters.image_plan([spec("chat", VLLM)], {VLLM: listed}, cache=CACHE,
                                       platforms={listed: {"linux/arm64": arm64}},
                                       platform="linux/amd64")
    assert unknown[0]["digest"] == "" and unknown[0]["locked"] == listed


def test_the_cache_copies_each_image_and_platform_once_and_each_host_pulls_its_own():
    # Through the pipeline's images kind (via: registry), from the plans of three hosts:
    # two arm64 hosts lacking the same image, one amd64 host, and one host holding it.
    listed, arm64 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    sglang = "nvcr.io/nvidia/sglang:25.10-py3"

    def state(host, platform, images, held=()):
        plan = image_filters.image_plan([spec(f"s{i}", image) for i, image in enumerate(images)],
                                        {VLLM: listed}, cache=CACHE,
                                        platforms={listed: {"linux/arm64": arm64}},
                                        platform=platform)
        entries = fleet_filters.artefact_entries(plan, "images")
        reports = {e["key"]: {"digest": e["item"]["digest"]} for e in entries
                   if e["item"]["ref"] in held}
        return fleet_filters.holdings(entries, reports, host, "10.0.0.9", 873, "images")

    states = [state("thor01", "linux/arm64", [VLLM, sglang]),
              state("thor03", "linux/arm64", [VLLM]),
              state("thor04", "linux/amd64", [VLLM]),
              state("thor05", "linux/arm64", [VLLM], held=[VLLM])]
    wanted = fleet_filters.FilterModule().filters()["thorfleet_artefact_registry_fill"](states)
    assert [(w["ref"], w["platform"]) for w in wanted] == [
        (sglang, "linux/arm64"), (VLLM, "linux/amd64"), (VLLM, "linux/arm64")]
    assert wanted[-1] == {"ref": VLLM, "upstream": "nvcr.io/nvidia/vllm", "path": "nvidia/vllm",
                          "tag": "25.10-py3", "locked": listed, "platform": "linux/arm64"}

    # Once the cache copied, each host pulls what it lacks by the digest its copy
    # recorded in the lock: sglang's tag resolved now, amd64's image not copied.
    sglang_listed, sglang_arm64 = "sha256:" + "3" * 64, "sha256:" + "4" * 64
    lock = {"images": {VLLM: listed, sglang: sglang_listed},
            "image_platforms": {listed: {"linux/arm64": arm64},
                                sglang_listed: {"linux/arm64": sglang_arm64}}}
    sources = fleet_filters.FilterModule().filters()["thorfleet_artefact_registry_sources"]
    pulls = {e["item"]["ref"]: e["held"] for e in sources(states[0], lock)}
    assert pulls == {VLLM: {"digest": arm64}, sglang: {"digest": sglang_arm64}}
    module, args = artefacts.copy_call(sources(states[0], lock)[0], pulls[sglang])
    assert (module, args) == ("community.docker.docker_image_pull",
                              {"name": f"{CACHE}/nvidia/sglang@{sglang_arm64}",
                               "pull": "not_present"})
    assert [e["held"] for e in sources(states[2], lock)] == [None]
    assert sources(states[3], lock) == []
    # The hosts read Docker only for an image with a digest to ask about.
    assert artefacts.read_call(states[3]["entries"][next(iter(states[3]["entries"]))]) == (
        "community.docker.docker_image_info", {"name": [f"{CACHE}/nvidia/vllm@{arm64}"]})
    assert artefacts.read_call(states[0]["entries"][json.dumps([sglang, "linux/arm64"])])[1] \
        is None


def test_a_hosts_platform_comes_from_its_architecture():
    assert image_filters.image_platform("aarch64") == "linux/arm64"
    assert image_filters.image_platform("x86_64") == "linux/amd64"
    with pytest.raises(Exception, match="riscv64"):
        image_filters.image_platform("riscv64")


def test_the_lock_gains_the_platforms_it_lacked_and_keeps_the_others():
    listed = "sha256:" + "1" * 64
    known = {listed: {"linux/arm64": "sha256:" + "2" * 64}}
    assert image_filters.image_platforms_update(
        known, {listed: {"linux/amd64": "sha256:" + "3" * 64}}) == {
        listed: {"linux/arm64": "sha256:" + "2" * 64, "linux/amd64": "sha256:" + "3" * 64}}
    assert image_filters.image_platforms_update(known, {listed: known[listed]}) == {}


@pytest.mark.parametrize(("hosts", "address", "port", "storage", "field"), [
    (["thor02", "box"], "10.0.0.2", 5443, "/var/lib/thorfleet/site-cache", "one host"),
    (["thor02"], "10.0.0.2\nExecStart=/bin/sh", 5443, "/srv/cache", "ansible_host"),
    (["thor02"], "10.0.0.2", "5443;x", "/srv/cache", "thorfleet_site_cache_port"),
    (["thor02"], "10.0.0.2", 65535, "/srv/cache", "thorfleet_site_cache_port"),
    (["thor02"], "10.0.0.2", 5443, "/srv/cache\nReadWritePaths=/", "thorfleet_site_cache_storage"),
    (["thor02"], "10.0.0.2", 5443, "/srv/%h", "thorfleet_site_cache_storage"),
    (["thor02"], "10.0.0.2", 5443, "/var/lib", "thorfleet_site_cache_storage"),
    (["thor02"], "10.0.0.2", 5443, "/srv/../etc", "thorfleet_site_cache_storage"),
])
def test_bad_site_cache_settings_are_refused_naming_the_field(hosts, address, port, storage,
                                                              field):
    problems = fleet_filters.site_cache_problems(hosts, address, port, storage)
    assert len(problems) == 1 and field in problems[0]


def test_good_site_cache_settings_and_no_cache_pass():
    assert fleet_filters.site_cache_problems(["thor02"], "cache.lan", "5443", "/srv/c") == []
    assert fleet_filters.site_cache_problems([], "", "x", "") == []


# --- at the edges: platforms and variants, manifests that do not say their kind, what the
# cache's registry answers -----------------------------------------------------------------

V7 = image_manifest("c")
VARIANTS = json.dumps({"schemaVersion": 2, "manifests": [  # no mediaType: a list by its shape
    {"digest": digest(V7), "platform": {"architecture": "arm64", "os": "linux", "variant": "v7"}},
    {"digest": digest(ARM64), "platform": {"architecture": "arm64", "os": "linux",
                                           "variant": "v8"}}]}).encode()


@pytest.mark.parametrize(("platform", "image"), [("linux/arm64/v8", ARM64),
                                                 ("linux/arm64/v7", V7),
                                                 ("linux/arm64", V7)])  # the first arm64
def test_a_platform_with_a_variant_takes_that_variants_image(platform, image):
    found = site_cache_fill.platform_image(VLLM, digest(VARIANTS), VARIANTS, platform)
    assert found == digest(image)


def test_a_manifest_that_does_not_say_its_kind_is_known_by_its_shape():
    single = json.dumps({"schemaVersion": 2, "layers": []}).encode()
    assert site_cache_fill.platform_image(VLLM, digest(single), single,
                                          "linux/arm64") == digest(single)
    neither = json.dumps({"schemaVersion": 2, "blobs": []}).encode()
    with pytest.raises(site_cache_fill.FillError, match="of a kind thorfleet does not copy"):
        site_cache_fill.platform_image(VLLM, digest(neither), neither, "linux/arm64")
    # A list that says it is one image is read as the image it says it is.
    said = json.loads(LISTING)
    said["mediaType"] = MANIFEST
    said = json.dumps(said).encode()
    assert site_cache_fill.platform_image(VLLM, digest(said), said, "linux/arm64") == \
        digest(said)


@pytest.mark.parametrize(("field", "value", "taken"), [
    ("tag", "t" * 128, True), ("tag", "t" * 129, False),
    ("upstream", "registry.lan:65535/nvidia/vllm", True),
    ("upstream", "registry.lan:123456/nvidia/vllm", False)])
def test_a_tag_and_a_registry_port_are_taken_up_to_their_lengths(skopeo, monkeypatch, field,
                                                                  value, taken):
    done = fill(monkeypatch, check=True, **{field: value})
    if taken:
        assert not (done.failed and field in done.result["msg"]), done.result
    else:
        assert done.failed and field in done.result["msg"] and skopeo.calls() == []


@pytest.fixture
def registry():
    """The cache's registry on the loopback address, answering HEAD with the status each
    path asks for (/v2/<status>/manifests/...)."""
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 (the handler's API)
            self.send_response(int(self.path.split("/")[2]))
            self.end_headers()

        def log_message(self, *args):
            pass

    with loopback_server(Answer) as port:
        yield f"127.0.0.1:{port}"


def test_the_cache_holds_what_its_registry_has_and_nothing_it_lacks(registry):
    found = digest(ARM64)
    assert site_cache_fill.held(registry, "200", found) is True
    assert site_cache_fill.held(registry, "404", found) is False
    with pytest.raises(site_cache_fill.FillError, match="answered 500 for 500@"):
        site_cache_fill.held(registry, "500", found)
    with pytest.raises(site_cache_fill.FillError, match="answered 401"):
        site_cache_fill.held(registry, "401", found)
    # A registry that is not running (check mode on a new cache) holds nothing.
    free = registry.rsplit(":", 1)[0] + ":1"
    assert site_cache_fill.held(free, "200", found) is False


def test_with_nothing_known_the_plan_and_the_lock_fall_back_to_their_defaults():
    assert image_filters.image_platform(None) == "linux/arm64"  # a Thor's, before facts
    listed = "sha256:" + "1" * 64
    (entry,) = image_filters.image_plan([spec("chat", VLLM)], {VLLM: listed}, cache=CACHE,
                                        platforms=None, platform="linux/arm64")
    assert entry["digest"] == "" and entry["image"] == f"{CACHE}/nvidia/vllm:25.10-py3"
    assert artefacts.registry_fill(None) == []
    assert image_filters.image_platforms_update(None, None) == {}
    learned = {listed: {"linux/arm64": "sha256:" + "2" * 64}}
    assert image_filters.image_platforms_update(None, learned) == learned

"""A site with no internet, provisioned from a bundle (thorfleet_bundle): written by
`thorfleet bundle create` on the controller from the lab's inventory and lock (the
connected machine), carried to the site cache (thor03, by the README's inventory), and a
fresh host (thor04) converged from it with the lab's upstreams stopped and no route out,
under ansible-core's defaults (no Mitogen, no pipelining), as most users run. The checks
around that converge (a short bundle refused, the check-mode preview, the re-run that
changes nothing) run under the project's ansible.cfg: each is a whole run, three times
slower without Mitogen, and test_site proves the main job the same under both."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from concurrent.futures import ThreadPoolExecutor

import yaml

from tests.lab.conftest import (
    ROOT,
    Playbook,
    connects,
    left_changed,
    push_standin,
    serving,
    thorfleet,
)
from tests.snippets import snippets
from thorfleet import bundle as bundles
from thorfleet import stock
from thorfleet.lab import host_address
from thorfleet.lab.config import (
    FROM_EMPTY,
    FROM_EMPTY_SETTINGS,
    REGISTRY,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
)

# The README's site with no internet, verbatim.
(BUNDLE_SITE,) = [s.text for s in snippets() if s.inventory_file == "hosts.yml"
                  and "thorfleet_bundle:" in s.text]
BUNDLE = yaml.safe_load(BUNDLE_SITE)["thor"]["vars"]["thorfleet_bundle"]
(CACHE,) = yaml.safe_load(BUNDLE_SITE)["thorfleet_site_cache"]["hosts"]
# thor04 runs what thor01 (the connected host) runs of the same models, image and engine:
# whisper-server (built from whisper.cpp) and the vLLM stand-in serving Qwen3-8B; and the
# SGLang stand-in from an image not on nvcr.io (COMMUNITY).
SGLANG = {"name": "sglang", "recipe": "sglang-qwen3-8b-nothink", "port": 8003,
          "memory_share": 0.2}
SERVICES = {"thorfleet_services": FROM_EMPTY_SETTINGS["thorfleet_services"] + [SGLANG]}
# SGLang's image as a community image: on a registry of its own (the lab registry by its
# address, not as nvcr.io's mirror), with that registry's login. An inventory file beside
# the lab's, for `bundle create` and the runs alike.
COMMUNITY_IMAGE = f"{REGISTRY}/community/sglang:25.10-py3"
LOGIN = {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD}
COMMUNITY = {"thor": {"vars": {
    "thorfleet_catalogue_extra": {"engines": {"sglang": {"image": COMMUNITY_IMAGE}}},
    "thorfleet_registry_credentials": {REGISTRY: LOGIN}}}}
MODELS = ["/models/Qwen/Qwen3-8B", "/models/whisper.cpp/models"]
TEMPLATE = "/models/templates/qwen3_nonthinking.jinja"
# No site cache on the cache host (its units, images and certificate gone), so that every
# image the fresh host runs comes out of the bundle.
NO_CACHE = ("systemctl disable --now thorfleet-bundle-share thorfleet-bundle-git "
            "thorfleet-site-cache 2>/dev/null; rm -f /etc/systemd/system/thorfleet-bundle-*"
            ".service /etc/systemd/system/thorfleet-site-cache*.service; "
            "rm -rf /var/lib/thorfleet/site-cache /etc/thorfleet/site-cache; "
            "systemctl daemon-reload")


def held(host) -> dict:
    """What a host holds that a bundle must reproduce: each model's manifest (commit and
    file sums) with the sums of the files on disk, the template's sum, whisper.cpp's
    checked-out commit, and the image its vLLM service runs (its content's id)."""
    found = {}
    for model in MODELS:
        manifest = json.loads(host.file(f"{model}/thorfleet-manifest.json").content_string)
        files = sorted(manifest["files"])
        on_disk = host.check_output(f"cd {model} && sha256sum -- {shlex.join(files)}")
        found[model] = {"commit": manifest["commit"],
                        "sums": {path: meta["sha256"] for path, meta in manifest["files"].items()},
                        "on_disk": {line.split(None, 1)[1].lstrip("*"): line.split()[0]
                                    for line in on_disk.splitlines()}}
    found["template"] = host.check_output(f"sha256sum {TEMPLATE}").split()[0]
    found["whisper.cpp"] = host.check_output("git -C /opt/thorfleet/whisper.cpp/src rev-parse HEAD")
    return found


def empty(lab) -> bool:
    """Whether thor04 holds no model, engine source or build, and no image."""
    return lab.ssh("thor04", "find /models /opt/thorfleet/whisper.cpp -mindepth 1 "
                             "2>/dev/null; docker images -q", check=False).stdout.split() == []


def reached(lab, port: int) -> dict[str, bool]:
    """Whether the site cache's port takes a connection from thor04, thor02 and the lab
    machine, asked at once."""
    address = host_address(int(CACHE.removeprefix("thor")))
    with ThreadPoolExecutor(3) as pool:
        asked = {name: pool.submit(connects, lab, None if name.startswith("the ") else name,
                                   address, port)
                 for name in ("thor04", "thor02", "the lab machine")}
        return {name: future.result() for name, future in asked.items()}


def running_image(host, unit: str) -> tuple[str, str]:
    """(the image reference a container service runs, its content's id)."""
    image = host.check_output(f"docker inspect --format '{{{{.Config.Image}}}}' {unit}")
    return image, host.check_output(f"docker image inspect --format '{{{{.Id}}}}' {image}")


def pin_the_community_image(lab, community) -> str:
    """The community image published, and pinned by a connected host's images phase
    (thor01, with no site cache: it logs in to the image's registry with the login
    thorfleet_registry_credentials gives it, first a wrong one). Returns its digest. Cost:
    two images phases of thor01, about 20 s."""
    digest = push_standin(lab, "sglang", "25.10-py3", version="community",
                          repository="community/sglang")
    images = ("-i", "inventory/lab", "-i", str(community), "site.yml", "-l", "thor01",
              "--tags", "images")
    wrong = Playbook(*images, "-e", json.dumps({"thorfleet_registry_credentials": {
        REGISTRY: {**LOGIN, "password": "not-the-key"}}}))
    assert wrong.rc != 0, wrong
    assert (f"The login to {REGISTRY} as {REGISTRY_USER} failed: check "
            f"thorfleet_registry_credentials['{REGISTRY}']") in " ".join(wrong.output.split())
    assert "not-the-key" not in wrong.output and REGISTRY_PASSWORD not in wrong.output
    pinned = Playbook(*images)
    assert pinned.rc == 0, pinned
    assert REGISTRY_PASSWORD not in pinned.output
    lock = yaml.safe_load((lab.inventory / ".thorfleet.lock.yml").read_text())
    assert lock["images"][COMMUNITY_IMAGE] == digest
    return digest


def test_a_fresh_host_provisions_from_a_bundle_with_no_route_out(lab, hosts, thor01, tmp_path):
    site = tmp_path / "hosts.yml"
    site.write_text(BUNDLE_SITE)
    community = tmp_path / "community.yml"
    community.write_text(yaml.safe_dump(COMMUNITY))
    community_digest = pin_the_community_image(lab, community)
    bundle = tmp_path / "bundle"
    made = thorfleet("bundle", "create", "-i", "inventory/lab", "-i", str(site),
                     "-i", str(community), str(bundle))
    assert made.returncode == 0, made.stdout[-6000:] + made.stderr
    assert "thorfleet-lab-ngc-api-key" not in made.stdout + made.stderr
    checked = thorfleet("bundle", "verify", str(bundle))
    assert checked.returncode == 0, checked.stderr
    index = json.loads((bundle / "bundle.json").read_text())

    # Carried to the site cache; each host's packages from the site's package mirror (the
    # lab's route out, before it is cut), as the README says.
    carried = lab._root(CACHE) / BUNDLE.lstrip("/")
    shutil.rmtree(carried, ignore_errors=True)
    shutil.copytree(bundle, carried)
    for name in (CACHE, "thor04"):
        lab.ssh(name, "apt-get -q update >/dev/null && DEBIAN_FRONTEND=noninteractive "
                      f"apt-get install -qy {shlex.join(index['packages'][name])} >/dev/null")
    lab.ssh("thor04", FROM_EMPTY)
    lab.ssh(CACHE, NO_CACHE)
    converge = ("-i", "inventory/lab", "-i", str(site), "-i", str(community), "site.yml",
                "-l", "thor04", "-e", json.dumps(SERVICES))
    defaults = stock.environment(stock.write_config(ROOT, tmp_path))
    index_file = carried / "bundle.json"
    try:
        offline = thorfleet("lab", "offline")
        assert offline.returncode == 0, offline.stderr
        # A bundle missing one model: preflight stops thor04, naming it, and nothing
        # on thor04 changes.
        index_file.write_text(json.dumps({**index, "models": [
            m for m in index["models"] if m["path"] != "Qwen/Qwen3-8B"]}))
        short = Playbook(*converge)
        assert short.rc != 0 and "lacks model Qwen/Qwen3-8B (huggingface" in short.output, short
        assert short.recap["thor04"]["changed"] == 0, short
        assert empty(lab), short

        # With the whole bundle: check mode previews it all on the fresh host and
        # the fresh cache, and changes nothing on either.
        index_file.write_text(json.dumps(index))
        preview = Playbook(*converge, "--check")
        assert preview.rc == 0, preview
        assert empty(lab), preview
        assert not lab.ssh(CACHE, "ls /etc/systemd/system | grep thorfleet-bundle; ls -d "
                                  "/etc/thorfleet/site-cache", check=False).stdout, preview

        # A model file changed inside the bundle, its manifest and SHA256SUMS written
        # again to match: `bundle verify` passes, but the manifest is not the one the
        # lock pins, and thor04 refuses the copy with nothing on it changed. Cost: one
        # run to the models phase, about 20 s.
        (qwen,) = [m for m in index["models"] if m["path"] == "Qwen/Qwen3-8B"]
        weights = carried / qwen["dir"] / "model.safetensors"
        manifest_file = carried / qwen["dir"] / "thorfleet-manifest.json"
        kept = weights.read_bytes(), manifest_file.read_bytes()
        # The README's copy of SHA256SUMS kept apart, with the inventory.
        apart = tmp_path / "bundle.SHA256SUMS"
        apart.write_bytes((carried / "SHA256SUMS").read_bytes())
        try:
            weights.write_bytes(b"\0" + kept[0][1:])
            changed = json.loads(kept[1])
            changed["files"]["model.safetensors"]["sha256"] = hashlib.sha256(
                weights.read_bytes()).hexdigest()
            manifest_file.write_text(json.dumps(changed))
            bundles.write_sums(carried)
            assert thorfleet("bundle", "verify", str(carried)).returncode == 0
            against = thorfleet("bundle", "verify", str(carried), "--sums", str(apart))
            assert against.returncode == 1, against
            assert f"{qwen['dir']}/model.safetensors: its sha256 is not the one {apart} " \
                   "lists" in against.stderr, against.stderr
            tampered = Playbook(*converge)
            assert tampered.rc != 0, tampered
            assert "the lock pins (model_manifests): refused, nothing copied" in " ".join(
                tampered.output.split()), tampered
            assert empty(lab), tampered
            # A failed run too leaves nothing serving the bundle.
            assert not serving(hosts[CACHE]), tampered
        finally:
            weights.write_bytes(kept[0])
            manifest_file.write_bytes(kept[1])
            bundles.write_sums(carried)

        # While the models phase copies, and while the engines phase checks out, the
        # cache's daemon admits thor04 (the run) and no other host: thor02 and the lab
        # machine get no connection at all. Cost: about 4 s each, while the run waits.
        seen = {}
        run = Playbook(*converge, env=defaults, at=[
            ("Copy each thing from the bundle, verified against its report and the lock's pin]",
             lambda: seen.update(rsync=reached(lab, 8873))),
            ("Check out each engine at the commit its ref is pinned to]",
             lambda: seen.update(git=reached(lab, 9418)))])
        assert run.rc == 0, run
        wanted = {"thor04": True, "thor02": False, "the lab machine": False}
        assert seen == {"rsync": wanted, "git": wanted}, seen
        # The run over, nothing serves the bundle: no daemon, no unit.
        assert not serving(hosts[CACHE]) and not serving(hosts["thor04"])
        assert not lab.ssh(CACHE, "ls /etc/systemd/system /run/systemd/transient "
                                  "| grep thorfleet-bundle", check=False).stdout
        again = Playbook(*converge)
        assert again.rc == 0 and again.recap["thor04"]["changed"] == 0, again

        # The same model commits, file sums, template and source commit as the
        # connected host, and the same image, from the site cache.
        fresh, connected = held(hosts["thor04"]), held(thor01)
        assert fresh == connected
        for model in MODELS:
            assert fresh[model]["on_disk"] == fresh[model]["sums"], model
        image, content = running_image(hosts["thor04"], "thorfleet-chat")
        connected_image, connected_content = running_image(thor01, "thorfleet-qwen3-vllm")
        assert image.startswith(f"{hosts[CACHE].backend.hostname}:5443/nvidia/vllm@sha256:")
        assert content == connected_content, (image, connected_image)
        assert hosts["thor04"].service("thorfleet-whisper").is_running
        assert hosts["thor04"].service("thorfleet-chat").is_running
        # The community image too came out of the bundle, through the site cache, under
        # its registry's name there.
        image, _content = running_image(hosts["thor04"], "thorfleet-sglang")
        assert image == (f"{hosts[CACHE].backend.hostname}:5443/{REGISTRY.replace(':', '-')}"
                         f"/community/sglang@{community_digest}"), image
        assert any(entry["ref"] == COMMUNITY_IMAGE for entry in index["images"])
        assert hosts["thor04"].service("thorfleet-sglang").is_running
    finally:
        # From the command, as `lab up` starts them: `lab down` can stop what it starts.
        online = thorfleet("lab", "online")
        assert online.returncode == 0, online.stderr
        lab.ssh(CACHE, NO_CACHE, check=False)
        shutil.rmtree(carried, ignore_errors=True)
        left_changed("thor04")  # serving the bundle's services

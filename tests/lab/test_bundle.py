"""A site with no internet, provisioned from a bundle (thorfleet_bundle): written by
`thorfleet bundle create` on the controller from the lab's inventory and lock (the
connected machine), carried to the site cache (thor03, by the README's inventory), and a
fresh host (thor04) converged from it with the lab's upstreams stopped and no route out,
under ansible-core's defaults (no Mitogen, no pipelining), as most users run. The checks
around that converge (a short bundle refused, the check-mode preview, the re-run that
changes nothing) run under the project's ansible.cfg: each is a whole run, three times
slower without Mitogen, and test_site proves the main job the same under both."""

from __future__ import annotations

import json
import shlex
import shutil

import yaml

from tests.lab.conftest import ROOT, Playbook, left_changed, thorfleet
from tests.snippets import snippets
from thorfleet import stock
from thorfleet.lab.config import FROM_EMPTY, FROM_EMPTY_SETTINGS

# The README's site with no internet, verbatim.
(BUNDLE_SITE,) = [s.text for s in snippets() if s.inventory_file == "hosts.yml"
                  and "thorfleet_bundle:" in s.text]
BUNDLE = yaml.safe_load(BUNDLE_SITE)["thor"]["vars"]["thorfleet_bundle"]
(CACHE,) = yaml.safe_load(BUNDLE_SITE)["thorfleet_site_cache"]["hosts"]
# thor04 runs what thor01 (the connected host) runs of the same models, image and engine:
# whisper-server (built from whisper.cpp) and the vLLM stand-in serving Qwen3-8B.
SERVICES = {"thorfleet_services": FROM_EMPTY_SETTINGS["thorfleet_services"]}
MODELS = ["/models/Qwen/Qwen3-8B", "/models/whisper.cpp/models"]
TEMPLATE = "/models/Qwen/Qwen3-8B/qwen3_nonthinking.jinja"
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


def running_image(host, unit: str) -> tuple[str, str]:
    """(the image reference a container service runs, its content's id)."""
    image = host.check_output(f"docker inspect --format '{{{{.Config.Image}}}}' {unit}")
    return image, host.check_output(f"docker image inspect --format '{{{{.Id}}}}' {image}")


def test_a_fresh_host_provisions_from_a_bundle_with_no_route_out(lab, hosts, thor01, tmp_path):
    site = tmp_path / "hosts.yml"
    site.write_text(BUNDLE_SITE)
    bundle = tmp_path / "bundle"
    made = thorfleet("bundle", "create", "-i", "inventory/lab", "-i", str(site), str(bundle))
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
    converge = ("-i", "inventory/lab", "-i", str(site), "site.yml", "-l", "thor04",
                "-e", json.dumps(SERVICES))
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

        run = Playbook(*converge, env=defaults)
        assert run.rc == 0, run
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
    finally:
        # From the command, as `lab up` starts them: `lab down` can stop what it starts.
        online = thorfleet("lab", "online")
        assert online.returncode == 0, online.stderr
        lab.ssh(CACHE, NO_CACHE, check=False)
        shutil.rmtree(carried, ignore_errors=True)
        left_changed("thor04")  # serving the bundle's services

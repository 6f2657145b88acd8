"""Fetching once per fleet on the lab (thorfleet_fleet_fetch): a model revision leaves the
hub once, for one host, and reaches the others host to host (rsync from a share each host
opens for the models phase only), each copy verified against the source's manifest; a
host that holds it fetches nothing, and a copy whose bytes differ, or a source whose
manifest is not the one the lock pins, is refused and taken from another host."""

from __future__ import annotations

import json
import re
import shlex
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tests.lab.conftest import (
    AT_ONCE,
    HOSTS,
    Playbook,
    connects,
    left_changed,
    push_standin,
    push_standin_list,
    serving,
    thorfleet,
)
from tests.snippets import snippets
from thorfleet.lab import host_address
from thorfleet.lab.config import (
    CCACHE_IN_HOST,
    FROM_EMPTY,
    FROM_EMPTY_CCACHE,
    FROM_EMPTY_SETTINGS,
    REGISTRY,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
)

# Each runs a service of Qwen/Qwen3-8B (thor01's vLLM service, thor03's and thor04's).
FLEET = ["thor01", "thor03", "thor04"]
MODEL = "/models/Qwen/Qwen3-8B"
REPO = "/Qwen/Qwen3-8B/resolve/"
ON = ("-e", "thorfleet_fleet_fetch=true")
NAMES = {host_address(index): name for index, name in enumerate(HOSTS, start=1)}
ADDRESSES = {name: address for address, name in NAMES.items()}
# The name the site cache is renumbered to (test_the_site_cache_copies_...).
RENAMED = "site-cache.lab"
# The README's site cache, verbatim: thor02 in the inventory group thorfleet_site_cache.
(SITE_CACHE,) = [s.text for s in snippets() if s.inventory_file == "hosts.yml"
                 and "thorfleet_site_cache:" in s.text and "thorfleet_bundle:" not in s.text]
# Flips the bytes at an offset of a file (twice: as it was), keeping its size.
FLIP = ("python3 -c 'import sys; f = open(sys.argv[1], \"r+b\"); f.seek(64); b = f.read(4); "
        "f.seek(64); f.write(bytes(x ^ 0xFF for x in b))' " + MODEL + "/model.safetensors")


# Flips the first byte of a file (given as its argument), keeping its size.
FLIP_FIRST = ("import sys; f = open(sys.argv[1], 'r+b'); b = f.read(1); f.seek(0); "
              "f.write(bytes([b[0] ^ 0xFF]))")


def models(*args: str, at=None) -> Playbook:
    return Playbook("site.yml", "-l", ",".join(FLEET), "--tags", "models", *args, at=at)


def hub_log(lab) -> bytes:
    return (lab.state / "run" / "hf-mirror.log").read_bytes()


def model_gets(lab, since: int) -> list[tuple[str, str]]:
    """(client address, file) of each file of Qwen/Qwen3-8B olah served since `since`."""
    text = hub_log(lab)[since:].decode(errors="replace")
    found = re.findall(r'([0-9.]+):[0-9]+ - "GET (/[^ "]+) HTTP', text)
    return [(address, path.split(REPO, 1)[1].split("/", 1)[1])
            for address, path in found if path.startswith(REPO)]


def manifest(host) -> dict:
    return json.loads(host.file(f"{MODEL}/thorfleet-manifest.json").content_string)


def sums(host, files) -> dict[str, str]:
    out = host.check_output(f"cd {MODEL} && sha256sum -- {shlex.join(files)}")
    return {line.split(None, 1)[1].lstrip("*"): line.split()[0] for line in out.splitlines()}


def share_closed(host) -> bool:
    """Nothing of the project's shares listens on the host: no rsync or git daemon."""
    return (host.run("systemctl is-active thorfleet-fleet-share").stdout.strip() != "active"
            and ":873 " not in host.check_output("ss -ltnH") and not serving(host))


def probe_share(lab, seen: dict) -> None:
    """While the models phase's shares are open: thor01's share asked by a host of the run
    (thor03, before and after the others) for the models and for the builds (not this
    phase's), by a lab host outside the run (thor02) and by the lab machine; the user its
    daemon runs as and the address it listens on."""
    address = ADDRESSES["thor01"]
    rsync = f"timeout 20 rsync --contimeout=5 --no-motd rsync://{address}:873/thorfleet-{{}}/"
    seen["thor03"] = lab.ssh("thor03", rsync.format("models"), check=False)
    with ThreadPoolExecutor(3) as pool:
        outside = pool.submit(connects, lab, "thor02", address, 873)
        builds = pool.submit(lab.ssh, "thor03", rsync.format("builds"), False)
        machine = pool.submit(connects, lab, None, address, 873)
        seen["thor02"], seen["builds"], seen["machine"] = (
            outside.result(), builds.result(), machine.result())
    seen["daemon"] = lab.ssh("thor01", "ps -o user= -C rsync; ss -ltnH 'sport = :873'",
                             check=False).stdout
    seen["thor03 after"] = lab.ssh("thor03", rsync.format("models"), check=False)


def copied_from_thor04(run, host, held: dict) -> None:
    """thor03 copied the model from thor04 alone, and holds the revision `held` (the
    manifest of a host that has it), file for file."""
    copies = re.findall(rf"changed: \[thor03\] => \(item={MODEL} <- (thor\d+)\)", run.output)
    assert copies == ["thor04"], run
    got = manifest(host)
    assert (got["commit"], got["files"]) == (held["commit"], held["files"])
    assert sums(host, sorted(held["files"])) == {
        path: meta["sha256"] for path, meta in held["files"].items()}


@pytest.fixture(scope="module")
def fleet(lab, hosts):
    """The three hosts holding their services' models, each fetched alone; after the
    module, as they were (a test may leave a host without the model)."""
    run = models()
    assert run.rc == 0, run
    yield {name: hosts[name] for name in FLEET}
    assert models().rc == 0


def test_a_model_leaves_the_hub_once_and_goes_host_to_host(lab, fleet):
    for name in FLEET:
        lab.ssh(name, f"rm -rf {MODEL} /models/Qwen/.Qwen3-8B.partial")
    since = len(hub_log(lab))
    # Cost of the share's probes: about 4 s, while the run waits on its output.
    seen = {}
    run = models(*ON, at=("copies from whom in round 1]", lambda: probe_share(lab, seen)))
    assert run.rc == 0, run
    # The share admits the run's hosts, and only to what this phase copies; a lab host
    # outside the run and the lab machine get no answer at all (systemd drops their
    # packets). Its daemon runs as a user of its own, on thor01's fleet address only.
    assert seen["thor03"].returncode == 0 and "Qwen" in seen["thor03"].stdout, seen
    assert seen["thor03 after"].returncode == 0, seen
    assert seen["thor02"] is False and seen["machine"] is False, seen
    assert "Unknown module 'thorfleet-builds'" in seen["builds"].stderr, seen
    # One line per rsync process (the daemon, and a child per connection it serves: a
    # copy may be under way), then the listening socket.
    lines = seen["daemon"].splitlines()
    listening = [line for line in lines if line.startswith("LISTEN")]
    users = {line.strip() for line in lines if line not in listening}
    assert users and not users & {"root", "0"}, seen
    assert len(listening) == 1 and f" {ADDRESSES['thor01']}:873 " in listening[0], seen

    wanted = manifest(fleet["thor01"])
    gets = model_gets(lab, since)
    # Each file of the revision left the hub once, all of them for one host.
    assert sorted(path for _address, path in gets) == sorted(wanted["files"]), gets
    (fetcher,) = {NAMES[address] for address, _path in gets}
    for name, host in fleet.items():
        held = manifest(host)
        assert (held["commit"], held["files"]) == (wanted["commit"], wanted["files"]), name
        assert sums(host, sorted(held["files"])) == {
            path: meta["sha256"] for path, meta in held["files"].items()}, name
        assert share_closed(host), name
    # The two others copied it from a host that had it by then.
    copies = re.findall(rf"changed: \[(thor\d+)\] => \(item={MODEL} <- (thor\d+)\)",
                        run.output)
    assert sorted(target for target, _source in copies) == sorted(set(FLEET) - {fetcher}), run
    assert copies[0][1] == fetcher, run

    again = models(*ON)
    assert again.rc == 0 and all(again.recap[name]["changed"] == 0 for name in FLEET), again
    assert model_gets(lab, since) == gets


def test_a_copy_that_differs_from_the_sources_manifest_is_refused_and_taken_elsewhere(
        lab, fleet):
    # thor01 and thor04 hold the model; thor03 copies it from the first of them, whose
    # file has other bytes than its manifest lists (a disk error, a tampered host): the
    # copy is refused, nothing of it moved in, and thor01 is a lost source. thor03 stays
    # in the run, and the next round copies the model from thor04, not from the hub.
    # Cost: ~20 s (one models run; before, a refused run and a second to heal).
    held, held04 = manifest(fleet["thor01"]), manifest(fleet["thor04"])
    lab.ssh("thor03", f"rm -rf {MODEL} /models/Qwen/.Qwen3-8B.partial")
    lab.ssh("thor01", FLIP)
    since = len(hub_log(lab))
    try:
        run = models(*ON)
    finally:
        lab.ssh("thor01", FLIP)
    assert run.rc == 0 and run.recap["thor03"]["failed"] == 0, run
    assert "...ignoring" in run.output, run  # the refused copy, as Ansible shows it
    assert re.search(r"model\.safetensors: sha256 [0-9a-f]{64} after download", run.output), run
    assert "from peer thor01" in run.output, run
    copied_from_thor04(run, fleet["thor03"], held)
    # No host asked the hub, and the hosts that hold it fetched nothing.
    assert model_gets(lab, since) == []
    # The sources are as they were (each host's manifest its own: a host that fetched
    # after the lock pinned the commit names it as its revision).
    assert manifest(fleet["thor01"]) == held and manifest(fleet["thor04"]) == held04
    assert all(share_closed(host) for host in fleet.values())


def test_a_source_whose_manifest_is_not_the_lock_pin_is_refused_before_a_copy(lab, fleet):
    # thor01's model file changed and its manifest written again to match (whoever can
    # write a host's files can): the copy's byte checks would pass, but the manifest's
    # digest is not the one the lock pins. thor03's read of thor01 is refused before any
    # copy, naming both digests; thor01 is a lost source, and the next round copies the
    # model from thor04, not from the hub. Cost: ~20 s (one models run).
    held = manifest(fleet["thor01"])
    lab.ssh("thor03", f"rm -rf {MODEL} /models/Qwen/.Qwen3-8B.partial")
    lab.ssh("thor01", f"cp {MODEL}/thorfleet-manifest.json /root/manifest.kept && {FLIP}")
    lab.ssh("thor01", "python3 -c " + shlex.quote(
        "import hashlib, json, sys; path = sys.argv[1]; m = json.load(open(path + "
        "'/thorfleet-manifest.json')); m['files']['model.safetensors']['sha256'] = "
        "hashlib.sha256(open(path + '/model.safetensors', 'rb').read()).hexdigest(); "
        "json.dump(m, open(path + '/thorfleet-manifest.json', 'w'))") + f" {MODEL}")
    since = len(hub_log(lab))
    try:
        run = models(*ON)
    finally:
        lab.ssh("thor01", f"{FLIP} && cp /root/manifest.kept {MODEL}/thorfleet-manifest.json")
    assert run.rc == 0 and run.recap["thor03"]["failed"] == 0, run
    text = " ".join(run.output.split())
    assert re.search(r"thor01's manifest has digest (sha256:)?[0-9a-f]{64}, not the "
                     r"(sha256:)?[0-9a-f]{64} the "
                     r"lock pins \(model_manifests\): refused, nothing copied", text), run
    copied_from_thor04(run, fleet["thor03"], held)
    assert model_gets(lab, since) == []
    assert all(share_closed(host) for host in fleet.values())


def test_a_source_powered_off_in_a_round_is_lost_and_the_copying_host_switches(lab, fleet):
    # The main job on the three hosts, fetching once per fleet: thor03 lost its model,
    # and in round 1 is to copy it from thor01 (the first host holding it), whose power
    # is cut as the round is planned. thor01 leaves the run; thor03 does not: a later
    # round gives it thor04, not the hub, and it switches. Cost: ~60 s (one site.yml run
    # of three hosts, thor01 booted again; its next converge was due after this module's
    # fetches anyway).
    held = manifest(fleet["thor01"])
    lab.ssh("thor03", f"rm -rf {MODEL} /models/Qwen/.Qwen3-8B.partial")
    since = len(hub_log(lab))
    try:
        run = Playbook("site.yml", "-l", ",".join(FLEET), *ON,
                       at=("copies from whom in round 1]", lambda: lab.power_off("thor01")))
    finally:
        up = thorfleet("lab", "up", "--hosts", str(len(HOSTS)))
        assert up.returncode == 0, up.stdout + up.stderr
        fleet["thor01"].check_output("systemctl is-system-running --wait || true")
    assert run.rc == 4, run  # Ansible's status when a host is unreachable
    assert run.recap["thor01"]["unreachable"] == 1, run
    assert run.recap["thor03"]["unreachable"] == 0 and run.recap["thor03"]["failed"] == 0, run
    copied_from_thor04(run, fleet["thor03"], held)
    assert model_gets(lab, since) == []
    text = " ".join(run.output.split())
    assert "thor03 switched" in text and "left out: thor01" in text, run
    assert "failed: none" in text, run


def test_a_new_revision_is_staged_beside_the_model_on_every_host_from_one_hub_fetch(lab,
                                                                                   fleet):
    # Two hosts serving a lab model of the ModelScope stand-in; v2 changes weights.bin.
    pair = ("-l", "thor03,thor04")
    root, staging = "/models/thorfleet-lab/tiny", "/models/thorfleet-lab/.tiny.partial"

    def at(revision: str) -> tuple[str, ...]:
        variables = {
            "thorfleet_catalogue_extra": {
                "models": {"thorfleet-lab/tiny": {"modelscope": {"repo": "thorfleet-lab/tiny",
                                                                 "revision": revision}}},
                "recipes": {"lab-model": {"engine": "vllm", "model": "thorfleet-lab/tiny"}}},
            "thorfleet_services": [{"name": "lab", "recipe": "lab-model",
                                    "source": "modelscope"}]}
        return ("site.yml", *pair, "--tags", "models", *ON, "-e", json.dumps(variables))

    log = lab.state / "run" / "modelscope.log"
    for name in ("thor03", "thor04"):
        lab.ssh(name, f"rm -rf {root} {staging}")
    try:
        first = Playbook(*at("v1"))
        assert first.rc == 0, first
        v1 = json.loads(fleet["thor03"].file(f"{root}/thorfleet-manifest.json").content_string)
        since = len(log.read_bytes())
        bump = Playbook(*at("v2"))
        assert bump.rc == 0, bump
        served = re.findall(r'^([0-9.]+) .*"GET /api/v1/models/thorfleet-lab/tiny/repo\?'
                            r'Revision=[0-9a-f]+&FilePath=([^ &"]+) ',
                            log.read_bytes()[since:].decode(), re.MULTILINE)
        # Only the file v2 changed left the hub, once, for one host.
        assert [path for _address, path in served] == ["weights.bin"], served
        for name in ("thor03", "thor04"):
            host = fleet[name]
            # The model in service is as it was; v2 waits beside it, verified.
            kept = json.loads(host.file(f"{root}/thorfleet-manifest.json").content_string)
            assert kept["commit"] == v1["commit"], name
            staged = json.loads(host.file(f"{staging}/thorfleet-staged.json").content_string)
            assert staged["fetched"] == ["weights.bin"] and staged["manifest"]["commit"] != \
                v1["commit"], name
            weights = host.check_output(f"sha256sum {staging}/weights.bin").split()[0]
            assert weights == staged["manifest"]["files"]["weights.bin"]["sha256"], name
        again = Playbook(*at("v2"))
        assert again.rc == 0 and again.recap["thor03"]["changed"] == 0 \
            and again.recap["thor04"]["changed"] == 0, again
    finally:
        for name in ("thor03", "thor04"):
            lab.ssh(name, f"rm -rf {root} {staging}")


def test_an_engine_build_goes_to_the_hosts_of_its_stamp_and_is_not_compiled_again(lab, hosts):
    # thor02 given thor01's native services for the engines phase: thor01 holds both
    # builds; thor02 has neither, nor any source to compile one from.
    native = json.dumps({"thorfleet_services": [
        {"name": "chat", "recipe": "llama-qwen3-8b-gguf-nothink"},
        {"name": "whisper", "recipe": "whisper-large-v3-turbo"}]})
    engines = ("site.yml", "-l", "thor01,thor02", "--tags", "engines", *ON, "-e", native)
    # thor01 holds the builds its pins ask for (an earlier test may have moved them).
    held = Playbook("site.yml", "-l", "thor01", "--tags", "engines")
    assert held.rc == 0, held
    lab.ssh("thor02", "rm -rf /opt/thorfleet/llama.cpp /opt/thorfleet/whisper.cpp")
    builds = {engine: hosts["thor01"].file(f"/opt/thorfleet/{engine}/current").linked_to
              for engine in ("llama.cpp", "whisper.cpp")}
    try:
        run = Playbook(*engines)
        assert run.rc == 0, run
        # Each copy names where it lands and its source, as a model's does.
        copies = re.findall(r"changed: \[thor02\] => \(item=/opt/thorfleet/(\S+) <- thor01\)",
                            run.output)
        assert sorted(copies) == ["llama.cpp", "whisper.cpp"], run
        # The source built nothing and kept its builds.
        assert not re.search(r"changed: \[thor01\] => \(item=\w+\.cpp\)", run.output), run
        assert builds == {engine: hosts["thor01"].file(f"/opt/thorfleet/{engine}/current")
                          .linked_to for engine in builds}
        for engine, binary in (("llama.cpp", "llama-server"), ("whisper.cpp", "whisper-server")):
            current = f"/opt/thorfleet/{engine}/current"
            assert hosts["thor02"].file(current).linked_to == hosts["thor01"].file(current) \
                .linked_to, engine
            assert hosts["thor02"].file(f"{current}/bin/{binary}").sha256sum == \
                hosts["thor01"].file(f"{current}/bin/{binary}").sha256sum, engine
            assert hosts["thor02"].file(f"{current}/bin/{binary}").mode & 0o111, engine
            # Never compiled there: no checkout to compile from.
            assert not hosts["thor02"].file(f"/opt/thorfleet/{engine}/src").exists, engine
        # It runs there.
        assert hosts["thor02"].run("/opt/thorfleet/llama.cpp/current/bin/llama-server "
                                   "--version").rc == 0
        again = Playbook(*engines)
        assert again.rc == 0 and again.recap["thor02"]["changed"] == 0, again
    finally:
        lab.ssh("thor02", "rm -rf /opt/thorfleet/llama.cpp /opt/thorfleet/whisper.cpp")


def standin(host, port: int = 8000) -> dict:
    """What a vLLM stand-in (thor03's and thor04's service `chat`: port 8000) says of
    itself."""
    return json.loads(host.check_output(
        f"curl -sf --max-time 60 http://127.0.0.1:{port}/thorfleet-standin/argv"))


def test_a_rollouts_later_hosts_start_with_the_compile_caches_the_canary_made(lab, hosts):
    # A new image for thor03's and thor04's vLLM service, rolled out with thor03 as the
    # canary: its engine compiles on a first start, thor04's starts with those kernels,
    # checked against the manifest thor03 wrote as it passed verify (a tampered copy is
    # refused during the re-run: no run of its own).
    tag = f"jit-{uuid.uuid4().hex[:8]}"
    digest = push_standin(lab, "vllm", tag)
    image = json.dumps({"thorfleet_catalogue_extra": {"engines": {"vllm": {
        "image": f"nvcr.io/nvidia/vllm:{tag}"}}}})
    rollout = ("site.yml", "-l", "thor03,thor04", *ON, "-e", "thorfleet_rollout_canary=thor03",
               "-e", image)
    cache = f"/var/cache/thorfleet/jit/{digest.replace(':', '-')}/root/.cache/vllm"
    marker = f"{cache}/thorfleet-standin-qwen3"
    try:
        run = Playbook(*rollout)
        assert run.rc == 0, run
        assert standin(hosts["thor03"])["jit_cache"] == "new"
        assert standin(hosts["thor04"])["jit_cache"] == "found"
        # thor04 holds the canary's file itself (rsync kept its time), not one of its own.
        assert hosts["thor04"].file(marker).mtime == hosts["thor03"].file(marker).mtime
        # Copied through the artefact pipeline, from the canary, named by where it lands.
        assert re.search(rf"changed: \[thor04\] => \(item=/var/cache/thorfleet/jit/"
                         rf"{digest.replace(':', '-')} <- thor03\)", run.output), run
        assert share_closed(hosts["thor03"]) and share_closed(hosts["thor04"])
        # Both passed verify on the image: each marked its cache complete, to offer on.
        complete = f"/var/cache/thorfleet/jit/{digest.replace(':', '-')}/.thorfleet-complete"
        assert hosts["thor03"].file(complete).exists and hosts["thor04"].file(complete).exists

        # Run again: nothing changes. Meanwhile one byte of the canary's cache changed
        # after its manifest was written (on thor03, or on the way: thor04 cannot tell),
        # and thor04's cache lost its files: thor04 refuses the copy, says which file
        # differed, and keeps what it has (the cache's empty directories). A refused
        # copy is no change.
        lab.ssh("thor03", f"python3 -c {shlex.quote(FLIP_FIRST)} {marker}")
        lab.ssh("thor04", f"find /var/cache/thorfleet/jit/{digest.replace(':', '-')} "
                          "-type f -delete")
        again = Playbook(*rollout)
        assert again.rc == 0 and all(again.recap[name]["changed"] == 0
                                     for name in ("thor03", "thor04")), again
        said = " ".join(again.output.split())  # Ansible wraps its warnings
        assert f"compile caches of {digest} not copied from thor03 (root/.cache/vllm/" \
               "thorfleet-standin-qwen3: differs from thor03's manifest" in said, again
        assert hosts["thor04"].run(f"find /var/cache/thorfleet/jit/{digest.replace(':', '-')}"
                                   " -type f").stdout == ""
    finally:
        left_changed("thor03", "thor04")  # on the test's image



def registry_requests(lab, since: int, besides=()) -> list[tuple[str, str, str]]:
    """(client address, method, path) of each request the lab registry (nvcr.io's
    stand-in) answered since `since`, but those from the addresses `besides`."""
    text = (lab.state / "run" / "registry.log").read_bytes()[since:].decode(errors="replace")
    return [request for request in re.findall(
        r'^([0-9.]+) - - \[[^]]+\] "(GET|HEAD|PUT|POST|PATCH) (/v2/\S*) ', text, re.MULTILINE)
        if request[0] not in besides]


# thor02 to thor04 only: on the second lab it runs while that lab waits for the first
# lab's thor01 converge (about 5 minutes it would otherwise spend idle), on hosts not yet
# converged, so it converges thor03 and thor04 from their first run. On a lab of its own
# (this file run alone) thor01's first converge runs beside it and pulls its images
# straight from the registry, outside this test's run: its requests are left out.
BESIDE = (ADDRESSES["thor01"],)
@pytest.mark.beside_first_converge
def test_the_site_cache_copies_the_hosts_image_once_and_the_hosts_run_it_from_there(
        lab, hosts, tmp_path):
    # thor02 as the site cache, outside the run's limit; a new image for thor03's and
    # thor04's vLLM service, published as NGC publishes: a list of two platforms' images.
    group = tmp_path / "site-cache.yml"
    group.write_text(SITE_CACHE)
    tag = f"cache-{uuid.uuid4().hex[:8]}"
    listed, mine, other = push_standin_list(lab, "vllm", tag)
    ref = f"nvcr.io/nvidia/vllm:{tag}"
    image = json.dumps({"thorfleet_catalogue_extra": {"engines": {"vllm": {"image": ref}}}})
    converge = ("-i", "inventory/lab", "-i", str(group), "site.yml", "-l", "thor03,thor04",
                "-e", image)
    log = lab.state / "run" / "registry.log"
    cached = f"{ADDRESSES['thor02']}:5443/nvidia/vllm@{mine}"
    try:
        since = len(log.read_bytes())
        # While it is filled, the cache's writable registry listens on its loopback
        # address only, and thor03 cannot reach it.
        filling = {}
        run = Playbook(*converge, at=("Copy each image the hosts lack from the upstream, once]",
                                      lambda: filling.update(
                                          listening=lab.ssh("thor02", "ss -ltnH 'sport = :5444'"
                                                            ).stdout,
                                          thor03=connects(lab, "thor03", ADDRESSES["thor02"],
                                                          5444))))
        assert run.rc == 0, run
        assert " 127.0.0.1:5444 " in filling["listening"], filling
        assert len(filling["listening"].splitlines()) == 1 and filling["thor03"] is False
        asked = registry_requests(lab, since, BESIDE)
        # Only the cache asked nvcr.io's stand-in, each blob once, and nothing of the
        # other platform's image: the hosts' platform's image alone crossed the uplink.
        assert asked and {address for address, _m, _p in asked} == {ADDRESSES["thor02"]}
        blobs = [path for _a, method, path in asked if method == "GET" and "/blobs/" in path]
        assert blobs and len(blobs) == len(set(blobs)), blobs
        assert not [path for _a, _m, path in asked if other in path]
        assert "thorfleet-lab-ngc-api-key" not in run.output
        key = hosts["thor02"].file("/etc/thorfleet/site-cache/auth.json")
        assert key.mode == 0o600 and key.user == "root"

        # The lock pins the tag to NGC's list, and the list to the hosts' platform's image.
        pins = yaml.safe_load((lab.inventory / ".thorfleet.lock.yml").read_text())
        assert pins["images"][ref] == listed
        assert pins["image_platforms"][listed] == {"linux/amd64": mine}
        # Both hosts pulled it from the cache, and their service runs it.
        for name in ("thor03", "thor04"):
            running = hosts[name].check_output(
                "docker inspect --format '{{.Config.Image}}' thorfleet-chat")
            assert running == cached, name
            assert standin(hosts[name])["argv"][:1] == ["vllm"], name

        # The hosts can pull from the cache, not push to it.
        pushed = hosts["thor03"].check_output(
            "curl -s -o /dev/null -w '%%{http_code}' -X POST --cacert "
            "/etc/docker/certs.d/%s/ca.crt https://%s/v2/nvidia/vllm/blobs/uploads/",
            cached.split("/")[0], cached.split("/")[0])
        assert pushed not in ("202", "201"), pushed

        since = len(log.read_bytes())
        again = Playbook(*converge)
        assert again.rc == 0 and all(again.recap[name]["changed"] == 0
                                     for name in ("thor03", "thor04")), again
        assert registry_requests(lab, since, BESIDE) == []

        # thor04 loses the image and its trust in the cache (a host replaced), while the
        # run's first host, thor03, holds everything: thor04 trusts the cache again and
        # pulls from it, with no restart (its container runs the same image). Cost: the
        # images phase of the two hosts, about 10 s.
        certs = f"/etc/docker/certs.d/{cached.split('/')[0]}"
        lab.ssh("thor04", f"rm -rf {certs} && docker rmi -f {cached} >/dev/null")
        main_pid = "systemctl show -p MainPID --value thorfleet-chat"
        pids = {name: hosts[name].check_output(main_pid) for name in ("thor03", "thor04")}
        refilled = Playbook(*converge[:4], "--tags", "images", *converge[4:])
        assert refilled.rc == 0, refilled
        assert hosts["thor04"].file(f"{certs}/ca.crt").exists
        assert hosts["thor04"].run(f"docker image inspect {cached}").rc == 0
        assert {name: hosts[name].check_output(main_pid) for name in pids} == pids

        # A tag nvcr.io does not have: the cache's copy fails naming the image, the other
        # host stops naming the cache, and the services run what they ran.
        missing = f"nvcr.io/nvidia/vllm:{tag}-missing"
        bad = Playbook(*converge[:-1], json.dumps({"thorfleet_catalogue_extra": {
            "engines": {"vllm": {"image": missing}}}}))
        assert bad.rc != 0 and "manifest unknown" in bad.output and missing in bad.output, bad
        assert "The site cache thor02 did not copy" in bad.output, bad
        for name in ("thor03", "thor04"):
            assert hosts[name].check_output(
                "docker inspect --format '{{.Config.Image}}' thorfleet-chat") == cached, name
            assert hosts[name].service("thorfleet-chat").is_running, name

        # Reads for the fleet only: the inventory's hosts, not the lab machine; nothing
        # takes copies any more.
        assert connects(lab, "thor03", ADDRESSES["thor02"], 5443)
        assert not connects(lab, None, ADDRESSES["thor02"], 5443)
        assert ":5444 " not in hosts["thor02"].check_output("ss -ltnH")

        # An image not on nvcr.io: a community image on a registry of its own (the lab
        # registry by its address, not as nvcr.io's mirror), whose login is given in
        # thorfleet_registry_credentials, with no NGC key. It goes through the cache as
        # NGC's do: only the cache asks the upstream, each blob once. Cost: the images
        # phase of the two hosts, about 15 s.
        # (A tag of its own: the same tag would be the same image, which the cache
        # would hold under both paths, and the prune below could not remove it.)
        community_tag = f"{tag}-community"
        community_listed, community, _other = push_standin_list(
            lab, "vllm", community_tag, repository="community/vllm")
        community_ref = f"{REGISTRY}/community/vllm:{community_tag}"
        since = len(log.read_bytes())
        from_community = Playbook(*converge[:-1], json.dumps({
            "thorfleet_catalogue_extra": {"engines": {"vllm": {"image": community_ref}}},
            "thorfleet_ngc_api_key": "",
            "thorfleet_registry_credentials": {REGISTRY: {"username": REGISTRY_USER,
                                                          "password": REGISTRY_PASSWORD}}}),
            "--tags", "images")
        assert from_community.rc == 0, from_community
        assert REGISTRY_PASSWORD not in from_community.output
        asked = registry_requests(lab, since, BESIDE)
        assert asked and {address for address, _m, _p in asked} == {ADDRESSES["thor02"]}
        assert all(path.startswith("/v2/community/vllm/") or path in ("/v2/", "/v2")
                   for _a, _m, path in asked), asked
        blobs = [path for _a, method, path in asked if method == "GET" and "/blobs/" in path]
        assert blobs and len(blobs) == len(set(blobs)), blobs
        pins = yaml.safe_load((lab.inventory / ".thorfleet.lock.yml").read_text())
        assert pins["images"][community_ref] == community_listed
        in_cache = f"{ADDRESSES['thor02']}:5443/{REGISTRY.replace(':', '-')}/community/vllm"
        for name in ("thor03", "thor04"):
            assert hosts[name].check_output(
                "docker image inspect --format '{{.Id}}' %s", f"{in_cache}@{community}"), name

        # The cache renumbered: the hosts now reach it by a name (an IP replaced by a DNS
        # name, thorfleet_site_cache_address). Its certificate is made again for the
        # name, and the hosts pull the image through it. Cost: the images phase of the
        # two hosts, about 15 s.
        for name in ("thor02", "thor03", "thor04"):
            lab.ssh(name, f"echo '{ADDRESSES['thor02']} {RENAMED}' >> /etc/hosts")
        renamed = Playbook(*converge, "--tags", "images",
                           "-e", f"thorfleet_site_cache_address={RENAMED}")
        assert renamed.rc == 0, renamed
        certificate = hosts["thor02"].check_output(
            "openssl x509 -noout -ext subjectAltName -in /etc/thorfleet/site-cache/cache.crt")
        assert f"DNS:{RENAMED}" in certificate and "IP Address" not in certificate
        for name in ("thor03", "thor04"):
            assert hosts[name].check_output(
                "docker image inspect --format '{{.RepoDigests}}' %s",
                f"{RENAMED}:5443/nvidia/vllm@{mine}").count(f"{RENAMED}:5443/") == 1, name
            assert hosts[name].file(f"/etc/docker/certs.d/{RENAMED}:5443/ca.crt").content == \
                hosts["thor02"].file("/etc/thorfleet/site-cache/cache.crt").content, name

        # Images the lock no longer pins leave the cache, one previous kept: the vLLM tag
        # bumped twice, each through the images phase. After the second, the test's first
        # image is gone from the cache's storage, its manifest and its own blobs (the
        # layer the newer ones share stays), and the two newer are held. Cost: two images
        # phases of the two hosts, about 30 s.
        bumps = []
        for _bump in range(2):
            bump_tag = f"cache-{uuid.uuid4().hex[:8]}"
            bumps.append(push_standin_list(lab, "vllm", bump_tag)[1])
            bumped = Playbook(*converge[:-1], json.dumps({"thorfleet_catalogue_extra": {
                "engines": {"vllm": {"image": f"nvcr.io/nvidia/vllm:{bump_tag}"}}}}),
                "--tags", "images", "-e", f"thorfleet_site_cache_address={RENAMED}")
            assert bumped.rc == 0, bumped
        revisions = ("/var/lib/thorfleet/site-cache/docker/registry/v2/repositories/nvidia/"
                     "vllm/_manifests/revisions/sha256")
        held = set(hosts["thor02"].check_output(f"ls {revisions}").split())
        gone = mine.removeprefix("sha256:")
        assert {digest.removeprefix("sha256:") for digest in bumps} <= held, held
        assert gone not in held, held
        assert not hosts["thor02"].file(
            f"/var/lib/thorfleet/site-cache/docker/registry/v2/blobs/sha256/{gone[:2]}/{gone}"
        ).exists
    finally:
        left_changed("thor03", "thor04")  # on the test's image, from the cache
        lab.ssh("thor02", "systemctl disable --now thorfleet-site-cache.service", check=False)
        for name in ("thor02", "thor03", "thor04"):
            lab.ssh(name, f"sed -i '/ {RENAMED}$/d' /etc/hosts", check=False)


def source_fetchers(lab, since: int) -> dict[str, set[str]]:
    """{repository: the addresses that asked the lab's git server for it} since `since`."""
    text = (lab.state / "run" / "git-daemon.log").read_bytes()[since:].decode(errors="replace")
    clients = dict(re.findall(r"^\[(\d+)\] Connection from ([0-9.]+):", text, re.MULTILINE))
    asked: dict[str, set[str]] = {}
    for pid, repository in re.findall(r"^\[(\d+)\] Request upload-pack for '([^']+)'", text,
                                      re.MULTILINE):
        asked.setdefault(repository, set()).add(clients.get(pid, "?"))
    return asked


@pytest.mark.from_empty
def test_a_fleet_converged_from_empty_fetches_each_thing_once(lab, hosts, tmp_path):
    # The four hosts emptied (no models, builds, checkouts, images, compiler or compile
    # caches), each to run whisper-server (built) and the vLLM stand-in, and converged as
    # a user would: fetching once per fleet, thor01 the canary, thor02 the site cache.
    group = tmp_path / "site-cache.yml"
    group.write_text(SITE_CACHE)
    settings = {**FROM_EMPTY_SETTINGS, "thorfleet_fleet_fetch": True,
                "thorfleet_rollout_canary": "thor01"}
    for name in HOSTS:
        lab.ssh(name, FROM_EMPTY)
    # The canary's own compiler cache starts from the lab's shared one, its counts zeroed:
    # its compile (the only one) is then mostly cache hits, not the lab's second cold
    # build of whisper.cpp, and still counted; the other hosts' caches stay empty, so a
    # compile there would show.
    lab.ssh("thor01", f"cp -a {CCACHE_IN_HOST} {FROM_EMPTY_CCACHE} && "
                      f"CCACHE_DIR={FROM_EMPTY_CCACHE} ccache --zero-stats >/dev/null")
    logs = {name: lab.state / "run" / f"{name}.log"
            for name in ("hf-mirror", "registry", "git-daemon")}
    converge = ("-i", "inventory/lab", "-i", str(group), "site.yml", "-l", ",".join(HOSTS),
                "-e", json.dumps(settings))
    try:
        # Check mode previews it all on the empty fleet, and changes nothing there.
        preview = Playbook(*converge, "--check")
        assert preview.rc == 0, preview
        for name in HOSTS:
            left = lab.ssh(name, "find /models /opt/thorfleet/whisper.cpp "
                                 "/etc/thorfleet/site-cache -mindepth 1 2>/dev/null; "
                                 "docker images -q", check=False).stdout
            assert left.split() == [], (name, left)

        # (The preview asks the upstreams as each host alone would; from here, counted.)
        since = {name: len(path.read_bytes()) for name, path in logs.items()}
        run = Playbook(*converge)
        assert run.rc == 0, run

        # Each file of each model revision left the hub once.
        hub = logs["hf-mirror"].read_bytes()[since["hf-mirror"]:].decode(errors="replace")
        files = Counter(re.findall(r'- "GET (/[^ "]+/resolve/[^ "]+) HTTP', hub))
        assert files and all(count == 1 for count in files.values()), files
        # Each image layer left the registry once, for the site cache only.
        asked = registry_requests(lab, since["registry"])
        assert {address for address, _m, _p in asked} == {ADDRESSES["thor02"]}
        blobs = Counter(path for _a, method, path in asked
                        if method == "GET" and "/blobs/" in path)
        assert blobs and all(count == 1 for count in blobs.values()), blobs
        # One host asked the git server for each source, and it alone compiled.
        sources = source_fetchers(lab, since["git-daemon"])
        assert sources and all(len(clients) == 1 for clients in sources.values()), sources
        assert lab.compilations("thor01", FROM_EMPTY_CCACHE) > 0
        assert [lab.compilations(name, FROM_EMPTY_CCACHE) for name in HOSTS[1:]] == [0, 0, 0]
        for name in HOSTS:
            assert standin(hosts[name], 8001)["argv"][:1] == ["vllm"], name
    finally:
        # The lab's own services back, unless the session takes the lab down anyway.
        if not getattr(lab, "session_only", False):
            for name in HOSTS:
                lab.ssh(name, FROM_EMPTY, check=False)
            assert Playbook("site.yml", "-l", ",".join(HOSTS), *AT_ONCE).rc == 0

"""A fleet rollout on the four-host lab: images staged on every host, then switched batch
by batch behind the verify phase's checks, a failed canary halting the rollout, a failed
rollback reported and the rollout still summarised with its shares closed, a run that
skips verify keeping nothing, hosts down at the start left out and caught up, and a host
whose power was cut serving again on its own. thor01 runs its five services, thor02 to
thor04 one vLLM stand-in each (thor02 for this module only)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from datetime import UTC, datetime

import pytest
import yaml

from tests.lab.conftest import AT_ONCE, HOSTS, ROOT, Playbook, push_standin, thorfleet
from tests.snippets import commands_with
from tests.timing import record_command
from thorfleet.lab import FLEET_SERVICES, REGISTRY

LOCK = ROOT / "inventory/lab/.thorfleet.lock.yml"
THOR02_VARS = ROOT / "inventory/lab/host_vars/thor02.yml"
# The README's inventory change for an image, as a site would commit it.
IMAGES_VARS = ROOT / "inventory/lab/group_vars/thor/images.yml"
RUN_LOCK = "/run/thorfleet/run.lock"  # roles/thorfleet's thorfleet_run_lock_path
# The vLLM services of each host, and their ports.
VLLM = {"thor01": {"qwen3-vllm": 8001, "whisper-vllm": 8002},
        **{host: {"chat": 8000} for host in HOSTS[1:]}}
# The README's rollout for a 60-host fleet, run as written.
(ROLLOUT,) = commands_with("-e thorfleet_rollout_canary=thor01")


def catalogue_image(tag: str) -> dict:
    return {"thorfleet_catalogue_extra": {"engines": {"vllm": {
        "image": f"nvcr.io/nvidia/vllm:{tag}"}}}}


def service_state(host, name: str, port: int) -> tuple[str, str, str]:
    """(main PID, image the container runs, /health status) of a host's service."""
    unit = f"thorfleet-{name}"
    pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
    image = host.check_output(f"docker inspect --format '{{{{.Config.Image}}}}' {unit} || true")
    health = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 "
                               f"http://127.0.0.1:{port}/health || true")
    return pid, image, health


def state(hosts) -> dict:
    """{(host, service): (main PID, image the container runs, /health status)}."""
    return {(host, name): service_state(hosts[host], name, port)
            for host, services in VLLM.items() for name, port in services.items()}


def active_since(host, unit: str) -> float:
    """When a unit last became active (its start passed /health), seconds since the epoch."""
    said = host.check_output(f"systemctl show -p ActiveEnterTimestamp --value "
                             f"--timestamp=us+utc {unit}")
    return datetime.strptime(said, "%a %Y-%m-%d %H:%M:%S.%f UTC").replace(
        tzinfo=UTC).timestamp()


def kept_at(host, unit: str) -> float:
    """When the switch kept a unit as the last good one: right after its host verified.
    The copy keeps the unit's own mtime; its ctime is when it was made."""
    return float(host.check_output(
        f"python3 -c 'import os; print(os.stat(\"/var/lib/thorfleet/last-good/{unit}\")"
        f".st_ctime)'"))


@pytest.fixture(scope="module")
def fleet(lab, hosts):
    """Four hosts converged, and staying converged on a second run (the whole fleet's
    idempotence); after the module, the lab as it was (thor02 without services, the
    catalogue's image, the lock as it was)."""
    locked = LOCK.read_text() if LOCK.exists() else None  # none on a lab's first run
    THOR02_VARS.write_text("---\n" + yaml.safe_dump({"thorfleet_services": FLEET_SERVICES}))
    converged = Playbook("site.yml", *AT_ONCE)
    assert converged.rc == 0, converged
    assert set(converged.recap) == set(HOSTS), converged
    again = Playbook("site.yml", *AT_ONCE)
    assert again.rc == 0, again
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again
    yield hosts
    IMAGES_VARS.unlink(missing_ok=True)
    THOR02_VARS.unlink()
    if locked is None:
        LOCK.unlink()
    else:
        LOCK.write_text(locked)
    if sum(host.running for host in lab.status()) < len(HOSTS):  # a test stopped midway
        up = thorfleet("lab", "up", "--hosts", str(len(HOSTS)))
        assert up.returncode == 0, up.stdout + up.stderr
    back = Playbook("site.yml", *AT_ONCE)
    assert back.rc == 0, back


def said(run) -> str:
    """A run's output with its whitespace made single spaces: the YAML callback folds a
    long line of the summary."""
    return " ".join(run.output.split())


def units_and_pids(host) -> dict:
    """{unit: (sha256 of its bytes, main PID)} of every service unit of a host: what a
    host a rollout never touched keeps."""
    listing = host.check_output(
        "cd /etc/systemd/system && for unit in thorfleet-*.service; do "
        "echo $unit $(sha256sum < $unit | cut -c1-64) "
        "$(systemctl show -p MainPID --value $unit); done")
    return {line.split()[0]: tuple(line.split()[1:]) for line in listing.splitlines()}


def test_the_readmes_rollout_with_a_broken_image_stops_at_the_canary(lab, fleet):
    # The README's 60-host command as written (canary thor01, 10%, one failure allowed):
    # the budget is for the batches; a failed canary halts the rollout. Cost: ~1 min 50 s.
    push_standin(lab, "vllm", "25.11-py3", broken=True)
    IMAGES_VARS.write_text("---\n" + yaml.safe_dump(catalogue_image("25.11-py3")))
    before = state(fleet)
    others = {host: units_and_pids(fleet[host]) for host in HOSTS[1:]}
    assert ROLLOUT[0] == "ansible-playbook" and "thorfleet_rollout_max_fail=1" in ROLLOUT, ROLLOUT
    run = Playbook(*ROLLOUT[1:])
    assert run.rc == 2, run
    assert "halted: canary thor01 failed (" in said(run), run
    assert "left untouched: thor02, thor03, thor04" in said(run), run
    assert run.recap["thor01"]["failed"] == 1, run
    assert all(run.recap[host]["failed"] == 0 for host in HOSTS[1:]), run
    # The image was staged everywhere: every host pulled it beside the running one.
    broken = yaml.safe_load(LOCK.read_text())["images"]["nvcr.io/nvidia/vllm:25.11-py3"]
    for host in HOSTS:
        assert broken in fleet[host].check_output(
            f"docker images --digests --format '{{{{.Digest}}}}' {REGISTRY}/nvidia/vllm")
    after = state(fleet)
    for (host, name), (_pid, image, health) in after.items():
        assert health == "200", (host, name)
        assert image == before[(host, name)][1], (host, name)  # the old digest
    for host in HOSTS[1:]:  # never restarted, units as they were
        assert units_and_pids(fleet[host]) == others[host], host
    # thor01 tried, failed to start on the new image and was put back.
    assert all(after[("thor01", name)][0] != before[("thor01", name)][0]
               for name in VLLM["thor01"])


def test_batches_of_one_with_a_failed_rollback_end_in_the_summary_with_every_share_closed(
        lab, fleet):
    # thor02 fails and is put back (within the budget of one); thor03 fails and its
    # rollback fails too (its last good unit is a dangling link): the rollout halts with
    # the summary, thor04 is untouched and no host's share is left listening. Ansible
    # would end a playbook whose only host in a batch failed. Cost: ~1 min 30 s.
    push_standin(lab, "vllm", "25.11-py3", broken=True)
    IMAGES_VARS.write_text("---\n" + yaml.safe_dump(catalogue_image("25.11-py3")))
    thor04 = units_and_pids(fleet["thor04"])
    kept = "/var/lib/thorfleet/last-good/thorfleet-chat.service"
    fleet["thor03"].check_output(f"mv {kept} {kept}.saved && ln -s /nonexistent {kept}")
    try:
        run = Playbook("site.yml", "-l", "thor02,thor03,thor04", "-e", "thorfleet_rollout_batch=1",
                       "-e", "thorfleet_rollout_max_fail=1", "-e", "thorfleet_fleet_fetch=true")
    finally:
        fleet["thor03"].check_output(f"rm -f {kept} && mv {kept}.saved {kept}")
    assert run.rc == 2, run
    assert "batch 1: thor02 failed (" in said(run) and "put back: chat" in said(run), run
    assert "batch 2: thor03 failed (" in said(run), run
    assert "rollback failed (" in said(run) and "its state is unknown" in said(run), run
    assert "state unknown (rollback failed): thor03" in said(run), run
    assert "halted: 2 host(s) failed (thor02, thor03)" in said(run), run
    assert "left untouched: thor04" in said(run), run
    assert units_and_pids(fleet["thor04"]) == thor04
    for host in HOSTS:
        assert ":873 " not in fleet[host].check_output("ss -ltn"), host
    assert service_state(fleet["thor02"], "chat", 8000)[2] == "200"  # put back


def test_a_run_limited_to_services_keeps_nothing_as_last_good_and_prunes_nothing(lab, fleet):
    # An image that starts and answers /health but fails every request: a --tags services
    # run restarts onto it without verify, so it keeps nothing as last good and prunes no
    # image; the next full run verifies, fails and puts the last good unit back, leaving the
    # image's compile cache unmarked. Cost: ~25 s.
    host = fleet["thor04"]
    previous = service_state(host, "chat", 8000)[1]
    bad = push_standin(lab, "vllm", "25.13-py3", broken="answers")
    IMAGES_VARS.write_text("---\n" + yaml.safe_dump(catalogue_image("25.13-py3")))
    kept = host.check_output("sha256sum /var/lib/thorfleet/last-good/thorfleet-chat.service")
    listing = f"docker images --digests --format '{{{{.Digest}}}}' {REGISTRY}/nvidia/vllm"
    staged = Playbook("site.yml", "-l", "thor04", "--tags", "images")
    assert staged.rc == 0, staged
    images = set(host.check_output(listing).split())
    run = Playbook("site.yml", "-l", "thor04", "--tags", "services")
    assert run.rc == 0, run
    assert ("thor04 switched (1 restarted: chat, not verified: nothing kept as last good, "
            "nothing pruned)") in said(run), run
    assert service_state(host, "chat", 8000)[1] == f"{REGISTRY}/nvidia/vllm@{bad}"
    assert host.check_output(
        "sha256sum /var/lib/thorfleet/last-good/thorfleet-chat.service") == kept
    assert set(host.check_output(listing).split()) == images  # nothing pruned
    verified = Playbook("site.yml", "-l", "thor04", "-e", "thorfleet_fleet_fetch=true")
    assert verified.rc == 2, verified
    assert "thor04 failed (" in said(verified) and "put back: chat" in said(verified)
    _pid, image, health = service_state(host, "chat", 8000)
    assert image == previous and health == "200"
    # Its engine left a compile cache of the image; a switch that failed does not mark it
    # complete, so no later run copies it from here.
    cache = f"/var/cache/thorfleet/jit/{bad.replace(':', '-')}"
    assert host.check_output(f"find {cache} -type f -not -name .thorfleet-complete")
    assert not host.file(f"{cache}/.thorfleet-complete").exists


def test_the_readmes_rollout_goes_canary_first_then_batch_by_batch(lab, fleet):
    good = push_standin(lab, "vllm", "25.12-py3")
    IMAGES_VARS.write_text("---\n" + yaml.safe_dump(catalogue_image("25.12-py3")))
    assert ROLLOUT[0] == "ansible-playbook", ROLLOUT
    run = Playbook(*ROLLOUT[1:])
    assert run.rc == 0, run
    for (host, name), (_pid, image, health) in state(fleet).items():
        assert image == f"{REGISTRY}/nvidia/vllm@{good}" and health == "200", (host, name)
    # Each batch's units became active only after the batch before passed verify.
    for before, after in zip(HOSTS, HOSTS[1:], strict=False):
        verified = max(kept_at(fleet[before], f"thorfleet-{name}.service")
                       for name in VLLM[before])
        started = min(active_since(fleet[after], f"thorfleet-{name}") for name in VLLM[after])
        assert verified < started, (before, after)
    # thor01 alone, then 10% of the other three: one host a batch.
    for number, host in enumerate(HOSTS, 1):
        assert f"batch {number}: {host} switched" in run.output, run
    again = Playbook(*ROLLOUT[1:])
    assert again.rc == 0, again
    assert all(counts["changed"] == 0 for counts in again.recap.values()), again


def test_a_host_down_at_the_start_halts_the_rollout_as_canary_else_is_left_out_and_caught_up(
        lab, fleet):
    # thor04 down before the run; thor03 power-cycled after it: both boot again, serve on
    # their own without a run, and the next run catches thor04 up and changes nothing on
    # thor03. (One test: a power cycle is part of every host's coming back.) First, with
    # thor04 down, the canary that never reaches the switch.
    lab.power_off("thor04")
    IMAGES_VARS.unlink()  # back to the catalogue's image
    catalogue = yaml.safe_load(LOCK.read_text())["images"]["nvcr.io/nvidia/vllm:25.10-py3"]
    # thor04 as the canary, unreachable: the rollout halts whatever the budget, and the
    # three others keep their units' bytes and main PIDs. Cost: ~20 s.
    others = {host: units_and_pids(fleet[host]) for host in HOSTS[:3]}
    halted = Playbook("site.yml", "-e", "thorfleet_rollout_canary=thor04",
                      "-e", "thorfleet_rollout_max_fail=1")
    assert halted.rc != 0, halted
    assert "halted: canary thor04 failed (left out of the switch" in said(halted), halted
    assert "left untouched: thor01, thor02, thor03" in said(halted), halted
    for host in HOSTS[:3]:
        assert units_and_pids(fleet[host]) == others[host], host
    run = Playbook("site.yml")
    assert run.rc == 4, run  # Ansible's status when a host is unreachable
    assert run.recap["thor04"]["unreachable"] == 1, run
    assert "left out: thor04" in run.output and "failed: none" in run.output, run
    before = service_state(fleet["thor03"], "chat", 8000)
    lab.power_off("thor03")
    up = thorfleet("lab", "up", "--hosts", str(len(HOSTS)))
    assert up.returncode == 0, up.stdout + up.stderr
    for host in ("thor03", "thor04"):
        fleet[host].check_output("systemctl is-system-running --wait || true")
    cycled = state(fleet)
    pid, image, health = cycled[("thor03", "chat")]
    assert health == "200" and image == before[1] and pid != before[0], cycled
    assert cycled[("thor04", "chat")][2] == "200", cycled  # on the image it had, for now
    caught_up = Playbook("site.yml")
    assert caught_up.rc == 0, caught_up
    assert caught_up.recap["thor04"]["changed"] > 0, caught_up
    assert all(caught_up.recap[host]["changed"] == 0 for host in HOSTS[:3]), caught_up
    for (host, name), (_pid, image, health) in state(fleet).items():
        assert image == f"{REGISTRY}/nvidia/vllm@{catalogue}" and health == "200", (host, name)


def test_deploy_shows_the_batches_live_and_summarises_them(fleet):
    run = thorfleet("deploy", "-l", "thor03,thor04", "--batch", "1", "--max-fail", "0")
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    marks = ["== Switch\n   batch 1: thor03\n", "thor03       ok          Record that this host",
             "\n   batch 2: thor04\n", "== Rollout summary",
             "   batch 1: thor03 switched (0 restarted", "   batch 2: thor04 switched (0 restarted",
             "   left untouched: none"]
    places = [out.find(mark) for mark in marks]
    assert -1 not in places and places == sorted(places), out
    # The summary table counts the switch's own tasks apart from its phases'.
    assert "thor03  Rollout" in out and "thor03  Services" in out, out


def test_a_second_deploy_while_one_is_switching_is_refused_naming_the_first(lab, fleet):
    # A deploy of thor03 with a 20 s soak holds thor03's run lock; a second deploy started
    # meanwhile is refused in preflight, naming the first run, and changes nothing; the
    # first ends, its soak asked the service again, and gives the lock back. Cost: ~1 min.
    before = units_and_pids(fleet["thor03"])
    argv = ["thorfleet", "deploy", "-l", "thor03", "--pause", "20"]
    start = time.monotonic()
    first = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        held = None
        while held is None and time.monotonic() - start < 300 and first.poll() is None:
            text = lab.ssh("thor03", f"cat {RUN_LOCK}", check=False).stdout
            held = json.loads(text) if text.strip() else None
            time.sleep(0.5)
        assert held, "the first deploy took no lock"
        second = thorfleet("deploy", "-l", "thor03")
        out, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
        record_command(argv, time.monotonic() - start)
    assert second.returncode == 2, second.stdout + second.stderr
    assert (f"thor03 is locked by another run of site.yml: the run of {held['holder']} "
            f"(ansible-playbook pid {held['pid']}), since {held['since']}. If that run is "
            "over, clear its lock with: ansible-playbook playbooks/unlock.yml -l thor03"
            ) in " ".join(second.stdout.split()), second.stdout
    assert "== Models" not in second.stdout, second.stdout
    assert first.returncode == 0, out
    asked = "thor03       ok          Wait for each service, then send it the requests"
    assert out.count(asked) == 2, out  # after the restart (none here) and after the soak
    assert units_and_pids(fleet["thor03"]) == before
    assert lab.ssh("thor03", f"test -e {RUN_LOCK}", check=False).returncode == 1
    # A lock left by a run of another controller: the README's command clears it.
    lab.ssh("thor03", f"echo '{json.dumps({**held, 'controller': 'elsewhere'})}' > {RUN_LOCK}")
    (unlock,) = re.findall(r"^ansible-playbook playbooks/unlock\.yml .*$",
                           (ROOT / "README.md").read_text(), re.MULTILINE)
    cleared = Playbook(*shlex.split(unlock)[1:])
    assert cleared.rc == 0 and f"cleared the lock of the run of {held['holder']}" in said(cleared)
    assert lab.ssh("thor03", f"test -e {RUN_LOCK}", check=False).returncode == 1


def test_a_bad_rollout_setting_fails_naming_it_before_any_host_changes(fleet):
    run = thorfleet("deploy", "--batch", "0", "--canary", "thor09")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "thorfleet_rollout_batch: '0' is not a number of hosts" in run.stdout, run.stdout
    assert "thorfleet_rollout_canary: thor09 is neither a host nor a group" in run.stdout
    assert "== Models" not in run.stdout


def tiny(revision: str, image_tag: str | None = None) -> str:
    """thor03's services with one more, serving the lab repository thorfleet-lab/tiny at
    `revision` (v1: weights.bin of 64 KiB; v2: 96 KiB and extra.bin), on `image_tag`."""
    extra = {"models": {"thorfleet-lab/tiny": {"huggingface": {
                 "repo": "thorfleet-lab/tiny", "revision": revision}}},
             "recipes": {"lab-tiny": {"engine": "vllm", "model": "thorfleet-lab/tiny"}}}
    if image_tag:
        extra["engines"] = {"vllm": {"image": f"nvcr.io/nvidia/vllm:{image_tag}"}}
    return json.dumps({"thorfleet_catalogue_extra": extra, "thorfleet_services": [
        *FLEET_SERVICES, {"name": "tiny", "recipe": "lab-tiny", "source": "huggingface",
                          "port": 8010, "memory_share": 0.3}]})


@pytest.fixture
def tiny_model(fleet):
    host = fleet["thor03"]
    first = Playbook("site.yml", "-l", "thor03", "-e", tiny("v1"))
    assert first.rc == 0, first
    yield host
    back = Playbook("site.yml", "-l", "thor03")  # tiny retired
    assert back.rc == 0, back


def test_a_model_revision_waits_beside_the_running_one_and_a_failed_switch_puts_it_back(
        lab, tiny_model):
    host, model = tiny_model, "/models/thorfleet-lab/tiny"

    def revision():
        """The revision the model's directory holds (by the lock's pins), and its weights."""
        manifest = json.loads(host.file(f"{model}/thorfleet-manifest.json").content_string)
        pins = yaml.safe_load(LOCK.read_text())["models"]
        tags = [tag for tag in ("v1", "v2")
                if pins.get(f"huggingface:thorfleet-lab/tiny@{tag}") == manifest["commit"]]
        return tags, host.file(f"{model}/weights.bin").size

    def tiny_pid():
        return host.check_output("systemctl show -p MainPID --value thorfleet-tiny")

    assert revision() == (["v1"], 64 * 1024)
    running = tiny_pid()
    # The models phase stages v2 beside v1 and restarts nothing.
    staged = Playbook("site.yml", "-l", "thor03", "--tags", "models", "-e", tiny("v2"))
    assert staged.rc == 0 and staged.recap["thor03"]["changed"] > 0, staged
    assert revision() == (["v1"], 64 * 1024) and tiny_pid() == running
    assert json.loads(host.file("/models/thorfleet-lab/.tiny.partial/thorfleet-staged.json")
                      .content_string)["manifest"]["revision"] == "v2"

    # v2 with an image that cannot start: the switch moves v2 in, fails, and puts v1 back.
    push_standin(lab, "vllm", "25.13-py3", broken=True)
    failed = Playbook("site.yml", "-l", "thor03", "-e", tiny("v2", "25.13-py3"))
    assert failed.rc == 2, failed
    assert revision() == (["v1"], 64 * 1024), failed
    assert not host.file(f"{model}/extra.bin").exists
    assert not host.file("/models/thorfleet-lab/.tiny.previous").exists
    assert host.check_output("curl -s -o /dev/null -w '%{http_code}' "
                             "http://127.0.0.1:8010/health") == "200"

    # v2 on a good image: in, restarted, answering; nothing left beside.
    switched = Playbook("site.yml", "-l", "thor03", "-e", tiny("v2"))
    assert switched.rc == 0, switched
    assert revision() == (["v2"], 96 * 1024) and host.file(f"{model}/extra.bin").exists
    assert tiny_pid() != running
    assert not host.file("/models/thorfleet-lab/.tiny.previous").exists
    assert not host.file("/models/thorfleet-lab/.tiny.partial").exists

"""Services on the lab fleet: one systemd unit per service of thor01, each engine started
with the guide's command, images pinned by digest, restarts only where inputs changed.

vLLM and SGLang are the lab's stand-in images (they record the command they were started
with); llama-server and whisper-server are the real builds serving tiny real models.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.guide import guide, same_tokens
from tests.lab.conftest import ROOT, Playbook, push_standin
from tests.snippets import commands_with
from thorfleet.lab import LAB_SERVICES, REGISTRY, REGISTRY_PASSWORD

SERVICES = {s["name"]: s for s in LAB_SERVICES}
PORTS = {"qwen3": 8000, "qwen3-vllm": 8001, "whisper-vllm": 8002, "qwen3-sglang": 8003,
         "whisper": 8080}
VLLM_SERVICES = {"qwen3-vllm", "whisper-vllm"}
VLLM_REF = "nvcr.io/nvidia/vllm:25.10-py3"
BUMPED_REF = "nvcr.io/nvidia/vllm:25.11-py3"
# The README's commands, verbatim: a preview of the image bump, the bump, a refresh.
BUMP_PREVIEW, BUMP = commands_with(f'"image": "{BUMPED_REF}"')
(REFRESH,) = commands_with("-e ngc_images_refresh=true")
LOCK = ROOT / "inventory/lab/.thorfleet.lock.yml"
KEY = "-lab-client-key-7f3a"  # a leading '-' must not be taken for a flag
# Hub tokens the lab's mirrors take without needing them: set only to be looked for.
TOKENS = {"thorfleet_hf_token": "hf_lab_token_4c1d_never_shown",
          "thorfleet_modelscope_token": "ms-lab-token-4c1d-never-shown"}


def site(*args: str) -> Playbook:
    return Playbook("site.yml", "-l", "thor01", *args)


def readme(argv: tuple[str, ...]) -> Playbook:
    """A README command, run as written in the checkout."""
    assert argv[0] == "ansible-playbook", argv
    return Playbook(*argv[1:])


def lock_images() -> dict:
    return yaml.safe_load(LOCK.read_text()).get("images", {})


def main_pids(host) -> dict[str, str]:
    return {name: host.check_output(f"systemctl show -p MainPID --value thorfleet-{name}")
            for name in PORTS}


def get(host, port: int, path: str, key: str = "") -> tuple[int, str]:
    auth = f"-H 'Authorization: Bearer {key}'" if key else ""
    out = host.check_output(f"curl -s --max-time 60 {auth} -w '\\n%{{http_code}}' "
                            f"http://127.0.0.1:{port}{path}")
    body, _, status = out.rpartition("\n")
    return int(status), body


def container(host, name: str) -> dict:
    return json.loads(host.check_output(f"docker inspect thorfleet-{name}"))[0]


def native_argv(host, name: str) -> list[str]:
    pid = host.check_output(f"systemctl show -p MainPID --value thorfleet-{name}")
    return host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/cmdline").splitlines()


def recorded_argv(host, name: str) -> list[str]:
    return json.loads(get(host, PORTS[name], "/thorfleet-standin/argv")[1])["argv"]


def jit_cache(host, name: str) -> str:
    """Whether a stand-in found its compile cache marker from a start before: found|new."""
    return json.loads(get(host, PORTS[name], "/thorfleet-standin/argv")[1])["jit_cache"]


def cache_dir(digest: str) -> str:
    return f"/var/cache/thorfleet/jit/{digest.replace(':', '-')}"


def test_every_service_is_an_enabled_unit_answering_health(thor01):
    for name, port in PORTS.items():
        unit = thor01.service(f"thorfleet-{name}")
        assert unit.is_running and unit.is_enabled, name
        assert get(thor01, port, "/health")[0] == 200, name


def test_a_second_run_changes_and_restarts_nothing(thor01):
    before = main_pids(thor01)
    again = site()
    assert again.rc == 0, again
    assert again.recap["thor01"]["changed"] == 0, again
    assert main_pids(thor01) == before


def test_each_engine_runs_the_guides_command(thor01):
    # The differences each service's settings allow (port, memory share) and the flags
    # that turn metrics on, nothing else.
    expected = {
        "qwen3-vllm": guide("vllm-qwen3-8b-nothink")
        + ["--port", "8001", "--gpu-memory-utilization", "0.2"],
        "qwen3-sglang": [*guide("sglang-qwen3-8b-nothink")],
        "qwen3": guide("llama-qwen3-8b-gguf-nothink") + ["--metrics"],
        "whisper": guide("whisper-large-v3-turbo"),
    }
    # Native engines run the build `current` pointed to when their unit was written (so
    # that a rollback runs the build that ran before), by its own name.
    for name in ("qwen3", "whisper"):
        binary = expected[name][0]
        build = thor01.file(binary.split("/bin/")[0]).linked_to.rsplit("/", 1)[-1]
        expected[name][0] = binary.replace("/current/", f"/{build}/")
    sglang = expected["qwen3-sglang"]
    sglang[sglang.index("--port") + 1] = "8003"
    sglang += ["--mem-fraction-static", "0.2", "--enable-metrics"]
    got = {"qwen3-vllm": recorded_argv(thor01, "qwen3-vllm"),
           "qwen3-sglang": recorded_argv(thor01, "qwen3-sglang"),
           "qwen3": native_argv(thor01, "qwen3"),
           "whisper": native_argv(thor01, "whisper")}
    for name, argv in got.items():
        assert same_tokens(argv, expected[name]), f"{name}: {argv}\n!=\n{expected[name]}"


def test_containers_run_as_the_guide_runs_them_by_digest(thor01):
    digest = lock_images()[VLLM_REF]
    for name in ("qwen3-vllm", "whisper-vllm", "qwen3-sglang"):
        info = container(thor01, name)
        host_config = info["HostConfig"]
        assert (host_config["NetworkMode"], host_config["IpcMode"]) == ("host", "host")
        assert host_config["AutoRemove"] is True
        assert host_config["RestartPolicy"]["Name"] in ("", "no")  # systemd restarts
        # The lab's one allowed difference: Docker's default runtime for `nvidia`.
        assert host_config["Runtime"] == "runc"
        assert "/models:/models" in host_config["Binds"]
        assert "@sha256:" in info["Config"]["Image"]
    assert container(thor01, "qwen3-vllm")["Config"]["Image"] == \
        f"{REGISTRY}/nvidia/vllm@{digest}"
    # A model from ModelScope tells vLLM so.
    assert "VLLM_USE_MODELSCOPE=true" in container(thor01, "whisper-vllm")["Config"]["Env"]


def test_a_restart_keeps_the_engines_compile_cache(thor01):
    digest = container(thor01, "qwen3-vllm")["Config"]["Image"].rsplit("@", 1)[1]
    cache = f"{cache_dir(digest)}/root/.cache/vllm"
    assert f"{cache}:/root/.cache/vllm" in container(thor01, "qwen3-vllm")["HostConfig"]["Binds"]
    assert thor01.file(f"{cache}/thorfleet-standin-qwen3").exists
    thor01.check_output("systemctl restart thorfleet-qwen3-vllm")
    assert jit_cache(thor01, "qwen3-vllm") == "found"


def test_stopping_a_unit_stops_its_container(thor01):
    thor01.check_output("systemctl stop thorfleet-qwen3-sglang")
    assert thor01.run("docker inspect thorfleet-qwen3-sglang").rc != 0
    thor01.check_output("systemctl reset-failed thorfleet-qwen3-sglang; "
                        "systemctl start thorfleet-qwen3-sglang")
    assert get(thor01, 8003, "/health")[0] == 200


def test_units_pass_systemd_analyze_and_native_units_are_hardened(thor01):
    for name in PORTS:
        verify = thor01.run(f"systemd-analyze verify /etc/systemd/system/thorfleet-{name}.service")
        assert verify.rc == 0 and verify.stderr.strip() == "", (name, verify.stderr)
    for name in ("qwen3", "whisper"):
        report = thor01.check_output(f"systemd-analyze security --no-pager thorfleet-{name}")
        exposure = float(report.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
        assert exposure <= 2.5, (name, exposure)
        # The engine runs as a user of its own, allocated by systemd, not root.
        pid = thor01.check_output(f"systemctl show -p MainPID --value thorfleet-{name}")
        assert 61184 <= int(thor01.check_output(f"stat -c %u /proc/{pid}")) <= 65519


@pytest.fixture(scope="class")
def api_key(thor01):
    """thor01 with an API key, set by a full run at -vvv with --diff and the hub tokens
    set too; then the bench at -vvv. Yields the host and both runs' output."""
    secrets = [arg for name, value in {"thorfleet_api_key": KEY, **TOKENS}.items()
               for arg in ("-e", f"{name}={value}")]
    run = site("-vvv", "--diff", *secrets)
    assert run.rc == 0, run
    bench = Playbook("playbooks/bench.yml", "-l", "thor01", "-vvv", *secrets,
                     "-e", "service_bench_runs=1", "-e", "service_bench_max_tokens=8")
    assert bench.rc == 0 and "error" not in json.loads(
        (ROOT / "bench/results/services/thor01.json").read_text())["services"][0], bench
    yield thor01, run.output + bench.output
    back = site()
    assert back.rc == 0, back


class TestAnApiKey:
    """One run sets the key (and the tokens) for both tests."""

    def test_no_key_or_token_reaches_the_output_of_a_run_at_vvv(self, api_key):
        _, output = api_key
        # Verbose indeed: module arguments are shown, censored ones marked.
        assert "module_args" in output and "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in output
        assert "(item=(censored due to no_log))" in output
        for secret in (KEY, REGISTRY_PASSWORD, *TOKENS.values()):
            assert secret not in output, f"{secret} in the output"

    def test_is_required_and_kept_in_root_only_files(self, api_key):
        host, _ = api_key
        for name in ("qwen3-vllm", "qwen3-sglang", "qwen3"):
            port = PORTS[name]
            assert get(host, port, "/v1/models")[0] == 401, name
            status, body = get(host, port, "/v1/models", KEY)
            assert status == 200 and "qwen3" in body, name
            assert get(host, port, "/health")[0] == 200, name  # probes need no key
        # whisper-server takes no key: it answers as before, and its environment has none.
        assert get(host, 8080, "/health")[0] == 200
        assert KEY not in host.file("/etc/thorfleet/services/whisper.env").content_string
        for name in PORTS:
            env = host.file(f"/etc/thorfleet/services/{name}.env")
            assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
            unit = host.file(f"/etc/systemd/system/thorfleet-{name}.service")
            assert KEY not in unit.content_string
        # vLLM and llama-server read it from their environment, never argv.
        assert KEY not in " ".join(recorded_argv(host, "qwen3-vllm")
                                   + native_argv(host, "qwen3"))
        env = host.file("/etc/thorfleet/services/qwen3-vllm.env")
        assert "VLLM_API_KEY" in env.content_string
        # SGLang reads it from argv only, joined to its flag: put there by a shell in the
        # container, so neither the host's `docker run` nor the container's recorded
        # command holds it, only the variable's name.
        assert f"--api-key={KEY}" in recorded_argv(host, "qwen3-sglang")
        inspected = container(host, "qwen3-sglang")
        recorded = json.dumps([inspected["Path"], inspected["Args"], inspected["Config"]["Cmd"]])
        assert KEY not in recorded and "$THORFLEET_API_KEY" in recorded
        docker_run = host.check_output("ps -eo args | grep '^/usr/bin/docker run' || true")
        assert "thorfleet-qwen3-sglang" in docker_run and KEY not in docker_run


def test_a_refused_registry_login_names_the_key_and_changes_nothing(thor01):
    before = main_pids(thor01)
    # A host with every pinned image asks no registry: the key is not even tried.
    quiet = site("--tags", "images", "-e", "thorfleet_ngc_api_key=not-the-key")
    assert quiet.rc == 0 and quiet.recap["thor01"]["changed"] == 0, quiet
    # A refresh resolves the tags again, so it must log in first: refused.
    run = site("--tags", "images", "-e", "thorfleet_ngc_api_key=not-the-key",
               "-e", "ngc_images_refresh=true")
    assert run.rc != 0, run
    assert "check thorfleet_ngc_api_key" in run.output
    assert "not-the-key" not in run.output
    assert main_pids(thor01) == before


@pytest.fixture
def restored(lab, thor01):
    """thor01 back on the catalogue's images, the lab registry's 25.10 tag where it was,
    and the lock as it was, after the test."""
    locked = LOCK.read_text()
    original = lock_images()[VLLM_REF]
    yield
    # The stand-in is reproducible: pushing it again gives the tag its original digest.
    assert push_standin(lab, "vllm", "25.10-py3") == original
    LOCK.write_text(locked)
    back = site()
    assert back.rc == 0, back


def vllm_digests(host) -> list[str]:
    """The digests of the vLLM images on a host."""
    return sorted(host.check_output(f"docker images --digests --format '{{{{.Digest}}}}' "
                                    f"{REGISTRY}/nvidia/vllm").split())


def test_the_readmes_image_bump_restarts_only_the_vllm_services(lab, thor01, restored):
    bumped = push_standin(lab, "vllm", "25.11-py3")
    first = lock_images()[VLLM_REF]
    before = main_pids(thor01)

    preview = readme(BUMP_PREVIEW)
    assert preview.rc == 0, preview
    assert f"-    {REGISTRY}/nvidia/vllm@{first}" in preview.output
    assert f"+    {REGISTRY}/nvidia/vllm:25.11-py3" in preview.output
    assert main_pids(thor01) == before and BUMPED_REF not in lock_images()

    bump = readme(BUMP)
    assert bump.rc == 0, bump
    assert lock_images()[BUMPED_REF] == bumped
    after = main_pids(thor01)
    assert {name for name in PORTS if after[name] != before[name]} == VLLM_SERVICES
    for name in VLLM_SERVICES:
        assert container(thor01, name)["Config"]["Image"].endswith(bumped)
        assert jit_cache(thor01, name) == "new"  # a cache of the new image's own
    assert first in vllm_digests(thor01)  # the previous one, for rollback

    # The same bump again has nothing to do.
    again = readme(BUMP)
    assert again.rc == 0, again
    assert again.recap["thor01"]["changed"] == 0, again
    assert main_pids(thor01) == after

    # The README's refresh, after the catalogue's tag moved upstream: a run without the
    # -e is back on 25.10, re-resolved to what it points to now; the image before the
    # previous one (the first 25.10) is removed.
    moved = push_standin(lab, "vllm", "25.10-py3", version="25.10-py3-rebuilt")
    refresh = readme(REFRESH)
    assert refresh.rc == 0, refresh
    assert lock_images()[VLLM_REF] == moved
    for name in VLLM_SERVICES:
        assert container(thor01, name)["Config"]["Image"].endswith(moved)
    assert vllm_digests(thor01) == sorted([moved, bumped])
    # The pruned image's compile cache goes with it; the kept ones stay.
    assert not thor01.file(cache_dir(first)).exists
    assert thor01.file(cache_dir(moved)).is_directory
    assert thor01.file(cache_dir(bumped)).is_directory


def test_a_rollout_that_fails_leaves_the_last_good_services_running(lab, thor01, restored):
    good = lock_images()[VLLM_REF]
    push_standin(lab, "vllm", "25.11-py3", broken=True)
    before = main_pids(thor01)
    run = readme(BUMP)
    assert run.rc != 0, run
    assert ("thorfleet-qwen3-vllm.service, thorfleet-whisper-vllm.service did not start on "
            "new inputs") in run.output
    for name in VLLM_SERVICES:
        assert get(thor01, PORTS[name], "/health")[0] == 200, name
        assert container(thor01, name)["Config"]["Image"] == f"{REGISTRY}/nvidia/vllm@{good}"
        unit = thor01.file(f"/etc/systemd/system/thorfleet-{name}.service").content_string
        assert good in unit and "25.11" not in unit
        assert jit_cache(thor01, name) == "found"  # the good image's cache, as it was
    after = main_pids(thor01)
    assert {name for name in PORTS if after[name] != before[name]} == VLLM_SERVICES


@pytest.fixture
def broken_build(thor01):
    """whisper.cpp's `current` switched to a build whose server cannot start, as the engines
    phase leaves it after a ref whose binary compiles but fails at start."""
    root = "/opt/thorfleet/whisper.cpp"
    good = thor01.file(f"{root}/current").linked_to.rsplit("/", 1)[-1]
    thor01.check_output(
        f"cp -a {root}/{good} {root}/build-broken && "
        f"printf '#!/bin/sh\\necho cannot start >&2\\nexit 1\\n' > "
        f"{root}/build-broken/bin/whisper-server && ln -sfn build-broken {root}/current")
    yield good
    thor01.check_output(f"ln -sfn {good} {root}/current && rm -rf {root}/build-broken")


def test_a_native_rollout_that_fails_runs_the_last_good_build_again(thor01, broken_build):
    good = broken_build
    run = site("--tags", "services")
    assert run.rc != 0, run
    assert "thorfleet-whisper.service did not start on new inputs" in run.output
    # The last good unit names the last good build, not `current`: it answers from it.
    assert get(thor01, PORTS["whisper"], "/health")[0] == 200
    server = f"/opt/thorfleet/whisper.cpp/{good}/bin/whisper-server"
    assert native_argv(thor01, "whisper")[0] == server
    unit = thor01.file("/etc/systemd/system/thorfleet-whisper.service").content_string
    assert "build-broken" not in unit


def test_a_tag_moved_upstream_changes_no_host(lab, thor01):
    pinned = lock_images()[VLLM_REF]
    before = main_pids(thor01)
    moved = push_standin(lab, "vllm", "25.10-py3", version="25.10-py3-rebuilt")
    try:
        assert moved != pinned
        run = site()
        assert run.rc == 0, run
        assert run.recap["thor01"]["changed"] == 0, run
        assert main_pids(thor01) == before and lock_images()[VLLM_REF] == pinned
    finally:
        # The stand-in is reproducible: pushing it again restores the original digest.
        assert push_standin(lab, "vllm", "25.10-py3") == pinned


def test_a_service_taken_out_is_stopped_and_its_unit_removed(thor01):
    kept = [s for s in LAB_SERVICES if s["name"] != "qwen3-sglang"]
    try:
        run = site("-e", json.dumps({"thorfleet_services": kept}))
        assert run.rc == 0, run
        assert not thor01.file("/etc/systemd/system/thorfleet-qwen3-sglang.service").exists
        assert not thor01.file("/etc/thorfleet/services/qwen3-sglang.env").exists
        assert thor01.run("docker inspect thorfleet-qwen3-sglang").rc != 0
        assert thor01.service("thorfleet-qwen3").is_running
    finally:
        back = site()
        assert back.rc == 0, back
    assert thor01.service("thorfleet-qwen3-sglang").is_running


def test_native_units_follow_the_builds_root_the_inventory_moves(thor01):
    # ggml_build_root reaches the units: moved, each native unit would run its engine
    # from under the new root (a preview; nothing on the host changes).
    run = site("--check", "--diff", "-e", "ggml_build_root=/opt/elsewhere")
    assert run.rc == 0, run
    for engine, binary in (("llama.cpp", "llama-server"), ("whisper.cpp", "whisper-server")):
        assert re.search(rf'^\+ExecStart="?/opt/elsewhere/{re.escape(engine)}/[^/]+/bin/'
                         rf'{binary}\b', run.output, re.MULTILINE), (engine, run)
    assert not thor01.file("/opt/elsewhere").exists

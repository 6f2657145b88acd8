"""Engines on the lab fleet: real CPU builds of llama-server and whisper-server from the
lab's git server, rebuilt only when their stamp changes, with a shared compiler cache."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.lab.conftest import ROOT as PROJECT
from tests.lab.conftest import Playbook
from thorfleet import bounded

ROOT = "/opt/thorfleet"
CCACHE = "CCACHE_DIR=/var/cache/thorfleet/ccache ccache --print-stats"
WHISPER_UNIT = "lab-whisper.service"
# A service that runs whisper-server from `current`, as the services phase's units do
# (restarting them is that phase's work: tests/lab/test_services.py).
WHISPER_UNIT_FILE = f"""[Unit]
Description=thorfleet lab test: whisper-server from the current build
[Service]
ExecStart={ROOT}/whisper.cpp/current/bin/whisper-server \
  --model {ROOT}/whisper.cpp/src/models/for-tests-ggml-tiny.bin --host 127.0.0.1 --port 8080
"""


LOCK = PROJECT / "inventory" / "lab" / ".thorfleet.lock.yml"


def engines(*args: str) -> Playbook:
    return Playbook("site.yml", "--tags", "engines", *args)


def ccache_stats(host) -> dict[str, int]:
    lines = host.check_output(CCACHE).splitlines()
    return {key: int(value) for key, value in (line.split("\t") for line in lines)}


def compiles(before: dict, after: dict) -> tuple[int, int]:
    """(cache hits, cache misses) between two readings of the shared compiler cache."""
    hits = sum(after[k] - before[k] for k in ("direct_cache_hit", "preprocessed_cache_hit"))
    return hits, after["cache_miss"] - before["cache_miss"]


def current(host, engine: str) -> str:
    return host.file(f"{ROOT}/{engine}/current").linked_to.rsplit("/", 1)[-1]


def builds(host, engine: str) -> list[str]:
    return sorted(host.check_output(f"ls -d {ROOT}/{engine}/build-* | xargs -n1 basename")
                  .split())


def record(host, engine: str) -> dict:
    return json.loads(host.file(f"{ROOT}/{engine}/current/thorfleet-build.json").content_string)


def main_pid(host) -> str:
    return host.check_output(f"systemctl show -p MainPID --value {WHISPER_UNIT}")


def transcribe(host) -> dict:
    out = host.check_output(
        "curl -sf --max-time 60 --retry 20 --retry-connrefused --retry-delay 1 "
        "http://127.0.0.1:8080/inference "
        f"-F file=@{ROOT}/whisper.cpp/src/samples/jfk.wav -F response_format=json")
    return json.loads(out)


@pytest.fixture(scope="module")
def thor01(lab, hosts):
    """thor01 with no engines yet, and a unit that will run whisper-server."""
    host = hosts["thor01"]
    # thorfleet's own services (a lab that ran site.yml) would hold the test unit's port.
    host.run(f"systemctl stop 'thorfleet-*' {WHISPER_UNIT}; rm -rf {ROOT}")
    host.check_output(f"cat > /etc/systemd/system/{WHISPER_UNIT} <<'EOF'\n{WHISPER_UNIT_FILE}EOF\n"
                      "systemctl daemon-reload")
    yield host
    host.run(f"systemctl stop {WHISPER_UNIT}; rm -f /etc/systemd/system/{WHISPER_UNIT}; "
             "systemctl daemon-reload")


@pytest.fixture(scope="module")
def first_build(thor01):
    run = engines("-l", "thor01")
    assert run.rc == 0, run
    run.builds = {e: current(thor01, e) for e in ("llama.cpp", "whisper.cpp")}
    return run


def test_first_run_builds_both_engines_for_the_cpu(first_build, thor01, lab):
    for engine, tag in (("llama.cpp", "b11312"), ("whisper.cpp", "v1.8.5")):
        built = record(thor01, engine)
        tagged = bounded.run(["git", "-C", str(lab.source_repo(engine)), "rev-parse",
                              f"{tag}^{{commit}}"], 30).stdout
        assert built["commit"] == tagged.strip()
        assert "-DGGML_CUDA=OFF" in built["cmake_flags"] and built["cuda"] == ""
        assert current(thor01, engine) == builds(thor01, engine)[0]
    assert "version:" in thor01.run(f"{ROOT}/llama.cpp/current/bin/llama-server --version").stderr
    assert thor01.run(f"{ROOT}/whisper.cpp/current/bin/whisper-server --help").rc == 0


def test_the_built_whisper_server_serves_on_the_host(first_build, thor01):
    thor01.check_output(f"systemctl start {WHISPER_UNIT}")
    answer = transcribe(thor01)
    assert "text" in answer  # random for-tests weights: the server answers, the text is noise


def test_a_second_run_starts_no_compiler(first_build, thor01):
    stamps = {e: current(thor01, e) for e in ("llama.cpp", "whisper.cpp")}
    before = ccache_stats(thor01)
    again = engines("-l", "thor01")
    assert again.rc == 0, again
    assert again.recap["thor01"]["changed"] == 0, again
    assert ccache_stats(thor01) == before
    assert stamps == {e: current(thor01, e) for e in stamps}


def test_check_mode_says_a_ref_bump_would_rebuild_and_why(first_build, thor01, lab):
    commit = lab.commit_to_source("whisper.cpp", "ggml/src/ggml-alloc.c",
                                  "// thorfleet lab: a new upstream commit", "lab-bump-1")
    old = record(thor01, "whisper.cpp")["commit"]
    preview = engines("-l", "thor01", "--check", "--diff",
                      "-e", "ggml_build_whisper_cpp_version=lab-bump-1")
    assert preview.rc == 0, preview
    assert f"commit {old[:12]} -> {commit[:12]}; building" in preview.output
    assert record(thor01, "whisper.cpp")["commit"] == old


def test_a_ref_bump_rebuilds_from_cache_and_switches_under_a_running_service(
        first_build, thor01):
    old_build, llama_build = current(thor01, "whisper.cpp"), current(thor01, "llama.cpp")
    pid = main_pid(thor01)
    before = ccache_stats(thor01)
    bump = engines("-l", "thor01", "-e", "ggml_build_whisper_cpp_version=lab-bump-1")
    assert bump.rc == 0, bump
    hits, misses = compiles(before, ccache_stats(thor01))
    assert misses <= 3 and hits > 10 * misses, (hits, misses)  # one file changed
    new_build = current(thor01, "whisper.cpp")
    assert new_build != old_build and builds(thor01, "whisper.cpp") == sorted(
        [old_build, new_build])
    assert current(thor01, "llama.cpp") == llama_build
    # The running service is left alone on the build it started from, which is kept.
    assert main_pid(thor01) == pid
    assert old_build in thor01.check_output(f"readlink /proc/{pid}/exe")
    thor01.check_output(f"systemctl restart {WHISPER_UNIT}")
    assert new_build in thor01.check_output(f"readlink /proc/{main_pid(thor01)}/exe")
    assert "text" in transcribe(thor01)


def test_a_ref_that_does_not_compile_fails_and_the_service_keeps_running(
        first_build, thor01, lab):
    lab.commit_to_source("whisper.cpp", "examples/server/server.cpp",
                         "#error thorfleet lab: this commit does not compile", "lab-broken")
    good_build, pid = current(thor01, "whisper.cpp"), main_pid(thor01)
    broken = engines("-l", "thor01", "-e", "ggml_build_whisper_cpp_version=lab-broken")
    assert broken.rc != 0, broken
    assert "whisper.cpp build failed at commit" in broken.output
    assert "this commit does not compile" in broken.output
    assert current(thor01, "whisper.cpp") == good_build
    assert main_pid(thor01) == pid and thor01.service(WHISPER_UNIT).is_running
    assert "text" in transcribe(thor01)


def test_going_back_to_the_pinned_ref_switches_to_the_kept_build(first_build, thor01):
    before = ccache_stats(thor01)
    back = engines("-l", "thor01")
    assert back.rc == 0, back
    assert ccache_stats(thor01) == before  # no compiler: the first build was kept
    assert current(thor01, "whisper.cpp") == first_build.builds["whisper.cpp"]
    # The bump's build stays for rollback; the failed attempt is gone.
    assert len(builds(thor01, "whisper.cpp")) == 2


def pinned(engine: str, ref: str) -> str:
    return yaml.safe_load(LOCK.read_text())["engines"][f"{engine}@{ref}"]


@pytest.fixture
def moved_tag(lab):
    """whisper.cpp's v1.8.5 moved upstream to a new commit, then put back."""
    repo = str(lab.source_repo("whisper.cpp"))
    old = bounded.run(["git", "--git-dir", repo, "rev-parse", "v1.8.5^{commit}"], 30,
                      check=True).stdout.strip()
    yield lab.commit_to_source("whisper.cpp", "ggml/src/ggml-alloc.c",
                               "// thorfleet lab: v1.8.5 moved upstream", "v1.8.5")
    bounded.run(["git", "--git-dir", repo, "tag", "-f", "v1.8.5", old], 30, check=True)


def test_a_tag_moved_upstream_builds_nothing_until_refreshed(first_build, thor01, moved_tag):
    pin = pinned("whisper.cpp", "v1.8.5")
    assert pin == record(thor01, "whisper.cpp")["commit"]
    build, before = current(thor01, "whisper.cpp"), ccache_stats(thor01)
    again = engines("-l", "thor01")
    assert again.rc == 0 and again.recap["thor01"]["changed"] == 0, again
    assert ccache_stats(thor01) == before and current(thor01, "whisper.cpp") == build
    assert thor01.check_output(f"git -C {ROOT}/whisper.cpp/src rev-parse HEAD") == pin
    assert pinned("whisper.cpp", "v1.8.5") == pin
    # The documented switch takes what the tag names now (previewed: nothing changes).
    preview = engines("-l", "thor01", "--check", "--diff", "-e", "ggml_build_refresh=true")
    assert preview.rc == 0, preview
    assert f"commit {pin[:12]} -> {moved_tag[:12]}; building" in preview.output, preview
    assert pinned("whisper.cpp", "v1.8.5") == pin


def test_a_host_whose_services_are_all_containers_builds_nothing(first_build, hosts):
    thor02 = hosts["thor02"]
    thor02.run(f"rm -rf {ROOT}")
    containers = [{"name": "chat", "recipe": "vllm-qwen3-8b", "memory_share": 0.3},
                  {"name": "sglang", "recipe": "sglang-qwen3-8b", "port": 8001,
                   "memory_share": 0.3}]
    run = engines("-l", "thor02", "-e", json.dumps({"thorfleet_services": containers}))
    assert run.rc == 0, run
    # Preflight may record the platform; the engines phase changes nothing.
    engines_play = run.output.split("PLAY [Engines]", 1)[1]
    assert "changed: [thor02]" not in engines_play, run
    # No engine to build: the include of the tools, checkout and build is skipped.
    include = "TASK [ggml_build : Check out and build the engines whose pinned build is missing]"
    assert "skipping: [thor02]" in engines_play.split(include, 1)[1].split("TASK [", 1)[0]
    assert not thor02.file(ROOT).exists


def test_a_second_host_builds_mostly_from_the_shared_cache(first_build, hosts, moved_tag):
    thor02 = hosts["thor02"]
    thor02.run(f"rm -rf {ROOT}")
    before = ccache_stats(thor02)
    # thor02 runs no service in the lab: it builds the engines it is told to.
    run = engines("-l", "thor02", "-e", '{"ggml_build_engines": ["llama.cpp", "whisper.cpp"]}')
    assert run.rc == 0, run
    hits, misses = compiles(before, ccache_stats(thor02))
    assert hits > 9 * misses, (hits, misses)
    assert thor02.run(f"{ROOT}/whisper.cpp/current/bin/whisper-server --help").rc == 0
    # Built at the commit the first host pinned, though the tag has moved since.
    assert record(thor02, "whisper.cpp")["commit"] == pinned("whisper.cpp", "v1.8.5")

"""What each unit runs, computed in one filter from the resolved services and what the
phases found on the host: image by digest, the build `current` points to, the model's
commit, the template's sum, the compile-cache mounts and the API key's place."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load
from tests.unit.test_service_specs import specs

units = load("filter_plugins/units.py")
images = load("filter_plugins/images.py")

COMMIT = "a1af6a7a0be8f3fe51ed0b5d1e3bafe3cbf13b4e"
DIGEST = "sha256:" + "4" * 64
DOCKER = {"runtime": "nvidia", "models_root": "/models", "env_dir": "/etc/thorfleet/services",
          "volumes": ["/root/.cache/huggingface:/root/.cache/huggingface"],
          "extra": ["--shm-size=16g"]}
SERVICES = specs([{"name": "chat", "recipe": "sglang-qwen3-8b-nothink", "memory_share": 0.5},
                  {"name": "asr", "recipe": "whisper-large-v3-turbo"}])


def inputs(manifest_commit=COMMIT, built=True, keys=None):
    chat, asr = SERVICES
    plan = images.image_plan(SERVICES, {chat["image"]: DIGEST})
    builds = {asr["engine_root"]: "build-0123abcd"} if built else {}
    commits = {chat["model_dir"]: manifest_commit, asr["model_dir"]: COMMIT}
    sums = {chat["chat_template"]: "5" * 64}
    caches = images.jit_mounts(SERVICES, plan, "/var/cache/thorfleet/jit")
    return units.unit_inputs(SERVICES, plan, builds, commits, sums, caches,
                             keys or {"chat": "", "asr": ""}, DOCKER)


def test_each_unit_gets_what_it_runs():
    chat, asr = inputs()
    assert chat["name"] == "chat" and chat["argv"] == SERVICES[0]["argv"]  # the spec, kept
    assert chat["run"]["image"].endswith(f"/nvidia/sglang@{DIGEST}")
    assert chat["run"]["model_commit"] == COMMIT
    assert chat["run"]["template_sum"] == "5" * 64
    assert chat["container"] == "thorfleet-chat"
    assert chat["run"]["cache_volumes"] == [
        f"--volume=/var/cache/thorfleet/jit/sha256-{'4' * 64}{path}:{path}"
        for path in ("/root/.cache/flashinfer", "/root/.triton")]
    assert "build" not in chat["run"] and "image" not in asr["run"]
    # docker run as the guide runs the engine, up to the image; the site's options last.
    assert chat["run"]["docker"] == [
        "/usr/bin/docker", "run", "--rm", "--name", "thorfleet-chat", "--ipc=host",
        "--net=host", "--runtime=nvidia", "--volume=/models:/models",
        "--volume=/root/.cache/huggingface:/root/.cache/huggingface",
        "--env-file=/etc/thorfleet/services/chat.env", *chat["run"]["cache_volumes"],
        "--shm-size=16g"]
    # A native engine runs the build `current` points to, by that build's own name.
    assert asr["run"]["build"] == "build-0123abcd"
    assert asr["run"]["argv"] == [
        "/opt/thorfleet/whisper.cpp/build-0123abcd/bin/whisper-server", *asr["argv"][1:]]
    assert asr["argv"][0] == "/opt/thorfleet/whisper.cpp/current/bin/whisper-server"
    assert asr["run"]["cache_volumes"] == [] and asr["run"]["template_sum"] == "not fetched"


def test_before_a_build_or_a_key_there_is_nothing_to_name():
    chat, asr = inputs(built=False)
    assert asr["run"]["build"] == "not built"
    assert chat["run"]["api_key_argv"] == ""
    # SGLang takes its key on the command line: from the environment file, joined to its
    # flag; the key itself is never in the unit.
    chat, _ = inputs(keys={"chat": "sk-secret-key-1", "asr": ""})
    # In the container: a shell appends it from the environment file's variable, so the
    # host's `docker run` command line names the variable, not the key.
    assert chat["run"]["command"] == [
        "/bin/sh", "-c", 'exec "$@" --api-key="$THORFLEET_API_KEY"', "sh", *chat["argv"]]
    assert chat["run"]["api_key_argv"] == ""
    assert "sk-secret" not in json.dumps(chat)


def test_a_container_without_a_key_runs_the_engines_argv_as_it_is():
    chat, _ = inputs()
    assert chat["run"]["command"] == chat["argv"]


def test_a_manifest_whose_commit_is_not_a_commit_is_refused():
    with pytest.raises(Exception, match="is not 40 hex characters"):
        inputs(manifest_commit="main\nExecStartPre=/bin/sh")


def test_only_what_changed_or_is_missing_is_kept_as_last_good():
    chat, asr = SERVICES
    env_dir = "/etc/thorfleet/services"
    found = [chat["unit"], "chat.env", asr["unit"], "asr.env"]
    nothing = {"results": [{"file": chat, "changed": False}, {"file": asr, "changed": False}]}
    assert units.last_good_to_keep(SERVICES, nothing, nothing, found, env_dir) == []
    # A changed unit keeps that service's unit and environment file; a missing copy too.
    changed = {"results": [{"file": chat, "changed": True}]}
    assert units.last_good_to_keep(SERVICES, changed, nothing, found, env_dir) == [
        f"/etc/systemd/system/{chat['unit']}", f"{env_dir}/chat.env"]
    missing = found[:3]
    assert units.last_good_to_keep(SERVICES, nothing, nothing, missing, env_dir) == [
        f"/etc/systemd/system/{asr['unit']}", f"{env_dir}/asr.env"]
    # A first run keeps everything.
    assert len(units.last_good_to_keep(SERVICES, None, None, [], env_dir)) == 4
    # A unit a run that skipped verify wrote (it differs from its last good copy) is kept
    # by the next run that verifies, though that run changed nothing.
    assert units.last_good_to_keep(SERVICES, nothing, nothing, found, env_dir,
                                   ["asr.env"]) == [
        f"/etc/systemd/system/{asr['unit']}", f"{env_dir}/asr.env"]


def test_a_failed_switch_puts_back_what_it_changed_and_what_no_verify_passed():
    chat, asr = SERVICES
    nothing = {"results": [{"file": chat, "changed": False}, {"file": asr, "changed": False}]}
    changed = {"results": [{"file": chat, "changed": True}]}
    assert units.changed_services(SERVICES, nothing, changed) == [chat]
    assert units.changed_services(SERVICES, None, None) == []
    assert units.unverified_services(SERVICES, nothing, nothing, []) == []
    assert units.unverified_services(SERVICES, changed, nothing, []) == [chat]
    assert units.unverified_services(SERVICES, nothing, changed, []) == [chat]
    assert units.unverified_services(SERVICES, nothing, nothing, [asr["unit"]]) == [asr]
    assert units.unverified_services(SERVICES, changed, None, ["asr.env"]) == [chat, asr]

"""site.yml end to end on the lab fleet: the main job, its idempotence, and preflight."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from tests.lab.conftest import (
    CONVERGED,
    ROOT,
    Playbook,
    fingerprint,
    main_job_unless_converged,
    thorfleet,
)
from tests.snippets import commands_with
from thorfleet import stock
from thorfleet.lab import LOGIN_USER

RECORD = "/etc/ansible/facts.d/thorfleet.fact"


def test_check_mode_changes_nothing_and_predicts_the_change(lab, hosts):
    hosts["thor01"].run(f"rm -f {RECORD}")
    check = Playbook("site.yml", "-l", "thor01", "--check", "--diff")
    assert check.rc == 0, check
    assert check.recap["thor01"]["changed"] > 0, check
    assert not hosts["thor01"].file(RECORD).exists


@pytest.fixture
def thor02_unprovisioned(hosts):
    assert thorfleet("lab", "as-thor", "thor02", "--off").returncode == 0
    hosts["thor02"].run(f"rm -f {RECORD}")
    yield hosts["thor02"]
    assert thorfleet("lab", "as-thor", "thor02", "--off").returncode == 0


# A container service (Docker's nvidia runtime) and a native one (the CUDA toolkit).
BOTH_KINDS = json.dumps({"thorfleet_services": [
    {"name": "chat", "recipe": "vllm-qwen3-8b", "memory_share": 0.5},
    {"name": "whisper", "recipe": "whisper-large-v3-turbo"}]})


@pytest.mark.beside_first_converge  # thor02 only
def test_a_host_that_is_no_thor_fails_preflight_and_changes_nothing(thor02_unprovisioned):
    run = Playbook("site.yml", "-l", "thor02", "-e", "thorfleet_lab=false", "-e", BOTH_KINDS)
    assert run.rc != 0, run
    assert run.recap["thor02"]["failed"] == 1 and run.recap["thor02"]["changed"] == 0, run
    assert "thor02 is not fit for thorfleet" in run.output
    for missing in ("/etc/nv_tegra_release is missing", "nvidia-smi",
                    "CUDA not found", "no 'nvidia' runtime"):
        assert missing in run.output, missing
    assert not thor02_unprovisioned.file(RECORD).exists


@pytest.mark.beside_first_converge  # thor02 only
def test_a_thor_without_the_cuda_toolkit_fails_preflight_when_it_must_build(
        thor02_unprovisioned):
    made = thorfleet("lab", "as-thor", "thor02")
    assert made.returncode == 0, made.stderr
    assert not thor02_unprovisioned.file("/usr/local/cuda/bin/nvcc").exists
    run = Playbook("site.yml", "-l", "thor02", "-e", "thorfleet_lab=false", "-e", BOTH_KINDS)
    assert run.rc != 0 and run.recap["thor02"]["changed"] == 0, run
    assert ("no CUDA toolkit: /usr/local/cuda/bin/nvcc is missing, and whisper run engines "
            "built on the host") in run.output, run
    assert "no 'nvidia' runtime" not in run.output  # as a Thor, Docker has it
    assert not thor02_unprovisioned.file(RECORD).exists


@pytest.mark.beside_first_converge  # thor02 only
def test_the_same_host_made_to_look_like_a_thor_passes_preflight(thor02_unprovisioned):
    made = thorfleet("lab", "as-thor", "thor02")
    assert made.returncode == 0, made.stderr
    # The README's command: preflight only (past it, a Thor builds CUDA engines).
    (command,) = commands_with("-e thorfleet_lab=false")
    assert command[0] == "ansible-playbook"
    run = Playbook(*command[1:])
    assert run.rc == 0, run
    profile = json.loads(thor02_unprovisioned.file(RECORD).content_string)
    assert profile["lab"] is False
    assert profile["gpu"] == {"name": "NVIDIA Thor", "compute_capability": "11.0",
                              "driver": "580.00"}
    assert (profile["l4t"], profile["jetpack"], profile["cuda"]) == ("38.2.0", "7.0", "13.0.48")
    assert profile["container_runtime"] == "nvidia"


def test_too_little_disk_fails_preflight_naming_the_model_root(lab, hosts):
    run = Playbook("site.yml", "-l", "thor01", "-e", "thor_preflight_min_free_gb=1000000")
    assert run.rc != 0, run
    assert "GB free on" in run.output and "for /models, need 1000000 GB" in run.output


def ansible_environment(config: str, scratch) -> dict:
    """The environment of a run: under ansible-core's defaults (thorfleet.stock: no
    Mitogen, no pipelining, no SSH connection reuse, no other ANSIBLE_* setting), or under
    the checkout's ansible.cfg."""
    if config == "stock":
        return stock.environment(stock.write_config(ROOT, scratch))
    return {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}


@pytest.fixture
def thor01_off_course(lab, hosts):
    """thor01 converged, then led away from it in ways every phase notices: its platform
    record, one service (unit, environment file, container) and the verify samples gone."""
    main_job_unless_converged()  # the test before left it converged: no run (15 s)
    host = hosts["thor01"]
    host.check_output(
        f"rm -f {RECORD} /models/thorfleet-verify/hello.wav && "
        "systemctl disable --now thorfleet-qwen3-sglang && "
        "rm /etc/systemd/system/thorfleet-qwen3-sglang.service "
        "/etc/thorfleet/services/qwen3-sglang.env && systemctl daemon-reload")
    return host


def logged_in(style: str, scratch) -> tuple[str, ...]:
    """Inventory and become arguments: the lab's hosts reached as a Thor is, through a
    login user that becomes root, as inventory/sample sets it (the group's vars) or with
    --become on the command line."""
    login = scratch / "login.yml"
    group_vars = {"ansible_user": LOGIN_USER}
    if style == "sample":
        group_vars["ansible_become"] = True
    login.write_text(yaml.safe_dump({"thor": {"vars": group_vars}}))
    return ("-i", str(ROOT / "inventory/lab"), "-i", str(login),
            *(["--become"] if style == "--become" else []))


@pytest.mark.parametrize(("config", "login"), [("stock", "sample"), ("thorfleet", "sample"),
                                               ("thorfleet", "--become")])
def test_the_main_job_as_users_run_it_converges_verifies_and_stays_converged(
        thor01_off_course, config, login, tmp_path):
    env = ansible_environment(config, tmp_path)
    args = ("site.yml", "-l", "thor01", *logged_in(login, tmp_path))
    # A hang (curl reading the SSH session's terminal, once) fails at the bound.
    first = Playbook(*args, env=env, bound=1200)
    assert first.rc == 0, first
    assert first.recap["thor01"]["changed"] > 0, first
    # ansible-core warns on every run that uses a strategy of its own, Mitogen's.
    warned = "Use of strategy plugins not included in ansible.builtin" in first.output
    assert warned == (config == "thorfleet"), first
    # Every service was asked the guide's request, and answered.
    for check in ("qwen3: chat", "qwen3-vllm: chat", "qwen3-sglang: chat",
                  "whisper-vllm: transcription", "whisper: transcription"):
        assert f"{check}: answered 200" in first.output, check
    host = thor01_off_course
    assert host.service("thorfleet-qwen3-sglang").is_running
    assert host.service("thorfleet-qwen3-sglang").is_enabled
    assert host.file("/models/thorfleet-verify/hello.wav").exists
    # Preflight recorded the platform again: a lab host, which has no GPU.
    record = host.file(RECORD)
    assert (record.user, record.group, record.mode) == ("root", "root", 0o644)
    profile = json.loads(record.content_string)
    assert profile["lab"] is True
    assert profile["gpu"] is None and profile["cuda"] is None
    assert profile["container_runtime"] == "runc"

    second = Playbook(*args, env=env, bound=1200)
    assert second.rc == 0, second
    assert second.recap["thor01"]["changed"] == 0, second
    # Converged as the main job leaves it (a run of another configuration, which changed
    # nothing): the next test's and module's thor01 need no run of their own.
    CONVERGED["thor01"] = fingerprint("thor01")

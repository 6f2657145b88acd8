"""thor_facts: parsing real-looking Thor output, and judging hosts that are not Thors."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
from ansible.module_utils.testing import patch_module_args

from tests.conftest import load

thor_facts = load("library/thor_facts.py")

# Captured from AGX Thor developer kits (JetPack 7.0) and other Jetson and DGX hosts.
THOR_RELEASE = (
    "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Aug 22 00:55:42 UTC 2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
)
ORIN_RELEASE = (
    "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
)
THOR_SMI = "NVIDIA Thor, 11.0, 580.00\n"
SPARK_SMI = "NVIDIA GB10, 12.1, 580.95.05\n"
CUDA_JSON = json.dumps({"cuda": {"name": "CUDA SDK", "version": "13.0.48"}})
NVCC_12 = (
    "nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2024 NVIDIA Corporation\n"
    "Cuda compilation tools, release 12.6, V12.6.68\nBuild cuda_12.6.r12.6/compiler.34714021_0\n"
)
SMI_BANNER = (
    "+-----------------------------------------------------------------------------+\n"
    "| NVIDIA-SMI 580.00     Driver Version: 580.00     CUDA Version: 13.0         |\n"
)
DOCKER_THOR = json.dumps({
    "ServerVersion": "28.2.2", "DefaultRuntime": "runc",
    "Runtimes": {"io.containerd.runc.v2": {"path": "runc"}, "nvidia": {"path": "nvidia"},
                 "runc": {"path": "runc"}},
})
DOCKER_PLAIN = json.dumps({
    "ServerVersion": "20.10.24+dfsg1", "DefaultRuntime": "runc",
    "Runtimes": {"io.containerd.runc.v2": {"path": "runc"}, "runc": {"path": "runc"}},
})
DOCKER_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."

REQUIRE = {"compute_capability": "11.0", "min_cuda": "13.0", "container_runtime": "nvidia",
           "min_free_gb": 20}


def thor_host(**changes):
    facts = {
        "l4t": thor_facts.parse_nv_tegra_release(THOR_RELEASE),
        "gpu": thor_facts.parse_nvidia_smi(THOR_SMI),
        "cuda": thor_facts.parse_cuda_version(CUDA_JSON),
        "docker": thor_facts.parse_docker_info(DOCKER_THOR),
        "models_root": "/models",
        "disk": {"path": "/", "free_gb": 812.4},
    }
    facts.update(changes)
    return facts


def test_thor_release_line_gives_l4t_and_jetpack():
    l4t = thor_facts.parse_nv_tegra_release(THOR_RELEASE)
    assert l4t == {"release": "38.2.0", "major": 38, "minor": 2, "board": "generic"}
    assert thor_facts.jetpack_for(l4t) == "7.0"


@pytest.mark.parametrize(("release", "jetpack"), [
    ("# R38 (release), REVISION: 4.0, GCID: 1, BOARD: generic", "7.1"),
    ("# R39 (release), REVISION: 0.0, GCID: 1, BOARD: generic", "7.2"),
    ("# R39 (release), REVISION: 1.0, GCID: 1, BOARD: generic", "7.2"),
    ("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic", None),
])
def test_jetpack_follows_the_l4t_release(release, jetpack):
    assert thor_facts.jetpack_for(thor_facts.parse_nv_tegra_release(release)) == jetpack


def test_a_file_that_is_no_release_is_none():
    assert thor_facts.parse_nv_tegra_release("Debian GNU/Linux 12\n") is None
    assert thor_facts.parse_nv_tegra_release(None) is None


def test_thor_nvidia_smi_reports_compute_capability_11():
    assert thor_facts.parse_nvidia_smi(THOR_SMI) == {
        "name": "NVIDIA Thor", "compute_capability": "11.0", "driver": "580.00"}
    assert thor_facts.parse_nvidia_smi("") is None


@pytest.mark.parametrize(("text", "version"), [
    (CUDA_JSON, "13.0.48"),
    ("CUDA Version 12.2.140\n", "12.2.140"),
    (NVCC_12, "12.6"),
    (SMI_BANNER, "13.0"),
    ("garbage", None),
])
def test_cuda_version_from_each_source(text, version):
    assert thor_facts.parse_cuda_version(text) == version


def test_docker_runtimes_are_listed_and_a_dead_daemon_is_none():
    assert thor_facts.parse_docker_info(DOCKER_THOR)["runtimes"] == [
        "io.containerd.runc.v2", "nvidia", "runc"]
    assert thor_facts.parse_docker_info(DOCKER_DOWN) is None
    assert thor_facts.parse_docker_info(None) is None  # no docker command at all


def test_a_thor_is_fit():
    assert thor_facts.assess(thor_host(), require_gpu=True, **REQUIRE) == []


def test_a_plain_debian_host_is_told_everything_it_lacks():
    plain = thor_host(l4t=None, gpu=None, cuda=None,
                      docker=thor_facts.parse_docker_info(DOCKER_PLAIN))
    problems = thor_facts.assess(plain, require_gpu=True, **REQUIRE)
    assert len(problems) == 4
    assert "/etc/nv_tegra_release is missing" in problems[0]
    assert "nvidia-smi" in problems[1]
    assert "CUDA not found" in problems[2]
    assert "no 'nvidia' runtime" in problems[3] and "runc" in problems[3]


def test_an_orin_is_too_old():
    orin = thor_host(l4t=thor_facts.parse_nv_tegra_release(ORIN_RELEASE),
                     gpu={"name": "Orin (nvgpu)", "compute_capability": "8.7", "driver": "540"},
                     cuda="12.6")
    problems = thor_facts.assess(orin, require_gpu=True, **REQUIRE)
    assert problems == [
        "L4T R36.4.3 is older than R38 (JetPack 7), the first release for Thor",
        "GPU Orin (nvgpu) has compute capability 8.7, a Thor has 11.0",
        "CUDA 12.6 is older than 13.0",
    ]


def test_a_dgx_spark_is_not_a_thor():
    spark = thor_host(gpu=thor_facts.parse_nvidia_smi(SPARK_SMI))
    assert thor_facts.assess(spark, require_gpu=True, **REQUIRE) == [
        "GPU NVIDIA GB10 has compute capability 12.1, a Thor has 11.0"]


def test_cuda_versions_compare_as_numbers():
    assert thor_facts.assess(thor_host(cuda="13.10"), require_gpu=True, **REQUIRE) == []
    assert thor_facts.assess(thor_host(cuda="12.9"), require_gpu=True, **REQUIRE) == [
        "CUDA 12.9 is older than 13.0"]
    # Values that compare the other way as strings ("13.0" < "9.2", "13.2" > "13.10").
    newer = {**REQUIRE, "min_cuda": "9.2"}
    assert thor_facts.assess(thor_host(cuda="13.0"), require_gpu=True, **newer) == []
    assert thor_facts.assess(thor_host(cuda="13.2"), require_gpu=True,
                             **{**REQUIRE, "min_cuda": "13.10"}) == [
        "CUDA 13.2 is older than 13.10"]
    assert thor_facts.assess(thor_host(cuda="9.2"), require_gpu=True, **REQUIRE) == [
        "CUDA 9.2 is older than 13.0"]


def test_too_little_disk_names_the_models_root_and_the_need():
    facts = thor_host(disk={"path": "/", "free_gb": 3.2})
    assert thor_facts.assess(facts, require_gpu=True, **REQUIRE) == [
        "only 3.2 GB free on / for /models, need 20 GB"]


def test_a_host_without_gpu_is_judged_only_on_docker_and_disk():
    lab = thor_host(l4t=None, gpu=None, cuda=None,
                    docker=thor_facts.parse_docker_info(DOCKER_PLAIN))
    requirements = {**REQUIRE, "container_runtime": "runc"}
    assert thor_facts.assess(lab, require_gpu=False, **requirements) == []
    assert thor_facts.assess({**lab, "docker": None}, require_gpu=False, **requirements) == [
        "Docker is not installed or its daemon does not answer"]


class Exit(Exception):
    pass


def run_module(monkeypatch, tmp_path, args, outputs, files):
    """Run the module's main() with commands and files answered from captured output."""
    def command(self, argv):
        return outputs.get(argv[0])

    def read_text(path):
        return files.get(path)

    results = {}

    def exit_json(self, **kwargs):
        results.update(kwargs)
        raise Exit

    monkeypatch.setattr(thor_facts.Probe, "command", command)
    monkeypatch.setattr(thor_facts, "read_text", read_text)
    monkeypatch.setattr(thor_facts.AnsibleModule, "exit_json", exit_json)
    with patch_module_args({"models_root": str(tmp_path / "models"), **args}), \
            pytest.raises(Exit):
        thor_facts.main()
    return results


def test_module_reads_a_thor_in_check_mode(monkeypatch, tmp_path):
    result = run_module(
        monkeypatch, tmp_path, {"_ansible_check_mode": True, "min_free_gb": 0},
        outputs={"nvidia-smi": THOR_SMI, "docker": DOCKER_THOR},
        files={thor_facts.NV_TEGRA_RELEASE: THOR_RELEASE,
               "/usr/local/cuda/version.json": CUDA_JSON,
               thor_facts.DEVICE_MODEL: "NVIDIA Jetson AGX Thor Developer Kit\0",
               "/proc/meminfo": "MemTotal:       128790432 kB\n"})
    facts = result["ansible_facts"]["thor"]
    assert result["changed"] is False
    assert result["problems"] == []
    assert facts["is_thor"] is True
    assert facts["jetpack"] == "7.0"
    assert facts["cuda"] == "13.0.48"
    assert facts["device_model"] == "NVIDIA Jetson AGX Thor Developer Kit"
    assert facts["unified_memory_mb"] == 125771
    # The model root does not exist yet: free space is read where it will be created.
    assert facts["disk"]["path"] == str(tmp_path)


def test_module_reports_problems_without_failing(monkeypatch, tmp_path):
    result = run_module(monkeypatch, tmp_path, {"min_free_gb": 0},
                        outputs={"docker": DOCKER_PLAIN}, files={})
    assert result["changed"] is False
    assert result["ansible_facts"]["thor"]["gpu"] is None
    assert any("nv_tegra_release" in p for p in result["problems"])


def test_docker_is_checked_only_for_a_host_with_container_services():
    plain = thor_host(docker=None)
    assert thor_facts.assess(plain, require_gpu=True, **REQUIRE, container_services=[]) == []
    assert thor_facts.assess(plain, require_gpu=True, **REQUIRE,
                             container_services=["chat"]) == [
        "Docker is not installed or its daemon does not answer"]


@pytest.mark.parametrize(("nvcc", "driver", "problem"), [
    ("13.0", "13.0", None),
    ("12.8", "13.0", None),  # an older toolkit builds what a newer driver runs
    (None, "13.0", "no CUDA toolkit: /usr/local/cuda/bin/nvcc is missing, and whisper run "
                   "engines built on the host; install JetPack's toolkit"),
    ("13.1", "13.0", "the CUDA toolkit at /usr/local/cuda is 13.1, newer than the driver "
                     "supports (CUDA 13.0, from nvidia-smi)"),
    ("13.10", "13.2", "is 13.10, newer than the driver supports (CUDA 13.2"),
])
def test_a_host_that_builds_engines_needs_a_toolkit_its_driver_runs(nvcc, driver, problem):
    facts = thor_host(nvcc=nvcc, driver_cuda=driver)
    found = thor_facts.assess(facts, require_gpu=True, **REQUIRE, native_services=["whisper"])
    assert found == ([] if problem is None else [found[0]]) and (
        problem is None or problem in found[0]), found
    # Without a native service, or without a GPU (the lab), the toolkit is not asked for.
    assert thor_facts.assess(facts, require_gpu=True, **REQUIRE) == []
    assert thor_facts.assess(facts, require_gpu=False, **REQUIRE,
                             native_services=["whisper"]) == []


def test_the_record_an_earlier_run_left_is_returned_for_comparing(monkeypatch, tmp_path):
    record = tmp_path / "thorfleet.fact"
    asked = {"min_free_gb": 0, "record_path": str(record)}
    # None before the first run and for a file that is not JSON: the play writes it.
    assert run_module(monkeypatch, tmp_path, asked, outputs={}, files={})["record"] is None
    record.write_text("{not json")
    assert run_module(monkeypatch, tmp_path, asked, outputs={}, files={})["record"] is None
    record.write_text('{"lab": true, "gpu": null}\n')
    assert run_module(monkeypatch, tmp_path, asked, outputs={}, files={})["record"] == {
        "lab": True, "gpu": None}
    # Not asked for, not read.
    assert "record" not in run_module(monkeypatch, tmp_path, {"min_free_gb": 0},
                                      outputs={}, files={})


class _Host:
    """What Probe needs of AnsibleModule, running commands for real."""

    @staticmethod
    def get_bin_path(name):
        return shutil.which(name)

    @staticmethod
    def run_command(argv):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return proc.returncode, proc.stdout, proc.stderr


def test_a_probe_that_hangs_is_stopped_at_its_bound(monkeypatch):
    # A wedged Docker daemon makes `docker info` hang: preflight must answer anyway.
    monkeypatch.setattr(thor_facts, "PROBE_TIMEOUT", 1)
    probe = thor_facts.Probe(_Host())
    started = time.monotonic()
    assert probe.command(["sleep", "30"]) is None
    assert time.monotonic() - started < 10
    assert probe.command(["echo", "answered"]) == "answered\n"

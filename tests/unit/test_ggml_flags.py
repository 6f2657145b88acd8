"""How the CMake flags of an engine build are composed: CUDA for a Thor, CPU in the lab."""

from __future__ import annotations

import pytest

from tests.conftest import load

ggml = load("filter_plugins/ggml.py")

THOR_GPU = {"name": "NVIDIA Thor", "compute_capability": "11.0", "driver": "580.00"}


def test_a_thor_builds_cuda_for_arch_110_with_the_guides_flags():
    flags = ggml.ggml_cmake_flags(THOR_GPU)
    # The guide: cmake -B build -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="110"
    assert "-DGGML_CUDA=ON" in flags
    assert "-DCMAKE_CUDA_ARCHITECTURES=110" in flags
    assert "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc" in flags
    assert "-DCMAKE_BUILD_TYPE=Release" in flags
    assert "-DGGML_CUDA=OFF" not in flags


def test_a_host_without_gpu_builds_for_the_cpu_only():
    flags = ggml.ggml_cmake_flags(None)
    assert "-DGGML_CUDA=OFF" in flags
    assert not [f for f in flags if "CUDA_ARCHITECTURES" in f or "CUDA_COMPILER" in f]


def test_engine_flags_then_user_flags_come_last_so_theirs_win():
    flags = ggml.ggml_cmake_flags(THOR_GPU, ["-DLLAMA_BUILD_TESTS=OFF"],
                                  ["-DCMAKE_CUDA_ARCHITECTURES=110;121"], "/opt/cuda-13/")
    assert flags[-2:] == ["-DLLAMA_BUILD_TESTS=OFF", "-DCMAKE_CUDA_ARCHITECTURES=110;121"]
    assert "-DCMAKE_CUDA_COMPILER=/opt/cuda-13/bin/nvcc" in flags


@pytest.mark.parametrize(("capability", "arch"), [("11.0", "110"), ("12.1", "121"),
                                                  ("8.7", "87"), ("9", "90")])
def test_cuda_architecture_follows_the_compute_capability(capability, arch):
    assert ggml.cuda_architecture(capability) == arch


def test_a_compute_capability_that_is_none_is_refused():
    with pytest.raises(ValueError, match="not a compute capability"):
        ggml.cuda_architecture("[N/A]")


def test_the_filter_is_registered_for_ansible():
    assert ggml.FilterModule().filters()["ggml_cmake_flags"] is ggml.ggml_cmake_flags


SOURCES = {"llama.cpp": {"version": "b11312"}, "whisper.cpp": {"version": "a" * 40}}


def test_a_ref_is_checked_out_at_the_commit_the_lock_pins_unless_refreshed():
    locked = {"llama.cpp@b11312": "c" * 40, "llama.cpp@b11000": "d" * 40}
    plan = ggml.engine_plan(["llama.cpp", "whisper.cpp"], SOURCES, locked)
    assert plan == [
        {"name": "llama.cpp", "ref": "b11312", "lock_key": "llama.cpp@b11312", "pin": "c" * 40},
        # A full commit is its own pin, refresh or not.
        {"name": "whisper.cpp", "ref": "a" * 40, "lock_key": "whisper.cpp@" + "a" * 40,
         "pin": "a" * 40}]
    assert [p["pin"] for p in ggml.engine_plan(["llama.cpp", "whisper.cpp"], SOURCES, {})] == [
        "", "a" * 40]
    assert [p["pin"] for p in ggml.engine_plan(["llama.cpp", "whisper.cpp"], SOURCES, locked,
                                               refresh=True)] == ["", "a" * 40]
    with pytest.raises(ValueError, match=r"engines.llama.cpp@b11312: 'c\\n"):
        ggml.engine_plan(["llama.cpp"], SOURCES, {"llama.cpp@b11312": "c\nExecStart=x"})


def test_only_refs_resolved_in_this_run_reach_the_lock():
    plan = ggml.engine_plan(["llama.cpp", "whisper.cpp"], SOURCES, {})
    host1 = {"results": [{"item": plan[0], "after": "e" * 40},
                         {"item": plan[1], "after": "a" * 40}]}
    host2 = {"results": [{"item": plan[0], "after": "e" * 40, "failed": True},
                         {"item": plan[0], "after": "not a commit"}]}
    assert ggml.engine_commits([host1, host2, {}]) == {"llama.cpp@b11312": "e" * 40}
    pinned = ggml.engine_plan(["llama.cpp"], SOURCES, {"llama.cpp@b11312": "c" * 40})
    assert ggml.engine_commits([{"results": [{"item": pinned[0], "after": "c" * 40}]}]) == {}


def test_each_build_carries_the_modules_arguments_at_its_pin_for_this_host():
    plan = ggml.engine_plan(["llama.cpp"], SOURCES, {"llama.cpp@b11312": "c" * 40})
    sources = {"llama.cpp": {**SOURCES["llama.cpp"], "targets": ["llama-server"],
                             "cmake_flags": ["-DLLAMA_CURL=OFF"], "extra_cmake_flags": []}}
    (thor,) = ggml.engine_builds(plan, sources, "/opt/thorfleet", gpu=THOR_GPU,
                                 cuda_version="13.0", ccache_dir="", jobs=4, keep=2)
    assert thor["engine"] == plan[0]
    assert thor["args"] == {
        "name": "llama.cpp", "source": "/opt/thorfleet/llama.cpp/src", "commit": "c" * 40,
        "build_root": "/opt/thorfleet/llama.cpp",
        "cmake_flags": ggml.ggml_cmake_flags(THOR_GPU, ["-DLLAMA_CURL=OFF"], []),
        "targets": ["llama-server"], "cuda_version": "13.0", "ccache_dir": None, "jobs": 4,
        "keep": 2}
    # A host without a GPU: a CPU build, and no CUDA in its stamp.
    (cpu,) = ggml.engine_builds(plan, sources, "/opt/thorfleet", cuda_version="13.0",
                                ccache_dir="/var/cache/ccache")
    assert "-DGGML_CUDA=OFF" in cpu["args"]["cmake_flags"]
    assert (cpu["args"]["cuda_version"], cpu["args"]["ccache_dir"]) == ("", "/var/cache/ccache")

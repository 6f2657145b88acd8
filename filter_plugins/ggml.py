"""Filters for building ggml engines (llama.cpp, whisper.cpp)."""

from __future__ import annotations

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils.formats import is_commit

# Every build: an optimised, self-contained binary (no shared libraries to go stale
# when `current` moves to another build).
COMMON_FLAGS = ("-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF")


def cuda_architecture(compute_capability: str) -> str:
    """CMake's CUDA architecture for a compute capability: "11.0" (Thor) -> "110"."""
    major, _, minor = str(compute_capability).partition(".")
    if not (major.isdigit() and (minor or "0").isdigit()):
        raise ValueError(f"not a compute capability: {compute_capability!r}")
    return f"{major}{minor or '0'}"


def ggml_cmake_flags(gpu, engine_flags=(), extra_flags=(), cuda_home="/usr/local/cuda"):
    """The CMake -D flags of one engine build.

    ``gpu`` is the GPU preflight found (``ansible_facts.thor.gpu``): with one, CUDA on for
    its architecture (a Thor: ``-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=110``); without
    (the lab), a CPU build. Then the engine's own flags, then the user's, which win where
    they set the same variable (CMake keeps the last -D).
    """
    flags = list(COMMON_FLAGS)
    if gpu:
        flags += [
            "-DGGML_CUDA=ON",
            f"-DCMAKE_CUDA_ARCHITECTURES={cuda_architecture(gpu['compute_capability'])}",
            f"-DCMAKE_CUDA_COMPILER={cuda_home.rstrip('/')}/bin/nvcc",
        ]
    else:
        flags.append("-DGGML_CUDA=OFF")
    return flags + list(engine_flags or []) + list(extra_flags or [])


def engine_plan(engines, sources, locked, refresh=False):
    """Per engine: name, ref, the lock's key (<engine>@<ref>) and pin, the commit to check
    out ("" when the ref is to be resolved: not locked yet, or a refresh). A ref that is a
    full commit is its own pin."""
    plan = []
    for name in engines:
        ref = str(sources[name]["version"])
        key = f"{name}@{ref}"
        pin = ref if is_commit(ref) else ("" if refresh else str(locked.get(key) or ""))
        if pin and not is_commit(pin):
            raise ValueError(f"the lock file's engines.{key}: {pin[:80]!r} is not a commit of "
                             "40 hex digits; delete the entry to resolve the ref again")
        plan.append({"name": name, "ref": ref, "lock_key": key, "pin": pin})
    return plan


def engine_builds(plan, sources, root, gpu=None, cuda_home="/usr/local/cuda",
                  cuda_version="", ccache_dir="", jobs=0, keep=2):
    """Each engine of the plan (`engine`) with the build module's arguments at its pin
    (`args`), for this host (`gpu`, `cuda_version`: the facts preflight read): what the
    build's check, the build and the artefact pipeline pass the module alike."""
    return [{"engine": engine, "args": {
        "name": engine["name"], "source": f"{root}/{engine['name']}/src",
        "commit": engine["pin"], "build_root": f"{root}/{engine['name']}",
        "cmake_flags": ggml_cmake_flags(gpu, sources[engine["name"]]["cmake_flags"],
                                        sources[engine["name"]]["extra_cmake_flags"],
                                        cuda_home),
        "targets": sources[engine["name"]]["targets"],
        "cuda_version": cuda_version if gpu else "", "ccache_dir": ccache_dir or None,
        "jobs": jobs, "keep": keep}} for engine in plan or []]


def engine_commits(checkouts):
    """Lock entries (<engine>@<ref> -> commit) of refs resolved in this run, from every
    host's registered checkouts."""
    entries = {}
    for registered in checkouts or []:
        for result in (registered or {}).get("results", []):
            planned, after = result.get("item", {}), result.get("after")
            if result.get("failed") or result.get("skipped") or not planned:
                continue
            if is_commit(after) and not planned["pin"]:
                entries[planned["lock_key"]] = after
    return entries


class FilterModule:
    def filters(self):
        return {"ggml_cmake_flags": ggml_cmake_flags, "cuda_architecture": cuda_architecture,
                "thorfleet_engine_plan": engine_plan, "thorfleet_engine_builds": engine_builds,
                "thorfleet_engine_commits": engine_commits}

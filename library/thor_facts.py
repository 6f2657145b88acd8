#!/usr/bin/python
"""Ansible module: what a host offers for inference serving, and what keeps it from it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: thor_facts
short_description: Read a Jetson Thor's platform facts and judge whether it can serve
description:
  - Reads the L4T release (C(/etc/nv_tegra_release)) and the JetPack it belongs to, the CUDA
    version, the GPU name and compute capability (from C(nvidia-smi)), unified memory, the
    Docker engine and its runtimes, and free disk under the model root.
  - Returns them as the C(thor) fact, plus C(problems), the reasons the host is not fit.
    The module never fails for an unfit host; the calling role decides what to do.
  - Read-only: nothing on the host changes, in check mode or not.
options:
  models_root:
    description:
      - Where models will live. Free space is measured on the file system that will hold it
        (its nearest existing parent when it does not exist yet).
    type: path
    default: /models
  require_gpu:
    description:
      - Judge the host as a Thor (L4T R38 or later, a GPU of compute capability
        O(compute_capability), CUDA O(min_cuda) or later).
      - V(false) for hosts without a GPU, such as the built-in lab fleet.
    type: bool
    default: true
  compute_capability:
    description: The GPU compute capability a Thor reports.
    type: str
    default: "11.0"
  min_cuda:
    description: The oldest CUDA version accepted.
    type: str
    default: "13.0"
  container_runtime:
    description:
      - The Docker runtime the services will run with; it must be registered when
        O(container_services) is not empty.
    type: str
    default: nvidia
  container_services:
    description:
      - The host's services that run in containers. With none, Docker is not checked.
    type: list
    elements: str
    default: []
  native_services:
    description:
      - The host's services whose engine is built on the host. With O(require_gpu), the
        CUDA toolkit (C(nvcc) under O(cuda_home)) must be there, of a CUDA version the
        driver supports.
    type: list
    elements: str
    default: []
  cuda_home:
    description: Where the CUDA toolkit is (C(bin/nvcc)).
    type: path
    default: /usr/local/cuda
  min_free_gb:
    description: Free space (GB, 10^9 bytes) needed under O(models_root).
    type: float
    default: 20
  record_path:
    description:
      - A JSON file an earlier run left (the role's platform record), returned parsed in
        C(record), so the caller writes it only when it differs.
    type: path
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Read the platform facts of a Thor
  thor_facts:
    models_root: /models
    min_free_gb: 200

- name: Judge a host without a GPU
  thor_facts:
    require_gpu: false
    container_runtime: runc
"""

RETURN = r"""
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: dict
  contains:
    thor:
      description: Platform facts.
      type: dict
      sample:
        l4t: {release: "38.2.0", major: 38, board: generic}
        jetpack: "7.0"
        cuda: "13.0.48"
        nvcc: "13.0"
        driver_cuda: "13.0"
        gpu: {name: NVIDIA Thor, compute_capability: "11.0", driver: "580.00"}
        is_thor: true
        device_model: NVIDIA Jetson AGX Thor Developer Kit
        architecture: aarch64
        cpus: 14
        unified_memory_mb: 125772
        docker: {version: "28.2.2", running: true, runtimes: [nvidia, runc], default_runtime: runc}
        models_root: /models
        disk: {path: /, free_gb: 812.4}
record:
  description: The content of O(record_path) (JSON); null when it is absent, unreadable or not JSON.
  returned: when O(record_path) is given
  type: raw
problems:
  description: Why the host is not fit; empty when it is.
  returned: always
  type: list
  elements: str
  sample: ["CUDA 12.6 is older than 13.0"]
"""

import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

NV_TEGRA_RELEASE = "/etc/nv_tegra_release"
DEVICE_MODEL = "/proc/device-tree/model"
CUDA_VERSION_FILES = ("/usr/local/cuda/version.json", "/usr/local/cuda/version.txt")
NVIDIA_SMI_QUERY = ["--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]

# L4T release -> JetPack. R38.2 is JetPack 7.0, R38.4 JetPack 7.1, R39 JetPack 7.2.
JETPACK = {(38, 2): "7.0", (38, 4): "7.1", (39, 0): "7.2"}

_L4T_RE = re.compile(r"#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>[\d.]+)"
                     r"(?:.*?BOARD:\s*(?P<board>[^,\s]+))?")


def parse_nv_tegra_release(text):
    """The L4T release from /etc/nv_tegra_release, or None when it is not one."""
    match = _L4T_RE.search(text or "")
    if not match:
        return None
    revision = match.group("revision").split(".")
    minor = int(revision[0])
    patch = int(revision[1]) if len(revision) > 1 else 0
    major = int(match.group("major"))
    return {"release": f"{major}.{minor}.{patch}", "major": major, "minor": minor,
            "board": match.group("board")}


def jetpack_for(l4t):
    """The JetPack release an L4T release belongs to, when known."""
    if not l4t:
        return None
    return JETPACK.get((l4t["major"], l4t["minor"])) or JETPACK.get((l4t["major"], 0))


def parse_nvidia_smi(output):
    """The first GPU from `nvidia-smi --query-gpu=name,compute_cap,driver_version`."""
    for line in (output or "").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3 and fields[0]:
            return {"name": fields[0], "compute_capability": fields[1], "driver": fields[2]}
    return None


def parse_cuda_version(text):
    """CUDA's version from version.json, version.txt or `nvcc --version`."""
    text = text or ""
    try:
        return json.loads(text)["cuda"]["version"]
    except (ValueError, KeyError, TypeError):
        pass
    match = re.search(r"(?:CUDA Version|release)\s*:?\s*(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def version_tuple(version):
    return tuple(int(part) for part in re.findall(r"\d+", version or ""))


def parse_docker_info(output):
    """Docker's version and runtimes from `docker info --format '{{json .}}'`; None
    without Docker (no output) or without a daemon."""
    try:
        info = json.loads(output or "")
    except ValueError:
        return None
    if not isinstance(info, dict) or not info.get("ServerVersion"):
        return None
    return {"version": info["ServerVersion"], "running": True,
            "runtimes": sorted(info.get("Runtimes") or {}),
            "default_runtime": info.get("DefaultRuntime")}


def assess(facts, require_gpu, compute_capability, min_cuda, container_runtime, min_free_gb,
           container_services=None, native_services=(), cuda_home="/usr/local/cuda"):
    """Everything that keeps a host from serving, each naming what is missing. Docker is
    judged unless container_services says there are none; the CUDA toolkit for
    native_services, the services whose engines are built on the host."""
    problems = []
    if require_gpu:
        l4t = facts.get("l4t")
        if not l4t:
            problems.append(f"not a Jetson: {NV_TEGRA_RELEASE} is missing or unreadable")
        elif l4t["major"] < 38:
            problems.append(f"L4T R{l4t['release']} is older than R38 (JetPack 7), "
                            "the first release for Thor")
        gpu = facts.get("gpu")
        if not gpu:
            problems.append("no GPU: nvidia-smi is missing or reports none")
        elif gpu["compute_capability"] != compute_capability:
            problems.append(f"GPU {gpu['name']} has compute capability "
                            f"{gpu['compute_capability']}, a Thor has {compute_capability}")
        cuda = facts.get("cuda")
        if not cuda:
            problems.append("CUDA not found (no /usr/local/cuda/version.json, nvcc or "
                            "nvidia-smi that reports it)")
        elif version_tuple(cuda) < version_tuple(min_cuda):
            problems.append(f"CUDA {cuda} is older than {min_cuda}")
        if native_services:
            problems += _toolkit_problems(facts, native_services, cuda_home)
    docker = facts.get("docker")
    if container_services is not None and not container_services:
        pass  # no container to run: Docker is not needed
    elif not docker:
        problems.append("Docker is not installed or its daemon does not answer")
    elif container_runtime not in docker["runtimes"]:
        problems.append(f"Docker has no '{container_runtime}' runtime "
                        f"(it has: {', '.join(docker['runtimes']) or 'none'})")
    disk = facts.get("disk")
    if disk and disk["free_gb"] < min_free_gb:
        problems.append(f"only {gigabytes(disk['free_gb'])} GB free on {disk['path']} for "
                        f"{facts['models_root']}, need {gigabytes(min_free_gb)} GB")
    return problems


def _toolkit_problems(facts, native_services, cuda_home):
    """A host that builds engines needs the CUDA toolkit, of a version its driver runs."""
    names = ", ".join(native_services)
    nvcc, driver = facts.get("nvcc"), facts.get("driver_cuda")
    if not nvcc:
        return [f"no CUDA toolkit: {cuda_home}/bin/nvcc is missing, and {names} run engines "
                "built on the host; install JetPack's toolkit (apt install cuda-toolkit-13-0, "
                "or nvidia-jetpack) or set ggml_build_cuda_home to where it is"]
    if driver and version_tuple(nvcc)[:2] > version_tuple(driver)[:2]:
        return [f"the CUDA toolkit at {cuda_home} is {nvcc}, newer than the driver supports "
                f"(CUDA {driver}, from nvidia-smi), so what it builds for {names} would not "
                f"run; install the toolkit of CUDA {driver}"]
    return []


def gigabytes(value):
    """A size in GB as people write it: 20, 3.2, 1000000."""
    return f"{value:.1f}".removesuffix(".0")


def existing_parent(path):
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_gb(path):
    stat = os.statvfs(path)
    return round(stat.f_bavail * stat.f_frsize / 1e9, 1)


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def meminfo_mb(text):
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", text or "", re.MULTILINE)
    return int(match.group(1)) // 1024 if match else None


PROBE_TIMEOUT = 60  # seconds


class Probe:
    """Reads the host. Kept apart from parsing so tests feed captured output instead."""

    def __init__(self, module):
        self.module = module

    def command(self, argv):
        """A probe's output, or None when it is missing, fails or outlasts its bound: a
        wedged Docker daemon or GPU driver hangs its command line, and a host that
        answers nothing must fail preflight, not hang it."""
        binary = self.module.get_bin_path(argv[0])
        if not binary:
            return None
        bound = self.module.get_bin_path("timeout")
        prefix = [bound, "--kill-after=5", str(PROBE_TIMEOUT)] if bound else []
        rc, out, _err = self.module.run_command([*prefix, binary, *argv[1:]])
        return out if rc == 0 else None

    def cuda(self):
        for path in CUDA_VERSION_FILES:
            version = parse_cuda_version(read_text(path))
            if version:
                return version
        for argv in (["nvcc", "--version"], ["/usr/local/cuda/bin/nvcc", "--version"],
                     ["nvidia-smi"]):
            version = parse_cuda_version(self.command(argv))
            if version:
                return version
        return None

    def nvcc(self, cuda_home):
        """The version of the CUDA toolkit's compiler under cuda_home, if it is there."""
        path = os.path.join(cuda_home, "bin", "nvcc")
        if not os.access(path, os.X_OK):
            return None
        rc, out, _err = self.module.run_command([path, "--version"])
        return parse_cuda_version(out) if rc == 0 else None

    def facts(self, models_root, cuda_home="/usr/local/cuda"):
        l4t = parse_nv_tegra_release(read_text(NV_TEGRA_RELEASE))
        gpu = parse_nvidia_smi(self.command(["nvidia-smi", *NVIDIA_SMI_QUERY]))
        disk_path = existing_parent(models_root)
        model = read_text(DEVICE_MODEL)
        return {
            "l4t": l4t,
            "jetpack": jetpack_for(l4t),
            "cuda": self.cuda(),
            "nvcc": self.nvcc(cuda_home),
            # The newest CUDA the driver runs: the banner of plain nvidia-smi.
            "driver_cuda": parse_cuda_version(self.command(["nvidia-smi"])) if gpu else None,
            "gpu": gpu,
            "is_thor": bool(gpu and gpu["name"].endswith("Thor")),
            "device_model": model.rstrip("\0\n") if model else None,
            "architecture": platform.machine(),
            "cpus": os.cpu_count(),
            "unified_memory_mb": meminfo_mb(read_text("/proc/meminfo")),
            "docker": parse_docker_info(self.command(["docker", "info", "--format",
                                                      "{{json .}}"])),
            "models_root": models_root,
            "disk": {"path": disk_path, "free_gb": free_gb(disk_path)},
        }


def read_record(path):
    """The JSON in path, or None."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def main():
    module = AnsibleModule(
        argument_spec={
            "models_root": {"type": "path", "default": "/models"},
            "require_gpu": {"type": "bool", "default": True},
            "compute_capability": {"type": "str", "default": "11.0"},
            "min_cuda": {"type": "str", "default": "13.0"},
            "container_runtime": {"type": "str", "default": "nvidia"},
            "container_services": {"type": "list", "elements": "str", "default": []},
            "native_services": {"type": "list", "elements": "str", "default": []},
            "cuda_home": {"type": "path", "default": "/usr/local/cuda"},
            "min_free_gb": {"type": "float", "default": 20},
            "record_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    params = module.params
    facts = Probe(module).facts(params["models_root"], params["cuda_home"])
    problems = assess(facts, params["require_gpu"], params["compute_capability"],
                      params["min_cuda"], params["container_runtime"], params["min_free_gb"],
                      params["container_services"], params["native_services"],
                      params["cuda_home"])
    result = {"changed": False, "ansible_facts": {"thor": facts}, "problems": problems}
    if params["record_path"]:
        result["record"] = read_record(params["record_path"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()

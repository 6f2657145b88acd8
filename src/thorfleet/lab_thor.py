"""Make a lab host look like a Jetson Thor to preflight, and back.

A lab host has no GPU. To run preflight's Thor branch for real, the host gets the
files and commands through which a Thor describes itself, with a Thor's answers
(captured from public logs of real AGX Thor developer kits, see DESIGN.md):
``/etc/nv_tegra_release``, an ``nvidia-smi``, CUDA's ``version.json`` and an ``nvidia``
runtime in Docker. These are lab stand-ins: each file says so, and the ``nvidia``
runtime is plain runc underneath.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "/etc/thorfleet-lab-as-thor"
STANDIN = "thorfleet lab stand-in: this host only looks like a Jetson Thor"

NV_TEGRA_RELEASE = (
    "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Aug 22 00:55:42 UTC 2025\n"
    "# KERNEL_VARIANT: oot\n"
    "TARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)

CUDA_VERSION_JSON = '{\n  "cuda": {\n    "name": "CUDA SDK",\n    "version": "13.0.48"\n  }\n}\n'

# Answers the queries thorfleet (and people) send, as a Thor's nvidia-smi does.
NVIDIA_SMI = f'''#!/usr/bin/python3
# {STANDIN}
import sys

GPU = {{
    "name": "NVIDIA Thor",
    "compute_cap": "11.0",
    "driver_version": "580.00",
    "memory.total": "[N/A]",
    "uuid": "GPU-00000000-0000-0000-0000-000000000000",
}}

args = sys.argv[1:]
query = next((a.split("=", 1)[1] for a in args if a.startswith("--query-gpu=")), None)
if query is None:
    print("NVIDIA-SMI 580.00    Driver Version: 580.00    CUDA Version: 13.0")
    print("GPU 0: NVIDIA Thor")
    sys.exit(0)
fields = [f.strip() for f in query.split(",")]
unknown = [f for f in fields if f not in GPU]
if unknown:
    print(f'Field "{{unknown[0]}}" is not a valid field to query.', file=sys.stderr)
    sys.exit(2)
if "noheader" not in " ".join(args):
    print(", ".join(fields))
print(", ".join(GPU[f] for f in fields))
'''

NVIDIA_RUNTIME = f'''#!/bin/sh
# {STANDIN}: the nvidia runtime is runc here.
exec runc "$@"
'''

FILES = {
    "/etc/nv_tegra_release": (NV_TEGRA_RELEASE, 0o644),
    "/usr/local/cuda/version.json": (CUDA_VERSION_JSON, 0o644),
    "/usr/bin/nvidia-smi": (NVIDIA_SMI, 0o755),
    "/usr/bin/nvidia-container-runtime": (NVIDIA_RUNTIME, 0o755),
    MARKER: (STANDIN + "\n", 0o644),
}


def daemon_config(as_thor: bool) -> dict:
    """Docker's daemon.json for a lab host: on a Thor, the nvidia runtime."""
    config: dict = {}
    if as_thor:
        config["runtimes"] = {"nvidia": {"path": "/usr/bin/nvidia-container-runtime"}}
    return config


def apply(root: Path, on: bool) -> None:
    """Write (or remove) the Thor stand-in files in a host's root file system."""
    for path, (content, mode) in FILES.items():
        target = root / path.lstrip("/")
        if on:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)
        else:
            target.unlink(missing_ok=True)
    if not on:
        cuda = root / "usr/local/cuda"
        if cuda.is_dir() and not any(cuda.iterdir()):
            cuda.rmdir()

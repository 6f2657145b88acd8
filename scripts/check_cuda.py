#!/usr/bin/env python3
"""Compile whisper-server with ggml-cuda for a Thor (arch 110) with this machine's nvcc.

The flags are the ones the ggml_build role passes on a Thor (the same filter, the role's
own defaults), plus only what this machine needs because it has no GPU driver and no
cuBLAS: -DGGML_CUDA_NO_VMM=ON (no libcuda to link) and cuBLAS from the nvidia-cublas
13.0 wheel. Proves the Thor build compiles and links; the binary cannot run here.

    python scripts/check_cuda.py [--jobs N]        (make check-cuda)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from thorfleet.lab import SOURCES, Lab

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "filter_plugins"))
from ggml import ggml_cmake_flags  # noqa: E402

CUDA_HOME = Path("/usr/local/cuda")
THOR_GPU = {"name": "NVIDIA Thor", "compute_capability": "11.0"}
CUBLAS = "nvidia-cublas==13.0.*"


def step(argv: list[str], env: dict, log: Path) -> None:
    with open(log, "a") as out:
        if subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT).returncode:
            tail = log.read_text().splitlines()[-40:]
            sys.exit(f"{' '.join(argv[:3])} ... failed; last lines of {log}:\n" + "\n".join(tail))


def cublas(cache: Path) -> Path:
    """cuBLAS 13 headers and libraries from the PyPI wheel; returns its cu13 directory."""
    target = cache / "cublas-13.0"
    home = target / "nvidia" / "cu13"
    if not (home / "include" / "cublas_v2.h").exists():
        print(f"installing {CUBLAS} (about 420 MB) into {target}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
                        "--no-deps", CUBLAS], check=True)
    for name in ("libcublas", "libcublasLt"):
        link = home / "lib" / f"{name}.so"
        if not link.exists():
            link.symlink_to(f"{name}.so.13")
    return home


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()

    nvcc = CUDA_HOME / "bin" / "nvcc"
    if not nvcc.exists():
        sys.exit(f"no {nvcc}: this check needs the CUDA 13 toolkit")
    release = re.search(r"release (\d+\.\d+)", subprocess.check_output([str(nvcc), "--version"],
                                                                       text=True)).group(1)
    if int(release.split(".")[0]) < 13:
        sys.exit(f"nvcc {release} is older than 13, which Thor's arch 110 needs")

    lab = Lab(ROOT)
    home = cublas(lab.cache)
    lib = home / "lib"
    defaults = yaml.safe_load((ROOT / "roles/ggml_build/defaults/main.yml").read_text())
    flags = ggml_cmake_flags(THOR_GPU, defaults["ggml_build_whisper_cpp_cmake_flags"],
                             ["-DGGML_CUDA_NO_VMM=ON",
                              f"-DCUDA_cublas_LIBRARY={lib}/libcublas.so",
                              f"-DCUDA_cublasLt_LIBRARY={lib}/libcublasLt.so",
                              f"-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,{lib}"],
                             str(CUDA_HOME))
    env = {**os.environ,
           "PATH": f"{CUDA_HOME}/bin:{os.environ['PATH']}",
           "CPATH": f"{home}/include",
           "LIBRARY_PATH": str(lib),
           "LD_LIBRARY_PATH": str(lib)}

    with tempfile.TemporaryDirectory(prefix="thorfleet-cuda-") as work:
        source, build, log = Path(work) / "src", Path(work) / "build", Path(work) / "build.log"
        repo = lab.cached_source("whisper.cpp")
        subprocess.run(["git", "clone", "-q", "--branch", SOURCES["whisper.cpp"].tag,
                        str(repo), str(source)], check=True)
        print("cmake flags (the role's on a Thor, then this machine's):")
        for flag in flags:
            print(f"  {flag}")
        start = time.monotonic()
        step(["cmake", "-S", str(source), "-B", str(build), *flags], env, log)
        configured = time.monotonic()
        # Verbose, so the log shows every nvcc command and the code it generated.
        step(["cmake", "--build", str(build), "--config", "Release", "-j", str(args.jobs),
              "--verbose", "--target", "whisper-server"], env, log)
        built = time.monotonic()
        if not os.access(build / "bin" / "whisper-server", os.X_OK):
            sys.exit("the build finished without bin/whisper-server")
        nvcc_lines = [line for line in log.read_text().splitlines()
                      if "nvcc" in line and " -c " in line]
        archs = sorted({a for line in nvcc_lines for a in re.findall(r"sm_\d+a?", line)})
        print(f"whisper-server with ggml-cuda: configure {configured - start:.0f} s, "
              f"build {built - configured:.0f} s ({len(nvcc_lines)} CUDA objects, "
              f"{args.jobs} jobs)")
        print(f"GPU code generated: {', '.join(archs) or 'none'}")
        if archs != ["sm_110"]:
            sys.exit("expected GPU code for sm_110 only")
    return 0


if __name__ == "__main__":
    sys.exit(main())

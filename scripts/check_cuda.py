#!/usr/bin/env python3
"""Compile an engine with ggml-cuda the way the ggml_build role does on a Thor.

The flags are the role's (the same filter, the role's own defaults) for a GPU of the
given compute capability (11.0, a Thor, by default), plus only what the machine needs:
on a machine without a GPU driver or cuBLAS (this one), -DGGML_CUDA_NO_VMM=ON (no libcuda
to link) and cuBLAS from the nvidia-cublas 13.0 wheel. There it proves the Thor build
compiles and links for arch 110; the binary cannot run.

On a machine with a GPU (--gpu), nothing is added, and --test also builds llama.cpp's
test-backend-ops and runs its matrix products on the GPU against the CPU.

    python scripts/check_cuda.py [--jobs N]              (make check-cuda: whisper.cpp, 11.0)
    python scripts/check_cuda.py --gpu --engine llama.cpp --compute-capability 9.0 \
        --source DIR --test                              (on a machine with an H100)
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

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "filter_plugins"), str(ROOT / "src")]
from ggml import cuda_architecture as gpu_arch  # noqa: E402
from ggml import ggml_cmake_flags  # noqa: E402

from thorfleet.lab import SOURCES, Lab  # noqa: E402

CUDA_HOME = Path("/usr/local/cuda")
CUBLAS = "nvidia-cublas==13.0.*"


def step(argv: list[str], env: dict, log: Path, bound: float = 7200) -> None:
    """One step of the build, its output to the log; a failure or a step still running
    after `bound` seconds (the arch-110 build takes about 40 minutes on 2 cores) ends the
    check with the log's last lines."""
    with open(log, "a") as out:
        try:
            rc = subprocess.run(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=bound).returncode
        except subprocess.TimeoutExpired:
            rc = f"still running after {bound:.0f} s"
        if rc:
            tail = log.read_text().splitlines()[-40:]
            sys.exit(f"{' '.join(argv[:3])} ... failed ({rc}); last lines of {log}:\n"
                     + "\n".join(tail))


def cublas(cache: Path) -> Path:
    """cuBLAS 13 headers and libraries from the PyPI wheel; returns its cu13 directory."""
    target = cache / "cublas-13.0"
    home = target / "nvidia" / "cu13"
    if not (home / "include" / "cublas_v2.h").exists():
        print(f"installing {CUBLAS} (about 420 MB) into {target}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(target),
                        "--no-deps", CUBLAS], check=True, timeout=1800)
    for name in ("libcublas", "libcublasLt"):
        link = home / "lib" / f"{name}.so"
        if not link.exists():
            link.symlink_to(f"{name}.so.13")
    return home


def machine_flags(gpu: bool, cache: Path) -> tuple[list[str], dict]:
    """What this machine adds to the role's flags, and the build environment."""
    env = {**os.environ, "PATH": f"{CUDA_HOME}/bin:{os.environ['PATH']}"}
    if gpu:
        return [], env
    home = cublas(cache)
    lib = home / "lib"
    env.update(CPATH=f"{home}/include", LIBRARY_PATH=str(lib), LD_LIBRARY_PATH=str(lib))
    return ["-DGGML_CUDA_NO_VMM=ON",
            f"-DCUDA_cublas_LIBRARY={lib}/libcublas.so",
            f"-DCUDA_cublasLt_LIBRARY={lib}/libcublasLt.so",
            f"-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,{lib}"], env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="whisper.cpp", choices=sorted(SOURCES))
    parser.add_argument("--compute-capability", default="11.0")
    parser.add_argument("--source", type=Path, help="a source tree (default: the lab's)")
    parser.add_argument("--gpu", action="store_true", help="this machine has a GPU and cuBLAS")
    parser.add_argument("--test", action="store_true",
                        help="llama.cpp: build test-backend-ops and run MUL_MAT on the GPU")
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()

    nvcc = CUDA_HOME / "bin" / "nvcc"
    if not nvcc.exists():
        sys.exit(f"no {nvcc}: this check needs the CUDA 13 toolkit")
    version = subprocess.check_output([str(nvcc), "--version"], text=True, timeout=60)
    release = re.search(r"release (\d+\.\d+)", version).group(1)
    if int(release.split(".")[0]) < 13:
        sys.exit(f"nvcc {release} is older than 13, which Thor's arch 110 needs")

    role = yaml.safe_load((ROOT / "roles/ggml_build/defaults/main.yml").read_text())
    prefix = f"ggml_build_{args.engine.replace('.', '_')}"
    targets = list(role[f"{prefix}_targets"])
    extra, env = machine_flags(args.gpu, Lab(ROOT).cache)
    if args.test:
        extra.append("-DLLAMA_BUILD_TESTS=ON")
        targets.append("test-backend-ops")
    gpu = {"name": "check", "compute_capability": args.compute_capability}
    flags = ggml_cmake_flags(gpu, role[f"{prefix}_cmake_flags"], extra, str(CUDA_HOME))
    arch = "sm_" + gpu_arch(args.compute_capability)

    with tempfile.TemporaryDirectory(prefix="thorfleet-cuda-") as work:
        build, log = Path(work) / "build", Path(work) / "build.log"
        source = args.source
        if source is None:
            source = Path(work) / "src"
            subprocess.run(["git", "-c", "advice.detachedHead=false", "clone", "-q",
                            "--branch", SOURCES[args.engine].tag,
                            str(Lab(ROOT).cached_source(args.engine)), str(source)], check=True,
                           timeout=600)
        print(f"nvcc {release}; cmake flags (the role's for compute capability "
              f"{args.compute_capability}, then this machine's):")
        for flag in flags:
            print(f"  {flag}")
        start = time.monotonic()
        step(["cmake", "-S", str(source), "-B", str(build), *flags], env, log)
        configured = time.monotonic()
        # Verbose, so the log shows every nvcc command and the code it generated.
        step(["cmake", "--build", str(build), "--config", "Release", "-j", str(args.jobs),
              "--verbose", "--target", *targets], env, log)
        built = time.monotonic()
        for target in targets:
            if not os.access(build / "bin" / target, os.X_OK):
                sys.exit(f"the build finished without bin/{target}")
        nvcc_lines = [line for line in log.read_text().splitlines()
                      if "nvcc" in line and " -c " in line]
        archs = sorted({a for line in nvcc_lines for a in re.findall(r"sm_\d+a?", line)})
        print(f"{', '.join(targets)} with ggml-cuda: configure {configured - start:.0f} s, "
              f"build {built - configured:.0f} s ({len(nvcc_lines)} CUDA objects, "
              f"{args.jobs} jobs)")
        print(f"GPU code generated: {', '.join(archs) or 'none'}")
        if archs != [arch]:
            sys.exit(f"expected GPU code for {arch} only")
        if args.test:
            test = subprocess.run([str(build / "bin" / "test-backend-ops"), "-o", "MUL_MAT",
                                   "-b", "CUDA0"], capture_output=True, text=True, env=env,
                                  timeout=1800)
            summary = [line for line in test.stdout.splitlines()
                       if "tests passed" in line or "Backend" in line or "FAIL" in line]
            print("test-backend-ops -o MUL_MAT -b CUDA0:\n  " + "\n  ".join(summary[-6:]))
            if test.returncode:
                sys.exit(f"test-backend-ops failed ({test.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

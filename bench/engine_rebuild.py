#!/usr/bin/env python3
"""What a ref bump costs with thorfleet's build stamp and compiler cache.

On a lab host, in one run, times the engines phase for one engine:
  (c) a clean build: no checkout, no build, an empty compiler cache;
  (a) a re-run with nothing changed;
  (b) a ref bump (a new commit touching one source file) with the cache warm;
and prints each as a ratio to (c). Boots a 1-host lab when none is up, and takes it
down again afterwards.

    python bench/engine_rebuild.py [--engine whisper.cpp] [--host thor01]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from thorfleet.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
COLD_CACHE = "/var/cache/thorfleet/ccache-bench-cold"


def play(host: str, extra: dict) -> float:
    argv = ["ansible-playbook", "site.yml", "--tags", "engines", "-l", host,
            "-e", json.dumps(extra)]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False,
                          env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}")
    return time.perf_counter() - start


def bump(lab: Lab, engine: str) -> str:
    """A new commit on the lab's git server touching one source file, tagged."""
    tag = f"bench-{int(time.time())}"
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["git", "clone", "-q", str(lab.source_repo(engine)), work], check=True)
        with open(f"{work}/ggml/src/ggml-alloc.c", "a") as source:
            source.write(f"\n// {tag}\n")
        for args in (["-c", "user.name=bench", "-c", "user.email=bench@thorfleet.invalid",
                      "commit", "-qam", tag], ["tag", tag],
                     ["push", "-q", "origin", f"refs/tags/{tag}"]):
            subprocess.run(["git", "-C", work, *args], check=True)
    return tag


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="whisper.cpp", choices=["whisper.cpp", "llama.cpp"])
    parser.add_argument("--host", default="thor01")
    args = parser.parse_args()
    version_var = f"ggml_build_{args.engine.replace('.', '_')}_version"

    lab = Lab(ROOT)
    booted = not any(h.running for h in lab.status())
    if booted:
        lab.up(1)
    try:
        engine_only = {"ggml_build_engines": [args.engine]}
        lab.ssh(args.host, f"rm -rf /opt/thorfleet/{args.engine} {COLD_CACHE}")
        times = {"clean": play(args.host, {**engine_only, "ggml_build_ccache_dir": COLD_CACHE})}
        times["no change"] = play(args.host, {**engine_only, "ggml_build_ccache_dir": COLD_CACHE})
        tag = bump(lab, args.engine)
        times["ref bump"] = play(args.host, {**engine_only, version_var: tag,
                                             "ggml_build_ccache_dir": COLD_CACHE})
        # Leave the host on its pinned ref (the kept build: a switch, no compile).
        play(args.host, engine_only)
    finally:
        lab.ssh(args.host, f"rm -rf {COLD_CACHE}")
        if booted:
            lab.down(log=lambda _msg: None)

    print(f"engines phase for {args.engine} on {args.host}, wall time:")
    for name in ("no change", "ref bump", "clean"):
        print(f"  {name:<10} {times[name]:7.1f} s   {times[name] / times['clean']:.3f} of clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())

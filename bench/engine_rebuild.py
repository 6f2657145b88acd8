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
import sys
import time
from pathlib import Path

from thorfleet import bounded
from thorfleet.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
COLD_CACHE = "/var/cache/thorfleet/ccache-bench-cold"


def play(host: str, extra: dict) -> float:
    argv = ["ansible-playbook", "site.yml", "--tags", "engines", "-l", host,
            "-e", json.dumps(extra)]
    start = time.perf_counter()
    try:
        # A clean build of llama.cpp on 2 cores takes about 5 minutes.
        proc = bounded.run(argv, 3600, cwd=ROOT, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    except bounded.Overrun as overrun:
        sys.exit(str(overrun))
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout[-3000:]}")
    return time.perf_counter() - start


def bump(lab: Lab, engine: str) -> str:
    """A new commit on the lab's git server touching one source file, tagged."""
    tag = f"bench-{int(time.time())}"
    lab.commit_to_source(engine, "ggml/src/ggml-alloc.c", f"// {tag}", tag)
    return tag


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default="whisper.cpp", choices=["whisper.cpp", "llama.cpp"])
    parser.add_argument("--host", default="thor01")
    args = parser.parse_args()
    version_var = f"ggml_build_{args.engine.replace('.', '_')}_version"

    with Lab(ROOT).borrowed() as lab:
        engine_only = {"ggml_build_engines": [args.engine], "ggml_build_ccache_dir": COLD_CACHE}
        lab.ssh(args.host, f"rm -rf /opt/thorfleet/{args.engine} {COLD_CACHE}")
        try:
            times = {"clean": play(args.host, engine_only)}
            times["no change"] = play(args.host, engine_only)
            tag = bump(lab, args.engine)
            times["ref bump"] = play(args.host, {**engine_only, version_var: tag})
            # Leave the host on its pinned ref (the kept build: a switch, no compile).
            play(args.host, engine_only)
        finally:
            lab.ssh(args.host, f"rm -rf {COLD_CACHE}")

    print(f"engines phase for {args.engine} on {args.host}, wall time:")
    for name in ("no change", "ref bump", "clean"):
        print(f"  {name:<10} {times[name]:7.1f} s   {times[name] / times['clean']:.3f} of clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())

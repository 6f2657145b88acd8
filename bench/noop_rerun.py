#!/usr/bin/env python3
"""Time a no-op re-run of site.yml on a lab host: thorfleet's settings against stock.

Both arms run the whole main job (every phase, verify included) against the same
converged host in this one run. The stock arm is ansible-core with its defaults, given
only the paths it needs to find thorfleet's roles, modules and inventory, and no other
ANSIBLE_* setting (thorfleet.stock: nothing made slower on purpose). Prints the median
wall time of each arm and their ratio. Every run has a bound: one that hangs stops the
bench with a message. Boots a 1-host lab when none is up, and takes it down again
afterwards.

    python bench/noop_rerun.py [--runs 5] [--host thor01] [--bound 900]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from thorfleet import bounded, stock
from thorfleet.lab import Lab

ROOT = Path(__file__).resolve().parents[1]


def timed_run(host: str, env: dict, bound: float, arm: str) -> float:
    start = time.perf_counter()
    try:
        proc = bounded.run(["ansible-playbook", "site.yml", "-l", host], bound, cwd=ROOT,
                           env=env)
    except bounded.Overrun as overrun:
        sys.exit(f"{arm}: {overrun}")
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or host not in proc.stdout or "changed=0" not in proc.stdout:
        sys.exit(f"{arm}: the run was not a clean no-op:\n{proc.stdout[-3000:]}"
                 f"{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--host", default="thor01")
    parser.add_argument("--bound", type=float, default=900,
                        help="seconds one run may take before the bench stops (default 900)")
    args = parser.parse_args()

    with Lab(ROOT).borrowed(), tempfile.TemporaryDirectory() as scratch:
        project = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
        arms = {"thorfleet": project,
                "stock": stock.environment(stock.write_config(ROOT, Path(scratch)))}
        # Converge first (a first converge compiles the engines), so both arms time a
        # re-run that changes nothing.
        converge = bounded.run(["ansible-playbook", "site.yml", "-l", args.host], 3600,
                               cwd=ROOT, env=project)
        if converge.returncode:
            sys.exit(f"the first converge failed:\n{converge.stdout[-3000:]}")
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.runs):  # interleaved, so load on the machine hits both arms alike
            for arm, env in arms.items():
                times[arm].append(timed_run(args.host, env, args.bound, arm))

    medians = {arm: statistics.median(values) for arm, values in times.items()}
    print(f"no-op re-run of site.yml (every phase, verify included) on {args.host}, "
          f"{args.runs} runs per arm (median):")
    for arm, values in times.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {arm:<10} {medians[arm]:6.2f} s   ({spread})")
    print(f"  speed-up   {medians['stock'] / medians['thorfleet']:6.2f}x  (stock / thorfleet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

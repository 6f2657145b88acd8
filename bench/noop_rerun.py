#!/usr/bin/env python3
"""Time a no-op re-run of site.yml on a lab host: thorfleet's settings against stock.

Both arms run the whole main job (every phase, verify included) against the same
converged host in this one run. The stock arm is ansible-core with its defaults, given
only the paths it needs to find thorfleet's roles, modules and inventory, and no other
ANSIBLE_* setting (thorfleet.stock: nothing made slower on purpose). Prints the median
wall time of each arm, their ratio, and where each arm's time went: start-up (Ansible
reading the playbooks and inventory), each phase (a play of site.yml, timed by the
callback in bench/callback_plugins, which both arms load alike) and the exit. Every run
has a bound: one that hangs stops the bench with a message. Boots a 1-host lab when none
is up, and takes it down again afterwards.

    python bench/noop_rerun.py [--runs 5] [--host thor01] [--bound 900]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from thorfleet import bounded, stock
from thorfleet.lab import Lab

ROOT = Path(__file__).resolve().parents[1]
CALLBACKS = ROOT / "bench" / "callback_plugins"


def timed_run(host: str, env: dict, bound: float, arm: str, marks: Path) -> dict[str, float]:
    """One run's wall time ("total") and its parts, in seconds."""
    env = {**env, "ANSIBLE_CALLBACK_PLUGINS": str(CALLBACKS),
           "ANSIBLE_CALLBACKS_ENABLED": "phase_times", "THORFLEET_PHASE_TIMES": str(marks)}
    marks.unlink(missing_ok=True)
    start = time.time()
    try:
        proc = bounded.run(["ansible-playbook", "site.yml", "-l", host], bound, cwd=ROOT,
                           env=env)
    except bounded.Overrun as overrun:
        sys.exit(f"{arm}: {overrun}")
    end = time.time()
    if proc.returncode != 0 or host not in proc.stdout or "changed=0" not in proc.stdout:
        sys.exit(f"{arm}: the run was not a clean no-op:\n{proc.stdout[-3000:]}"
                 f"{proc.stderr[-2000:]}")
    if not marks.exists():
        sys.exit(f"{arm}: the phase_times callback wrote nothing: is {CALLBACKS} loaded?")
    points = json.loads(marks.read_text())
    parts = {"start-up": points[0][1] - start}
    for (name, at), (_next, until) in zip(points, points[1:], strict=False):
        parts[name] = parts.get(name, 0.0) + until - at
    parts["exit"] = end - points[-1][1]
    parts["total"] = end - start
    return parts


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
        runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in arms}
        marks = Path(scratch) / "phases.json"
        for _ in range(args.runs):  # interleaved, so load on the machine hits both arms alike
            for arm, env in arms.items():
                runs[arm].append(timed_run(args.host, env, args.bound, arm, marks))

    medians = {arm: statistics.median(r["total"] for r in values)
               for arm, values in runs.items()}
    print(f"no-op re-run of site.yml (every phase, verify included) on {args.host}, "
          f"{args.runs} runs per arm (median):")
    for arm, values in runs.items():
        spread = ", ".join(f"{r['total']:.2f}" for r in values)
        print(f"  {arm:<10} {medians[arm]:6.2f} s   ({spread})")
    print(f"  speed-up   {medians['stock'] / medians['thorfleet']:6.2f}x  (stock / thorfleet)")
    print("\nwhere the time went, median seconds per part:")
    print(f"  {'part':<28} {'thorfleet':>9} {'stock':>9}")
    for part in runs["thorfleet"][0]:
        if part == "total":
            continue
        cells = [statistics.median(r.get(part, 0.0) for r in runs[arm]) for arm in arms]
        print(f"  {part:<28} {cells[0]:9.2f} {cells[1]:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

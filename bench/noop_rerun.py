#!/usr/bin/env python3
"""Time a no-op re-run of site.yml on a lab host: thorfleet's settings against stock.

Both arms run the same playbook against the same converged host in this one run. The
stock arm is ansible-core with its defaults, given only the paths it needs to find
thorfleet's roles, modules and inventory (nothing made slower on purpose). Prints the
median wall time of each arm and their ratio. Boots a 1-host lab when none is up, and
takes it down again afterwards.

    python bench/noop_rerun.py [--runs 5] [--host thor01]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from thorfleet.lab import Lab

ROOT = Path(__file__).resolve().parents[1]

STOCK_CFG = """\
[defaults]
inventory = {root}/inventory/lab
roles_path = {root}/roles
library = {root}/library
filter_plugins = {root}/filter_plugins
"""


def timed_run(host: str, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(["ansible-playbook", "site.yml", "-l", host], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or host not in proc.stdout or "changed=0" not in proc.stdout:
        sys.exit(f"the run was not a clean no-op:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--host", default="thor01")
    args = parser.parse_args()

    with Lab(ROOT).borrowed():
        base = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
        project = {**base, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
        with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as cfg:
            cfg.write(STOCK_CFG.format(root=ROOT))
        stock = {**base, "ANSIBLE_CONFIG": cfg.name}
        # Converge first, so both arms time a re-run that changes nothing.
        subprocess.run(["ansible-playbook", "site.yml", "-l", args.host], cwd=ROOT, env=project,
                       capture_output=True, check=True)
        times: dict[str, list[float]] = {"thorfleet": [], "stock": []}
        for _ in range(args.runs):  # interleaved, so load on the machine hits both arms alike
            times["thorfleet"].append(timed_run(args.host, project))
            times["stock"].append(timed_run(args.host, stock))
        os.unlink(cfg.name)

    medians = {arm: statistics.median(values) for arm, values in times.items()}
    print(f"no-op re-run of site.yml on {args.host}, {args.runs} runs per arm (median):")
    for arm, values in times.items():
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {arm:<10} {medians[arm]:6.2f} s   ({spread})")
    print(f"  speed-up   {medians['stock'] / medians['thorfleet']:6.2f}x  (stock / thorfleet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""What fetching once per fleet saves on a 4-host lab fleet converged from empty.

Every host runs one native service (whisper-server, built from whisper.cpp) and one
container service (the vLLM stand-in serving Qwen3-8B), with a compiler cache of its own
(not the lab's shared one). In one run, from empty each time (no models, no engine
build or checkout, no images, no compile or JIT caches on any host):
  (1) one host converges alone: what it fetches is one copy of the artefacts;
  (2) the four converge, each fetching for itself (the default);
  (3) the four converge with thorfleet_fleet_fetch, thor01 as the canary and thor02 as
      the site cache (the inventory group thorfleet_site_cache).
For (2) and (3) it prints the upstream bytes, hub by hub, as a ratio to (1) (the goal
is 1.00: each artefact crosses the uplink once), the compiler runs on thor02 to thor04
(ccache's count of the compilations it was asked for; goal 0) and the wall time of the
converge. Upstream bytes are counted by the kernel (iptables counters on the bytes the
lab's hubs, registry and git server send to the hosts), not by thorfleet. Needs root;
boots a 4-host lab when none is up and takes it down again afterwards; a lab already up
gets its hosts' services back as the inventory has them.

    python bench/fleet_fetch.py [--bound 3600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from thorfleet import bounded
from thorfleet.lab import Lab
from thorfleet.lab.config import BRIDGE, FROM_EMPTY, FROM_EMPTY_CCACHE, FROM_EMPTY_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ["thor01", "thor02", "thor03", "thor04"]
# Every host runs whisper-server and the vLLM stand-in, with a compiler cache of its own.
CCACHE, SETTINGS, EMPTY = FROM_EMPTY_CCACHE, FROM_EMPTY_SETTINGS, FROM_EMPTY
# The lab's upstreams (src/thorfleet/lab/config.py) by the port they send from.
UPSTREAMS = {"Hugging Face mirror": 8090, "ModelScope": 8091, "registry": 5000,
             "git server": 9418}
CHAIN = "THORFLEET-BENCH"
# The fleet arm's site cache: thor02, in an inventory source of its own.
SITE_CACHE = "---\nthorfleet_site_cache:\n  hosts:\n    thor02: {}\n"


def iptables(*args: str) -> str:
    proc = bounded.run(["iptables", "-w", *args], 60)
    if proc.returncode:
        sys.exit(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def count_upstreams() -> None:
    """A chain that counts, per upstream, the bytes it sends to the lab's hosts."""
    if bounded.run(["iptables", "-w", "-n", "-L", CHAIN], 60).returncode:
        iptables("-N", CHAIN)
    iptables("-F", CHAIN)
    for port in UPSTREAMS.values():
        iptables("-A", CHAIN, "-p", "tcp", "--sport", str(port), "-j", "RETURN")
    rule = ["OUTPUT", "-o", BRIDGE, "-j", CHAIN]
    if bounded.run(["iptables", "-w", "-C", *rule], 60).returncode:
        iptables("-I", *rule)


def stop_counting() -> None:
    bounded.run(["iptables", "-w", "-D", "OUTPUT", "-o", BRIDGE, "-j", CHAIN], 60)
    bounded.run(["iptables", "-w", "-F", CHAIN], 60)
    bounded.run(["iptables", "-w", "-X", CHAIN], 60)


def upstream_bytes() -> dict[str, int]:
    """Bytes each upstream sent since the last call (the counters are zeroed)."""
    counted = {}
    for line in iptables("-n", "-v", "-x", "-Z", "-L", CHAIN).splitlines():
        fields = line.split()
        if fields and fields[-1].startswith("spt:"):  # a rule's line: pkts bytes ...
            port = int(fields[-1].removeprefix("spt:"))
            counted[next(n for n, p in UPSTREAMS.items() if p == port)] = int(fields[1])
    return counted


def converge(hosts: list[str], extra: dict, bound: float, inventories: tuple = ()) -> float:
    argv = ["ansible-playbook", *inventories, "site.yml", "-l", ",".join(hosts),
            "-e", json.dumps(extra)]
    start = time.perf_counter()
    try:
        proc = bounded.run(argv, bound, cwd=ROOT, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    except bounded.Overrun as overrun:
        sys.exit(str(overrun))
    if proc.returncode:
        sys.exit(f"{' '.join(argv)} failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def arm(lab: Lab, hosts: list[str], extra: dict, bound: float, inventories: tuple = ()) -> dict:
    for host in HOSTS:
        lab.ssh(host, EMPTY)
    upstream_bytes()  # zero
    seconds = converge(hosts, extra, bound, inventories)
    return {"bytes": upstream_bytes(), "seconds": seconds,
            "compiles": {host: lab.compilations(host, CCACHE) for host in hosts}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound", type=float, default=3600,
                        help="seconds one converge may take (default 3600)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("fleet_fetch.py counts the upstreams' bytes with iptables: run it as root")

    with Lab(ROOT).borrowed(hosts=len(HOSTS)) as lab:
        running = [h.name for h in lab.status() if h.running]
        if not set(HOSTS) <= set(running):
            sys.exit(f"the lab runs {', '.join(running)}: this bench needs {', '.join(HOSTS)} "
                     f"(thorfleet lab up --hosts {len(HOSTS)})")
        count_upstreams()
        try:
            one = arm(lab, HOSTS[:1], SETTINGS, args.bound)
            each = arm(lab, HOSTS, SETTINGS, args.bound)
            with tempfile.TemporaryDirectory() as work:
                cache = Path(work) / "site-cache.yml"
                cache.write_text(SITE_CACHE)
                fleet = arm(lab, HOSTS, {**SETTINGS, "thorfleet_fleet_fetch": True,
                                         "thorfleet_rollout_canary": "thor01"}, args.bound,
                            ("-i", "inventory/lab", "-i", str(cache)))
        finally:
            stop_counting()
            # The hosts' own services back (the lab's inventory), from empty.
            for host in HOSTS:
                lab.ssh(host, EMPTY, check=False)
            restored = bounded.run(["ansible-playbook", "site.yml", "-l", ",".join(HOSTS)],
                                   args.bound, cwd=ROOT)
            if restored.returncode:
                print("the lab's hosts were not converged back; "
                      "run: ansible-playbook site.yml", file=sys.stderr)

    artefacts = sum(one["bytes"].values())
    print(f"{len(HOSTS)}-host lab fleet converged from empty; one copy of its artefacts "
          f"(what thor01 fetched alone): {artefacts / 1e6:.1f} MB")
    print(f"{'upstream':<22}{'one host':>12}{'each host':>12}{'fleet':>9}")
    for name in UPSTREAMS:
        base = one["bytes"].get(name, 0)
        if not base:
            continue
        print(f"{name:<22}{base / 1e6:>9.1f} MB{each['bytes'][name] / base:>11.2f}x"
              f"{fleet['bytes'][name] / base:>8.2f}x")
    print(f"{'all':<22}{artefacts / 1e6:>9.1f} MB"
          f"{sum(each['bytes'].values()) / artefacts:>11.2f}x"
          f"{sum(fleet['bytes'].values()) / artefacts:>8.2f}x")
    others = HOSTS[1:]
    print(f"compiler runs on thor02-04 (thor01 alone made {one['compiles']['thor01']}): "
          f"each host {sum(each['compiles'][h] for h in others)}, "
          f"fleet {sum(fleet['compiles'][h] for h in others)}")
    print(f"wall time of the converge: one host {one['seconds']:.0f} s, each host "
          f"{each['seconds']:.0f} s, fleet {fleet['seconds']:.0f} s "
          f"({fleet['seconds'] / each['seconds']:.2f} of each host)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

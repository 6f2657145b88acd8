#!/usr/bin/python3
"""thorfleet's Jetson exporter: what only a Jetson knows, for Prometheus.

DCGM does not support Jetson and `nvidia-smi` reads `[N/A]` for memory on Thor's unified
memory, so the numbers come from `tegrastats`, which this exporter runs as a child
process (`tegrastats --interval MS`) and whose latest line it serves at /metrics:
unified memory used and total, swap, each CPU core's load, the GPU's load, every power
rail (current and average, in watts), every temperature, and the power mode's name
(`nvpmodel -q`), with the host's memory budget (thorfleet_memory_budget, for the
monitoring role's alert). JetPack 7 (Thor) renamed the rails (VDD_GPU, VDD_CPU_SOC_MSS,
VIN_SYS_5V0, VIN) and dropped GR3D_FREQ (its GPU load reads `GPU N%`): rails and
temperatures are read by their shape (`NAME <n>mW/<n>mW`, `name@<t>C`), not from a list
of names, so a renamed one appears under its new name; the GPU's load is read from
either form. On a host without tegrastats, jetson_tegrastats_up is 0 and nothing else
is served.

Standard library only: it runs with the host's python3.

    thorfleet_jetson_exporter.py --listen 10.0.0.11:9102 [--interval 2000] [--memory-budget 0.9]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MB = 1024 * 1024
RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
CPU = re.compile(r"\bCPU \[([^\]]*)\]")
# JetPack 7 (Thor): `GPU 3%` (or with its frequency); JetPack 6 and before: GR3D_FREQ.
GPU = re.compile(r"\b(?:GPU|GR3D_FREQ) (\d+)%")
RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW/(\d+)mW")
TEMPERATURE = re.compile(r"\b([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
MODE = re.compile(r"NV Power Mode:\s*(\S+)")
LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")  # what a label's value may be here


def parse(line: str) -> dict:
    """One tegrastats line as {memory_used, memory_total, swap_used, swap_total (bytes),
    cpu: {core: load 0-1}, gpu: load 0-1, rails: {name: (watts now, watts average)},
    temperatures: {sensor: celsius}}; what the line lacks is left out."""
    found: dict = {"cpu": {}, "rails": {}, "temperatures": {}}
    if ram := RAM.search(line):
        found["memory_used"], found["memory_total"] = (int(v) * MB for v in ram.groups())
    if swap := SWAP.search(line):
        found["swap_used"], found["swap_total"] = (int(v) * MB for v in swap.groups())
    if cpu := CPU.search(line):
        for core, entry in enumerate(cpu.group(1).split(",")):
            load = re.match(r"\s*(\d+)%", entry)
            if load:  # a core that is off says "off"
                found["cpu"][str(core)] = int(load.group(1)) / 100
    if gpu := GPU.search(line):
        found["gpu"] = int(gpu.group(1)) / 100
    for name, now, average in RAIL.findall(line):
        found["rails"][name] = (int(now) / 1000, int(average) / 1000)
    for name, celsius in TEMPERATURE.findall(line):
        if LABEL_VALUE.match(name):
            found["temperatures"][name] = float(celsius)
    return found


def text(reading: dict | None, mode: str | None, budget: float | None = None) -> str:
    """Prometheus' text format of a reading (None: tegrastats has said nothing lately),
    the power mode, and the host's memory budget (thorfleet_memory_budget)."""
    out: list[str] = []

    def family(name: str, kind: str, what: str, samples: list[tuple[str, float]]) -> None:
        out.extend([f"# HELP {name} {what}", f"# TYPE {name} {kind}"])
        out.extend(f"{name}{labels} {value}" for labels, value in samples)

    family("jetson_tegrastats_up", "gauge",
           "1 while tegrastats reports, 0 without it or when it has gone quiet",
           [("", 1 if reading else 0)])
    if budget is not None:
        family("thorfleet_memory_budget_ratio", "gauge",
               "The share of memory this host's services may take (thorfleet_memory_budget)",
               [("", budget)])
    if mode and LABEL_VALUE.match(mode):
        family("jetson_power_mode_info", "gauge", "The power mode (nvpmodel -q), by name",
               [(f'{{mode="{mode}"}}', 1)])
    if not reading:
        return "\n".join(out) + "\n"
    for key, name, what in (
            ("memory_used", "jetson_memory_used_bytes", "Unified memory in use (tegrastats RAM)"),
            ("memory_total", "jetson_memory_total_bytes", "Unified memory (tegrastats RAM)"),
            ("swap_used", "jetson_swap_used_bytes", "Swap in use"),
            ("swap_total", "jetson_swap_total_bytes", "Swap")):
        if key in reading:
            family(name, "gauge", what, [("", reading[key])])
    if "gpu" in reading:
        family("jetson_gpu_load_ratio", "gauge", "The GPU's load, 0 to 1", [("", reading["gpu"])])
    if reading["cpu"]:
        family("jetson_cpu_load_ratio", "gauge", "Each CPU core's load, 0 to 1",
               [(f'{{core="{core}"}}', load) for core, load in reading["cpu"].items()])
    if reading["rails"]:
        family("jetson_rail_power_watts", "gauge", "Each power rail's power now",
               [(f'{{rail="{rail}"}}', now) for rail, (now, _) in reading["rails"].items()])
        family("jetson_rail_power_average_watts", "gauge",
               "Each power rail's average power since tegrastats started",
               [(f'{{rail="{rail}"}}', avg) for rail, (_, avg) in reading["rails"].items()])
    if reading["temperatures"]:
        family("jetson_temperature_celsius", "gauge", "Each temperature tegrastats reports",
               [(f'{{sensor="{sensor}"}}', celsius)
                for sensor, celsius in reading["temperatures"].items()])
    return "\n".join(out) + "\n"


class Tegrastats:
    """tegrastats running as a child, its latest line parsed; restarted should it end."""

    def __init__(self, command: str, interval_ms: int):
        self.command, self.interval = command, interval_ms
        self.latest: dict | None = None
        self.at = 0.0
        self._lock = threading.Lock()

    def run(self) -> None:
        while True:
            path = shutil.which(self.command)
            if path is None:
                time.sleep(30)
                continue
            with subprocess.Popen([path, "--interval", str(self.interval)],
                                  stdout=subprocess.PIPE, text=True) as child:
                for line in child.stdout:
                    reading = parse(line)
                    with self._lock:
                        self.latest, self.at = reading, time.monotonic()
            time.sleep(self.interval / 1000)

    def reading(self) -> dict | None:
        """The latest reading, if it is no older than three intervals."""
        with self._lock:
            fresh = time.monotonic() - self.at < 3 * self.interval / 1000
            return self.latest if fresh else None


class PowerMode:
    """nvpmodel's answer, asked again at most once a minute (every 10 s while it gave
    none)."""

    def __init__(self):
        self.mode: str | None = None
        self.at = -60.0

    def get(self) -> str | None:
        if time.monotonic() - self.at >= (60 if self.mode else 10):
            self.at = time.monotonic()
            nvpmodel = shutil.which("nvpmodel", path="/usr/sbin:/usr/bin:/sbin:/bin")
            if nvpmodel:
                said = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True,
                                      timeout=10, check=False).stdout
                found = MODE.search(said)
                self.mode = found.group(1) if found else None
        return self.mode


def handler(stats: Tegrastats, mode: PowerMode, budget: float | None = None):
    class Handler(BaseHTTPRequestHandler):
        server_version = "thorfleet-jetson-exporter"

        def do_GET(self):  # noqa: N802 (the standard library's name)
            if self.path != "/metrics":
                self.send_error(HTTPStatus.NOT_FOUND)
                return
            data = text(stats.reading(), mode.get(), budget).encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):  # scrapes every few seconds: not logged
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="address:port")
    parser.add_argument("--interval", type=int, default=2000, help="tegrastats' interval, ms")
    parser.add_argument("--tegrastats", default="tegrastats")
    parser.add_argument("--memory-budget", type=float, help="thorfleet_memory_budget")
    args = parser.parse_args(argv)
    address, _, port = args.listen.rpartition(":")
    stats = Tegrastats(args.tegrastats, args.interval)
    threading.Thread(target=stats.run, daemon=True).start()
    server = ThreadingHTTPServer((address.strip("[]"), int(port)), handler(stats, PowerMode(),
                                                                   args.memory_budget))
    print(f"serving /metrics on {args.listen}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

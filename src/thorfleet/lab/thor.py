"""Make a lab host look like a Jetson Thor to preflight, and back.

A lab host has no GPU. To run preflight's Thor branch for real, the host gets the
files and commands through which a Thor describes itself, with a Thor's answers
(captured from public logs of real AGX Thor developer kits, see DESIGN.md):
``/etc/nv_tegra_release``, an ``nvidia-smi``, CUDA's ``version.json``, an ``nvidia``
runtime in Docker, ``nvpmodel`` and ``jetson_clocks``, and a ``tegrastats`` that prints
JetPack 7's lines. These are lab stand-ins: each file says so, and the ``nvidia``
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

# Power: nvpmodel.conf in the shape of a Thor's (named modes, each with the CPU cores it
# keeps online), with an nvpmodel and a jetson_clocks that answer as the real ones do and
# record what they were asked in POWER_LOG. Like the real nvpmodel, the stand-in wants a
# reboot for a mode that changes which cores are online, and asks for it on its standard
# input. The mode is kept in nvpmodel's status file; the clocks are in /run, so they are
# back to the mode's defaults after a reboot, as on a Thor.
POWER_LOG = "/var/log/thorfleet-lab/power.log"
POWER_STATUS = "/var/lib/nvpmodel/status"
CLOCKS_STATE = "/run/thorfleet-lab/jetson_clocks"
CORES = 14
POWER_MODES = ((0, "MAXN", CORES), (1, "120W", CORES), (2, "90W", 12), (3, "70W", 10))


def nvpmodel_conf() -> str:
    lines = [f"# {STANDIN}", "# Power modes in the shape of a Jetson AGX Thor's.", "",
             "< PARAM TYPE=FILE NAME=CPU_ONLINE >"]
    lines += [f"CORE_{n} /sys/devices/system/cpu/cpu{n}/online" for n in range(CORES)]
    for mode_id, name, online in POWER_MODES:
        lines += ["", f"< POWER_MODEL ID={mode_id} NAME={name} >"]
        lines += [f"CPU_ONLINE CORE_{n} {int(n < online)}" for n in range(CORES)]
    lines += ["", "< PM_CONFIG DEFAULT=0 >", ""]
    return "\n".join(lines)


NVPMODEL = f'''#!/usr/bin/python3
# {STANDIN}
import os, re, subprocess, sys

CONF, STATUS, LOG = "/etc/nvpmodel.conf", "{POWER_STATUS}", "{POWER_LOG}"


def record(*words):
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    with open(LOG, "a") as log:
        log.write(" ".join(words) + "\\n")


def modes():
    found, current = {{}}, None
    for line in open(CONF):
        header = re.match(r"<\\s*POWER_MODEL\\s+ID=(\\d+)\\s+NAME=(\\S+?)\\s*>", line)
        if header:
            current = int(header.group(1))
            found[current] = {{"name": header.group(2), "online": set()}}
        elif current is not None and re.match(r"CPU_ONLINE\\s+\\S+\\s+1", line):
            found[current]["online"].add(line.split()[1])
    default = re.search(r"<\\s*PM_CONFIG\\s+DEFAULT=(\\d+)", open(CONF).read())
    return found, int(default.group(1))


found, default = modes()
try:
    mode = int(open(STATUS).read().strip().removeprefix("pmode:"))
except (OSError, ValueError):
    mode = default
args = sys.argv[1:]
record("nvpmodel", *args)
if args[:1] == ["-q"]:
    print(f"NV Power Mode: {{found[mode]['name']}}")
    print(mode)
    sys.exit(0)
if len(args) != 2 or args[0] != "-m":
    print("usage: nvpmodel [-q] [-m <mode id>]", file=sys.stderr)
    sys.exit(1)
try:
    wanted = int(args[1])
    found[wanted]
except (ValueError, KeyError):
    print(f"NVPM ERROR: Invalid power mode ID: {{args[1]}}", file=sys.stderr)
    sys.exit(1)
if found[wanted]["online"] != found[mode]["online"]:
    print(f"NVPM WARN: Reboot required for changing to this power mode: {{wanted}}")
    print("NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip()
    if answer not in ("YES", "yes"):
        print("NVPM ERROR: optMask is 1, no request for power mode")
        sys.exit(0)
    os.makedirs(os.path.dirname(STATUS), exist_ok=True)
    open(STATUS, "w").write(f"pmode:{{wanted:04d}}\\n")
    record("reboot", "for", "mode", str(wanted))
    subprocess.run(["systemctl", "reboot"], check=False)
    sys.exit(0)
os.makedirs(os.path.dirname(STATUS), exist_ok=True)
open(STATUS, "w").write(f"pmode:{{wanted:04d}}\\n")
'''

JETSON_CLOCKS = f'''#!/usr/bin/python3
# {STANDIN}
import os, subprocess, sys

STATE, LOG = "{CLOCKS_STATE}", "{POWER_LOG}"
args = sys.argv[1:]
os.makedirs(os.path.dirname(LOG), exist_ok=True)
with open(LOG, "a") as log:
    log.write(" ".join(["jetson_clocks", *args]) + "\\n")
if args[:1] == ["--show"]:
    print(subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True).stdout, end="")
    print("clocks: " + ("maximum" if os.path.exists(STATE) else "the power mode's defaults"))
elif args[:1] == ["--store"]:
    path = args[1] if len(args) > 1 else os.path.expanduser("~/l4t_dfs.conf")
    open(path, "w").write("stand-in clock settings\\n")
elif args[:1] == ["--restore"]:
    path = args[1] if len(args) > 1 else os.path.expanduser("~/l4t_dfs.conf")
    if not os.path.exists(path):
        print(f"Error: file {{path}} does not exist", file=sys.stderr)
        sys.exit(1)
    if os.path.exists(STATE):
        os.unlink(STATE)
elif not args:
    os.makedirs(os.path.dirname(STATE), exist_ok=True)
    open(STATE, "w").write("maximum\\n")
else:
    print("usage: jetson_clocks [--show] [--store [file]] [--restore [file]]", file=sys.stderr)
    sys.exit(1)
'''

# tegrastats as JetPack 7 prints it on a Thor (rails VDD_GPU, VDD_CPU_SOC_MSS,
# VIN_SYS_5V0 and VIN; the GPU's load as `GPU N%`, GR3D_FREQ gone; the thermal zones
# cpu, soc012, soc345 and tj), a line every --interval milliseconds. Memory is the lab
# host's own (/proc/meminfo); a test sets any rail's milliwatts, and the GPU's load, in
# TEGRASTATS_READINGS ({"VDD_GPU": 12345, "GPU": 40}).
TEGRASTATS_READINGS = "/etc/thorfleet-lab/tegrastats.json"
TEGRASTATS = f'''#!/usr/bin/python3
# {STANDIN}
import json, sys, time

args = sys.argv[1:]
interval = int(args[args.index("--interval") + 1]) if "--interval" in args else 1000
RAILS = {{"VDD_GPU": 2380, "VDD_CPU_SOC_MSS": 6510, "VIN_SYS_5V0": 6520, "VIN": 23100}}
while True:
    try:
        readings = json.load(open("{TEGRASTATS_READINGS}"))
    except (OSError, ValueError):
        readings = {{}}
    info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    total = int(info["MemTotal"].split()[0]) // 1024
    used = total - int(info["MemAvailable"].split()[0]) // 1024
    rails = " ".join(f"{{name}} {{mw}}mW/{{mw}}mW"
                     for name, mw in {{**RAILS, **{{k: v for k, v in readings.items()
                                                     if k in RAILS}}}}.items())
    cpus = ",".join(["1%@972"] * {CORES})
    print(time.strftime("%m-%d-%Y %H:%M:%S"), f"RAM {{used}}/{{total}}MB (lfb 8x4MB)",
          "SWAP 0/0MB (cached 0MB)", f"CPU [{{cpus}}]", "EMC_FREQ 0%",
          f"GPU {{readings.get('GPU', 0)}}%", "cpu@47.9C soc012@48.2C soc345@47.1C tj@48.2C",
          rails, flush=True)
    time.sleep(interval / 1000)
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
    "/etc/nvpmodel.conf": (nvpmodel_conf(), 0o644),
    "/usr/sbin/nvpmodel": (NVPMODEL, 0o755),
    "/usr/bin/jetson_clocks": (JETSON_CLOCKS, 0o755),
    "/usr/bin/tegrastats": (TEGRASTATS, 0o755),
    MARKER: (STANDIN + "\n", 0o644),
}
# What the stand-ins leave behind, removed with them.
STATE = (POWER_LOG, POWER_STATUS, TEGRASTATS_READINGS)


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
        for path in STATE:
            (root / path.lstrip("/")).unlink(missing_ok=True)
        cuda = root / "usr/local/cuda"
        if cuda.is_dir() and not any(cuda.iterdir()):
            cuda.rmdir()

"""``thorfleet status``: per host and service, the unit's state, whether it answers, its
port, the requests it is serving and the tokens per second it made over the last minute
(from the engine's /metrics and the fleet's Prometheus), what it runs (image digest or
engine build, model and commit), and per host the memory in use against its budget.

A quick read over SSH with fabric, one command per host: the hosts and how to reach them
come from the inventory (``ansible-inventory``), what runs from thorfleet's own units
(their header names the image or build and the model's commit, written by the services
phase), health from each unit's own /health probe address.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import fabric

from thorfleet.runs import use_installed_ansible
from thorfleet.tables import text_table

# The unit that keeps jetson_clocks on (thorfleet_jetson_clocks, library/jetson_power.py).
CLOCKS_UNIT = "thorfleet-jetson-clocks.service"

# Runs on each host with its python3: the host's thorfleet units, and its power mode
# (nvpmodel -q) and clocks where it is a Jetson, as JSON.
REMOTE = r'''
import glob, json, re, shutil, subprocess, urllib.request
services = []
for path in sorted(glob.glob("/etc/systemd/system/thorfleet-*.service")):
    unit = path.rsplit("/", 1)[1]
    text = open(path).read()
    if not re.search(r"^# thorfleet service ", text, re.M):
        continue  # thorfleet's units that are not services (jetson_clocks', exporters)
    shown = subprocess.run(["systemctl", "show", "-p", "ActiveState", "-p", "SubState", unit],
                           capture_output=True, text=True).stdout
    state = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    runs = re.search(r"^#   (?:image|build) (\S+)", text, re.M)
    model = re.search(r"^#   model (\S+) at (\S+)", text, re.M)
    probe = re.search(r"(http://\S+?:(\d+)/health)", text)
    health = "-"
    if probe:
        try:
            with urllib.request.urlopen(probe.group(1), timeout=3) as response:
                health = "ok" if response.status == 200 else str(response.status)
        except Exception as error:
            health = getattr(error, "code", None) and str(error.code) or "down"
    running = None
    if probe and health == "ok":
        # The engine's own gauge of requests in flight, where it serves metrics.
        try:
            url = probe.group(1)[:-len("/health")] + "/metrics"
            with urllib.request.urlopen(url, timeout=3) as response:
                said = response.read().decode(errors="replace")
            found = re.findall(r"^(?:vllm:num_requests_running|sglang:num_running_reqs|"
                               r"llamacpp:requests_processing)(?:\{[^}]*\})? (\S+)$", said, re.M)
            running = sum(float(value) for value in found) if found else None
        except Exception:
            running = None
    services.append({
        "service": unit[len("thorfleet-"):-len(".service")], "unit": unit,
        "running": running,
        "state": state.get("ActiveState", "unknown"), "substate": state.get("SubState", ""),
        "health": health, "port": int(probe.group(2)) if probe else None,
        "runs": runs.group(1) if runs else "", "model": model.group(1) if model else "",
        "commit": model.group(2) if model else ""})
power = None
nvpmodel = shutil.which("nvpmodel", path="/usr/sbin:/usr/bin:/sbin:/bin")
if nvpmodel:
    said = subprocess.run([nvpmodel, "-q"], capture_output=True, text=True).stdout
    mode = re.search(r"NV Power Mode:\s*(\S+)", said)
    clocks = subprocess.run(["systemctl", "is-active", "--quiet", CLOCKS_UNIT]).returncode
    power = {"mode": mode.group(1) if mode else "unknown", "clocks": clocks == 0}
info = dict(line.split(":", 1) for line in open("/proc/meminfo") if ":" in line)
kib = lambda key: int(info[key].split()[0]) * 1024
memory = {"total": kib("MemTotal"), "used": kib("MemTotal") - kib("MemAvailable")}
print(json.dumps({"services": sorted(services, key=lambda s: s["service"]), "power": power,
                  "memory": memory}))
'''.replace("CLOCKS_UNIT", repr(CLOCKS_UNIT))


def inventory_hosts(project: Path, inventory: str | list[str] | None, limit: str | None,
                    group: str = "thor") -> dict:
    """{host: its variables} of `group`, as Ansible resolves them (`inventory`: one
    source or several, as ansible-playbook's repeated -i)."""
    use_installed_ansible()
    argv = ["ansible-inventory", "--list"]
    for source in [inventory] if isinstance(inventory, str) else inventory or []:
        argv += ["-i", source]
    if limit:
        argv += ["--limit", limit]
    listing = json.loads(subprocess.run(argv, cwd=project, capture_output=True, text=True,
                                        check=True).stdout)
    names = listing.get(group, {}).get("hosts", [])
    hostvars = listing.get("_meta", {}).get("hostvars", {})
    return {name: hostvars.get(name, {}) for name in names}


# Runs on the monitoring host (role monitoring): its Prometheus' tokens per second per
# service over the last minute (the recording rule), as JSON {host: {service: rate}}.
RATES = r'''
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode(
    {"query": "thorfleet:generation_tokens:rate1m"})
rates = {}
with urllib.request.urlopen(url, timeout=10) as response:
    for series in json.load(response)["data"]["result"]:
        labels = series["metric"]
        rates.setdefault(labels.get("host", ""), {})[labels.get("service", "")] = \
            float(series["value"][1])
print(json.dumps(rates))
'''


def token_rates(project: Path, inventory: str | list[str] | None) -> dict | None:
    """{host: {service: tokens per second over the last minute}} from the Prometheus of
    the inventory's group thorfleet_monitor, asked on that host over SSH; None without
    one, or when it does not answer."""
    monitors = inventory_hosts(project, inventory, None, "thorfleet_monitor")
    for name, hostvars in monitors.items():
        # ansible-inventory gives values as written: a templated one is not an address.
        given = str(hostvars.get("thorfleet_fleet_address") or "")
        address = given if given and "{" not in given else hostvars.get("ansible_host", name)
        port = hostvars.get("monitoring_port", 9090)
        base = f"http://[{address}]:{port}" if ":" in str(address) else \
            f"http://{address}:{port}"
        try:
            with _connection(name, hostvars) as connection:
                result = connection.run(f"python3 -c {shlex.quote(RATES)} {shlex.quote(base)}",
                                        hide=True, warn=True, in_stream=False)
            if result.exited == 0:
                return json.loads(result.stdout)
        except Exception:  # noqa: S112 (no monitor answering is shown as "-")
            continue
    return None


def _connection(name: str, hostvars: dict) -> fabric.Connection:
    connect = {}
    if hostvars.get("ansible_ssh_private_key_file"):
        connect["key_filename"] = hostvars["ansible_ssh_private_key_file"]
    connection = fabric.Connection(hostvars.get("ansible_host", name),
                                   user=hostvars.get("ansible_user"),
                                   port=hostvars.get("ansible_port"), connect_kwargs=connect,
                                   connect_timeout=10)
    # The inventory's own known_hosts (the lab pins its hosts' keys there).
    for option in shlex.split(hostvars.get("ansible_ssh_common_args", "")):
        if option.startswith("UserKnownHostsFile="):
            connection.client.load_host_keys(option.split("=", 1)[1])
    return connection


def host_status(name: str, hostvars: dict) -> dict:
    try:
        with _connection(name, hostvars) as connection:
            # On the command line, not on standard input: invoke sends a stream's end
            # only when it polls again, and `python3 -` waits for it (seconds a host).
            result = connection.run(f"python3 -c {shlex.quote(REMOTE)}", hide=True,
                                    warn=True, in_stream=False)
    except Exception as error:  # an unreachable host is a row of the report, not a crash
        return {"host": name, "reachable": False, "error": str(error), "services": []}
    if result.exited != 0:
        return {"host": name, "reachable": True, "error": result.stderr.strip(),
                "services": []}
    return {"host": name, "reachable": True, **json.loads(result.stdout)}


def fleet_status(project: Path, inventory: str | list[str] | None = None,
                 limit: str | None = None) -> list[dict]:
    """Each host's report; each service with the tokens per second its engine made over
    the last minute where the fleet has a monitor (None where not known), and each host
    with its memory budget (thorfleet_memory_budget, default 0.9) in bytes."""
    hosts = []
    for name, hostvars in inventory_hosts(project, inventory, limit).items():
        host = host_status(name, hostvars)
        if host.get("memory"):
            share = float(hostvars.get("thorfleet_memory_budget", 0.9))
            host["memory"]["budget"] = int(host["memory"]["total"] * share)
        hosts.append(host)
    rates = token_rates(project, inventory) if hosts else None
    for host in hosts:
        for service in host["services"]:
            service["tokens_per_second"] = (rates or {}).get(host["host"], {}).get(
                service["service"])
    return hosts


def _short(runs: str) -> str:
    """nvidia/vllm@sha256:458da3c1270c from a full image reference; builds as they are."""
    name, _, digest = runs.partition("@sha256:")
    if not digest:
        return runs
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first):  # a registry's address
        name = rest
    return f"{name}@sha256:{digest[:12]}"


def healthy(hosts: list[dict]) -> bool:
    """Every host reached and every service active and answering."""
    return all(host["reachable"] and not host.get("error")
               and all(s["state"] == "active" and s["health"] == "ok" for s in host["services"])
               for host in hosts)


def power(host: dict) -> str:
    """A Jetson's power mode, and `+clocks` while thorfleet keeps jetson_clocks on; `-`
    for a host without nvpmodel."""
    state = host.get("power")
    if not state:
        return "-"
    return state["mode"] + ("+clocks" if state["clocks"] else "")


def memory(host: dict) -> str:
    """Memory in use against the host's budget, in GiB: `23.1/101.6G`."""
    state = host.get("memory")
    if not state:
        return "-"
    gib = 1024 ** 3
    return f"{state['used'] / gib:.1f}/{state.get('budget', state['total']) / gib:.1f}G"


def _number(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if value != int(value) else str(int(value))


def table(hosts: list[dict]) -> str:
    rows = [("host", "service", "state", "health", "port", "running", "tok/s", "runs",
             "model", "power", "memory")]
    for host in hosts:
        if not host["reachable"] or host.get("error"):
            rows.append((host["host"], "-", "unreachable" if not host["reachable"] else "error",
                         "-", "-", "-", "-", host.get("error", "")[:60], "-", "-", "-"))
            continue
        if not host["services"]:
            rows.append((host["host"], "-", "no services", "-", "-", "-", "-", "-", "-",
                         power(host), memory(host)))
        for service in host["services"]:
            model = service["model"].split("/", 2)[-1] if service["model"] else ""
            rows.append((host["host"], service["service"], service["state"], service["health"],
                         str(service["port"] or "-"), _number(service.get("running")),
                         _number(service.get("tokens_per_second")), _short(service["runs"]),
                         f"{model}@{service['commit'][:12]}" if model else "-", power(host),
                         memory(host)))
    return text_table(rows)

"""Filters for the fleet's metrics: the Prometheus targets each host offers (its node
exporter, its Jetson exporter and each service whose engine serves /metrics), as
file_sd target groups with the labels host, service, recipe, engine and model, and the
checks preflight runs on the metrics settings."""

from __future__ import annotations

import ipaddress
import re

# The scrape jobs of the monitoring role's prometheus.yml, one folder of target files
# each: <targets dir>/<job>/<host>.json.
JOBS = ("node", "jetson", "services")
WILDCARD = ("0.0.0.0", "::", "")
HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")


def _endpoint(address, port):
    """host:port as Prometheus takes it (an IPv6 address in brackets)."""
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"


def _loopback(address):
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def metrics_targets(services, host, address, node_port, jetson_port, enabled=True):
    """{job: [file_sd target groups]} of one host: its exporters (when thorfleet_metrics is
    on) and each of its services (resolved specs) whose engine serves metrics, reached at
    the service's bind address, or the host's fleet address where the service listens on
    all of them. A service bound to loopback cannot be scraped from elsewhere: left out."""
    base = {"host": host}
    found = {job: [] for job in JOBS}
    if enabled:
        found["node"].append({"targets": [_endpoint(address, node_port)], "labels": base})
        found["jetson"].append({"targets": [_endpoint(address, jetson_port)], "labels": base})
    for spec in services or []:
        if not spec.get("metrics_path"):
            continue
        bind = spec.get("bind_address") or ""
        if _loopback(bind):
            continue
        reach = address if bind in WILDCARD else bind
        found["services"].append({
            "targets": [_endpoint(reach, spec["port"])],
            "labels": {**base, "service": spec["name"], "recipe": spec["recipe"],
                       "engine": spec["engine"], "model": spec.get("model_name", ""),
                       "__metrics_path__": spec["metrics_path"]}})
    return found


def metrics_problems(enabled, address, node_port, jetson_port, services, host):
    """What is wrong with a host's metrics settings, one message per field: ports that are
    not ports, or that a service or the other exporter already takes."""
    if enabled is False or str(enabled).strip().lower() in ("false", "no", "off", "0"):
        return []
    problems, taken = [], {}
    for spec in services or []:
        taken[str(spec["port"])] = f"the port of service {spec['name']}"
    for field, port in (("thorfleet_metrics_node_port", node_port),
                        ("thorfleet_metrics_jetson_port", jetson_port)):
        if isinstance(port, bool) or not re.fullmatch(r"[0-9]{1,5}", str(port)) \
                or not 0 < int(port) <= 65535:
            problems.append(f"{host}: {field}: {str(port)[:20]!r} is not a port number")
            continue
        if str(int(port)) in taken:
            problems.append(f"{host}: {field}: {int(port)} is already {taken[str(int(port))]}")
        taken[str(int(port))] = f"{field}'s"
    if not isinstance(address, str) or not (HOST_NAME.fullmatch(address) or _is_ip(address)):
        problems.append(f"{host}: thorfleet_fleet_address: {str(address)[:80]!r} is not an IP "
                        "address or host name the exporters can listen on")
    return problems


def _is_ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def units_not_running(shown):
    """The units of a `systemctl show --property=Id,UnitFileState,ActiveState` answer that
    are not enabled or not active (a unit systemd does not know reads neither)."""
    wanted = []
    for block in (shown or "").strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("Id") and (fields.get("UnitFileState") != "enabled"
                                 or fields.get("ActiveState") != "active"):
            wanted.append(fields["Id"])
    return wanted


class FilterModule:
    def filters(self):
        return {"thorfleet_metrics_targets": metrics_targets,
                "thorfleet_listen": _endpoint,
                "thorfleet_units_not_running": units_not_running,
                "thorfleet_metrics_problems": metrics_problems}

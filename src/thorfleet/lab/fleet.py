"""The lab fleet of one project checkout: `up` tells the story of how it is built."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from thorfleet.lab import thor as lab_thor
from thorfleet.lab.config import (
    CONTAINERS_CERTS,
    LAB_NUMBER,
    LAB_NUMBER_ERROR,
    MAX_HOSTS,
    SERVICES,
    HostStatus,
    LabError,
    host_address,
    host_name,
)
from thorfleet.lab.hosts import Hosts
from thorfleet.lab.inventory import Inventory
from thorfleet.lab.machine import Machine
from thorfleet.lab.processes import Processes
from thorfleet.lab.upstreams import Upstreams
from thorfleet.tables import text_table


class Lab(Machine, Upstreams, Hosts, Inventory, Processes):
    """The lab fleet of one project checkout."""

    def __init__(self, project: Path, cache: Path | None = None):
        self.project = project
        self.state = project / ".lab"
        self.cache = cache or Path(os.environ.get("THORFLEET_LAB_CACHE", "/var/cache/thorfleet"))
        self.inventory = project / "inventory" / "lab"
        self.key = self.state / "ssh" / "id_ed25519"
        self.known_hosts = self.state / "ssh" / "known_hosts"
        if LAB_NUMBER_ERROR:
            raise LabError(LAB_NUMBER_ERROR)
        recorded = self._read(self.state / "number").strip()
        if recorded and recorded != str(LAB_NUMBER):
            raise LabError(f"this checkout's lab is lab {recorded}: set "
                           f"THORFLEET_LAB_NUMBER={recorded} for its commands (now "
                           f"{LAB_NUMBER})")

    def up(self, hosts: int, as_thor: list[str] | None = None, log=print) -> list[HostStatus]:
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, got {hosts}")
        names = [host_name(i) for i in range(1, hosts + 1)]
        unknown = sorted(set(as_thor or []) - set(names))
        if unknown:
            raise LabError(f"--as-thor names hosts this lab does not have: {', '.join(unknown)}")
        self._require_root()
        with self._locked():
            with self._cache_locked():
                self._ensure_machine_packages(log)
                base = self._ensure_rootfs(log)
                self._ensure_key()
                self._ensure_network()
                self._ensure_registry(log)
                self._ensure_images(log)
                self._ensure_sources(log)
                self._ensure_hubs(log)
            (self.state / "number").write_text(f"{LAB_NUMBER}\n")
            for index in range(hosts + 1, MAX_HOSTS + 1):
                self._stop_host(host_name(index))
            for index in range(1, hosts + 1):
                self._ensure_host(index, base, log)
            for index, name in enumerate(names, start=1):
                self._wait_for_host(name, host_address(index), log)
            for name in as_thor or []:
                self._set_as_thor(name, True)
            self._write_inventory(names)
        return self.status()

    def down(self, log=print) -> None:
        self._require_root()
        with self._locked():
            hosts = sorted(pidfile.stem for pidfile in (self.state / "run").glob("*.pid")
                           if pidfile.stem not in SERVICES)
            self._stop_hosts(hosts)
            for name in hosts:
                log(f"stopped {name}")
            self._stop_processes(list(SERVICES))
            with self._cache_locked():  # another lab may come up or go down meanwhile
                self._remove_network()
            shutil.rmtree(CONTAINERS_CERTS, ignore_errors=True)
            for directory in ("hosts", "registry", "git", "hub", "www"):
                shutil.rmtree(self.state / directory, ignore_errors=True)
            (self.state / "number").unlink(missing_ok=True)
            shutil.rmtree(self.inventory, ignore_errors=True)
        log("lab is down")

    def offline(self, log=print) -> None:
        """The lab as a site with no internet: its upstreams stopped (the hubs, the
        registry and its token service, the git server, the file mirror) and the hosts'
        NAT route out removed, until `online`."""
        self._require_root()
        with self._locked():
            self._stop_processes(list(SERVICES))
            self._remove_nat()
        log("lab is offline: upstreams stopped, no route out")

    def online(self, log=print) -> None:
        """The upstreams and the route out back, as `up` starts them. Run from the
        `thorfleet lab online` command, as `up` is: what it starts is then nobody's child,
        and `down`, another process, can stop it."""
        self._require_root()
        with self._locked(), self._cache_locked():
            self._ensure_network()
            self._ensure_registry(log)
            self._ensure_images(log)
            self._ensure_sources(log)
            self._ensure_hubs(log)
        log("lab is online")

    def status(self) -> list[HostStatus]:
        result = []
        for index in range(1, MAX_HOSTS + 1):
            name = host_name(index)
            if not (self.state / "hosts" / name).exists():
                continue
            address = host_address(index)
            running = self._pid(name) is not None
            result.append(HostStatus(
                name=name,
                address=address,
                running=running,
                ssh=running and self._ssh_ok(address),
                as_thor=(self._root(name) / lab_thor.MARKER.lstrip("/")).exists(),
            ))
        return result

    def services_running(self) -> dict[str, bool]:
        return {service: self._pid(service) is not None for service in SERVICES}

    @contextlib.contextmanager
    def borrowed(self, hosts: int = 1) -> Iterator[Lab]:
        """The running lab, or one booted for the occasion and taken down after."""
        booted = not any(h.running for h in self.status())
        if booted:
            self.up(hosts, log=lambda _msg: None)
        try:
            yield self
        finally:
            if booted:
                self.down(log=lambda _msg: None)


def status_table(hosts: list[HostStatus], services: dict[str, bool]) -> str:
    rows = [("host", "address", "state", "ssh", "looks like")]
    for host in hosts:
        rows.append((host.name, host.address, "running" if host.running else "stopped",
                     "ok" if host.ssh else "-", "Thor" if host.as_thor else "lab host"))
    lines = [text_table(rows)]
    for service, address in SERVICES.items():
        lines.append(f"{service} {address}: {'running' if services[service] else 'stopped'}")
    return "\n".join(lines)


def status_json(hosts: list[HostStatus], services: dict[str, bool]) -> str:
    return json.dumps({
        "hosts": [asdict(h) for h in hosts],
        "services": {name: {"address": address, "running": services[name]}
                     for name, address in SERVICES.items()},
    }, indent=2)

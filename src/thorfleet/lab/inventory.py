"""The inventory `up` writes for the lab (inventory/lab): its hosts, the lab profile
(profile.yml beside this file: the differences from a real Thor that DESIGN.md allows,
and nothing else), thor01's services, and those of the hosts added for fleet tests."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import yaml

from thorfleet.lab.config import (
    FIRST_FLEET_HOST,
    FLEET_SERVICES,
    GATEWAY,
    LAB_SERVICES,
    host_address,
)

# The lab profile, as YAML the linters read.
PROFILE = Path(__file__).with_name("profile.yml")


# The gateway the profile names: lab 0's (config.GATEWAY is this lab's).
PROFILE_GATEWAY = "10.213.0.1"


def profile() -> str:
    """The lab profile for this lab: its upstreams at this lab's gateway."""
    return re.sub(rf"(?<![\d.]){re.escape(PROFILE_GATEWAY)}(?![\d])", GATEWAY,
                  PROFILE.read_text())


class Inventory:
    """Rewritten on every `up`."""

    def _write_inventory(self, names: list[str]) -> None:
        hosts = {name: {"ansible_host": host_address(i)} for i, name in enumerate(names, 1)}
        inventory = {
            "thor": {
                "hosts": hosts,
                "vars": {
                    "ansible_user": "root",
                    # The lab hosts' architecture is this machine's (bundle create reads it).
                    "thorfleet_architecture": platform.machine(),
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args":
                        f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes",
                },
            }
        }
        group_vars = self.inventory / "group_vars" / "thor"
        group_vars.mkdir(parents=True, exist_ok=True)
        header = "# Written by `thorfleet lab up`; rewritten on every up.\n"
        (self.inventory / "hosts.yml").write_text(
            header + "---\n" + yaml.safe_dump(inventory, sort_keys=False))
        (group_vars / "lab.yml").write_text(header + profile())
        # The demo host runs one service of each kind the lab can serve, from both hubs.
        host_vars = self.inventory / "host_vars"
        host_vars.mkdir(parents=True, exist_ok=True)
        # Hosts added for fleets (thor03 and up) run a stand-in container service only;
        # thor02 runs what a test gives it.
        for index, name in enumerate(names, 1):
            services = LAB_SERVICES if index == 1 else (
                FLEET_SERVICES if index >= FIRST_FLEET_HOST else None)
            if services is not None:
                (host_vars / f"{name}.yml").write_text(header + "---\n" + yaml.safe_dump(
                    {"thorfleet_services": services}, sort_keys=False))

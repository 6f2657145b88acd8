"""The ``thorfleet`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from thorfleet import status as fleet
from thorfleet.lab import Lab, LabError, status_json, status_table


def project_root(start: Path | None = None) -> Path:
    """The checkout holding site.yml: from THORFLEET_PROJECT, the working directory up,
    or the checkout this package was installed from in development mode."""
    if os.environ.get("THORFLEET_PROJECT"):
        return Path(os.environ["THORFLEET_PROJECT"]).resolve()
    candidates = [start or Path.cwd(), Path(__file__).resolve().parents[2]]
    for candidate in candidates:
        for directory in (candidate, *candidate.parents):
            if (directory / "site.yml").is_file() and (directory / "ansible.cfg").is_file():
                return directory
    raise LabError("no thorfleet checkout found (site.yml and ansible.cfg): "
                   "run from inside one or set THORFLEET_PROJECT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thorfleet", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    lab = commands.add_parser("lab", help="the built-in lab fleet (needs root)")
    lab_commands = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_commands.add_parser("up", help="boot the lab hosts and the lab's services")
    up.add_argument("--hosts", type=int, default=2, help="number of hosts (default 2)")
    up.add_argument("--as-thor", action="append", default=[], metavar="HOST",
                    help="make HOST look like a Jetson Thor to preflight (repeatable)")
    lab_commands.add_parser("down", help="stop everything the lab started and remove it")
    status = lab_commands.add_parser("status", help="show the lab's hosts")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    as_thor = lab_commands.add_parser("as-thor", help="make a running host look like a Thor")
    as_thor.add_argument("host")
    as_thor.add_argument("--off", action="store_true", help="make it a plain lab host again")

    state = commands.add_parser(
        "status", help="per host and service: unit state, health, port, image or build, model")
    state.add_argument("-i", "--inventory", help="inventory (default: ansible.cfg's, the lab)")
    state.add_argument("-l", "--limit", help="hosts, as ansible-playbook's --limit")
    state.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def show_status(args) -> int:
    """The fleet's services; exit status 1 unless every one is active and answering."""
    hosts = fleet.fleet_status(project_root(), args.inventory, args.limit)
    print(json.dumps({"hosts": hosts}, indent=2) if args.json else fleet.table(hosts))
    return 0 if fleet.healthy(hosts) else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return show_status(args)
    try:
        lab = Lab(project_root())
        if args.lab_command == "up":
            hosts = lab.up(args.hosts, args.as_thor)
            print(status_table(hosts, lab.services_running()))
        elif args.lab_command == "down":
            lab.down()
        elif args.lab_command == "status":
            hosts = lab.status()
            render = status_json if args.json else status_table
            print(render(hosts, lab.services_running()))
        elif args.lab_command == "as-thor":
            lab.as_thor(args.host, not args.off)
    except LabError as error:
        print(f"thorfleet: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``thorfleet`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from thorfleet import bench
from thorfleet import bundle as bundles
from thorfleet import status as fleet
from thorfleet.lab import Lab, LabError, status_json, status_table
from thorfleet.runs import Progress, run_playbook

BENCH_RESULTS = Path("bench/results/services")


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


def fleet_command(commands, name: str, summary: str, extra: bool = False,
                  several_inventories: bool = False):
    """A command on the fleet: -i and -l as ansible-playbook takes them (-i repeatable
    where the command reads the inventory itself), -e if it runs one."""
    command = commands.add_parser(name, help=summary)
    if several_inventories:
        command.add_argument("-i", "--inventory", action="append",
                             help="inventory, as ansible-playbook's -i (repeatable; default: "
                                  "ansible.cfg's, the lab)")
    else:
        command.add_argument("-i", "--inventory",
                             help="inventory (default: ansible.cfg's, the lab)")
    command.add_argument("-l", "--limit", help="hosts, as ansible-playbook's --limit")
    if extra:
        command.add_argument("-e", "--extra-vars", action="append", default=[],
                             metavar="KEY=VALUE", help="a variable for this run (the value "
                             "read as JSON, else a string), e.g. service_bench_runs=5")
    return command


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
    lab_commands.add_parser("offline", help="a site with no internet: stop the lab's "
                                            "upstreams and the hosts' route out")
    lab_commands.add_parser("online", help="start the lab's upstreams and route out again")
    status = lab_commands.add_parser("status", help="show the lab's hosts")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    as_thor = lab_commands.add_parser("as-thor", help="make a running host look like a Thor")
    as_thor.add_argument("host")
    as_thor.add_argument("--off", action="store_true", help="make it a plain lab host again")

    deploy = fleet_command(commands, "deploy", "run site.yml: live progress per host, a "
                                               "summary per host and phase", extra=True)
    deploy.add_argument("--check", action="store_true",
                        help="change nothing; show what would change (--check --diff)")
    deploy.add_argument("--batch", metavar="N|P%",
                        help="hosts switched together (thorfleet_rollout_batch; default: 20%%, "
                             "at least one)")
    deploy.add_argument("--canary", metavar="HOST",
                        help="a host or group switched first, alone (thorfleet_rollout_canary)")
    deploy.add_argument("--max-fail", metavar="N|P%",
                        help="hosts that may fail before later batches are not started "
                             "(thorfleet_rollout_max_fail; default 0)")
    deploy.add_argument("--pause", metavar="SECONDS",
                        help="after each batch passed verify, let it run this long and ask "
                             "its services again (thorfleet_rollout_pause; default 0)")

    speed = fleet_command(commands, "bench", "run playbooks/bench.yml; the guide's speed "
                                             "table, details and a chart", extra=True)
    speed.add_argument("-o", "--output", type=Path, default=None,
                       help=f"results directory (default: {BENCH_RESULTS} in the checkout)")
    speed.add_argument("--report-only", action="store_true",
                       help="no run: the report of the results already in the directory")

    bundle = commands.add_parser("bundle", help="a bundle for sites with no internet")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    create = bundle_commands.add_parser(
        "create", help="write what the inventory's hosts need, at the lock's pins, into DIR")
    create.add_argument("-i", "--inventory", action="append", default=[],
                        help="inventory, as ansible-playbook's -i (repeatable; default: "
                             "ansible.cfg's, the lab)")
    create.add_argument("directory", type=Path, metavar="DIR")
    create.add_argument("--timeout", type=float, default=6 * 3600,
                        help="seconds the whole run may take (default 6 hours)")
    check = bundle_commands.add_parser("verify", help="check a bundle against its SHA256SUMS")
    check.add_argument("directory", type=Path, metavar="DIR")
    check.add_argument("--sums", type=Path, metavar="FILE",
                       help="check against this SHA256SUMS, kept apart from the bundle "
                            "(with the lock), rather than the bundle's own")

    metrics = commands.add_parser("metrics", help="the fleet's Prometheus targets")
    metrics_commands = metrics.add_subparsers(dest="metrics_command", required=True)
    targets = fleet_command(metrics_commands, "targets",
                            "write file_sd target files for every host and service of the "
                            "inventory (no host is contacted)")
    targets.add_argument("-o", "--output", type=Path, default=Path("prometheus-targets"),
                         help="directory, one folder per scrape job (node, jetson, "
                              "services) with a file per host (default: prometheus-targets)")

    state = fleet_command(commands, "status", "per host and service: unit state, health, "
                                              "port, requests and tokens per second, image "
                                              "or build, model; memory per host",
                          several_inventories=True)

    state.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def show_status(args) -> int:
    """The fleet's services; exit status 1 unless every one is active and answering."""
    hosts = fleet.fleet_status(project_root(), args.inventory, args.limit)
    print(json.dumps({"hosts": hosts}, indent=2) if args.json else fleet.table(hosts))
    return 0 if fleet.healthy(hosts) else 1


def extra_vars(pairs: list[str]) -> dict:
    """KEY=VALUE pairs; a value that parses as JSON is taken as that (numbers, lists)."""
    variables = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"thorfleet: -e {pair!r}: expected KEY=VALUE")
        try:
            variables[key] = json.loads(value)
        except ValueError:
            variables[key] = value
    return variables


ROLLOUT_FLAGS = {"batch": "thorfleet_rollout_batch", "canary": "thorfleet_rollout_canary",
                 "max_fail": "thorfleet_rollout_max_fail", "pause": "thorfleet_rollout_pause"}


def deploy(args) -> int:
    """site.yml through ansible-runner; exit status as ansible-playbook's. The rollout's
    flags are its variables, passed as given: preflight checks them."""
    progress = Progress()
    variables = extra_vars(args.extra_vars)
    variables.update({name: getattr(args, flag) for flag, name in ROLLOUT_FLAGS.items()
                      if getattr(args, flag) is not None})
    rc = run_playbook(project_root(), "site.yml", progress, args.inventory, args.limit,
                      args.check, variables)
    print(f"\n{progress.table()}\n\n{progress.recap()}")
    if rc != 0 and not progress.failed():
        print(f"thorfleet: ansible-playbook exited {rc} before any task failed "
              "(an inventory, syntax or connection problem?)", file=sys.stderr)
    return rc


def run_bench(args) -> int:
    """playbooks/bench.yml, then the report of the hosts it ran on: the guide's table per
    host, every service's numbers, and chart.png beside the JSON files."""
    root = project_root()
    output = (args.output or root / BENCH_RESULTS).resolve()
    hosts = None
    if not args.report_only:
        progress = Progress()
        variables = {**extra_vars(args.extra_vars), "service_bench_results_dir": str(output)}
        rc = run_playbook(root, "playbooks/bench.yml", progress, args.inventory, args.limit,
                          extravars=variables)
        if rc != 0:
            print(f"\n{progress.table()}")
            return rc
        hosts = sorted({host for host, _ in progress.counts})
    results = bench.load(output, hosts)
    if not results:
        print(f"thorfleet: no bench results in {output}", file=sys.stderr)
        return 1
    print(f"\n{bench.report(results)}")
    print(f"\nresults: {output}/<host>.json; chart: {bench.chart(results, output / 'chart.png')}")
    return 0


def metrics_targets(args) -> int:
    """playbooks/metrics_targets.yml: the inventory's targets as file_sd files."""
    progress = Progress()
    output = args.output.resolve()
    rc = run_playbook(project_root(), "playbooks/metrics_targets.yml", progress,
                      args.inventory, args.limit, extravars={"metrics_targets_dir": str(output)})
    if rc != 0:
        print(f"\n{progress.table()}")
        return rc
    written = sorted(output.glob("*/*.json"))
    print(f"thorfleet: {len(written)} target files in {output} "
          f"({', '.join(sorted({path.parent.name for path in written}))})")
    return 0


def run_bundle(args) -> int:
    """bundle create (exit status as ansible-playbook's) or verify (1 when anything is
    wrong, each thing on a line)."""
    if args.bundle_command == "create":
        return bundles.create(project_root(), args.inventory, args.directory, args.timeout)
    try:
        problems = bundles.verify(args.directory, args.sums)
    except (OSError, bundles.BundleError) as error:
        problems = [str(error)]
    for problem in problems:
        print(f"thorfleet: bundle {args.directory}: {problem}", file=sys.stderr)
    if not problems:
        print(f"thorfleet: bundle {args.directory} is whole")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "status":
        return show_status(args)
    if args.command == "deploy":
        return deploy(args)
    if args.command == "bench":
        return run_bench(args)
    if args.command == "bundle":
        return run_bundle(args)
    if args.command == "metrics":
        return metrics_targets(args)
    try:
        lab = Lab(project_root())
        if args.lab_command == "up":
            hosts = lab.up(args.hosts, args.as_thor)
            print(status_table(hosts, lab.services_running()))
        elif args.lab_command == "down":
            lab.down()
        elif args.lab_command == "offline":
            lab.offline()
        elif args.lab_command == "online":
            lab.online()
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

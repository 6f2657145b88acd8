#!/usr/bin/python
"""Ansible module: the verify phase's requests, all of a host's in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: thorfleet_verify
short_description: Wait for each service to answer /health, then send it the checks
description:
  - Polls each service's C(/health) (all at once) until it answers 200 or its own timeout
    passes; reads the end of the log of each that did not answer; then runs each check of
    the services that did (the guide's curl command lines, from the
    C(thorfleet_verify_requests) filter), with its curl configuration on standard input.
    The services are asked at once, each service's checks one after another, so the phase
    takes as long as its slowest service rather than the sum of them.
  - Returns, as lists, each service's answer to C(/health), the log of each that did
    not answer and each check's answer (C(health), C(logs), C(answers)), for the
    C(thorfleet_verify_failures) filter to judge; never fails for a service that did not
    answer as it should.
  - Reads only. Runs in check mode too (nothing is changed), but the role skips it there.
options:
  services:
    description: The host's resolved services (name, unit, probe_address, port, start_timeout).
    type: list
    elements: dict
    required: true
  checks:
    description: The checks (service, check, url, argv, ...), as thorfleet_verify_requests
      makes them.
    type: list
    elements: dict
    required: true
  curl_configs:
    description: What curl reads on standard input per service (its API key's header).
    type: dict
    required: true
  health_timeout:
    description: Seconds each service may take to answer /health; 0 for its own
      start_timeout.
    type: int
    default: 0
  delay:
    description: Seconds between two probes of a service.
    type: int
    default: 2
  log_lines:
    description: Lines of a silent service's log to return.
    type: int
    default: 8
author:
  - thorfleet
"""

RETURN = r"""
health:
  description: "C([{spec, url, status, msg}]), one per service."
  returned: always
  type: list
  elements: dict
logs:
  description: "C([{spec, stdout}]), one per service that did not answer."
  returned: always
  type: list
  elements: dict
answers:
  description:
    - "C([{check, rc, stdout, stderr} or {check, skipped}]), one per check, in order:
      C(stdout) ends with a line of the HTTP status curl got."
  returned: always
  type: list
  elements: dict
"""

import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

PROBE_TIMEOUT = 10  # seconds a single /health request may take


def probe(url):
    """(status, message) of one GET: the HTTP status, or -1 and why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as response:  # noqa: S310
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, f"HTTP Error {error.code}: {error.reason}"
    except (urllib.error.URLError, OSError) as error:
        return -1, f"Status code was -1 and not [200]: Request failed: {error}"


def wait_healthy(services, health_timeout, delay, clock=time.monotonic, sleep=time.sleep):
    """Poll every service until each answers 200 or its deadline passes."""
    start = clock()
    pending = {}
    for spec in services:
        url = f"http://{spec['probe_address']}:{spec['port']}/health"
        timeout = health_timeout or spec.get("start_timeout") or 0
        pending[spec["name"]] = {"spec": spec, "url": url, "deadline": start + timeout}
    results = {}
    while pending:
        for name, entry in list(pending.items()):
            status, message = probe(entry["url"])
            if status == 200 or clock() >= entry["deadline"]:
                results[name] = {"spec": entry["spec"], "url": entry["url"],
                                 "status": status, "msg": message}
                del pending[name]
        if pending:
            sleep(delay)
    return [results[spec["name"]] for spec in services]


def ask(module, checks, silent, curl_configs):
    """Each check's answer, in the order of checks. One thread per service: two requests to
    one engine at once would only queue behind each other, and a check's time is then
    its own, as a person's curl would see it."""
    answers = [None] * len(checks)
    by_service = {}
    for index, check in enumerate(checks):
        by_service.setdefault(check["service"], []).append(index)

    def one_service(indexes):
        for index in indexes:
            check = checks[index]
            if check["service"] in silent:
                answers[index] = {"check": check, "skipped": True}
                continue
            rc, out, err = module.run_command(
                check["argv"], data=curl_configs.get(check["service"]) or "# no API key",
                binary_data=False)
            # As the command module returns them: without the trailing line end.
            answers[index] = {"check": check, "rc": rc, "stdout": out.rstrip("\r\n"),
                              "stderr": err.rstrip("\r\n")}

    with ThreadPoolExecutor(max_workers=max(len(by_service), 1)) as pool:
        # list(): a thread's exception is raised here, not lost.
        list(pool.map(one_service, by_service.values()))
    return answers


def main():
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "dict", "required": True},
            "checks": {"type": "list", "elements": "dict", "required": True},
            "curl_configs": {"type": "dict", "required": True, "no_log": True},
            "health_timeout": {"type": "int", "default": 0},
            "delay": {"type": "int", "default": 2},
            "log_lines": {"type": "int", "default": 8},
        },
        supports_check_mode=True,
    )
    params = module.params
    health = wait_healthy(params["services"], params["health_timeout"], params["delay"])
    silent = {r["spec"]["name"] for r in health if r["status"] != 200}
    journalctl = module.get_bin_path("journalctl")
    logs = []
    for result in health:
        if result["spec"]["name"] in silent:
            out = ""
            if journalctl:
                _rc, out, _err = module.run_command(
                    [journalctl, f"_SYSTEMD_UNIT={result['spec']['unit']}", "--lines",
                     str(params["log_lines"]), "--no-pager", "--output", "cat"])
            logs.append({"spec": result["spec"], "stdout": out})
    answers = ask(module, params["checks"], silent, params["curl_configs"])
    module.exit_json(changed=False, health=health, logs=logs, answers=answers)


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: take, release or clear the run lock of one host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: thorfleet_run_lock
short_description: The lock a run of site.yml holds on each of its hosts
description:
  - One run at a time per host. A run takes the lock at the end of preflight, before any
    phase changes the host, and releases it after the rollout's summary. The lock is a
    small JSON file in C(/run), so a host that reboots starts unlocked.
  - O(state=present) takes the lock for O(run). When another run holds it, nothing is
    written and the result says which (RV(locked_by)); when that run is O(replace), the
    lock is taken over from it (the caller judged it gone).
  - O(state=absent) releases the lock if O(run) holds it, or, with O(force), whatever
    run holds it (playbooks/unlock.yml).
options:
  run:
    description:
      - The run, as the filter C(thorfleet_run_identity) describes it, with at least
        C(run), its unique name.
    type: dict
    default: {}
  state:
    description: Take the lock, or release it.
    type: str
    choices: [present, absent]
    default: present
  replace:
    description: The name of a run whose lock may be taken over.
    type: str
    default: ""
  force:
    description: With O(state=absent), remove the lock whatever run holds it.
    type: bool
    default: false
  path:
    description: The lock file.
    type: path
    default: /run/thorfleet/run.lock
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Lock this host for this run
  thorfleet_run_lock:
    run: "{{ hostvars.localhost.thorfleet_common_result.run }}"
  register: lock

- name: Clear a lock left by a run that was killed
  thorfleet_run_lock:
    state: absent
    force: true
"""

RETURN = r"""
acquired:
  description: Whether O(run) holds the lock now (O(state=present)).
  type: bool
  returned: always
locked_by:
  description: >-
    The run that held the lock before this call ({} when none): when O(state=present)
    did not acquire it, the run that holds it.
  type: dict
  returned: always
"""

import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def read(path: str) -> dict | None:
    """The lock's content; None when there is no lock. A file that is not a lock's JSON
    is held by an unknown run (never taken over, cleared only by force)."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        held = json.loads(text)
    except ValueError:
        held = None
    if not isinstance(held, dict) or not isinstance(held.get("run"), str):
        return {"run": "", "holder": "unknown (not a lock file)", "since": ""}
    return held


def write_new(path: str, run: dict) -> bool:
    """Create the lock for `run`; False when a lock exists already."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(run, handle, sort_keys=True)
    return True


def write_over(path: str, run: dict) -> None:
    """Replace the lock with `run`'s, in one rename."""
    descriptor, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".run.lock.")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(run, handle, sort_keys=True)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def take(path: str, run: dict, replace: str) -> dict:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if write_new(path, run):
        return {"changed": True, "acquired": True, "locked_by": {}}
    held = read(path) or {}
    if held.get("run") == run["run"]:
        return {"changed": False, "acquired": True, "locked_by": held}
    if replace and held.get("run") == replace:
        write_over(path, run)
        return {"changed": True, "acquired": True, "locked_by": held}
    if not held:  # released between the two reads
        return take(path, run, replace)
    return {"changed": False, "acquired": False, "locked_by": held}


def release(path: str, run: dict, force: bool) -> dict:
    held = read(path)
    if held is None or not (force or held.get("run") == run.get("run")):
        return {"changed": False, "acquired": False, "locked_by": held or {}}
    os.remove(path)
    return {"changed": True, "acquired": False, "locked_by": held}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "run": {"type": "dict", "default": {}},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "replace": {"type": "str", "default": ""},
            "force": {"type": "bool", "default": False},
            "path": {"type": "path", "default": "/run/thorfleet/run.lock"},
        },
        supports_check_mode=False,
    )
    params = module.params
    run = params["run"]
    if not (params["state"] == "absent" and params["force"]) and not (
            isinstance(run.get("run"), str) and run["run"]):
        module.fail_json(msg="run: the run's name (run.run) is required")
    if params["state"] == "present":
        module.exit_json(**take(params["path"], run, params["replace"]))
    module.exit_json(**release(params["path"], run, params["force"]))


if __name__ == "__main__":
    main()

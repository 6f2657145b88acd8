#!/usr/bin/python
"""Ansible module: switch the model revisions staged beside their models in, or back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_revisions
short_description: Switch staged model revisions in, put the previous ones back, or forget them
description:
  - The models phase stages a new revision of a model in service beside it
    (M(model_download) with O(model_download#module:stage)); the running engine keeps
    reading the revision it loaded. This module is the switch's part of it, run on each
    host just before its services restart, and after.
  - O(state=switched) moves each staged revision into its model directory; what it
    replaces or drops, and the old manifest, go to C(.<name>.previous) beside it.
  - O(state=previous) puts that previous revision back (a switch that failed).
  - O(state=committed) removes it (a switch whose services passed verify).
  - A model directory with nothing to do is left as it is; check mode changes nothing.
options:
  dests:
    description: Model directories (each with C(thorfleet-manifest.json)).
    type: list
    elements: path
    required: true
  state:
    description: What to do with the revisions beside each model.
    type: str
    choices: [switched, previous, committed]
    default: switched
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Switch staged model revisions in
  model_revisions:
    dests: [/models/Qwen/Qwen3-8B]
"""

RETURN = r"""
dests:
  description: The model directories this run switched, put back or cleaned up.
  returned: always
  type: list
  elements: str
"""

import os  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.thorfleet_model_files import (  # noqa: E402
    previous_dir,
    read_manifest,
    read_staged,
    switch_back,
    switch_in,
)


def pending(state, dest):
    if state == "switched":
        return read_staged(dest) is not None
    if state == "previous":
        return read_manifest(previous_dir(dest)) is not None
    return os.path.isdir(previous_dir(dest))


def main():
    module = AnsibleModule(
        argument_spec={
            "dests": {"type": "list", "elements": "path", "required": True},
            "state": {"type": "str", "default": "switched",
                      "choices": ["switched", "previous", "committed"]},
        },
        supports_check_mode=True,
    )
    state = module.params["state"]
    dests = [d.rstrip("/") for d in module.params["dests"] if pending(state, d.rstrip("/"))]
    if not module.check_mode:
        for dest in dests:
            try:
                if state == "switched":
                    switch_in(module, dest)
                elif state == "previous":
                    switch_back(module, dest)
                else:
                    shutil.rmtree(previous_dir(dest))
            except OSError as error:
                module.fail_json(msg=f"{dest}: the revision could not be {state}: {error}",
                                 dests=dests)
    module.exit_json(changed=bool(dests), dests=dests)


if __name__ == "__main__":
    main()

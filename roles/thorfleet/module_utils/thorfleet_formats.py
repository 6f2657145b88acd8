"""The formats of what thorfleet pins, defined once: for modules on the hosts (as
ansible.module_utils.thorfleet_formats, which Ansible sends with each module that imports
it) and for filters on the controller (thorfleet.lib plugin_utils/formats.py loads this
file)."""

from __future__ import annotations

import re

# A git commit, as the lock pins a model's revision or an engine's ref. Match with
# fullmatch only: `$` also matches before a final newline.
COMMIT = re.compile(r"[0-9a-f]{40}")


def is_commit(value):
    return isinstance(value, str) and COMMIT.fullmatch(value) is not None

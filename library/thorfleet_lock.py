#!/usr/bin/python
"""Ansible module: read or update thorfleet's lock file, on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: thorfleet_lock
short_description: Read or update the lock file kept with the inventory
description:
  - The lock file pins what a name alone does not: a model revision to the commit it
    resolved to (and the sums of its files the hub lists no hash for), a file fetched by
    URL to its sha256, an image tag to its digest (and, through a site cache, that digest to
    the digest of the hosts' platform's image), an engine's source ref to its commit. It is
    written on the controller, next to the inventory, and meant to be committed with it.
  - O(state=read) returns its content (empty sections when there is no file yet).
  - O(state=present) sets O(entries) in O(section), leaving other entries as they are.
    Check mode never writes; diff mode shows the entries that change.
options:
  path:
    description: The lock file.
    type: path
    required: true
  previous_path:
    description:
      - Where the lock file used to be. When O(path) does not exist and this does, the
        module fails asking for a rename, rather than resolving every pin again.
    type: path
  state:
    description: Read the file, or set entries in it.
    type: str
    choices: [read, present]
    default: present
  section:
    description: >-
      The section to update (C(models), C(model_files), C(model_manifests), C(files), C(images),
      C(image_platforms), C(engines)).
    type: str
    choices: [models, model_files, model_manifests, files, images, image_platforms, engines]
  entries:
    description: Keys and values to set in O(section).
    type: dict
    default: {}
notes:
  - Run it with C(delegate_to=localhost) and C(run_once=true).
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Read the lock
  thorfleet_lock:
    path: "{{ inventory_dir }}/.thorfleet.lock.yml"
    state: read
  delegate_to: localhost
  run_once: true
  check_mode: false
  register: lock

- name: Record a template's sum
  thorfleet_lock:
    path: "{{ inventory_dir }}/.thorfleet.lock.yml"
    section: files
    entries: {"https://example.org/t.jinja": "9f86d08..."}
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
lock:
  description: The lock's content after the task, one mapping per section.
  returned: always
  type: dict
"""

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# image_platforms: an image digest that names a multi-architecture list, with the digest of
# each platform's image in it the site cache copied ({list digest: {"linux/arm64": digest}}).
SECTIONS = ("models", "model_files", "model_manifests", "files", "images", "image_platforms",
            "engines")
HEADER = (
    "# thorfleet lock file: what each name resolved to when first used, verified ever after.\n"
    "# Written by thorfleet runs; commit it with the inventory. To move a pin, change the\n"
    "# name it comes from (a revision, a tag) or delete the entry to resolve it again.\n"
)


def load(path):
    import yaml

    content = {}
    if os.path.exists(path):
        with open(path) as source:
            content = yaml.safe_load(source) or {}
    if not isinstance(content, dict):
        raise ValueError(f"{path}: not a mapping")
    lock = {section: dict(content.get(section) or {}) for section in SECTIONS}
    for listed, found in lock["image_platforms"].items():
        if not isinstance(found, dict) or not all(isinstance(v, str) for v in found.values()):
            raise ValueError(f"image_platforms: {str(listed)[:80]}: not a mapping of "
                             "platforms to digests")
    return lock


def entry_value(section, value):
    """A value as the lock keeps it: a string; in image_platforms, {platform: digest}."""
    if section == "image_platforms":
        if not isinstance(value, dict):
            raise ValueError(f"image_platforms: {str(value)[:80]!r} is not a mapping of "
                             "platforms to digests")
        return {str(k): str(v) for k, v in value.items()}
    return str(value)


def read(path, previous=None):
    """The lock at path (empty sections when there is none yet). ValueError, with the
    message a person acts on, for a lock left under its earlier name or one unreadable.
    The thorfleet role's lookup of the same name reads the lock with this too."""
    if previous and previous != path and os.path.exists(previous) and not os.path.exists(path):
        raise ValueError(f"the lock file is now {path}: rename {previous} to it (git mv) "
                         "to keep its pins; under its old name Ansible reads it as an "
                         "inventory source")
    try:
        return load(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"lock file {path}: {error}") from None


def dump(lock):
    import yaml

    body = {section: dict(sorted(lock[section].items())) for section in SECTIONS}
    return HEADER + yaml.safe_dump(body, default_flow_style=False, sort_keys=False, width=200)


@contextlib.contextmanager
def locked(directory):
    """An exclusive lock on `directory` (flock(2) on the directory itself: no file is
    left beside the inventory), waited for, held for the block."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def update(module, path):
    """Set the module's entries in the lock at `path` (state=present) and exit."""
    try:
        lock = read(path, module.params["previous_path"])
    except ValueError as error:
        module.fail_json(msg=str(error))
    section = module.params["section"]
    try:
        entries = {str(k): entry_value(section, v) for k, v in module.params["entries"].items()}
    except ValueError as error:
        module.fail_json(msg=str(error))
    changes = {k: v for k, v in entries.items() if lock[section].get(k) != v}
    before = {k: lock[section].get(k) for k in changes}
    lock[section].update(changes)
    result = {"changed": bool(changes), "lock": lock,
              "diff": {"before": json.dumps(before, indent=1, sort_keys=True) + "\n",
                       "after": json.dumps(changes, indent=1, sort_keys=True) + "\n",
                       "before_header": f"{path} ({section})",
                       "after_header": f"{path} ({section})"}}
    if changes and not module.check_mode:
        directory = os.path.dirname(path) or "."
        handle, tmp = tempfile.mkstemp(dir=directory, prefix=".thorfleet.lock.")
        with os.fdopen(handle, "w") as out:
            out.write(dump(lock))
        os.chmod(tmp, 0o644)
        module.atomic_move(tmp, path)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "previous_path": {"type": "path"},
            "state": {"type": "str", "choices": ["read", "present"], "default": "present"},
            "section": {"type": "str", "choices": list(SECTIONS)},
            "entries": {"type": "dict", "default": {}},
        },
        required_if=[("state", "present", ["section"])],
        supports_check_mode=True,
    )
    path = module.params["path"]
    if module.params["state"] == "read":
        try:
            lock = read(path, module.params["previous_path"])
        except ValueError as error:
            module.fail_json(msg=str(error))
        module.exit_json(changed=False, lock=lock)
    # Two runs against one inventory (two operators, two limits) each read, change and
    # write the whole file: each holds the directory's lock from its read to its write,
    # so that neither loses the other's pins.
    with locked(os.path.dirname(path) or "."):
        update(module, path)


if __name__ == "__main__":
    main()

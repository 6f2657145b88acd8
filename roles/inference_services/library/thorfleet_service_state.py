#!/usr/bin/python
"""Ansible module: everything the services phase reads on a host, in one task."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: thorfleet_service_state
short_description: Read what a host's units run and how they stand, in one task
description:
  - Reads, for the services phase, what eight looped tasks read one file at a time: the
    units thorfleet wrote, each model's manifest, each chat template's sha256, the build
    each engine's C(current) link points to, which directories are missing or not as
    wanted, which units are not both enabled and active, and the last good copies.
  - Each answer comes back in its own shape, keyed by what was asked (a unit's name, a
    model directory, a template's path, an engine root), for the C(thorfleet_unit_inputs)
    filter to read as it is.
  - Reads only; runs in check mode too.
options:
  units:
    description: The unit files of the host's services (C(thorfleet-<name>.service)).
    type: list
    elements: str
    default: []
  unit_dir:
    description: Where the units are.
    type: path
    default: /etc/systemd/system
  model_dirs:
    description: Model directories, each with its C(thorfleet-manifest.json).
    type: list
    elements: path
    default: []
  templates:
    description: Chat template files, whose sha256 goes into the units.
    type: list
    elements: path
    default: []
  engine_roots:
    description: Engine build roots, each with its C(current) link.
    type: list
    elements: path
    default: []
  directories:
    description: Directories the services need, each C(path) and C(mode) (owned by root).
    type: list
    elements: dict
    default: []
  last_good_dir:
    description: Where the last good units and environment files are kept.
    type: path
    required: true
  env_files:
    description: The services' environment files (root's, mode 0600).
    type: list
    elements: path
    default: []
  packages:
    description:
      - Debian/Ubuntu packages the units need, asked of dpkg in the same read. An entry
        with a version (C(curl=8.5.0-2)) always counts as missing, for apt to judge.
    type: list
    elements: str
    default: []
author:
  - thorfleet
"""

RETURN = r"""
found:
  description: >-
    The names of the C(thorfleet-*.service) files in O(unit_dir) that the services phase
    wrote (their header says C(thorfleet service NAME)); thorfleet's other units are left out.
  returned: always
  type: list
  elements: str
model_commits:
  description:
    - By model directory, the C(commit) its manifest records, as it is there (checked by
      the caller: it came from a hub); null for a manifest that is not a JSON object.
      A directory with no manifest is not a key.
  returned: always
  type: dict
template_sums:
  description: By template path, the file's sha256; a missing template is not a key.
  returned: always
  type: dict
builds:
  description:
    - By engine root, the build its C(current) link points to (the link's target, as
      written); a root with no such link is not a key.
  returned: always
  type: dict
directories_to_fix:
  description: Paths of O(directories) missing, or not root's with their mode.
  returned: always
  type: list
  elements: str
to_start:
  description: Units of O(units) that are not both enabled and active (or activating).
  returned: always
  type: list
  elements: str
last_good:
  description: The names of the unit and environment files in O(last_good_dir).
  returned: always
  type: list
  elements: str
unkept:
  description:
    - The names of the units and environment files whose content differs from their last
      good copy in O(last_good_dir) (one there, that is): written by a run that did not
      verify them (C(--tags services)), so not yet what a rollback returns to.
  returned: always
  type: list
  elements: str
packages_missing:
  description: The entries of O(packages) that dpkg does not report installed.
  returned: always
  type: list
  elements: str
file_sums:
  description:
    - The sha1 of each of O(units) (in O(unit_dir)) and O(env_files), by path, as the
      C(template) module would write it ("" when missing, or not root's with mode 0644
      for a unit and 0600 for an environment file), so the caller renders on the
      controller and writes only what differs.
  returned: always
  type: dict
"""

import fnmatch  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

MANIFEST = "thorfleet-manifest.json"
RUNNING = ("active", "activating", "reloading")


def files_matching(directory, patterns):
    """The names of the plain files in `directory` that match one of `patterns`."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [name for name in names if any(fnmatch.fnmatch(name, p) for p in patterns)
            and os.path.isfile(os.path.join(directory, name))]


# The second line of every unit the services phase writes (templates/service.unit.j2):
# what tells a service's unit from thorfleet's other units of the same prefix (the
# jetson_clocks unit, the Jetson exporter), which are not services to retire.
SERVICE_HEADER = "# thorfleet service "


def service_units(directory):
    """The thorfleet-*.service files in `directory` that the services phase wrote."""
    found = []
    for name in files_matching(directory, ["thorfleet-*.service"]):
        try:
            with open(os.path.join(directory, name), errors="replace") as unit:
                head = unit.read(8192).splitlines()
        except OSError:
            continue
        # The comment block the unit starts with (ansible_managed's lines, then thorfleet's).
        comments = head[:next((i for i, line in enumerate(head) if not line.startswith("#")),
                              len(head))]
        if any(line.startswith(SERVICE_HEADER) for line in comments):
            found.append(name)
    return found


def model_commits(model_dirs):
    """{model directory: the commit its manifest records} for those with a manifest."""
    commits = {}
    for model_dir in model_dirs:
        data = content(os.path.join(model_dir, MANIFEST))
        if data is None:
            continue
        try:
            manifest = json.loads(data)
        except ValueError:
            manifest = None
        commits[model_dir] = manifest.get("commit") if isinstance(manifest, dict) else None
    return commits


def sha256(path):
    """The file's sha256, or None when it cannot be read."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def current_builds(roots):
    """{engine root: the target of its `current` link} for those with one."""
    links = {root: os.path.join(root, "current") for root in roots}
    return {root: os.readlink(link) for root, link in links.items() if os.path.islink(link)}


def needs_fixing(directory):
    try:
        info = os.stat(directory["path"])
    except OSError:
        return True
    return (not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_gid != 0
            or stat.S_IMODE(info.st_mode) != int(str(directory.get("mode", "0755")), 8))


def sha1_as_written(path, mode):
    """The file's sha1 when it is root's with mode, else ""."""
    try:
        info = os.stat(path)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_gid != 0
                or stat.S_IMODE(info.st_mode) != mode):
            return ""
        with open(path, "rb") as handle:
            return hashlib.sha1(handle.read()).hexdigest()
    except OSError:
        return ""


def content(path):
    """A file's bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def unkept(paths, last_good_dir):
    """The names of `paths` whose content differs from their copy in the last good
    directory, where there is one."""
    names = []
    for path in paths:
        kept = content(os.path.join(last_good_dir, os.path.basename(path)))
        if kept is not None and content(path) != kept:
            names.append(os.path.basename(path))
    return names


def packages_missing(module, packages):
    """The packages dpkg does not report installed (status `ii`), in one dpkg-query."""
    if not packages:
        return []
    _rc, out, _err = module.run_command(
        [module.get_bin_path("dpkg-query", required=True), "--show",
         "--showformat=${Package} ${db:Status-Abbrev}\n", "--", *packages])
    installed = {line.split(" ")[0] for line in out.splitlines() if line.split(" ")[1:2] == ["ii"]}
    return [p for p in packages if p not in installed]


def unit_states(module, units):
    """{unit: (UnitFileState, ActiveState)}, from one `systemctl show`."""
    if not units:
        return {}
    systemctl = module.get_bin_path("systemctl", required=True)
    _rc, out, _err = module.run_command(
        [systemctl, "show", "--property=Id,UnitFileState,ActiveState", "--", *units])
    states, block = {}, {}
    for line in out.splitlines() + [""]:
        if line.strip():
            key, _, value = line.partition("=")
            block[key] = value
        elif block:
            states[block.get("Id", "")] = (block.get("UnitFileState", ""),
                                           block.get("ActiveState", ""))
            block = {}
    return states


def main():
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "list", "elements": "str", "default": []},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "model_dirs": {"type": "list", "elements": "path", "default": []},
            "templates": {"type": "list", "elements": "path", "default": []},
            "engine_roots": {"type": "list", "elements": "path", "default": []},
            "directories": {"type": "list", "elements": "dict", "default": []},
            "last_good_dir": {"type": "path", "required": True},
            "env_files": {"type": "list", "elements": "path", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    states = unit_states(module, p["units"])
    module.exit_json(
        changed=False,
        found=service_units(p["unit_dir"]),
        model_commits=model_commits(p["model_dirs"]),
        template_sums={t: s for t in p["templates"] if (s := sha256(t)) is not None},
        builds=current_builds(p["engine_roots"]),
        directories_to_fix=[d["path"] for d in p["directories"] if needs_fixing(d)],
        to_start=[u for u in p["units"]
                  if states.get(u, ("", ""))[0] != "enabled"
                  or states.get(u, ("", ""))[1] not in RUNNING],
        last_good=files_matching(p["last_good_dir"], ["thorfleet-*.service", "*.env"]),
        unkept=unkept([os.path.join(p["unit_dir"], u) for u in p["units"]] + p["env_files"],
                      p["last_good_dir"]),
        packages_missing=packages_missing(module, p["packages"]),
        file_sums={**{os.path.join(p["unit_dir"], u): sha1_as_written(
                          os.path.join(p["unit_dir"], u), 0o644) for u in p["units"]},
                   **{e: sha1_as_written(e, 0o600) for e in p["env_files"]}},
    )


if __name__ == "__main__":
    main()

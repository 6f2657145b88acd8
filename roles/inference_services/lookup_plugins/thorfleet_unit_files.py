"""Lookup: the services' unit or environment files that differ from the host's.

Renders each service's file on the controller as Ansible's own template lookup does (the
role's templates, the same variables plus `spec`, and Ansible's template variables such as
ansible_managed), and returns only those whose sha1 differs from the one the host
reported (thorfleet_service_state's file_sums): a converged host gets an empty list, so
the task that writes them runs no module at all. Unlike the template lookup, it layers
`spec` over the variables instead of copying them all for each file (a deep copy of every
variable took about 25 ms a file). It uses ansible-core's public interfaces only: the
template variables Ansible adds (template_path and the rest, and `ansible_managed` from
the DEFAULT_MANAGED_STR setting unless the user set the variable) are made here, as the
template lookup documents them.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import posixpath
import pwd
import time
from collections import ChainMap

from ansible import constants
from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible.template import trust_as_template

DOCUMENTATION = """
name: thorfleet_unit_files
short_description: the services' unit or environment files that differ from the host's
description:
  - Returns one entry per file to write (C(name), C(unit), C(dest), C(content)), for
    those whose rendered content's sha1 differs from O(sums).
options:
  _terms:
    description:
      - V(unit) (each C(<kind>.service.j2) to O(directory)/<unit>) or V(env) (each
        C(service.env.j2) to O(directory)/<name>.env).
    required: true
  specs:
    description: The services, as the templates read them (C(spec)).
    type: list
    required: true
  directory:
    description: Where the files go.
    type: str
    required: true
  sums:
    description: The sha1 of each file on the host, by path ("" when it must be written).
    type: dict
    default: {}
"""

TEMPLATES = {"unit": "{kind}.service.j2", "env": "service.env.j2"}


def template_variables(name, path, managed):
    """The variables Ansible's template lookup and action add for the template `name`
    found at `path`; with `managed`, `ansible_managed` too: the DEFAULT_MANAGED_STR
    setting, its {host}, {uid} and {file} as template expressions of those variables
    (never their values: no template injection), its strftime codes for the template's
    modification time."""
    info = os.stat(path)
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = info.st_uid
    found = {"template_host": os.uname()[1], "template_path": name,
             "template_mtime": datetime.datetime.fromtimestamp(info.st_mtime),
             "template_uid": owner, "template_run_date": datetime.datetime.now(),
             "template_destpath": None, "template_fullpath": path}
    if managed:
        setting = constants.config.get_config_value("DEFAULT_MANAGED_STR").format(
            host="{{ template_host }}", uid="{{ template_uid }}", file="{{ template_path }}")
        found["ansible_managed"] = trust_as_template(
            time.strftime(setting, time.localtime(info.st_mtime)))
    return found
NAMES = {"unit": "{unit}", "env": "{name}.env"}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 1 or terms[0] not in TEMPLATES:
            raise AnsibleLookupError("thorfleet_unit_files: give 'unit' or 'env', once")
        which, sums = terms[0], kwargs.get("sums") or {}
        files = []
        for spec in kwargs["specs"]:
            dest = posixpath.join(kwargs["directory"], NAMES[which].format(**spec))
            content = self._render(TEMPLATES[which].format(**spec), variables, spec)
            if hashlib.sha1(content.encode("utf-8")).hexdigest() != sums.get(dest, ""):
                files.append({"name": spec["name"], "unit": spec["unit"], "dest": dest,
                              "content": content})
        return files

    def _render(self, name, variables, spec):
        path = self.find_file_in_search_path(variables, "templates", name)
        if not path:
            raise AnsibleLookupError(f"thorfleet_unit_files: no template {name}")
        template_vars = template_variables(name, path, "ansible_managed" not in variables)
        templar = self._templar.copy_with_new_env(
            available_variables=ChainMap({"spec": spec}, template_vars, variables),
            searchpath=[os.path.dirname(path)])
        return templar.template(trust_as_template(self._loader.get_text_file_contents(path)),
                                escape_backslashes=False)

"""Lookup: the lock file's pins, read on the controller where it lives.

A lookup runs in ansible-playbook's own process: reading the lock needs no module run on
localhost (a Python started, or under Mitogen a local context) in every phase. The file
is read and checked by the thorfleet_lock module's own code (library/thorfleet_lock.py),
which also writes it.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: thorfleet_lock
short_description: read thorfleet's lock file
description:
  - Returns the lock file's sections (models, model_files, model_manifests, files, images,
    image_platforms, engines), empty
    when there is no file yet.
  - Fails asking for a rename when the file is missing and its earlier name exists.
options:
  _terms:
    description: The lock file.
    required: true
  previous_path:
    description: Where the lock file used to be.
    type: str
    default: ""
"""

_MODULE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))), "library", "thorfleet_lock.py")


@functools.cache
def _lock_code():
    spec = importlib.util.spec_from_file_location("thorfleet_lock_module", _MODULE)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 1:
            raise AnsibleLookupError("thorfleet_lock: give the lock file's path, once")
        try:
            return [_lock_code().read(str(terms[0]), kwargs.get("previous_path") or None)]
        except ValueError as error:
            raise AnsibleLookupError(str(error)) from None

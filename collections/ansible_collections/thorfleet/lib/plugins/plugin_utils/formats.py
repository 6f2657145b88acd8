"""The formats filters share with the modules, from their one definition in the thorfleet
role's module_utils/thorfleet_formats.py (module_utils are Ansible's way to share code
with modules; a controller plugin loads the file itself)."""

from __future__ import annotations

import importlib.util
import os
import sys

_NAME = "thorfleet_formats"
# The project's root: this file is collections/ansible_collections/thorfleet/lib/plugins/
# plugin_utils/formats.py under it (its real place: collections/ may be a link).
_ROOT = os.path.join(os.path.dirname(os.path.realpath(__file__)), *[os.pardir] * 6)
_PATH = os.path.normpath(os.path.join(_ROOT, "roles", "thorfleet", "module_utils",
                                      f"{_NAME}.py"))

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    sys.modules[_NAME] = _module  # once it loaded: a failed load is not kept

COMMIT = sys.modules[_NAME].COMMIT
is_commit = sys.modules[_NAME].is_commit

__all__ = ["COMMIT", "is_commit"]

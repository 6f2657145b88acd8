"""The formats filters share with the modules, from their one definition in the thorfleet
role's module_utils/thorfleet_formats.py (module_utils are Ansible's way to share code
with modules; a controller plugin loads the file itself)."""

from __future__ import annotations

import importlib.util
import os
import sys

_NAME = "thorfleet_formats"
_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "roles", "thorfleet", "module_utils", f"{_NAME}.py")

if _NAME not in sys.modules:
    _spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    sys.modules[_NAME] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules[_NAME])

COMMIT = sys.modules[_NAME].COMMIT
is_commit = sys.modules[_NAME].is_commit

__all__ = ["COMMIT", "is_commit"]

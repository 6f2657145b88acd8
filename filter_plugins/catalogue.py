"""Filters that turn a host's services and the recipe catalogue into what it must hold and
run: the catalogue merged with the inventory's additions (thorfleet_lib/rules.py), the
models and files a host holds and the lock's entries for them (thorfleet_lib/models.py),
and each service resolved to its unit's command (thorfleet_lib/services.py).

One place resolves services against the catalogue and rejects bad input before any host
changes: every error names the host, the service and the field.
"""

from __future__ import annotations

import os
import sys

# Code the filters share: the package thorfleet_lib in the project's plugin_utils/ (as in
# an Ansible collection; a directory of its own, so that Ansible does not load it as
# plugins). Appended, so that it shadows no installed module.
_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "plugin_utils")
if _UTILS not in sys.path:
    sys.path.append(_UTILS)

from thorfleet_lib.models import (  # noqa: E402
    lock_entries,
    manifest_commit,
    manifest_key,
    model_plan,
    recipe_files,
)
from thorfleet_lib.rules import CatalogueError, merge_catalogue  # noqa: E402
from thorfleet_lib.services import service_specs  # noqa: E402

__all__ = ["CatalogueError", "lock_entries", "manifest_commit", "manifest_key",
           "merge_catalogue", "model_plan", "recipe_files", "service_specs"]


class FilterModule:
    def filters(self):
        return {
            "thorfleet_catalogue": merge_catalogue,
            "thorfleet_model_plan": model_plan,
            "thorfleet_lock_entries": lock_entries,
            "thorfleet_manifest_commit": manifest_commit,
            "thorfleet_service_specs": service_specs,
        }

"""Filters that turn a host's services and the recipe catalogue into what it must hold and
run: the catalogue merged with the inventory's additions (plugin_utils/rules.py of the
collection thorfleet.lib), the models and files a host holds and the lock's entries for
them (models.py), and each service resolved to its unit's command (services.py).

One place resolves services against the catalogue and rejects bad input before any host
changes: every error names the host, the service and the field.
"""

from __future__ import annotations

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils.models import (
    lock_entries,
    manifest_key,
    model_plan,
    recipe_files,
)
from ansible_collections.thorfleet.lib.plugins.plugin_utils.rules import (
    CatalogueError,
    merge_catalogue,
)
from ansible_collections.thorfleet.lib.plugins.plugin_utils.services import service_specs

__all__ = ["CatalogueError", "lock_entries", "manifest_key",
           "merge_catalogue", "model_plan", "recipe_files", "service_specs"]


class FilterModule:
    def filters(self):
        return {
            "thorfleet_catalogue": merge_catalogue,
            "thorfleet_model_plan": model_plan,
            "thorfleet_lock_entries": lock_entries,
            "thorfleet_service_specs": service_specs,
        }

"""The recipe catalogue for the command line, the lab and the tests: read by the roles'
own lookup (roles/thorfleet/lookup_plugins/thorfleet_catalogue.py), so that all of them
read the folder one way."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
LOOKUP = Path("roles/thorfleet/lookup_plugins/thorfleet_catalogue.py")


@functools.cache
def _lookup(project: Path):
    spec = importlib.util.spec_from_file_location("thorfleet_catalogue_lookup",
                                                  project / LOOKUP)
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    return code


def load(project: Path = PROJECT, folder: Path | None = None) -> dict:
    """The catalogue as its files write it ({engines, models, files, recipes}), from
    `folder` or the project's catalogue/; recipes that extend another are resolved by the
    filter thorfleet_catalogue (thorfleet.lib plugin_utils/rules.py, merge_catalogue)."""
    return _lookup(Path(project)).load(folder or Path(project) / "catalogue")

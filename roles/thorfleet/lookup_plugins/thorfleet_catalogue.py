"""Lookup: the recipe catalogue, read from its folder (the project's catalogue/).

The one reader of the catalogue's files: the roles read it through this lookup (the
setting thorfleet_catalogue, roles/thorfleet/defaults), and the command line, the lab and
the tests through `load` below (src/thorfleet/catalogue.py). It returns the entries as the
files write them: recipes that extend another are resolved, with the inventory's
thorfleet_catalogue_extra on top, by the filter thorfleet_catalogue
(thorfleet.lib plugin_utils/rules.py), which also checks every entry.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = """
name: thorfleet_catalogue
short_description: read thorfleet's recipe catalogue from its folder
description:
  - Returns the catalogue as one mapping of sections, C(engines), C(models), C(files) and
    C(recipes), each a mapping of entries by name, as the folder's files write them.
  - The folder holds C(engines.yml), C(models.yml), C(files.yml) and C(recipes/*.yml); a
    recipe named in two files, a file that is not a mapping of entries, or a missing file
    is an error naming the file.
options:
  _terms:
    description: The catalogue's folder; the project's C(catalogue/) when none is given.
    required: false
"""

# The project's catalogue: catalogue/ beside roles/ (this file is
# roles/thorfleet/lookup_plugins/thorfleet_catalogue.py).
DEFAULT = Path(__file__).resolve().parents[3] / "catalogue"
SECTIONS = ("engines", "models", "files")


class CatalogueFolderError(ValueError):
    """A catalogue folder that cannot be read as one; the message names the file."""


def load(folder=DEFAULT) -> dict:
    """{engines, models, files, recipes} from `folder`: each section's file, and the
    recipes of every file under recipes/ (in name order), none named twice."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CatalogueFolderError(f"thorfleet_catalogue: {folder} is not a folder")
    catalogue = {section: _entries(folder / f"{section}.yml") for section in SECTIONS}
    recipes, where = {}, {}
    files = sorted((folder / "recipes").glob("*.yml"))
    if not files:
        raise CatalogueFolderError(f"thorfleet_catalogue: {folder / 'recipes'} holds no "
                                   "recipes (*.yml)")
    for path in files:
        for name, entry in _entries(path).items():
            if name in recipes:
                raise CatalogueFolderError(
                    f"thorfleet_catalogue: recipe {name} is in both {where[name]} and {path}")
            recipes[name], where[name] = entry, path
    catalogue["recipes"] = recipes
    return catalogue


def _entries(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise CatalogueFolderError(f"thorfleet_catalogue: {path}: {error.strerror}") from None
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogueFolderError(f"thorfleet_catalogue: {path}: not YAML: {error}") from None
    if entries is None:
        return {}
    if not isinstance(entries, dict) or not all(isinstance(name, str) for name in entries):
        raise CatalogueFolderError(f"thorfleet_catalogue: {path}: a mapping of entries by "
                                   "name")
    return entries


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) > 1:
            raise AnsibleLookupError("thorfleet_catalogue: give one folder, or none")
        folder = os.path.expanduser(str(terms[0])) if terms else DEFAULT
        try:
            return [load(folder)]
        except CatalogueFolderError as error:
            raise AnsibleLookupError(str(error)) from None

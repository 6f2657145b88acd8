"""ansible-core's defaults, as most users run thorfleet: from AWX, ansible-navigator or an
ansible.cfg of their own. A configuration that names only where the project's roles,
modules, filters, collection and inventory are, and an environment without any other ANSIBLE_*
setting: no Mitogen, no pipelining, no SSH connection reuse, Ansible's own interpreter
discovery and fact gathering. bench/noop_rerun.py's stock arm and the lab tests of the
main job under stock Ansible run this way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

CONFIG = """\
[defaults]
inventory = {root}/inventory/lab
roles_path = {root}/roles
library = {root}/library
filter_plugins = {root}/filter_plugins
collections_path = {root}/collections:~/.ansible/collections:/usr/share/ansible/collections
"""


def write_config(root: Path, directory: Path) -> Path:
    """The stock configuration for the checkout at `root`, written in `directory`."""
    path = Path(directory) / "stock-ansible.cfg"
    path.write_text(CONFIG.format(root=Path(root).resolve()))
    return path


def environment(config: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (this process's environment) without any ANSIBLE_* setting, and with
    ANSIBLE_CONFIG pointing at `config`."""
    base = os.environ if base is None else base
    clean = {key: value for key, value in base.items() if not key.startswith("ANSIBLE_")}
    return {**clean, "ANSIBLE_CONFIG": str(config)}

"""The code the filters and the artefact pipeline's action plugin share is the collection
thorfleet.lib (collections/ beside site.yml): Ansible finds it the way it finds a
playbook's own collections, so that the plugins import it with no path of their own, under
any configuration (AWX, ansible-navigator, a user's own ansible.cfg)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from tests.conftest import ROOT
from thorfleet import bounded


def test_no_plugin_extends_the_import_path():
    for path in [*ROOT.glob("filter_plugins/*.py"), *ROOT.glob("roles/*/*_plugins/*.py"),
                 *ROOT.glob("collections/**/*.py")]:
        assert not re.search(r"sys\.path\.(append|insert)|sys\.path\s*[+]?=",
                             path.read_text()), path


def test_a_playbook_beside_the_collection_finds_it_with_no_setting(tmp_path):
    # A playbook in a directory holding collections/ (as site.yml), run with ansible-core's
    # defaults and only the filters' directory named: the filters import the collection.
    # Cost: one local run, about 2 s.
    (tmp_path / "collections").symlink_to(ROOT / "collections")
    said = tmp_path / "said.json"
    (tmp_path / "play.yml").write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False, "tasks": [{"ansible.builtin.copy": {
            "content": "{{ {'recipes': {'r': {'engine': 'e', 'model': 'm/x'}},"
                       " 'engines': {'e': {'kind': 'container', 'port': 8000,"
                       " 'image': 'nvcr.io/nvidia/vllm:25.10-py3'}},"
                       " 'models': {'m/x': {'huggingface': {'repo': 'm/x'}}}}"
                       " | thorfleet_catalogue | to_json }}",
            "dest": str(said), "mode": "0644"}}]}]))
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    done = bounded.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,",
         "-c", "local", "play.yml"], 120, cwd=tmp_path,
        env={**env, "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"), "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_FILTER_PLUGINS": str(ROOT / "filter_plugins"),
             "ANSIBLE_PYTHON_INTERPRETER": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(said.read_text())["recipes"] == {"r": {"engine": "e", "model": "m/x"}}

"""The services phase renders units and environment files on the controller and writes
only those that differ from the host's: rendered exactly as Ansible's template lookup
renders them (so the sums match what the copy task writes), with `spec` set per service."""

from __future__ import annotations

import hashlib
import os
import time

import pytest
from ansible.errors import AnsibleLookupError
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import lookup_loader
from ansible.template import Templar

from tests.conftest import ROOT, load

unit_files = load("roles/inference_services/lookup_plugins/thorfleet_unit_files.py")

SPECS = [{"name": "chat", "unit": "thorfleet-chat.service", "kind": "container"},
         {"name": "asr", "unit": "thorfleet-asr.service", "kind": "native"}]


@pytest.fixture
def role(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    for kind in ("container", "native"):
        (templates / f"{kind}.service.j2").write_text(
            "{{ ansible_managed | comment }}\n[Service]\n"
            f"# {kind}\nExecStart=/bin/{{{{ spec.name }}}} --port {{{{ port }}}}\n"
            # A shell line of a unit, with its backslashes, as the real templates have.
            "ExecStartPost=/bin/sh -c '{{ 'echo a\\\\tb' }}' \\\n    probe\n"
            "{% if spec.name == 'chat' %}\nEnvironment=A=1\n{% endif %}\n")
    (templates / "service.env.j2").write_text("KEY={{ keys[spec.name] }}\n")
    return tmp_path


def lookups(role):
    loader = DataLoader()
    variables = {"ansible_search_path": [str(role)], "port": 8000,
                 "keys": {"chat": "s3cret", "asr": ""}}
    ours = unit_files.LookupModule(loader=loader, templar=Templar(loader=loader))
    builtin = lookup_loader.get("template", loader=loader,
                                templar=Templar(loader=loader))
    return ours, builtin, variables


def sha1(text):
    return hashlib.sha1(text.encode()).hexdigest()


def test_each_file_renders_as_the_template_lookup_renders_it(role):
    ours, builtin, variables = lookups(role)
    units = ours.run(["unit"], variables, specs=SPECS, directory="/etc/systemd/system")
    assert [(f["name"], f["unit"], f["dest"]) for f in units] == [
        ("chat", "thorfleet-chat.service", "/etc/systemd/system/thorfleet-chat.service"),
        ("asr", "thorfleet-asr.service", "/etc/systemd/system/thorfleet-asr.service")]
    for spec, rendered in zip(SPECS, units, strict=True):
        expected = builtin.run([f"{spec['kind']}.service.j2"], variables,
                               template_vars={"spec": spec})[0]
        assert rendered["content"] == expected
    assert ("# container\nExecStart=/bin/chat --port 8000\n"
            "ExecStartPost=/bin/sh -c 'echo a\\tb' \\\n    probe\nEnvironment=A=1\n"
            in units[0]["content"])
    assert "# native\nExecStart=/bin/asr --port 8000\n" in units[1]["content"]
    assert units[0]["content"].startswith("#\n# Ansible managed")
    envs = ours.run(["env"], variables, specs=SPECS, directory="/etc/thorfleet/services")
    assert [(f["dest"], f["content"]) for f in envs] == [
        ("/etc/thorfleet/services/chat.env", "KEY=s3cret\n"),
        ("/etc/thorfleet/services/asr.env", "KEY=\n")]
    # `spec` is layered over the variables, never written into them.
    assert "spec" not in variables


def test_only_the_files_whose_sum_differs_from_the_hosts_are_returned(role):
    ours, _, variables = lookups(role)
    envs = ours.run(["env"], variables, specs=SPECS, directory="/e")
    sums = {"/e/chat.env": sha1("KEY=s3cret\n"), "/e/asr.env": sha1("KEY=old\n")}
    assert [f["name"] for f in ours.run(["env"], variables, specs=SPECS, directory="/e",
                                        sums=sums)] == ["asr"]
    converged = {f["dest"]: sha1(f["content"]) for f in envs}
    assert ours.run(["env"], variables, specs=SPECS, directory="/e", sums=converged) == []
    # "" is what the host reports for a file it lacks or holds with other rights.
    assert len(ours.run(["env"], variables, specs=SPECS, directory="/e",
                        sums=dict.fromkeys(converged, ""))) == 2


def test_a_wrong_kind_of_file_or_a_missing_template_is_refused(role):
    ours, _, variables = lookups(role)
    with pytest.raises(AnsibleLookupError, match="give 'unit' or 'env'"):
        ours.run(["units"], variables, specs=SPECS, directory="/e")
    with pytest.raises(AnsibleLookupError, match="no template other.service.j2"):
        ours.run(["unit"], variables, specs=[{**SPECS[0], "kind": "other"}], directory="/e")


@pytest.mark.parametrize("managed", [
    "Ansible managed",
    # A site's own setting: its placeholders and time codes, as Ansible expands them.
    "Managed by {uid} on {host} from {file}, changed %Y-%m-%d",
    None])  # the user's own ansible_managed variable, which the setting never replaces
def test_ansible_managed_is_what_the_template_lookup_makes_of_the_setting(
        role, monkeypatch, managed):
    from ansible import constants
    real = constants.config.get_config_value
    monkeypatch.setattr(constants.config, "get_config_value", lambda name, *a, **k: (
        managed if name == "DEFAULT_MANAGED_STR" and managed else real(name, *a, **k)))
    ours, builtin, variables = lookups(role)
    if managed is None:
        variables["ansible_managed"] = "kept by the site's own tooling"
    (unit, _) = ours.run(["unit"], variables, specs=SPECS, directory="/e")
    expected = builtin.run(["container.service.j2"], variables,
                           template_vars={"spec": SPECS[0]})[0]
    assert unit["content"] == expected
    line = unit["content"].splitlines()[1]
    if managed is None:
        assert line == "# kept by the site's own tooling"
    elif managed == "Ansible managed":
        assert line == "# Ansible managed"
    else:
        year = time.localtime((role / "templates/container.service.j2").stat().st_mtime).tm_year
        assert line.startswith("# Managed by ") and (
            f" on {os.uname()[1]} from container.service.j2, changed {year}-" in line), line


def test_the_lookup_uses_no_private_ansible_core_interface():
    source = (ROOT / "roles/inference_services/lookup_plugins/thorfleet_unit_files.py"
              ).read_text()
    assert "ansible._internal" not in source and "_internal" not in source

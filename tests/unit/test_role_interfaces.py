"""The roles talk through public interfaces: no role, playbook or template reads or sets
another role's private (`__`) variable, every entry point a playbook or role includes has
an argument spec with typed, described inputs, and each role's result fact is the one
its README documents."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if p.is_dir())
PRIVATE = re.compile(r"(?<![A-Za-z0-9_])__([a-z][a-z0-9_]*)")
INCLUDES = ("ansible.builtin.include_role", "ansible.builtin.import_role")


def owner(variable: str) -> str | None:
    """The role a private variable belongs to, by its prefix (the longest role name)."""
    return max((role for role in ROLES if variable.startswith(role + "_")), key=len,
               default=None)


def private_uses(root: Path) -> list[tuple[str, int, str]]:
    """(file, line, variable) of every private variable other than its file's own: in a
    role, another role's; in a playbook, any role's (a playbook's own have no role's
    prefix, `__rollout_*`). Task files, vars, defaults, templates and the filters, which
    read hostvars by name."""
    files = [*root.glob("roles/**/*.yml"), *root.glob("roles/**/*.j2"),
             *root.glob("playbooks/**/*.yml"), root / "site.yml",
             *root.glob("filter_plugins/*.py"), *root.glob("collections/**/*.py")]
    found = []
    for path in files:
        relative = path.relative_to(root)
        mine = relative.parts[1] if relative.parts[0] == "roles" else None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in PRIVATE.finditer(line):
                role = owner(match.group(1))
                if role is not None and role != mine:
                    found.append((str(relative), number, "__" + match.group(1)))
    return found


def test_no_role_or_playbook_reads_or_sets_another_roles_private_variable():
    assert private_uses(ROOT) == []


def test_the_check_finds_a_private_variable_read_across_roles(tmp_path):
    # The check itself, on a copy of two files with the kind of reach it forbids: the
    # rollout reading inference_services' internals, ngc_images reading its plan.
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "roles/ngc_images/vars").mkdir(parents=True)
    (tmp_path / "site.yml").write_text("---\n")
    (tmp_path / "playbooks/host.yml").write_text(
        "when: __inference_services_units is defined and __rollout_on\n")
    (tmp_path / "roles/ngc_images/vars/main.yml").write_text(
        "a: '{{ __inference_services_images }}'\nb: '{{ __ngc_images_plan }}'\n")
    assert sorted(private_uses(tmp_path)) == [
        ("playbooks/host.yml", 1, "__inference_services_units"),
        ("roles/ngc_images/vars/main.yml", 1, "__inference_services_images")]


def includes() -> dict[tuple[str, str], list[str]]:
    """{(role, entry point): [files]} of every include_role and import_role."""
    found: dict[tuple[str, str], list[str]] = {}

    def walk(node, where):
        if isinstance(node, dict):
            for key in INCLUDES:
                if isinstance(node.get(key), dict):
                    target = node[key]
                    found.setdefault((target["name"], target.get("tasks_from", "main")),
                                     []).append(where)
            for value in node.values():
                walk(value, where)
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    for path in [*ROOT.glob("roles/*/tasks/*.yml"), *ROOT.glob("playbooks/**/*.yml"),
                 ROOT / "site.yml"]:
        walk(yaml.safe_load(path.read_text()), str(path.relative_to(ROOT)))
    return found


def upstream_roles() -> set[str]:
    """The roles the artefact pipeline includes by a kind's name (`upstream`)."""
    return {role for role in ROLES if (ROOT / "roles" / role / "tasks/upstream.yml").exists()}


def entry_points() -> list[tuple[str, str]]:
    points = set()
    for (role, entry) in includes():
        if "{{" in role:  # the pipeline's `upstream`, by the kind's role
            points |= {(name, entry) for name in upstream_roles()}
        else:
            points.add((role, entry))
    return sorted(points)


def test_every_entry_point_is_found():
    points = entry_points()
    assert ("model_store", "revisions") in points and ("ggml_build", "upstream") in points
    assert len(points) >= 30


@pytest.mark.parametrize(("role", "entry"), entry_points())
def test_every_entry_point_a_playbook_or_role_uses_has_an_argument_spec(role, entry):
    path = ROOT / "roles" / role / "meta/argument_specs.yml"
    assert path.exists(), f"{role}: no meta/argument_specs.yml"
    spec = yaml.safe_load(path.read_text())["argument_specs"].get(entry)
    assert spec is not None, f"{role}: entry point {entry} has no argument spec"
    assert spec.get("short_description"), f"{role}:{entry}: no short_description"
    for name, option in (spec.get("options") or {}).items():
        assert name.startswith(role + "_") or name.startswith("artefacts_"), \
            f"{role}:{entry}: input {name} is not the role's (or the pipeline's)"
        assert option.get("type") and option.get("description"), f"{role}:{entry}: {name}"


def results() -> dict[str, set[str]]:
    """{role: the result facts its tasks set}: `<role>_result` or another role's public
    name, by set_fact."""
    found: dict[str, set[str]] = {}
    for path in ROOT.glob("roles/*/tasks/*.yml"):
        role = path.parts[-3]
        for task in yaml.safe_load(path.read_text()) or []:
            for name in (task.get("ansible.builtin.set_fact") or {}):
                if not name.startswith("__") and name != "cacheable":
                    found.setdefault(role, set()).add(name)
    return found


def test_each_role_hands_back_one_result_fact_its_readme_documents():
    found = results()
    for role, names in found.items():
        # A kind's `upstream` hands its results back to the pipeline's rounds.
        assert names <= {f"{role}_result", "artefacts_upstream_results"}, (role, names)
        readme = (ROOT / "roles" / role / "README.md").read_text()
        undocumented = [name for name in names
                        if f"`{name}`" not in readme and f"`{name}." not in readme]
        assert undocumented == [], f"roles/{role}/README.md does not name {undocumented}"
    # Those the rollout's transaction reads (playbooks/rollout/host.yml).
    assert {"model_store", "inference_services", "service_verify"} <= set(found)

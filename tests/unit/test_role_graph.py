"""Which role uses which: a role's meta dependencies and the roles its tasks include or
import. The graph has no cycle, so that a role's place is clear: the base role thorfleet,
which every role depends on, includes none of them (issue 35: it used to plan a bundle's
needs by including four roles that depend on it)."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT, plugin_utils

KINDS = plugin_utils("artefacts").KINDS

ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "meta/main.yml").exists())


def _tasks(node):
    """Every task of a task file's content, blocks opened."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        yield task
        for part in ("block", "rescue", "always"):
            yield from _tasks(task.get(part))


def uses(role: str) -> set[str]:
    meta = yaml.safe_load((ROOT / "roles" / role / "meta/main.yml").read_text()) or {}
    used = {d["role"] if isinstance(d, dict) else d for d in meta.get("dependencies") or []}
    for path in sorted((ROOT / "roles" / role / "tasks").glob("*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text())):
            for action in ("ansible.builtin.include_role", "ansible.builtin.import_role",
                           "include_role", "import_role"):
                if isinstance(task.get(action), dict):
                    name = task[action]["name"]
                    # The pipeline's include of a kind's role (its upstream, in the
                    # rounds) names it from the table.
                    used |= ({kind["role"] for kind in KINDS.values()
                              if kind["upstream"] and kind["via"] == "share"}
                             if "{{" in name else {name})
    return used - {role}


def cycle() -> list[str]:
    graph = {role: uses(role) for role in ROLES}
    state: dict[str, str] = {}

    def visit(role: str, path: list[str]) -> list[str]:
        state[role] = "open"
        for used in sorted(graph.get(role, ())):
            if state.get(used) == "open":
                return path + [role, used]
            if used not in state:
                found = visit(used, path + [role])
                if found:
                    return found
        state[role] = "done"
        return []

    for role in ROLES:
        if role not in state:
            found = visit(role, [])
            if found:
                return found
    return []


def test_no_role_uses_a_role_that_uses_it():
    assert cycle() == []


def test_the_base_role_holds_settings_only_and_the_shared_tasks_include_no_other_role():
    # Settings only (defaults, vars, the lock's lookup): the tasks the roles share are
    # thorfleet_common's, which depends on it and includes nothing more.
    assert not (ROOT / "roles/thorfleet/tasks").exists()
    assert uses("thorfleet") == set()
    assert uses("thorfleet_common") == {"thorfleet"}
    assert all("thorfleet" in uses(role) for role in ROLES if role != "thorfleet")


def test_the_artefact_pipeline_is_called_by_playbooks_only_and_uses_the_kinds_roles():
    # It runs between a kind's plan and its role (playbooks/models.yml, engines.yml,
    # images.yml): no
    # role includes it, and it depends on the base role alone.
    assert [role for role in ROLES if "artefacts" in uses(role)] == []
    meta = yaml.safe_load((ROOT / "roles/artefacts/meta/main.yml").read_text())
    assert [d["role"] for d in meta["dependencies"]] == ["thorfleet"]
    # site_cache: the images' one fetch per fleet (a bundle's images are copied by its
    # module, with its login).
    assert uses("artefacts") == {"thorfleet", "thorfleet_common", "model_store", "ggml_build",
                                 "site_cache"}


def test_a_cycle_is_found(monkeypatch):
    # The check itself: the base role planning with a role that depends on it, as it did.
    real = uses
    monkeypatch.setitem(globals(), "uses", lambda role: real(role) | (
        {"model_store"} if role == "thorfleet" else set()))
    found = cycle()
    assert found[-1] in found[:-1] and {"thorfleet", "model_store"} <= set(found), found

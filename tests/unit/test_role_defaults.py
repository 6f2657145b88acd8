"""Each role's settings have one default: its defaults/main.yml (or, for the engine
builds' root and toolkit, the shared settings every phase reads), which its argument
spec repeats for `ansible-doc` and the role READMEs. The spec and the defaults must
agree, and every setting must be in both."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT, SHARED_DEFAULTS


def entry_point(role: str):
    # The shared settings' entry point is `settings` (checked once, by thor_preflight).
    return "settings" if role == "thorfleet" else "main"


def specs(role: str) -> dict:
    path = ROOT / "roles" / role / "meta/argument_specs.yml"
    return yaml.safe_load(path.read_text())["argument_specs"] if path.exists() else {}


# The roles with settings: a `main` (or `settings`) entry point in their argument spec
# (thorfleet_common has only entry points of its own, each with its inputs).
ROLES = sorted(p.parent.parent.name for p in ROOT.glob("roles/*/meta/argument_specs.yml")
               if entry_point(p.parent.parent.name) in specs(p.parent.parent.name))


def spec_options(role: str) -> dict:
    """The role's settings: its main options, less the inputs a caller must give (the
    artefact pipeline's kind and entries), which have no default."""
    return {name: option for name, option in specs(role)[entry_point(role)]["options"].items()
            if not option.get("required")}


def defaults_of(role: str) -> dict:
    """The role's defaults, and shared ones that carry its prefix."""
    path = ROOT / "roles" / role / "defaults/main.yml"
    own = yaml.safe_load(path.read_text()) or {} if path.exists() else {}
    if role == "thorfleet":  # the shared settings themselves, less other roles' own
        return {k: v for k, v in own.items() if k.startswith("thorfleet_")}
    shared = {k: v for k, v in SHARED_DEFAULTS.items() if k.startswith(role + "_")}
    overlap = set(own) & set(shared)
    assert not overlap, f"{role}: defined twice, here and in the shared settings: {overlap}"
    return {**shared, **own}


def same(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):  # a template may be folded differently
        return a.split() == b.split()
    return a == b


@pytest.mark.parametrize("role", ROLES)
def test_every_setting_has_one_default_which_the_spec_repeats(role):
    options, defaults = spec_options(role), defaults_of(role)
    assert sorted(options) == sorted(defaults), role
    for name, option in options.items():
        assert "default" in option, f"{role}: {name} has no default in its argument spec"
        assert same(option["default"], defaults[name]), \
            f"{role}: {name}: spec {option['default']!r}, defaults {defaults[name]!r}"


def test_no_role_defines_a_setting_of_another_role():
    for role in ROLES:
        path = ROOT / "roles" / role / "defaults/main.yml"
        if role == "thorfleet" or not path.exists():
            continue
        for name in yaml.safe_load(path.read_text()) or {}:
            assert name.startswith(role + "_"), f"{role} defines {name}"

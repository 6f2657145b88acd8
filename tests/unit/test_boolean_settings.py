"""Boolean settings given on the command line (`-e ngc_images_refresh=false`) arrive as
strings, and any non-empty string is true to Jinja and to a filter's Python. So each
boolean setting of a role's argument spec is read through `| bool` wherever an
expression reads it. Two readers convert it themselves: a module's option of type bool,
given the setting alone (`clocks: "{{ thorfleet_jetson_clocks }}"`), and the fleet
settings' check (thorfleet_fleet_problems), which names a value that is neither."""

from __future__ import annotations

import re

import yaml

from tests.conftest import ROOT

EXPRESSION = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.DOTALL)
# What may follow a setting: `| bool`, after a default; or a filter that converts it.
CONVERTED = r"(?:\s*\|\s*default\([^)]*\))?\s*\|\s*(?:bool\b|thorfleet_fleet_problems\()"
CONDITION = re.compile(r"^\s*(?:when|changed_when|failed_when|until):\s*(.+)$", re.MULTILINE)


def boolean_settings() -> set[str]:
    names = set()
    for spec in ROOT.glob("roles/*/meta/argument_specs.yml"):
        for entry in yaml.safe_load(spec.read_text())["argument_specs"].values():
            names |= {name for name, option in (entry.get("options") or {}).items()
                      if option.get("type") == "bool"}
    return names


def expressions(path):
    text = path.read_text()
    found = [next(g for g in m.groups() if g is not None) for m in EXPRESSION.finditer(text)]
    if path.suffix == ".yml":
        found += [m.group(1) for m in CONDITION.finditer(text) if "{{" not in m.group(1)]
    return found


def test_each_boolean_setting_is_read_through_the_bool_filter():
    names = boolean_settings()
    assert {"ngc_images_refresh", "inference_services_drop_caches", "thorfleet_lab"} <= names
    files = [*ROOT.glob("roles/*/*/*.yml"), *ROOT.glob("roles/*/templates/*.j2"),
             *ROOT.glob("playbooks/*.yml"), ROOT / "site.yml"]
    unconverted = []
    for path in files:
        if "/defaults/" in str(path) or "/meta/" in str(path):
            continue
        for expression in expressions(path):
            if expression.strip() in names and "/tasks/" in str(path):
                continue  # a module's option, which converts the string itself
            for name in names:
                if re.search(rf"\b{name}\b(?!{CONVERTED})", expression):
                    unconverted.append(f"{path.relative_to(ROOT)}: {name} in "
                                       f"{expression.strip()[:80]!r}")
    assert unconverted == []

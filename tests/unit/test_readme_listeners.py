"""The README's table "Who can read what on the site's network" lists everything the
project makes listen: each unit the roles start that listens has a row, and each row
names the lab tests that check it, which exist."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

START = "### Who can read what on the site's network"
# The units the roles start that listen: the shares (systemd-run), the site cache's
# registries, the services' units (thorfleet-<service>) and the Jetson exporter (the
# node exporter and Prometheus are Debian's units, in the table by their package).
UNITS = {"thorfleet-fleet-share", "thorfleet-bundle-share", "thorfleet-bundle-git",
         "thorfleet-site-cache", "thorfleet-site-cache-fill", "thorfleet-<service>",
         "thorfleet-jetson-exporter"}
NAMED = re.compile(r"`(?P<file>test_\w+\.py)::(?:(?P<cls>[A-Z]\w*)::)?(?P<test>test_\w+)`")


def rows() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(START):]
    table = [line for line in section.split("\n\n| ", 1)[1].split("\n\n", 1)[0].splitlines()]
    return [[cell.strip() for cell in ("| " + line if i == 0 else line).strip("|").split("|")]
            for i, line in enumerate(table)][2:]


def defined(path, cls: str | None) -> set[str]:
    tree = ast.parse(path.read_text())
    body = tree.body
    if cls:
        body = next(node.body for node in tree.body
                    if isinstance(node, ast.ClassDef) and node.name == cls)
    return {node.name for node in body if isinstance(node, ast.FunctionDef)}


def test_every_unit_that_listens_has_a_row_and_every_row_names_its_tests():
    listed = rows()
    units = set()
    for row in listed:
        assert len(row) == 6, row
        units.update(re.findall(r"`(thorfleet-[\w<>-]+)`", row[0]))
        named = list(NAMED.finditer(row[5]))
        assert named, row
        for match in named:
            (path,) = ROOT.glob(f"tests/lab/{match['file']}")
            assert match["test"] in defined(path, match["cls"]), (row[0], match[0])
    assert units == UNITS


def test_the_units_in_the_table_are_the_ones_the_roles_start():
    # Each unit of the table is named in the roles as it is started or templated.
    text = "\n".join(path.read_text() for path in ROOT.glob("roles/**/*")
                     if path.is_file() and path.suffix in (".yml", ".j2"))
    for unit in UNITS - {"thorfleet-<service>"}:
        assert unit in text, unit

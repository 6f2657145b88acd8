"""The README's list "What happens when something goes wrong" names, for each failure
path, the tests that inject it: each item names one, and each test it names exists (a
name cut short with "..." matches the one test it begins)."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT

START = "What happens when something goes wrong"
NAMED = re.compile(r"`(?:(?P<file>[\w/]+\.py)(?:::)?)?(?P<test>test_\w+)?(?P<cut>\.\.\.)?`")


def items() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(START):]
    section = section[:section.index("\n\n", section.index("\n- "))]
    return ["- " + item for item in section.split("\n- ")[1:]]


def defined_tests(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_each_failure_path_names_the_tests_that_inject_it():
    listed = items()
    assert len(listed) >= 12, listed
    for item in listed:
        assert "*Tested:*" in item, item
        tested = " ".join(item.split("*Tested:*", 1)[1].split())
        named, files = [], []
        for match in NAMED.finditer(tested):
            if match["file"]:
                # tests/lab/test_rollout.py and tests/unit/test_rollout.py: either.
                files = sorted(ROOT.glob("tests/**/" + match["file"].rsplit("/", 1)[-1]))
                assert files, (item, match[0])
            if match["test"]:
                hits = [(path.name, name) for path in files for name in defined_tests(path)
                        if (name.startswith(match["test"]) if match["cut"]
                            else name == match["test"])]
                assert len(hits) == 1, (item, match[0], hits)
                named.append(hits[0])
            elif match["file"]:
                named.append(match["file"])
        assert named, item

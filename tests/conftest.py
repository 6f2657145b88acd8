"""Shared test helpers: load thorfleet's Ansible modules and filters as Python modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load(relative: str):
    """Import a file of the project (a module in library/, a filter plugin) by path."""
    path = ROOT / relative
    name = "thorfleet_test_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT

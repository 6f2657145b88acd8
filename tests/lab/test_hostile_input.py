"""Hostile values stop a run in preflight, before anything on a host changes: thor01's
units and environment files stay byte for byte as they were, and a refused key is not
printed."""

from __future__ import annotations

import json

from tests.lab.conftest import Playbook
from thorfleet.lab import LAB_SERVICES

STATE = "sha256sum /etc/systemd/system/thorfleet-*.service /etc/thorfleet/services/*.env"
SECRET = "lab-secret-key-3d1e"


def services_with(**fields) -> str:
    """-e JSON: thor01's services, the first one with `fields` set."""
    first, *rest = LAB_SERVICES
    return json.dumps({"thorfleet_services": [{**first, **fields}, *rest]})


HOSTILE = [
    (services_with(bind_address="fe80::1%$(id)"), "thor01: service qwen3: field bind_address"),
    (services_with(served_name="qwen3\nExecStartPre=+/bin/id"),
     "thor01: service qwen3: field served_name"),
    (services_with(extra_args=["--ctx-size", "0\nExecStartPre=+/bin/id"]),
     "thor01: service qwen3: field extra_args"),
    (json.dumps({"thorfleet_api_key": f"{SECRET}\nLD_PRELOAD=/tmp/x.so"}),
     "thor01: thorfleet_api_key: field api_key: the value given is not a key"),
    (json.dumps({"thorfleet_models_root": "/etc"}),
     "thor01: thorfleet_models_root: '/etc' is inside a system directory"),
    (json.dumps({"thorfleet_catalogue_extra": {"recipes": {"llama-qwen3-8b-gguf-nothink": {
        "args": ["--jinja", "50%;`id`\r"]}}}}),
     "thorfleet_catalogue_extra.recipes.llama-qwen3-8b-gguf-nothink: field args"),
]


def test_hostile_values_stop_preflight_and_leave_units_and_env_files_as_they_were(thor01):
    before = thor01.check_output(STATE)
    for extra, field in HOSTILE:
        run = Playbook("site.yml", "-l", "thor01", "-e", extra)
        assert run.rc != 0, run
        assert "fatal: [thor01]" in run.output and field in run.output, (field, run)
        assert "PLAY [Models" not in run.output, run  # nothing after preflight ran
        assert SECRET not in run.output
    assert thor01.check_output(STATE) == before

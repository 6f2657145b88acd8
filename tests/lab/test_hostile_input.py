"""Hostile values stop a run in preflight, before anything on a host changes: thor01's
units and environment files stay byte for byte as they were, and a refused key is not
printed."""

from __future__ import annotations

import json

from tests.lab.conftest import Playbook
from thorfleet.lab import LAB_SERVICES

STATE = "sha256sum /etc/systemd/system/thorfleet-*.service /etc/thorfleet/services/*.env"
SECRET = "lab-secret-key-3d1e"


def services_with(name: str = "qwen3", **fields) -> str:
    """-e JSON: thor01's services, the one named `name` with `fields` set."""
    return json.dumps({"thorfleet_services": [
        {**service, **fields} if service["name"] == name else service
        for service in LAB_SERVICES]})


def catalogue_extra(section: str, entry: str, **fields) -> str:
    return json.dumps({"thorfleet_catalogue_extra": {section: {entry: fields}}})


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
    # The address the exporters' unit and flags are written with (issue 37).
    (json.dumps({"thorfleet_fleet_address": "10.213.1.2\nExecStartPre=+/bin/id"}),
     "thor01: thorfleet_fleet_address: "),
]


# Values of the wrong type, out of range, or flags that would undo what preflight checked
# (issue 33): each refused naming the field, with no Python error and no key shown.
# Cost: 11 preflight-only runs, about 1 minute (and those of issue 35 below).
MISTAKEN = [
    (services_with(recipe=["llama-qwen3-8b-gguf-nothink"]), "thor01: service qwen3: field recipe"),
    (catalogue_extra("engines", "vllm", kind=["container"]),
     "thorfleet_catalogue_extra.engines.vllm: field kind"),
    (services_with("qwen3-vllm", extra_args=["--gpu-memory-utilization", "0.9"]),
     "thor01: service qwen3-vllm: field extra_args: '--gpu-memory-utilization' sets"),
    (services_with("qwen3-vllm", extra_args=["--port", "8000"]),
     "thor01: service qwen3-vllm: field extra_args: '--port' sets"),
    (services_with(extra_args=["--host", "0.0.0.0"]),
     "thor01: service qwen3: field extra_args: '--host' sets"),
    (services_with("qwen3-sglang", extra_args=[f"--api-key={SECRET}"]),
     "thor01: service qwen3-sglang: field extra_args: '--api-key' sets"),
    (services_with("qwen3-vllm", extra_args=["--allowed-local-media-path", "/"]),
     "thor01: service qwen3-vllm: field extra_args: '--allowed-local-media-path' sets"),
    (catalogue_extra("recipes", "vllm-qwen3-8b-nothink", memory_share=-1),
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b-nothink: field memory_share"),
    # YAML's NaN (JSON has none).
    ("{thorfleet_catalogue_extra: {recipes: {vllm-qwen3-8b-nothink: {memory_share: .nan}}}}",
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b-nothink: field memory_share"),
    ("thorfleet_memory_budget=2.0", "thor01: field thorfleet_memory_budget"),
    # An exporter's port that a service already takes (issue 37). Cost: one more
    # preflight-only run, ~3 s.
    ("thorfleet_metrics_node_port=8001",
     "thor01: thorfleet_metrics_node_port: 8001 is already the port of service qwen3-vllm"),
    # Where artefacts may land (issue 35): model roots a container running as root could
    # use to write systemd's state, the engine builds or a user's ~/.ssh; a catalogue file
    # where a model's next revision is staged, or inside a model's directory. Cost: 5
    # preflight-only runs, ~15 s.
    (json.dumps({"thorfleet_models_root": "/var/lib"}),
     "thor01: thorfleet_models_root: '/var/lib' is inside a system directory"),
    (json.dumps({"thorfleet_models_root": "/opt/thorfleet"}),
     "thor01: thorfleet_models_root: '/opt/thorfleet' overlaps the engine builds"),
    (json.dumps({"thorfleet_models_root": "/home/nvidia"}),
     "thor01: thorfleet_models_root: '/home/nvidia' is /home or a home directory"),
    (catalogue_extra("files", "notes", url="https://files.example/notes.json",
                     path="Qwen/.Qwen3-8B.partial/notes.json"),
     "thorfleet_catalogue_extra.files.notes: field path: 'Qwen/.Qwen3-8B.partial/notes.json'"),
    (catalogue_extra("files", "notes", url="https://files.example/notes.json",
                     path="Qwen/Qwen3-8B/config.json"),
     "thorfleet_catalogue_extra.files.notes: field path: 'Qwen/Qwen3-8B/config.json' overlaps "
     "model Qwen/Qwen3-8B's place"),
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


def test_mistaken_values_are_refused_in_preflight_naming_the_field(thor01):
    before = thor01.check_output(STATE)
    # The command line's usual form: a string, used as the number it reads as.
    taken = Playbook("site.yml", "-l", "thor01", "--tags", "preflight",
                     "-e", "thorfleet_memory_budget=0.95")
    assert taken.rc == 0, taken
    for extra, field in MISTAKEN:
        run = Playbook("site.yml", "-l", "thor01", "--tags", "preflight", "-e", extra)
        assert run.rc != 0, run
        assert "fatal: [thor01]" in run.output and field in run.output, (field, run)
        for python_error in ("Traceback", "unhashable", "not supported between", "Error:"):
            assert python_error not in run.output, (python_error, run)
        assert SECRET not in run.output
    assert thor01.check_output(STATE) == before

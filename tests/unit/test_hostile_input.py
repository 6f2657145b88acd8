"""Hostile and broken values refused in preflight, before anything on a host changes: each
value that reaches a unit, an environment file, a file name or a shell is checked against
its field's characters and length, and the error names host, service and field without
quoting a secret."""

from __future__ import annotations

import base64
import functools
import json

import pytest

from tests.conftest import BUILDS_ROOT, load
from tests.unit.test_service_specs import CATALOGUE

catalogue_filters = load("filter_plugins/catalogue.py")
# Resolved with the default builds root, as a fleet whose inventory says nothing.
service_specs = functools.partial(catalogue_filters.service_specs, builds_root=BUILDS_ROOT)
SHELL = ["$(id)", "`id`", "; id", "50%"]
CONTROL = ["\n", "\r", "\x00"]


def refused(services=None, extra=None, **settings) -> str:
    services = services if services is not None else [{"name": "a", "recipe": "vllm-qwen3-8b"}]
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
        service_specs(services, merged, host="thor01", **settings)
    return str(raised.value)


def service(**fields) -> list[dict]:
    return [{"name": "a", "recipe": "vllm-qwen3-8b", **fields}]


@pytest.mark.parametrize("bind", ["fe80::1%eth0", "fe80::1%$(id)", "fe80::1%`id`",
                                  "10.0.0.1\n", "10.0.0.1; id"])
def test_a_bind_address_with_a_zone_or_shell_syntax_is_refused(bind):
    assert "thor01: service a: field bind_address:" in refused(service(bind_address=bind))


@pytest.mark.parametrize("served", [f"qwen3{bad}" for bad in SHELL + CONTROL + [" x", "'"]]
                         + ["q" * 129, "-qwen3", ""])
def test_a_served_name_outside_its_characters_is_refused(served):
    assert "thor01: service a: field served_name:" in refused(service(served_name=served))


@pytest.mark.parametrize("token", ["--max-model-len\n4096", "--x\rExecStartPre=+/bin/id",
                                   "--x\x00", "x" * 4097])
def test_an_extra_arg_with_a_control_character_or_overlong_is_refused(token):
    assert "thor01: service a: field extra_args:" in refused(service(extra_args=[token]))


@pytest.mark.parametrize("key", ["secret-key\nLD_PRELOAD=/tmp/x.so", 'secret"key1',
                                 "secret\\key1", "secret'key1", "secret$(id)", "short",
                                 "secret key 1", "k" * 257])
def test_an_api_key_outside_its_characters_is_refused_without_quoting_it(key):
    per_service = refused(service(api_key=key))
    assert "thor01: service a: field api_key: the value given is not a key" in per_service
    host_wide = refused(api_key=key)
    assert "thor01: thorfleet_api_key: field api_key: the value given is not a key" in host_wide
    for message in (per_service, host_wide):
        assert key not in message


def test_an_api_key_that_starts_with_a_dash_is_a_key():
    specs = service_specs(service(api_key="-starts-with-a-dash"),
                                            CATALOGUE, host="thor01")
    assert specs[0]["name"] == "a"


@pytest.mark.parametrize("name", ["a" * 64, "a\nb", "a;b", "A", "-a", "a/b"])
def test_a_service_name_outside_its_characters_or_too_long_is_refused(name):
    assert "field name:" in refused([{"name": name, "recipe": "vllm-qwen3-8b"}])


@pytest.mark.parametrize(("root", "says"), [
    ("models", "is not an absolute, normalised path"),
    ("/", "is not an absolute, normalised path"),
    ("/models/", "is not an absolute, normalised path"),
    ("/models/../etc", "is not an absolute, normalised path"),
    ("/mo dels", "is not an absolute, normalised path"),
    ("/models\n", "is not an absolute, normalised path"),
    ("/etc", "is inside a system directory"),
    ("/etc/thorfleet/models", "is inside a system directory"),
    ("/usr/local/models", "is inside a system directory"),
    ("/var/lib/docker/models", "is inside a system directory"),
])
def test_a_model_root_that_is_not_a_plain_absolute_path_outside_the_system_is_refused(
        root, says):
    message = refused(models_root=root)
    assert message.startswith("thor01: thorfleet_models_root:") and says in message


def test_a_model_root_of_ones_own_is_taken():
    specs = service_specs(service(), CATALOGUE, host="thor01",
                                            models_root="/data/models")
    assert specs[0]["model"] == "/data/models/Qwen/Qwen3-8B"


@pytest.mark.parametrize(("extra", "says"), [
    ({"recipes": {"x\nExecStartPre=+/bin/id": {"engine": "vllm", "model": "Qwen/Qwen3-8B"}}},
     "thorfleet_catalogue_extra.recipes: field key:"),
    ({"recipes": {"vllm-qwen3-8b": {"served_name": "qwen3;id"}}},
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b: field served_name:"),
    ({"recipes": {"vllm-qwen3-8b": {"args": ["--x\nExecStartPre=+/bin/id"]}}},
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b: field args:"),
    ({"recipes": {"llama-qwen3-8b-gguf": {"model_file": "../../etc/shadow"}}},
     "thorfleet_catalogue_extra.recipes.llama-qwen3-8b-gguf: field model_file:"),
    ({"models": {"Qwen/Qwen%3": {"huggingface": {"repo": "Qwen/Qwen3"}}}},
     "thorfleet_catalogue_extra.models: field key:"),
    ({"models": {"Qwen/Qwen3-8B": {"huggingface": {"repo": "Qwen/Qwen3-8B; id"}}}},
     "thorfleet_catalogue_extra.models.Qwen/Qwen3-8B: field huggingface.repo:"),
    ({"models": {"Qwen/Qwen3-8B": {"huggingface": {"revision": "main\n"}}}},
     "thorfleet_catalogue_extra.models.Qwen/Qwen3-8B: field huggingface.revision:"),
    ({"engines": {"vllm": {"image": "nvcr.io/nvidia/vllm:25.11 --privileged"}}},
     "thorfleet_catalogue_extra.engines.vllm: field image:"),
    ({"engines": {"vllm": {"port": 0}}}, "thorfleet_catalogue_extra.engines.vllm: field port:"),
    ({"engines": {"vllm": {"api_key_env": "LD_PRELOAD=/x"}}},
     "thorfleet_catalogue_extra.engines.vllm: field api_key_env:"),
    ({"engines": {"sglang": {"api_key_flag": "-k"}}},
     "thorfleet_catalogue_extra.engines.sglang: field api_key_flag:"),
    ({"engines": {"llama-server": {"binary": "../../bin/sh"}}},
     "thorfleet_catalogue_extra.engines.llama-server: field binary:"),
    ({"files": {"qwen3_nonthinking.jinja": {"url": "https://x/t.jinja\nfoo"}}},
     "thorfleet_catalogue_extra.files.qwen3_nonthinking.jinja: field url:"),
    ({"files": {"qwen3_nonthinking.jinja": {"path": "/etc/cron.d/x"}}},
     "thorfleet_catalogue_extra.files.qwen3_nonthinking.jinja: field path:"),
    ({"files": {"qwen3_nonthinking.jinja": {"sha256": "A" * 64}}},
     "thorfleet_catalogue_extra.files.qwen3_nonthinking.jinja: field sha256:"),
])
def test_a_hostile_catalogue_entry_is_refused_naming_it_and_the_field(extra, says):
    assert says in refused(extra=extra)


def test_the_projects_catalogue_and_the_sample_fleet_pass_every_rule():
    merged = catalogue_filters.merge_catalogue(CATALOGUE, {})
    for recipe in merged["recipes"]:
        port = 8000 if recipe.startswith(("vllm", "sglang", "llama")) else 8080
        service_specs([{"name": "a", "recipe": recipe, "port": port,
                                          "memory_share": 0.5}], merged, host="thor01",
                                        api_key="sk-thor-fleet-example-key")


@pytest.mark.parametrize("commit", ["a" * 40 + "\nExecStartPre=+/bin/sh -c id", "a" * 39, 40])
def test_a_manifests_commit_reaches_a_unit_only_as_40_hex_characters(commit):
    slurped = {"content": base64.b64encode(json.dumps({"commit": commit}).encode()).decode()}
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        catalogue_filters.manifest_commit(slurped, "/models/m")
    assert "/models/m/thorfleet-manifest.json: commit" in str(raised.value)
    good = {"content": base64.b64encode(json.dumps({"commit": "a" * 40}).encode()).decode()}
    assert catalogue_filters.manifest_commit(good, "/models/m") == "a" * 40
    assert catalogue_filters.manifest_commit({"failed": True}, "/models/m") == "not downloaded"

"""Services resolved to argv: every recipe against the guide's own command, token by token.

The expected commands below are copied by hand from the guide's command blocks, apart from
the catalogue, so that the catalogue cannot agree with itself. JSON values are compared
after parsing. The only differences allowed are listed with the test that allows them.
"""

from __future__ import annotations

import functools
import json

import pytest
import yaml

from tests.conftest import BUILDS_ROOT, CATALOGUE, ROOT, load
from tests.guide import BINARIES, GUIDE, guide, same_tokens

catalogue_filters = load("filter_plugins/catalogue.py")
# Resolved with the default builds root, as a fleet whose inventory says nothing.
service_specs = functools.partial(catalogue_filters.service_specs, builds_root=BUILDS_ROOT)
def specs(services, **kwargs):
    return service_specs(services, CATALOGUE, host="thor01", **kwargs)


def one(recipe, **service):
    return specs([{"name": "svc", "recipe": recipe, **service}])[0]


def test_the_guide_covers_every_recipe_of_the_catalogue():
    assert set(GUIDE) == set(CATALOGUE["recipes"])


# The one difference every container recipe has: its memory share as a flag, which the
# guide leaves to the engine (vLLM 0.10.2 on Jetson then takes about all of memory).
MEMORY_FLAGS = {"vllm": "--gpu-memory-utilization", "sglang": "--mem-fraction-static"}
# And the flag that turns on an engine's Prometheus metrics where they are off by default
# (vLLM serves them always; whisper.cpp's server has none).
METRICS_FLAGS = {"sglang": ["--enable-metrics"], "llama-server": ["--metrics"]}


@pytest.mark.parametrize("recipe", sorted(GUIDE))
def test_each_recipe_runs_the_guides_command(recipe):
    argv = one(recipe)["argv"]
    expected = guide(recipe)
    engine = CATALOGUE["recipes"][recipe]["engine"]
    if engine in MEMORY_FLAGS:
        expected += [MEMORY_FLAGS[engine], "0.75"]
    expected += METRICS_FLAGS.get(engine, [])
    assert same_tokens(argv, expected), f"{argv}\n!=\n{expected}"


def test_each_engine_says_where_its_metrics_are():
    paths = {engine: one(recipe)["metrics_path"] for engine, recipe in (
        ("vllm", "vllm-qwen3-8b"), ("sglang", "sglang-qwen3-8b"),
        ("llama-server", "llama-qwen3-8b-gguf"), ("whisper-server", "whisper-large-v3-turbo"))}
    assert paths == {"vllm": "/metrics", "sglang": "/metrics", "llama-server": "/metrics",
                     "whisper-server": None}


def test_every_container_service_carries_its_memory_flag():
    for recipe, entry in CATALOGUE["recipes"].items():
        if entry["engine"] not in MEMORY_FLAGS:
            continue
        for given in (None, 0.3):
            spec = one(recipe, **({"memory_share": given} if given else {}))
            flag = MEMORY_FLAGS[entry["engine"]]
            assert spec["argv"].count(flag) == 1, (recipe, spec["argv"])
            assert spec["argv"][spec["argv"].index(flag) + 1] == str(spec["memory_share"])
            assert spec["memory_share"] == (given or 0.75), recipe


def test_allowed_differences_port_served_name_share_and_model_root():
    moved = specs([{"name": "a", "recipe": "vllm-qwen3-8b-nothink", "port": 8001,
                    "served_name": "chat", "memory_share": 0.4}], models_root="/data")[0]
    assert moved["argv"] == ["vllm", "serve", "/data/Qwen/Qwen3-8B", "--served-model-name",
                             "chat", "--chat-template",
                             "/data/templates/qwen3_nonthinking.jinja", "--port", "8001",
                             "--gpu-memory-utilization", "0.4"]
    sglang = one("sglang-qwen3-8b", port=8002, memory_share=0.5)
    assert sglang["argv"][-7:] == ["--host", "0.0.0.0", "--port", "8002",
                                   "--mem-fraction-static", "0.5", "--enable-metrics"]
    vl = specs([{"name": "v", "recipe": "vllm-qwen2.5-vl-7b-awq"}], models_root="/data")[0]
    assert vl["argv"][-4:-2] == ["--allowed-local-media-path", "/data"]


def test_a_bind_address_replaces_the_guides_and_is_a_listed_difference():
    whisper = one("whisper-large-v3-turbo", bind_address="127.0.0.1")
    expected = guide("whisper-large-v3-turbo")
    expected[expected.index("--host") + 1] = "127.0.0.1"
    assert whisper["argv"] == expected and whisper["bind_address"] == "127.0.0.1"
    # vLLM's default address is the guide's; it gets --host only when moved.
    assert one("vllm-qwen3-8b", bind_address="10.0.0.5")["argv"][-4:-2] == ["--host",
                                                                          "10.0.0.5"]
    assert one("vllm-qwen3-8b")["bind_address"] == "0.0.0.0"


def test_each_engine_says_how_it_takes_an_api_key_and_the_key_is_in_no_spec():
    ways = {recipe: (one(recipe, api_key="secret-key")["api_key_env"],
                     one(recipe, api_key="secret-key")["api_key_flag"])
            for recipe in ("vllm-qwen3-8b", "sglang-qwen3-8b", "llama-qwen3-8b-gguf")}
    assert ways == {"vllm-qwen3-8b": ("VLLM_API_KEY", None),
                    "sglang-qwen3-8b": (None, "--api-key"),
                    "llama-qwen3-8b-gguf": ("LLAMA_API_KEY", None)}
    assert "secret-key" not in json.dumps(one("sglang-qwen3-8b", api_key="secret-key"))


def test_extra_args_come_last():
    spec = one("llama-qwen3-8b-gguf", extra_args=["--threads", "8"])
    assert spec["argv"][-3:] == ["--metrics", "--threads", "8"]


def test_a_spec_names_its_unit_image_or_binary_and_memory_share():
    vllm = one("vllm-whisper-small", source="modelscope", memory_share=0.2)
    assert (vllm["unit"], vllm["kind"], vllm["image"], vllm["modality"]) == (
        "thorfleet-svc.service", "container", "nvcr.io/nvidia/vllm:25.10-py3", "transcription")
    assert vllm["env"] == {"VLLM_USE_MODELSCOPE": "true"}
    assert vllm["model"] == "/models/openai-mirror/whisper-small"
    assert one("vllm-whisper-small")["env"] == {}
    sglang = one("sglang-qwen3-8b")
    assert (sglang["memory_share"], sglang["memory_overhead"]) == (0.75, 0.08)
    assert one("vllm-qwen3-8b")["memory_overhead"] == 0.02
    whisper = one("whisper-large-v3-turbo")
    assert (whisper["kind"], whisper["binary"], whisper["port"], whisper["memory_share"]) == (
        "native", BINARIES["whisper-server"], 8080, 0.02)
    assert "image" not in whisper


def test_the_sample_and_lab_fleets_resolve():
    from thorfleet.lab import LAB_SERVICES

    assert [s["port"] for s in specs(LAB_SERVICES)] == [8000, 8001, 8002, 8003, 8080]
    for host_vars in sorted((ROOT / "inventory/sample/host_vars").glob("*.yml")):
        assert specs(yaml.safe_load(host_vars.read_text())["thorfleet_services"])


def error(services, **kwargs):
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        specs(services, **kwargs)
    return str(raised.value)


@pytest.mark.parametrize(("services", "message"), [
    ([{"name": "a", "recipe": "llama-qwen3-8b-gguf"}, {"name": "b", "recipe": "vllm-qwen3-8b",
                                                       "memory_share": 0.3}],
     "thor01: service b: field port: 8000 is already the port of service a"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b"}, {"name": "b", "recipe": "sglang-qwen3-8b-fp8",
                                                 "port": 8001}],
     "thor01: field memory_share: the services take 1.6 of unified memory (share + the "
     "engine's overhead: a 0.75 + 0.02, b 0.75 + 0.08), above the budget of 0.9"),
    # Fits on shares alone (0.85), not with what the engines take beyond them (0.95).
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "memory_share": 0.5},
      {"name": "b", "recipe": "sglang-qwen3-8b-fp8", "port": 8001, "memory_share": 0.35}],
     "thor01: field memory_share: the services take 0.95 of unified memory (share + the "
     "engine's overhead: a 0.5 + 0.02, b 0.35 + 0.08)"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "extra_args": ["--hf-overrides", "{rope: 1"]}],
     "thor01: service a: field extra_args: --hf-overrides takes JSON"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b",
       "extra_args": ["--speculative-config={'n': 1}"]}],
     "thor01: service a: field extra_args: --speculative-config takes JSON"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "extra_args": "--enforce-eager"}],
     "thor01: service a: field extra_args: a list of strings"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "port": 80000}],
     "thor01: service a: field port: 80000 is not a port"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "memory_share": 1.5}],
     "thor01: service a: field memory_share: 1.5 is not a share"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b"}, {"name": "a", "recipe": "vllm-qwen3-8b",
                                                 "port": 8001}],
     "thor01: service a: field name: two services are named a"),
    ([{"name": "a", "recipe": "vllm-qwen9"}], "thor01: service a: field recipe: unknown recipe"),
    ([{"name": "a", "recipe": "whisper-large-v3-turbo", "api_key": "lab-client-key"}],
     "thor01: service a: field api_key: whisper-server takes no API key; restrict who reaches "
     "it with bind_address instead"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "api_key": "two words"}],
     "thor01: service a: field api_key: the value given is not a key of 8 to 256"),
    ([{"name": "a", "recipe": "whisper-large-v3-turbo", "bind_address": "localhost"}],
     "thor01: service a: field bind_address: 'localhost' is not an IP address"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "model_path": "/srv/qwen"}],
     "thor01: service a: unknown field(s) model_path"),
])
def test_each_bad_service_is_refused_naming_host_service_and_field(services, message):
    assert message in error(services)


def test_a_budget_of_the_hosts_own_is_honoured():
    services = [{"name": "a", "recipe": "llama-qwen3-coder-30b-gguf"}]
    assert specs(services, memory_budget=0.5)
    assert "above the budget of 0.3" in error(services, memory_budget=0.3)


def test_an_engine_without_an_adapter_is_refused():
    extra = {"engines": {"tgi": {"kind": "container", "port": 8000,
                                 "image": "ghcr.io/huggingface/text-generation-inference:3"}},
             "recipes": {"tgi-qwen": {"engine": "tgi", "model": "Qwen/Qwen3-8B",
                                      "served_name": "qwen3"}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        service_specs([{"name": "a", "recipe": "tgi-qwen"}], merged,
                                        host="thor01")
    assert "thor01: service a: recipe tgi-qwen: field engine: unknown engine 'tgi'" in str(
        raised.value)


def test_nonthinking_recipes_are_marked_and_the_host_reaches_each_bind_address():
    marked = {recipe for recipe in GUIDE if one(recipe)["nonthinking"]}
    assert marked == {recipe for recipe in GUIDE if recipe.endswith("-nothink")}
    assert one("vllm-qwen3-8b")["probe_address"] == "127.0.0.1"
    assert one("whisper-large-v3-turbo", bind_address="10.0.0.5")["probe_address"] == "10.0.0.5"
    assert one("whisper-large-v3-turbo", bind_address="::")["probe_address"] == "[::1]"
    assert one("whisper-large-v3-turbo", bind_address="fd00::5")["probe_address"] == "[fd00::5]"


def test_a_spec_says_how_long_its_service_may_take_to_start():
    assert one("vllm-qwen3-8b")["start_timeout"] == 1200
    # NVFP4 kernels compile for up to 45 minutes on a first start; a 30B model loads long.
    for recipe in ("vllm-qwen3-8b-fp4", "sglang-qwen3-8b-fp4-nothink",
                   "sglang-qwen3-coder-30b-fp8", "llama-qwen3-coder-30b-gguf"):
        assert one(recipe, **({"memory_share": 0.3}
                              if "llama" not in recipe else {}))["start_timeout"] == 3600
    # Container services name the caches their engine compiles into; native ones none.
    assert one("vllm-qwen3-8b")["caches"] == [
        "/root/.cache/vllm", "/root/.cache/flashinfer", "/root/.triton"]
    assert "caches" not in one("whisper-large-v3-turbo")


@pytest.mark.parametrize(("extra", "message"), [
    ({"recipes": {"r": {"engine": "vllm", "model": "Qwen/Qwen3-8B", "start_timeout": 0}}},
     "field start_timeout: 0 is not a number of seconds"),
    ({"recipes": {"r": {"engine": "vllm", "model": "Qwen/Qwen3-8B", "start_timeout": "1h"}}},
     "field start_timeout: '1h' is not"),
    ({"engines": {"vllm": {"caches": ["/root/.cache/x:/etc"]}}, "recipes": {"r": {
        "engine": "vllm", "model": "Qwen/Qwen3-8B"}}},
     "field caches: '/root/.cache/x:/etc' is not an absolute path"),
])
def test_bad_timeouts_and_caches_are_refused(extra, message):
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
        service_specs([{"name": "a", "recipe": "r"}], merged, host="thor01")
    assert message in str(raised.value)


def test_a_recipe_says_whether_its_clients_must_send_its_sampling_fields():
    # vLLM's --override-generation-config reaches chat requests; SGLang's preferred
    # sampling params do not (its OpenAI route fills every field).
    vllm, sglang = one("vllm-qwen3-8b-fp4"), one("sglang-qwen3-8b-fp8")
    plain = one("sglang-qwen3-8b")
    assert vllm["sampling"] == {"repetition_penalty": 1.2, "temperature": 0.8, "top_p": 0.95}
    assert not vllm["sampling_from_clients"]
    assert sglang["sampling_from_clients"] and sglang["sampling"]["top_k"] == 20
    assert plain["sampling"] == {} and not plain["sampling_from_clients"]


def test_native_units_run_from_the_builds_root_the_inventory_names():
    # The default, as the guide lays it out (written here by hand).
    assert BUILDS_ROOT == "/opt/thorfleet"
    assert one("llama-qwen3-8b-gguf")["binary"] == BINARIES["llama-server"]
    whisper = [{"name": "svc", "recipe": "whisper-large-v3-turbo"}]
    (moved,) = specs(whisper, builds_root="/srv/engines")
    assert moved["engine_root"] == "/srv/engines/whisper.cpp"
    assert moved["argv"][0] == "/srv/engines/whisper.cpp/current/bin/whisper-server"
    for bad in ("srv/engines", "/srv/../etc", "/srv/eng ines", "/srv/e\nExecStartPre=x", "/"):
        with pytest.raises(catalogue_filters.CatalogueError) as raised:
            specs(whisper, builds_root=bad)
        assert "thor01: ggml_build_root: " in str(raised.value)


def test_a_recipe_says_whether_it_thinks_and_each_nonthinking_one_is_made_so():
    # What verify checks comes from the recipe's own `thinking: false`; each such recipe
    # has what makes its engine answer without thinking (the nonthinking template, or
    # llama.cpp's zero reasoning budget).
    for name, recipe in CATALOGUE["recipes"].items():
        spec = one(name, **({"memory_share": 0.5} if recipe["engine"] in ("vllm", "sglang")
                            else {}))
        assert spec["nonthinking"] is (recipe.get("thinking") is False), name
        if spec["nonthinking"]:
            budget = spec["argv"].index("--reasoning-budget") + 1 \
                if "--reasoning-budget" in spec["argv"] else None
            assert spec["chat_template"] or spec["argv"][budget] == "0", name
    assert [n for n, r in CATALOGUE["recipes"].items() if r.get("thinking") is False] == [
        n for n in CATALOGUE["recipes"] if n.endswith("-nothink")]


def test_an_engine_names_the_flags_a_recipe_needs_or_the_recipe_is_refused():
    extra = {"recipes": {"llama-sampled": {
        "engine": "llama-server", "model": "Qwen/Qwen3-8B-GGUF", "model_file": "x.gguf",
        "sampling": {"temperature": 0.7}}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        service_specs([{"name": "a", "recipe": "llama-sampled"}], merged, host="thor01")
    assert ("thor01: service a: recipe llama-sampled: engine llama-server has no "
            "sampling_flag, so it cannot take the recipe's sampling") in str(raised.value)
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        catalogue_filters.merge_catalogue(CATALOGUE, {"engines": {"vllm": {
            "transcription_api": "grpc"}}})
    assert "field transcription_api: 'grpc' is not one of openai, whisper.cpp" in str(
        raised.value)


def test_a_moved_vllm_default_port_is_passed_to_vllm():
    # vLLM listens on 8000 unless told: a catalogue that moves vLLM's port must say so.
    merged = catalogue_filters.merge_catalogue(CATALOGUE, {"engines": {"vllm": {"port": 9000}}})
    (spec,) = service_specs([{"name": "a", "recipe": "vllm-qwen3-8b", "memory_share": 0.5}],
                            merged, host="thor01")
    assert spec["port"] == 9000 and spec["argv"][-4:-2] == ["--port", "9000"]


def test_a_services_quantization_is_its_recipes_else_its_models():
    extra = {"models": {"Qwen/Qwen3-8B": {"quantization": "bfloat16"}},
             "recipes": {"vllm-qwen3-8b-fp8": {"engine": "vllm", "model": "Qwen/Qwen3-8B",
                                               "quantization": "fp8_w8a8"}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    specs = service_specs([{"name": "a", "recipe": "vllm-qwen3-8b", "memory_share": 0.3},
                           {"name": "b", "recipe": "vllm-qwen3-8b-fp8", "port": 8001,
                            "memory_share": 0.3}], merged, host="thor01")
    assert [s["quantization"] for s in specs] == ["bfloat16", "fp8_w8a8"]

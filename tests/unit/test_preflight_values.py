"""Values preflight reads, of every type: each converted where Ansible users expect it (a
number given with -e arrives as a string), ranged, and refused naming host, service and
field; nothing a user types raises a bare Python error, and extra_args cannot set what
the project sets from a service's fields."""

from __future__ import annotations

import functools
import math

import pytest

from tests.conftest import BUILDS_ROOT, load, plugin_utils
from tests.unit.test_service_specs import CATALOGUE

catalogue_filters = load("filter_plugins/catalogue.py")
services_lib = plugin_utils("services")
service_specs = functools.partial(catalogue_filters.service_specs, builds_root=BUILDS_ROOT)
TWO = [{"name": "a", "recipe": "vllm-qwen3-8b", "memory_share": 0.4},
       {"name": "b", "recipe": "vllm-qwen3-8b-fp4", "memory_share": 0.4, "port": 8001}]


def refused(services, extra=None, **settings) -> str:
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
        service_specs(services, merged, host="thor01", **settings)
    return str(raised.value)


def one(recipe="vllm-qwen3-8b", **fields) -> list[dict]:
    return [{"name": "a", "recipe": recipe, **fields}]


# --- numbers: converted from -e strings, ranged, never NaN or infinite ---------------------

@pytest.mark.parametrize("budget", ["0.95", "0.84", "1", 1, 0.9])
def test_a_budget_given_as_a_string_is_taken_as_the_number(budget):
    specs = service_specs(TWO, CATALOGUE, host="thor01", memory_budget=budget)
    assert [s["memory_share"] for s in specs] == [0.4, 0.4]


def test_the_services_are_held_to_the_number_a_budget_string_gives():
    # 0.84 is what TWO takes with vLLM's overhead.
    assert "above the budget of 0.83 " in refused(TWO, memory_budget="0.83")


@pytest.mark.parametrize("budget", ["2.0", 2.0, 0, "0", -0.5, "nan", math.nan, math.inf, "inf",
                                    True, "0.9; id", "", None, [0.9], {"a": 1}])
def test_a_budget_outside_0_to_1_or_not_a_number_is_refused_naming_it(budget):
    message = refused(TWO, memory_budget=budget)
    assert message.startswith("thor01: field thorfleet_memory_budget: ")
    assert "is not a share of unified memory (a number above 0, at most 1)" in message


def test_a_services_share_and_port_given_as_strings_are_numbers_in_its_spec():
    (spec,) = service_specs(one(memory_share="0.4", port="8005"), CATALOGUE, host="thor01")
    assert (spec["memory_share"], spec["port"]) == (0.4, 8005)
    assert spec["argv"][-2:] == ["--gpu-memory-utilization", "0.4"]


@pytest.mark.parametrize(("section", "name", "field", "value"), [
    ("recipes", "vllm-qwen3-8b", "memory_share", -1), ("recipes", "vllm-qwen3-8b",
                                                       "memory_share", math.nan),
    ("recipes", "vllm-qwen3-8b", "memory_share", math.inf),
    ("recipes", "vllm-qwen3-8b", "memory_share", 0), ("recipes", "vllm-qwen3-8b",
                                                      "memory_share", 1.5),
    ("engines", "vllm", "memory_share", -0.1), ("engines", "vllm", "memory_overhead", -0.2),
    ("engines", "vllm", "memory_overhead", math.nan), ("engines", "vllm", "memory_overhead", 1.1),
    ("engines", "vllm", "port", 0), ("engines", "vllm", "builtin_port", 70000),
    ("engines", "vllm", "start_timeout", 0), ("recipes", "vllm-qwen3-8b", "start_timeout", -5)])
def test_a_catalogue_number_out_of_its_range_is_refused_naming_entry_and_field(section, name,
                                                                              field, value):
    message = refused(one(), extra={section: {name: {field: value}}})
    assert message.startswith(f"thorfleet_catalogue_extra.{section}.{name}: field {field}: ")


def test_a_negative_overhead_cannot_make_two_large_shares_fit():
    two = [{"name": "a", "recipe": "vllm-qwen3-8b"},
           {"name": "b", "recipe": "vllm-qwen3-8b-fp4", "port": 8001}]
    assert "field memory_overhead" in refused(two, extra={"engines": {"vllm": {
        "memory_overhead": -0.3}}})
    # An overhead of 0 (none) is taken: the default of an engine that names none.
    assert "above the budget" in refused(two, extra={"engines": {"vllm": {"memory_overhead": 0}}})


@pytest.mark.parametrize(("sampling", "field"), [
    ({"temperature": "0.7"}, "sampling.temperature"),
    ({"temperature": True}, "sampling.temperature"),
    ({"top_p": math.nan}, "sampling.top_p"), ({"top_k": [20]}, "sampling.top_k"),
    ({"top_k": None}, "sampling.top_k"), ({"Temperature; id": 0.7}, "sampling")])
def test_a_recipes_sampling_holds_numbers_by_field_name(sampling, field):
    message = refused(one(), extra={"recipes": {"vllm-qwen3-8b": {"sampling": sampling}}})
    assert message.startswith(f"thorfleet_catalogue_extra.recipes.vllm-qwen3-8b: field {field}:")


def test_a_recipes_sampling_of_numbers_is_taken():
    extra = {"recipes": {"vllm-qwen3-8b": {"sampling": {"temperature": 0.6, "top_k": -1}}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    (spec,) = service_specs(one(), merged, host="thor01")
    assert spec["sampling"]["top_k"] == -1


# --- types: a list or a mapping where a name is expected ------------------------------------

@pytest.mark.parametrize("recipe", [["vllm-qwen3-8b"], {"vllm-qwen3-8b": 1}, None, 7])
def test_a_recipe_given_as_a_list_or_mapping_is_refused_naming_the_field(recipe):
    assert refused(one(recipe)).startswith("thor01: service a: field recipe: unknown recipe")


@pytest.mark.parametrize("source", [["modelscope"], {"hub": "modelscope"}])
def test_a_source_given_as_a_list_or_mapping_is_refused_naming_the_field(source):
    assert refused(one(source=source)).startswith("thor01: service a: field source:")


@pytest.mark.parametrize("kind", [["container"], {"container": True}, 1])
def test_an_engine_kind_given_as_a_list_is_refused_naming_the_field(kind):
    message = refused(one(), extra={"engines": {"vllm": {"kind": kind}}})
    assert message.startswith("thorfleet_catalogue_extra.engines.vllm: field kind: ")


# Every field a service has, and the host's settings, with values of every type: each is
# taken or refused with the filters' own error; none raises another Python error.
HOSTILE = [None, True, 0, -1, 1e309, math.nan, "", "x\n", "50%", "; id", [], ["a"], {},
           {"a": 1}, 2**64]
FIELDS = ["name", "recipe", "port", "served_name", "memory_share", "extra_args", "source",
          "bind_address", "api_key"]


@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_no_value_of_a_service_field_raises_anything_but_a_named_refusal(field, value):
    try:
        service_specs(one(**{field: value}), CATALOGUE, host="thor01")
    except catalogue_filters.CatalogueError as error:
        assert str(error).startswith("thor01: "), error


@pytest.mark.parametrize("setting", ["memory_budget", "models_root", "default_source",
                                     "api_key", "builds_root"])
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_no_value_of_a_host_setting_raises_anything_but_a_named_refusal(setting, value):
    settings = {"builds_root": BUILDS_ROOT, setting: value}
    try:
        catalogue_filters.service_specs(one(), CATALOGUE, host="thor01", **settings)
    except catalogue_filters.CatalogueError as error:
        assert str(error).startswith("thor01"), error


@pytest.mark.parametrize("section", ["engines", "recipes", "models", "files"])
@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_no_value_of_a_catalogue_field_raises_anything_but_a_named_refusal(section, value):
    name = {"engines": "vllm", "recipes": "vllm-qwen3-8b", "models": "Qwen/Qwen3-8B",
            "files": "qwen3_nonthinking.jinja"}[section]
    for field in sorted(catalogue_filters.merge_catalogue(CATALOGUE)[section][name]):
        try:
            merged = catalogue_filters.merge_catalogue(
                CATALOGUE, {section: {name: {field: value}}})
            service_specs(one(), merged, host="thor01")
        except catalogue_filters.CatalogueError as error:
            assert str(error).startswith(("thorfleet_catalogue_extra.", "thor01: ")), error


# --- extra_args may not set what the project sets ---------------------------------------

MANAGED_CASES = [(engine, flag, field) for engine, flags in services_lib.MANAGED_FLAGS.items()
                 for flag, field in flags.items()]
RECIPE_OF = {"vllm": "vllm-qwen3-8b", "sglang": "sglang-qwen3-8b-fp8",
             "llama-server": "llama-qwen3-8b-gguf", "whisper-server": "whisper-large-v3-turbo"}


@pytest.mark.parametrize(("engine", "flag", "field"), MANAGED_CASES,
                         ids=[f"{e} {f}" for e, f, _ in MANAGED_CASES])
def test_an_extra_arg_setting_a_managed_flag_is_refused_naming_the_field_to_use(engine, flag,
                                                                              field):
    for tokens in ([flag, "secret-value-1"], [f"{flag}=secret-value-1"]):
        message = refused(one(RECIPE_OF[engine], extra_args=tokens))
        assert message.startswith(f"thor01: service a: field extra_args: {flag!r} sets "
                                  f"{flag}, which thorfleet sets for {engine}; use {field}")
        assert "secret-value-1" not in message  # a value given to --api-key is a key


@pytest.mark.parametrize(("recipe", "token", "flag"), [
    ("vllm-qwen3-8b", "--gpu_memory_utilization", "--gpu-memory-utilization"),
    ("vllm-qwen3-8b", "--gpu-memory", "--gpu-memory-utilization"),
    ("vllm-qwen3-8b", "--served", "--served-model-name"),
    ("sglang-qwen3-8b-fp8", "--mem_fraction_static=0.9", "--mem-fraction-static"),
    ("sglang-qwen3-8b-fp8", "--api-k=key12345", "--api-key")])
def test_argparse_engines_take_a_prefix_or_underscores_for_a_managed_flag(recipe, token, flag):
    assert f"{token.partition('=')[0]!r} sets {flag}" in refused(one(recipe, extra_args=[token]))


def test_the_flags_of_an_engines_entry_are_managed_too():
    extra = {"engines": {"vllm": {"memory_flag": "--kv-cache-fraction"}}}
    assert "sets --kv-cache-fraction" in refused(one(extra_args=["--kv-cache-fraction", "1"]),
                                                  extra=extra)


def test_the_memory_budget_holds_whatever_extra_args_say():
    over = [{**service, "extra_args": ["--gpu-memory-utilization", "0.9"]} for service in TWO]
    assert "field extra_args" in refused(over)


@pytest.mark.parametrize(("recipe", "extra"), [
    ("vllm-qwen3-8b", ["--max-model-len", "8192", "--enforce-eager"]),
    ("vllm-qwen3-8b", ["--max-num-seqs=4"]),
    ("sglang-qwen3-8b-fp8", ["--context-length", "8192"]),
    ("llama-qwen3-8b-gguf", ["--threads", "4", "-ngl", "99", "--hostx"]),
    ("whisper-large-v3-turbo", ["--threads", "4"])])
def test_flags_the_project_does_not_set_pass(recipe, extra):
    (spec,) = service_specs(one(recipe, extra_args=extra), CATALOGUE, host="thor01")
    assert spec["argv"][-len(extra):] == extra


def test_a_double_dash_is_refused():
    assert "'--' ends the engine's flags" in refused(one(extra_args=["--", "/etc"]))


# --- paths an engine reads stay inside the models root -----------------------------------

@pytest.mark.parametrize("args", [["--allowed-local-media-path", "/"],
                                  ["--allowed-local-media-path", "/etc"],
                                  ["--allowed-local-media-path", "{models_root}/../.."],
                                  ["--allowed-local-media-path={models_root}/../etc"],
                                  ["--allowed-local-media-path", "media"],
                                  ["--allowed-local-media-path"],
                                  ["--chat-template", "/etc/passwd"]])
def test_a_recipes_path_outside_the_models_root_is_refused(args):
    extra = {"recipes": {"vllm-qwen2.5-vl-7b-awq": {"args": args}}}
    message = refused(one("vllm-qwen2.5-vl-7b-awq"), extra=extra)
    assert message.startswith("thor01: service a: recipe vllm-qwen2.5-vl-7b-awq: field args: ")
    assert "is not inside the models root /models" in message


@pytest.mark.parametrize(("path", "given"), [("{models_root}", "/srv/m"),
                                            ("{models_root}/media", "/srv/m/media"),
                                            ("{models_root}/a/../media", "/srv/m/media")])
def test_a_recipes_path_inside_the_models_root_is_given_normalised(path, given):
    recipe = "vllm-qwen2.5-vl-7b-awq"
    extra = {"recipes": {recipe: {"args": ["--allowed-local-media-path", path]}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    (spec,) = service_specs(one(recipe), merged, host="thor01", models_root="/srv/m")
    assert spec["argv"][spec["argv"].index("--allowed-local-media-path") + 1] == given

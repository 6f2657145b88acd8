"""Hostile and broken values refused in preflight, before anything on a host changes: each
value that reaches a unit, an environment file, a file name or a shell is checked against
its field's characters and length, and the error names host, service and field without
quoting a secret."""

from __future__ import annotations

import functools

import pytest

from tests.conftest import BUILDS_ROOT, load, plugin_utils
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
    ("/ models", "is not an absolute, normalised path"),
    ("/" + "m" * 256, "is not an absolute, normalised path"),
    ("/models\n", "is not an absolute, normalised path"),
    ("/etc", "is inside a system directory"),
    ("/etc/thorfleet/models", "is inside a system directory"),
    ("/usr/local/models", "is inside a system directory"),
    ("/var/lib/docker/models", "is inside a system directory"),
    # Where a container running as root would write cron jobs, systemd's state, the
    # engine builds or a user's ~/.ssh (issue 35).
    ("/var/lib", "is inside a system directory"),
    ("/var/spool/cron", "is inside a system directory"),
    ("/var/lib/systemd", "is inside a system directory"),
    ("/var", "holds system directories (/var/cache, /var/lib,"),
    ("/opt", f"overlaps the engine builds (ggml_build_root {BUILDS_ROOT})"),
    (BUILDS_ROOT, f"overlaps the engine builds (ggml_build_root {BUILDS_ROOT})"),
    (f"{BUILDS_ROOT}/models", "overlaps the engine builds"),
    ("/home", "is /home or a home directory"),
    ("/home/nvidia", "is /home or a home directory"),
])
def test_a_model_root_that_is_not_a_plain_absolute_path_outside_the_system_is_refused(
        root, says):
    message = refused(models_root=root)
    assert message.startswith("thor01: thorfleet_models_root:") and says in message


@pytest.mark.parametrize("root", ["/data/models", "/models", "/home/nvidia/models",
                                  "/opt/models", "/var/models", "/srv/m"])
def test_a_model_root_of_ones_own_is_taken(root):
    specs = service_specs(service(), CATALOGUE, host="thor01", models_root=root)
    assert specs[0]["model"] == f"{root}/Qwen/Qwen3-8B"


def test_a_model_root_beside_builds_moved_elsewhere_is_taken():
    specs = catalogue_filters.service_specs(service(), CATALOGUE, host="thor01",
                                            builds_root="/srv/builds", models_root="/opt/m")
    assert specs[0]["model"] == "/opt/m/Qwen/Qwen3-8B"
    assert "overlaps the engine builds (ggml_build_root /srv/builds)" in refused(
        models_root="/srv", builds_root="/srv/builds")


def file_at(path: str) -> dict:
    return {"files": {"f": {"url": "https://files.example/f.json", "path": path}}}


@pytest.mark.parametrize(("extra", "says"), [
    # A file where a model's directory is, above it, or where its revisions are staged.
    (file_at("Qwen/Qwen3-8B"), "thorfleet_catalogue_extra.files.f: field path: "
                               "'Qwen/Qwen3-8B' overlaps"),
    (file_at("Qwen"), "thorfleet_catalogue_extra.files.f: field path: 'Qwen' overlaps"),
    (file_at("Qwen/.Qwen3-8B.partial/config.json"),
     "overlaps model Qwen/Qwen3-8B's place under the model root (Qwen/.Qwen3-8B.partial)"),
    (file_at("Qwen/.Qwen3-8B.previous"), "(Qwen/.Qwen3-8B.previous)"),
    # Inside a model's directory, whatever the name: its files are known only once the
    # hub lists its revision (config.json), or are thorfleet's own (the manifest, the
    # GGUF); the guide's place for the template is one of them.
    (file_at("Qwen/Qwen3-8B/config.json"),
     "thorfleet_catalogue_extra.files.f: field path: 'Qwen/Qwen3-8B/config.json' overlaps "
     "model Qwen/Qwen3-8B's place under the model root (Qwen/Qwen3-8B)"),
    (file_at("Qwen/Qwen3-8B/extra/notes.json"), "'Qwen/Qwen3-8B/extra/notes.json' overlaps"),
    ({"files": {"qwen3_nonthinking.jinja": {"path": "Qwen/Qwen3-8B/qwen3_nonthinking.jinja"}}},
     "thorfleet_catalogue_extra.files.qwen3_nonthinking.jinja: field path: "
     "'Qwen/Qwen3-8B/qwen3_nonthinking.jinja' overlaps model Qwen/Qwen3-8B's place"),
    (file_at("Qwen/Qwen3-8B/thorfleet-manifest.json"),
     "'Qwen/Qwen3-8B/thorfleet-manifest.json' overlaps model Qwen/Qwen3-8B's place"),
    (file_at("Qwen/Qwen3-8B-GGUF/Qwen3-8B-Q5_K_M.gguf"), "overlaps model Qwen/Qwen3-8B-GGUF"),
    # Where another file is.
    (file_at("templates/qwen3_nonthinking.jinja"),
     "overlaps file qwen3_nonthinking.jinja's place"),
    # A model inside another's directory, or holding one.
    ({"models": {"Qwen/Qwen3-8B/draft": {"huggingface": {"repo": "Qwen/Qwen3-0.6B"}}}},
     "thorfleet_catalogue_extra.models.Qwen/Qwen3-8B/draft: field key: "
     "'Qwen/Qwen3-8B/draft' overlaps model Qwen/Qwen3-8B's place"),
    ({"models": {"Qwen": {"huggingface": {"repo": "Qwen/Qwen3-0.6B"}}}},
     "thorfleet_catalogue_extra.models.Qwen: field key: 'Qwen' overlaps model"),
])
def test_two_things_the_catalogue_puts_in_one_place_are_refused_naming_the_entry(extra,
                                                                                 says):
    assert says in refused(extra=extra)


@pytest.mark.parametrize("extra", [file_at("Qwen/Qwen3-8B-notes.json"),
                                   file_at("templates/qwen3.jinja"),
                                   {"models": {"Qwen/Qwen3-8B-Base": {
                                       "huggingface": {"repo": "Qwen/Qwen3-8B-Base"}}}}])
def test_things_in_places_of_their_own_are_taken(extra):
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    assert service_specs(service(), merged, host="thor01")


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


@pytest.mark.parametrize("commit", ["a" * 40 + "\nExecStartPre=+/bin/sh -c id", "a" * 39, 40,
                                    None])
def test_a_manifests_commit_reaches_a_unit_only_as_40_hex_characters(commit):
    manifest_commit = plugin_utils("models").manifest_commit
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        manifest_commit({"/models/m": commit}, "/models/m")
    assert "/models/m/thorfleet-manifest.json: commit" in str(raised.value)
    assert manifest_commit({"/models/m": "a" * 40}, "/models/m") == "a" * 40
    assert manifest_commit({"/models/other": "a" * 40}, "/models/m") == "not downloaded"


# --- each rule at its edges: the longest value taken, one character more refused, and the
# characters just outside what it allows ------------------------------------------------

rules = plugin_utils("rules")
EDGES = {
    "name": (["a" * 63, "a0_.-"], ["a" * 64, "_a", "a b"]),
    "served_name": (["q" * 128, "Qwen/Qwen3:8b@x+1"], ["q" * 129, "q q", "q%"]),
    "api_key": (["k" * 8, "k" * 256, "a.b_c~d+e/f=g:h@i-j"], ["k" * 7, "k" * 257, "k" * 8 + "%"]),
    "path": (["p" * 255, "a/b.c"], ["p" * 256, "a/../b", "./a", "a//b/.", "a b"]),
    "file_name": (["f" * 128], ["f" * 129, "a/b"]),
    "repo": (["o" * 96 + "/" + "n" * 96], ["o" * 97 + "/n", "o/" + "n" * 97, "o/n/x"]),
    "revision": (["r" * 128, "v1.2+3/x_y"], ["r" * 129, "main~1", "ma in"]),
    "image": (["r" * 255 + ":" + "t" * 128], ["r" * 256 + ":t", "r:" + "t" * 129, "r",
                                               "R/x:t", "r:-t"]),
    "env_name": (["E" * 64, "_X1"], ["E" * 65, "1X", "x", "X-Y"]),
    "flag": (["--" + "f" * 63, "--max-model-len"], ["--" + "f" * 64, "-f", "--F", "--a_b"]),
    "sha256": (["0" * 64], ["0" * 63, "0" * 65, "A" * 64]),
    "url": (["https://" + "u" * 2040, "http://h:1/p?q=%20&r#s"],
            ["https://" + "u" * 2041, "ftp://h/x", "https://h/ x", "https://h/\"x",
             "https://h/<x>", "https://"]),
}


@pytest.mark.parametrize(("rule", "value", "taken"), [
    (rule, value, taken) for rule, (good, bad) in EDGES.items()
    for taken, values in ((True, good), (False, bad)) for value in values])
def test_each_rule_takes_up_to_its_limit_and_refuses_past_it(rule, value, taken):
    if taken:
        rules.check_field("thor01", rule, value)
    else:
        with pytest.raises(rules.CatalogueError, match=f"thor01: field {rule}:"):
            rules.check_field("thor01", rule, value)
    # A final newline is never part of a value, whatever the rule.
    with pytest.raises(rules.CatalogueError):
        rules.check_field("thor01", rule, value + "\n")


def test_every_rule_has_its_edges_tested():
    assert set(EDGES) == set(rules.RULES)


def test_an_argument_of_exactly_the_longest_length_is_taken():
    rules.check_token("thor01", "args", "x" * rules.MAX_ARG)
    with pytest.raises(rules.CatalogueError, match="field args:"):
        rules.check_token("thor01", "args", "x" * (rules.MAX_ARG + 1))


@pytest.mark.parametrize("pattern", ["*.bin\n", "a\x00", 7])
def test_an_ignore_pattern_that_is_no_plain_string_is_refused_naming_the_model(pattern):
    extra = {"models": {"Qwen/Qwen3-8B": {"ignore_patterns": ["*.pt", pattern]}}}
    assert ("thorfleet_catalogue_extra.models.Qwen/Qwen3-8B: field ignore_patterns:"
            in refused(extra=extra))


@pytest.mark.parametrize(("extra", "field"), [
    ({"engines": {"vllm": {"modelscope_env": "VLLM USE"}}}, "modelscope_env"),
    ({"engines": {"vllm": {"sampling_flag": "--x\n"}}}, "sampling_flag"),
    ({"engines": {"vllm": {"caches": ["/root/.cache", "relative"]}}}, "caches"),
    ({"engines": {"vllm": {"port": 65536}}}, "port"),
    ({"engines": {"vllm": {"port": True}}}, "port"),
    ({"recipes": {"vllm-qwen3-8b": {"chat_template": "../t.jinja"}}}, "chat_template"),
    ({"recipes": {"vllm-qwen3-8b": {"files": ["a/b"]}}}, "files"),
    ({"recipes": {"vllm-qwen3-8b": {"modality": "audio"}}}, "modality"),
    ({"files": {"qwen3_nonthinking.jinja": {"url": "file:///etc/passwd"}}}, "url")])
def test_catalogue_fields_no_hostile_case_reached_are_refused_by_name(extra, field):
    assert f": field {field}:" in refused(extra=extra)


def test_the_highest_port_an_engine_can_have_is_taken():
    merged = catalogue_filters.merge_catalogue(CATALOGUE, {"engines": {"vllm": {"port": 65535}}})
    assert merged["engines"]["vllm"]["port"] == 65535


@pytest.mark.parametrize(("fields", "taken"), [
    ({"port": 1}, True), ({"port": 65535}, True), ({"port": 0}, False), ({"port": 65536}, False),
    ({"port": True}, False), ({"port": "8000"}, True), ({"port": "8000.5"}, False),
    ({"memory_share": 0.01}, True), ({"memory_share": 0}, False),
    ({"memory_share": 1.001}, False), ({"memory_share": True}, False)])
def test_a_services_port_and_share_are_taken_up_to_their_limits(fields, taken):
    (field,) = fields
    if taken:
        assert service_specs(service(**fields), CATALOGUE, host="thor01")[0]["name"] == "a"
    else:
        assert f"thor01: service a: field {field}:" in refused(service(**fields))


def test_a_whole_share_is_a_share_which_the_memory_budget_then_refuses():
    message = refused(service(memory_share=1))
    assert "field memory_share: the services take 1.02 of unified memory" in message


@pytest.mark.parametrize(("timeout", "taken"), [(1, True), (86400, True), (0, False),
                                                (86401, False), (True, False)])
def test_a_recipes_start_timeout_is_taken_from_1_to_86400_seconds(timeout, taken):
    extra = {"recipes": {"vllm-qwen3-8b": {"start_timeout": timeout}}}
    if taken:
        merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
        assert service_specs(service(), merged, host="thor01")[0]["start_timeout"] == timeout
    else:
        assert "field start_timeout:" in refused(extra=extra)


@pytest.mark.parametrize(("extra", "taken"), [
    ({"engines": {"vllm": {"port": 1}}}, True),
    ({"engines": {"vllm": {"port": 0}}}, False),
    ({"engines": {"vllm": {"caches": ["/ root/.cache"]}}}, False)])
def test_an_engines_port_and_caches_at_their_edges(extra, taken):
    if taken:
        catalogue_filters.merge_catalogue(CATALOGUE, extra)
    else:
        assert "thorfleet_catalogue_extra.engines.vllm: field" in refused(extra=extra)


@pytest.mark.parametrize(("extra_args", "taken"), [
    (["--hf-overrides", '{"rope_theta": 1e6}'], True),
    (['--hf-overrides={"rope_theta": 1e6}'], True),
    (["--hf-overrides", "{rope_theta"], False),
    (["--hf-overrides={rope_theta"], False),
    (["--hf-overrides"], False),  # its value missing: the end of the argv
    (["--max-model-len", "{not JSON, not a JSON flag}"], True)])
def test_a_json_flags_value_is_json_whether_joined_by_equals_or_the_next_token(extra_args,
                                                                              taken):
    if taken:
        service_specs(service(extra_args=extra_args), CATALOGUE, host="thor01")
    else:
        assert "field extra_args: --hf-overrides takes JSON" in refused(
            service(extra_args=extra_args))

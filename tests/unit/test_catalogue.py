"""The recipe catalogue's models and files, and the plan of what a host must hold."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import BUILDS_ROOT, CATALOGUE, ROOT, load, plugin_utils
from tests.guide import GUIDE
from tests.guide import model_path as guide_model_path

catalogue_filters = load("filter_plugins/catalogue.py")
# Resolved with the default builds root, as a fleet whose inventory says nothing.
service_specs = functools.partial(catalogue_filters.service_specs, builds_root=BUILDS_ROOT)
TEMPLATE_URL = ("https://qwen.readthedocs.io/en/latest/_downloads/"
                "c101120b5bebcc2f12ec504fc93a965e/qwen3_nonthinking.jinja")
# The published template's sum (4148 bytes, CRLF line ends), written here by hand.
PUBLISHED_TEMPLATE = "3dd897869fdc38d301d820ce130bbf35ed031add46e1b9c8d8f260579c6c0f2a"

# The Hugging Face ids of the guide's ModelScope organisations (DESIGN.md).
HF_IDS = {"nv-community/Qwen3-8B-FP4": "nvidia/Qwen3-8B-FP4",
          "openai-mirror/whisper-small": "openai/whisper-small",
          "whisper.cpp/models": "ggerganov/whisper.cpp"}


def plan(services, host="thor01", **kwargs):
    return catalogue_filters.model_plan(services, CATALOGUE, host=host, **kwargs)


def error(services, **kwargs):
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        plan(services, **kwargs)
    return str(raised.value)


def test_every_recipe_of_the_guide_serves_the_guides_model_path():
    assert set(CATALOGUE["recipes"]) == set(GUIDE)
    for name in GUIDE:
        expected = guide_model_path(name)
        recipe = CATALOGUE["recipes"][name]
        served = "/".join(filter(None, [recipe["model"], recipe.get("model_file")]))
        assert served == expected, name


def test_hugging_face_ids_differ_where_the_guide_used_modelscope_organisations():
    for path, model in CATALOGUE["models"].items():
        assert model["huggingface"]["repo"] == HF_IDS.get(path, path), path
        if "modelscope" in model:
            assert model["modelscope"]["repo"] == path


def test_nonthinking_container_recipes_and_only_they_carry_the_template():
    for name, recipe in CATALOGUE["recipes"].items():
        wants = name.endswith("-nothink") \
            and CATALOGUE["engines"][recipe["engine"]]["kind"] == "container"
        assert (catalogue_filters.recipe_files(recipe) == ["qwen3_nonthinking.jinja"]) == wants, \
            name
    assert CATALOGUE["files"]["qwen3_nonthinking.jinja"] == {
        "url": TEMPLATE_URL, "path": "templates/qwen3_nonthinking.jinja",
        "sha256": PUBLISHED_TEMPLATE}


def test_a_host_gets_each_model_once_with_the_files_its_recipes_name():
    result = plan([
        {"name": "a", "recipe": "llama-qwen3-8b-gguf"},
        {"name": "b", "recipe": "llama-qwen3-8b-gguf-nothink", "port": 8001},
        {"name": "c", "recipe": "sglang-qwen3-8b-fp8-nothink", "port": 8002},
        {"name": "d", "recipe": "whisper-large-v3-turbo"},
    ])
    models = {m["dest"]: m for m in result["models"]}
    assert sorted(models) == ["/models/Qwen/Qwen3-8B-FP8", "/models/Qwen/Qwen3-8B-GGUF",
                              "/models/whisper.cpp/models"]
    gguf = models["/models/Qwen/Qwen3-8B-GGUF"]
    assert gguf["allow_patterns"] == ["Qwen3-8B-Q5_K_M.gguf"] and gguf["services"] == ["a", "b"]
    assert models["/models/Qwen/Qwen3-8B-FP8"]["allow_patterns"] == []
    assert models["/models/whisper.cpp/models"]["repo_id"] == "ggerganov/whisper.cpp"
    # The FP8 recipe points at the Qwen3-8B template, which lands there without the model.
    assert result["files"] == [{
        "name": "qwen3_nonthinking.jinja", "upstream_url": TEMPLATE_URL, "url": TEMPLATE_URL,
        "sha256": PUBLISHED_TEMPLATE, "pinned_by": "catalogue",
        "dest": "/models/templates/qwen3_nonthinking.jinja", "services": ["c"]}]


def test_the_source_picks_the_hubs_repository_and_default_revision():
    hf = plan([{"name": "a", "recipe": "vllm-whisper-small"}])["models"][0]
    ms = plan([{"name": "a", "recipe": "vllm-whisper-small", "source": "modelscope"}])["models"][0]
    assert (hf["repo_id"], hf["revision"], hf["lock_key"]) == (
        "openai/whisper-small", "main", "huggingface:openai/whisper-small@main")
    assert (ms["repo_id"], ms["revision"], ms["dest"]) == (
        "openai-mirror/whisper-small", "master", "/models/openai-mirror/whisper-small")
    assert hf["ignore_patterns"] == ["*.h5", "*.msgpack", "pytorch_model*.bin"]
    by_default = plan([{"name": "a", "recipe": "vllm-whisper-small"}],
                      default_source="modelscope")["models"][0]
    assert by_default["source"] == "modelscope"
    # The site's default is a preference: whisper.cpp's models are on Hugging Face only.
    only_hf = plan([{"name": "a", "recipe": "whisper-large-v3-turbo"}],
                   default_source="modelscope")["models"][0]
    assert (only_hf["source"], only_hf["repo_id"]) == ("huggingface", "ggerganov/whisper.cpp")


def test_the_lock_pins_revisions_and_sums_and_the_inventory_wins_for_sums():
    lock = {"models": {"huggingface:Qwen/Qwen3-8B@main": "c" * 40},
            "files": {TEMPLATE_URL: "1" * 64}}
    services = [{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}]
    result = plan(services, lock=lock)
    assert result["models"][0]["revision"] == "c" * 40
    assert result["models"][0]["requested_revision"] == "main"
    # The catalogue ships the published template's sum: it wins over the lock's...
    assert (result["files"][0]["sha256"], result["files"][0]["pinned_by"]) == (
        PUBLISHED_TEMPLATE, "catalogue")
    # ... the inventory's wins over both...
    pinned = plan(services, lock=lock, checksums={TEMPLATE_URL: "2" * 64})
    assert (pinned["files"][0]["sha256"], pinned["files"][0]["pinned_by"]) == ("2" * 64,
                                                                              "inventory")
    # ... and a file with no sum in the catalogue has the lock's.
    unsummed = {**CATALOGUE, "files": {name: {k: v for k, v in f.items() if k != "sha256"}
                                       for name, f in CATALOGUE["files"].items()}}
    from_lock = catalogue_filters.model_plan(services, unsummed, lock=lock)["files"][0]
    assert (from_lock["sha256"], from_lock["pinned_by"]) == ("1" * 64, "lock")
    assert catalogue_filters.model_plan(services, unsummed)["files"][0]["sha256"] == ""


def test_the_lock_gives_a_model_the_sums_it_pinned_for_its_commit_only():
    key = "huggingface:Qwen/Qwen3-8B@" + "c" * 40 + "/"
    lock = {"models": {"huggingface:Qwen/Qwen3-8B@main": "c" * 40},
            "model_files": {key + "config.json": "1" * 64, key + "sub/a.bin": "2" * 64,
                            "huggingface:Qwen/Qwen3-8B@" + "d" * 40 + "/x": "3" * 64,
                            "huggingface:Qwen/Qwen3-8B-GGUF@" + "c" * 40 + "/y": "4" * 64}}
    model = plan([{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}], lock=lock)["models"][0]
    assert model["sha256s"] == {"config.json": "1" * 64, "sub/a.bin": "2" * 64}
    unpinned = plan([{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}])["models"][0]
    assert unpinned["sha256s"] == {}


def test_the_lock_pins_each_revisions_manifest_by_model_commit_and_patterns():
    commit = "c" * 40
    lock = {"models": {"huggingface:Qwen/Qwen3-8B@main": commit},
            "model_manifests": {f"huggingface:Qwen/Qwen3-8B@{commit}": "1" * 64,
                                f"huggingface:Qwen/Qwen3-8B@{'d' * 40}": "2" * 64}}
    model = plan([{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}], lock=lock)["models"][0]
    assert model["manifest_digest"] == "1" * 64
    unpinned = plan([{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}])["models"][0]
    assert unpinned["manifest_digest"] == ""
    # Two services may take other files of one repository: each pattern set its own pin.
    gguf = {"source": "huggingface", "repo_id": "Qwen/Qwen3-8B-GGUF",
            "allow_patterns": ["*Q4_K_M.gguf"], "ignore_patterns": []}
    assert catalogue_filters.manifest_key(gguf, commit) == \
        f"huggingface:Qwen/Qwen3-8B-GGUF@{commit}?allow=*Q4_K_M.gguf"
    assert catalogue_filters.manifest_key({**gguf, "allow_patterns": ["*Q8_0.gguf"]}, commit) != \
        catalogue_filters.manifest_key(gguf, commit)
    # Recorded from the first fetch (or the first run that finds it held), never over a pin.
    fetched = {"results": [{"item": {**gguf, "manifest_digest": ""}, "commit": commit,
                            "manifest_digest": "3" * 64}]}
    assert catalogue_filters.lock_entries([fetched], "model_manifests") == {
        f"huggingface:Qwen/Qwen3-8B-GGUF@{commit}?allow=*Q4_K_M.gguf": "3" * 64}
    pinned = {"results": [{"item": {**gguf, "manifest_digest": "3" * 64}, "commit": commit,
                           "manifest_digest": "4" * 64}]}
    assert catalogue_filters.lock_entries([pinned], "model_manifests") == {}


def test_a_file_mirror_serves_files_by_name_and_a_model_root_moves_everything():
    result = plan([{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}],
                  file_mirror="http://mirror.internal/files/", models_root="/data/models")
    assert result["files"][0]["url"] == "http://mirror.internal/files/qwen3_nonthinking.jinja"
    assert result["files"][0]["upstream_url"] == TEMPLATE_URL
    assert result["models"][0]["dest"] == "/data/models/Qwen/Qwen3-8B"


@pytest.mark.parametrize(("services", "message"), [
    ([{"name": "a", "recipe": "vllm-qwen4"}],
     "thor01: service a: field recipe: unknown recipe 'vllm-qwen4'"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b"}, {"name": "a", "recipe": "sglang-qwen3-8b"}],
     "thor01: service a: field name: two services are named a"),
    ([{"name": "A b", "recipe": "vllm-qwen3-8b"}],
     "thor01: thorfleet_services[0]: field name: 'A b' is not a name of 1 to 63"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "sorce": "modelscope"}],
     "thor01: service a: unknown field(s) sorce"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b", "source": "github"}],
     "thor01: service a: field source: 'github' is not one of huggingface, modelscope"),
    ([{"name": "a", "recipe": "whisper-large-v3-turbo", "source": "modelscope"}],
     "thor01: service a: field source: model whisper.cpp/models is not on modelscope; "
     "it is on huggingface"),
    ([{"name": "a", "recipe": "vllm-qwen3-8b"},
      {"name": "b", "recipe": "sglang-qwen3-8b", "source": "modelscope"}],
     "thor01: service b: field source: /models/Qwen/Qwen3-8B is taken from huggingface by "
     "service a"),
    ("not a list", "thor01: thorfleet_services must be a list"),
])
def test_bad_services_are_rejected_naming_host_service_and_field(services, message):
    assert message in error(services)


def test_a_model_path_outside_the_root_is_rejected():
    extra = {"models": {"../etc": {"huggingface": {"repo": "x/y"}}},
             "recipes": {"evil": {"engine": "vllm", "model": "../etc"}}}
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        catalogue_filters.merge_catalogue(CATALOGUE, extra)
    assert "thorfleet_catalogue_extra.models: field key: '../etc' is not a relative path" in str(
        raised.value)
    # And where a catalogue is used unchecked, the plan still keeps models under the root.
    merged = {**CATALOGUE, "models": {**CATALOGUE["models"], **extra["models"]},
              "recipes": {**CATALOGUE["recipes"], **extra["recipes"]}}
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        catalogue_filters.model_plan([{"name": "a", "recipe": "evil"}], merged, host="thor01")
    assert "thor01: service a: model path '../etc' is outside the model root /models" in str(
        raised.value)


def test_lock_entries_come_from_every_hosts_results_once():
    planned = {"lock_key": "huggingface:a/b@main", "revision": "main", "upstream_url": "u",
               "sha256": ""}
    host1 = {"results": [{"item": planned, "commit": "c" * 40, "sha256": "s" * 64}]}
    host2 = {"results": [{"item": planned, "commit": "c" * 40},
                         {"item": {**planned, "lock_key": "x"}, "failed": True, "commit": "d"}]}
    assert catalogue_filters.lock_entries([host1, host2, {}], "models") == {
        "huggingface:a/b@main": "c" * 40}
    assert catalogue_filters.lock_entries([host1], "files") == {"u": "s" * 64}
    pinned = {"results": [{"item": {**planned, "revision": "c" * 40}, "commit": "c" * 40}]}
    assert catalogue_filters.lock_entries([pinned], "models") == {}
    first = {"results": [{"item": {**planned, "source": "modelscope", "repo_id": "a/b"},
                          "commit": "c" * 40, "first_sums": {"x/y.bin": "5" * 64}}]}
    assert catalogue_filters.lock_entries([first, host1], "model_files") == {
        "modelscope:a/b@" + "c" * 40 + "/x/y.bin": "5" * 64}


def test_the_sample_inventorys_services_plan_cleanly():
    for host_vars in sorted((ROOT / "inventory/sample/host_vars").glob("*.yml")):
        services = yaml.safe_load(host_vars.read_text())["thorfleet_services"]
        assert plan(services, host=Path(host_vars).stem)["models"]


# --- thorfleet_catalogue_extra: one merge rule, every entry checked after it -------------

def merged(extra):
    return catalogue_filters.merge_catalogue(CATALOGUE, extra)


def test_naming_one_field_of_an_entry_keeps_the_rest_of_it():
    bumped = merged({"engines": {"vllm": {"image": "nvcr.io/nvidia/vllm:25.11-py3"}}})
    assert bumped["engines"]["vllm"] == {**CATALOGUE["engines"]["vllm"],
                                         "image": "nvcr.io/nvidia/vllm:25.11-py3"}
    assert bumped["engines"]["sglang"] == CATALOGUE["engines"]["sglang"]
    # A hub's revision, deep in a model entry, moves alone too.
    pinned = merged({"models": {"Qwen/Qwen3-8B": {"huggingface": {"revision": "v1.0"}}}})
    assert pinned["models"]["Qwen/Qwen3-8B"]["huggingface"] == {"repo": "Qwen/Qwen3-8B",
                                                                "revision": "v1.0"}
    assert pinned["models"]["Qwen/Qwen3-8B"]["modelscope"] == \
        CATALOGUE["models"]["Qwen/Qwen3-8B"]["modelscope"]
    # The project's catalogue itself is left as it was.
    assert CATALOGUE["engines"]["vllm"]["image"] == "nvcr.io/nvidia/vllm:25.10-py3"


def test_a_list_given_again_replaces_the_list_and_a_mapping_merges():
    recipe = merged({"recipes": {"vllm-qwen3-coder-30b-fp8": {
        "args": ["--max-model-len", "32768"], "sampling": {"temperature": 0.5}}}})[
        "recipes"]["vllm-qwen3-coder-30b-fp8"]
    assert recipe["args"] == ["--max-model-len", "32768"]
    assert recipe["sampling"] == {"repetition_penalty": 1.05, "temperature": 0.5,
                                  "top_p": 0.8, "top_k": 20}


def test_a_complete_new_entry_is_added():
    extra = {"models": {"acme/Tiny": {"huggingface": {"repo": "acme/Tiny"}}},
             "recipes": {"vllm-tiny": {"engine": "vllm", "model": "acme/Tiny"}}}
    result = merged(extra)
    assert result["recipes"]["vllm-tiny"] == {"engine": "vllm", "model": "acme/Tiny"}
    specs = service_specs([{"name": "t", "recipe": "vllm-tiny"}], result)
    assert specs[0]["argv"][:3] == ["vllm", "serve", "/models/acme/Tiny"]


@pytest.mark.parametrize(("extra", "message"), [
    ({"engines": {"trtllm": {"kind": "container", "port": 8000}}},
     "thorfleet_catalogue_extra.engines.trtllm: field image is missing; an engine needs "
     "kind, port, image"),
    ({"engines": {"llamafile": {"kind": "native", "port": 8000, "build": "llamafile"}}},
     "thorfleet_catalogue_extra.engines.llamafile: field binary is missing"),
    ({"engines": {"trtllm": {"port": 8000, "image": "nvcr.io/nvidia/tritonserver:25.10"}}},
     "thorfleet_catalogue_extra.engines.trtllm: field kind is missing"),
    ({"engines": {"trtllm": {"kind": "vm", "port": 8000}}},
     "thorfleet_catalogue_extra.engines.trtllm: field kind: 'vm' is not one of container, "
     "native"),
    ({"recipes": {"vllm-tiny": {"engine": "vllm"}}},
     "thorfleet_catalogue_extra.recipes.vllm-tiny: field model is missing; a recipe needs "
     "engine, model"),
    ({"recipes": {"vllm-tiny": {"engine": "vllm", "model": "acme/Tiny"}}},
     "thorfleet_catalogue_extra.recipes.vllm-tiny: field model: 'acme/Tiny' is not in the "
     "catalogue's models"),
    ({"recipes": {"tgi-tiny": {"engine": "tgi", "model": "Qwen/Qwen3-8B"}}},
     "thorfleet_catalogue_extra.recipes.tgi-tiny: field engine: 'tgi' is not in the "
     "catalogue's engines"),
    ({"recipes": {"vllm-qwen3-8b": {"modality": "video"}}},
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b: field modality: 'video' is not one "
     "of chat, vision, transcription"),
    ({"recipes": {"vllm-qwen3-8b": {"args": "--enforce-eager"}}},
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b: field args: '--enforce-eager' is not "
     "a list"),
    ({"recipes": {"vllm-qwen3-8b": {"args": ["--max-model-len", 65536]}}},
     "thorfleet_catalogue_extra.recipes.vllm-qwen3-8b: field args: 65536 is not a "
     "command-line argument"),
    ({"models": {"acme/Tiny": {"quantization": "awq"}}},
     "thorfleet_catalogue_extra.models.acme/Tiny: field huggingface or modelscope is "
     "missing"),
    ({"models": {"acme/Tiny": {"modelscope": {"revision": "master"}}}},
     "thorfleet_catalogue_extra.models.acme/Tiny: field modelscope.repo is missing"),
    ({"files": {"x.jinja": {"url": "https://example.org/x.jinja"}}},
     "thorfleet_catalogue_extra.files.x.jinja: field path is missing; a file needs url, "
     "path"),
    ({"engines": {"vllm": {"port": "8001"}}},
     "thorfleet_catalogue_extra.engines.vllm: field port: '8001' is not a whole number"),
    ({"engines": {"vllm": {"imgae": "nvcr.io/nvidia/vllm:25.11-py3"}}},
     "thorfleet_catalogue_extra.engines.vllm: unknown field imgae; an engine has"),
    ({"engines": {"vllm": None}},
     "thorfleet_catalogue_extra.engines.vllm: an entry of engines is a mapping of fields"),
    ({"recipe": {"vllm-tiny": {}}},
     "thorfleet_catalogue_extra: unknown section(s) recipe; the catalogue has engines, "
     "models, files, recipes"),
    ({"engines": ["vllm"]}, "thorfleet_catalogue_extra.engines: a mapping of entries by name"),
    (["engines"], "thorfleet_catalogue_extra: a mapping of sections"),
])
def test_an_incomplete_or_wrong_entry_is_refused_naming_it_and_the_field(extra, message):
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        merged(extra)
    assert message in str(raised.value)


def with_entries(section, **entries):
    return {**CATALOGUE, section: {**CATALOGUE[section], **entries}}


# Paths of the filters' checks that no other test reaches, each with the error it gives.
@pytest.mark.parametrize(("call", "message"), [
    (lambda: plan(["vllm-qwen3-8b"]),
     "thor01: thorfleet_services[0]: a service is a mapping with name and recipe"),
    (lambda: catalogue_filters.model_plan(
        [{"name": "a", "recipe": "r"}], with_entries("recipes", r={
            "engine": "vllm", "model": "No/Such"}), host="thor01"),
     "thor01: service a: recipe r: field model: 'No/Such' is not in the catalogue's models"),
    (lambda: catalogue_filters.model_plan(
        [{"name": "a", "recipe": "r"}], with_entries("recipes", r={
            "engine": "vllm", "model": "Qwen/Qwen3-8B", "files": ["nope.jinja"]}),
        host="thor01"),
     "thor01: service a: recipe r: field files: 'nope.jinja' is not in the catalogue's files"),
    (lambda: plan([{"name": "a", "recipe": "vllm-qwen3-8b"}], default_source="github"),
     "thor01: thorfleet_model_source: 'github' is not one of huggingface, modelscope"),
    (lambda: catalogue_filters.model_plan(
        [{"name": "a", "recipe": "vllm-qwen3-8b-nothink"}],
        with_entries("files", **{"qwen3_nonthinking.jinja": {"url": TEMPLATE_URL,
                                                             "path": "../../etc/x"}}),
        host="thor01"),
     "thor01: service a: file qwen3_nonthinking.jinja path '../../etc/x' is outside the model "
     "root /models"),
    *((lambda share=share: service_specs(
        [{"name": "a", "recipe": "vllm-qwen3-8b", "memory_share": share}], CATALOGUE,
        host="thor01"),
       f"thor01: service a: field memory_share: {share!r} is not a share of unified memory")
      for share in (0, True, False)),
    (lambda: service_specs(
        [{"name": "a", "recipe": "vllm-qwen3-8b", "port": True}], CATALOGUE, host="thor01"),
     "thor01: service a: field port: True is not a port (a whole number from 1 to 65535)"),
    (lambda: service_specs(
        [{"name": "a", "recipe": "vllm-qwen3-8b", "served_name": ""}], CATALOGUE,
        host="thor01"),
     "thor01: service a: field served_name: '' is not a name of 1 to 128"),
], ids=["service not a mapping", "recipe model missing", "recipe file missing",
        "bad model source", "file outside the root", "memory_share 0", "memory_share True",
        "memory_share False", "boolean port", "empty served name"])
def test_each_check_of_the_filters_names_what_it_refuses(call, message):
    with pytest.raises(catalogue_filters.CatalogueError) as raised:
        call()
    assert message in str(raised.value)


def test_the_readmes_recipe_table_lists_every_recipe_and_what_its_clients_send():
    text = (ROOT / "README.md").read_text()
    table = text.split("### Recipes, and what clients send", 1)[1].split("\n###", 1)[0]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    assert sorted(rows) == sorted(CATALOGUE["recipes"])
    for name, recipe in CATALOGUE["recipes"].items():
        engine = CATALOGUE["engines"][recipe["engine"]]
        send = rows[name][4]
        if recipe.get("sampling") and not engine.get("sampling_reaches_clients", True):
            assert json.loads(send.strip("`")) == recipe["sampling"], name
        else:
            assert not send.startswith("`"), f"{name}: its engine applies its sampling"
        assert rows[name][1:3] == [recipe["engine"], recipe["model"]]


# --- at the edges --------------------------------------------------------------------


def test_one_service_loading_a_file_and_one_the_whole_model_fetch_the_whole_model():
    extra = {"recipes": {"vllm-gguf-repo": {"engine": "vllm", "model": "Qwen/Qwen3-8B-GGUF"}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    both = [{"name": "file", "recipe": "llama-qwen3-8b-gguf", "port": 8000},
            {"name": "whole", "recipe": "vllm-gguf-repo", "port": 8001}]
    for services in (both, both[::-1]):
        (model,) = catalogue_filters.model_plan(services, merged)["models"]
        assert model["allow_patterns"] == [], services
    (alone,) = catalogue_filters.model_plan(both[:1], merged)["models"]
    assert alone["allow_patterns"] == ["Qwen3-8B-Q5_K_M.gguf"]


def test_a_models_revision_defaults_to_its_hubs_default_branch():
    extra = {"models": {"Qwen/Qwen3-8B": {"huggingface": {"repo": "Qwen/Qwen3-8B",
                                                          "revision": None},
                                          "modelscope": {"repo": "Qwen/Qwen3-8B"}}}}
    merged = catalogue_filters.merge_catalogue(CATALOGUE, extra)
    for source, branch in (("huggingface", "main"), ("modelscope", "master")):
        services = [{"name": "a", "recipe": "vllm-qwen3-8b", "source": source}]
        (model,) = catalogue_filters.model_plan(services, merged)["models"]
        assert (model["requested_revision"], model["revision"]) == (branch, branch)


def test_a_file_already_pinned_or_fetched_without_a_sum_adds_nothing_to_the_lock():
    pinned = {"results": [{"item": {"upstream_url": "u", "sha256": "a" * 64},
                           "sha256": "a" * 64}]}
    unsummed = {"results": [{"item": {"upstream_url": "v", "sha256": ""}, "changed": True}]}
    model = {"results": [{"item": {"upstream_url": "w", "sha256": ""}, "commit": "c" * 40}]}
    assert catalogue_filters.lock_entries([pinned, unsummed, model], "files") == {}


def test_ignore_patterns_make_another_copy_of_a_model():
    entry = {"path": "Qwen/Qwen3-8B", "source": "huggingface", "repo_id": "Qwen/Qwen3-8B",
             "revision": "main", "allow_patterns": [], "ignore_patterns": []}
    models = plugin_utils("models")
    assert models.model_key(entry) != models.model_key({**entry, "ignore_patterns": ["*.pt"]})
    assert models.model_key(entry) == models.model_key({**entry, "ignore_patterns": None})

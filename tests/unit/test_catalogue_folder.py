"""The recipe catalogue as data: its folder (catalogue/), read by one lookup, recipes that
extend another, and a site's own catalogue set from the inventory."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import CATALOGUE, ROOT, load
from thorfleet import bounded, catalogue

rules = load("filter_plugins/catalogue.py")
lookup = load("roles/thorfleet/lookup_plugins/thorfleet_catalogue.py")


def folder(tmp_path, recipes=None, **sections):
    """A catalogue folder of one engine, one model and one recipe, with `sections` (file
    name: text) and `recipes` (file name under recipes/: text) written over it."""
    (tmp_path / "recipes").mkdir(parents=True, exist_ok=True)
    files = {"engines.yml": "vllm: {kind: container, image: 'nvcr.io/nvidia/vllm:25.10-py3',"
                            " port: 8000}\n",
             "models.yml": "acme/Tiny: {huggingface: {repo: acme/Tiny}}\n",
             "files.yml": "---\n", **sections}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    for name, text in (recipes or {"tiny.yml": "tiny: {engine: vllm, model: acme/Tiny}\n"}
                       ).items():
        (tmp_path / "recipes" / name).write_text(text)
    return tmp_path


def test_the_folder_is_the_catalogue_every_reader_gets():
    # The command line, the lab and the tests read the folder through the roles' lookup:
    # one reader, so a section or recipe file they do not all see cannot exist.
    raw = catalogue.load()
    assert raw == lookup.load()
    assert set(raw) == {"engines", "models", "files", "recipes"}
    recipe_files = sorted(p.name for p in (ROOT / "catalogue/recipes").glob("*.yml"))
    assert recipe_files == ["llama-server.yml", "sglang.yml", "vllm.yml",
                            "whisper-server.yml"]
    # Each engine's recipes in its own file.
    for path in (ROOT / "catalogue/recipes").glob("*.yml"):
        engines = {CATALOGUE["recipes"][name]["engine"]
                   for name in yaml.safe_load(path.read_text())}
        assert engines == {path.stem}, path


def test_nothing_else_reads_the_catalogues_files():
    # Whoever reads the catalogue does so through the lookup, not by a file path of its own
    # (the lab once read it from the thorfleet role's vars/main.yml).
    readers = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"),
                 *ROOT.glob("bench/*.py"), *ROOT.glob("scripts/*.py"),
                 *ROOT.glob("filter_plugins/*.py"), *ROOT.glob("collections/**/*.py"),
                 *ROOT.glob("roles/**/*.py"), *ROOT.glob("roles/**/*.yml"),
                 *ROOT.glob("playbooks/**/*.yml")]:
        text = path.read_text()
        if re.search(r"""catalogue/(engines|models|files)\.yml|catalogue/recipes"""
                     r"""|/ *["']catalogue["']""", text):
            readers.append(str(path.relative_to(ROOT)))
    # The lab test of "Adding an engine" writes a copy's catalogue files, as a user would.
    assert sorted(readers) == ["roles/thorfleet/lookup_plugins/thorfleet_catalogue.py",
                               "src/thorfleet/catalogue.py",
                               "tests/lab/test_adding_an_engine.py",
                               "tests/unit/test_catalogue_folder.py"]


def test_a_nothink_variant_states_only_what_differs_from_its_recipe():
    # Each -nothink recipe extends the recipe it varies and names no field its base
    # already has with the same value.
    raw = catalogue.load()["recipes"]
    variants = [name for name in raw if name.endswith("-nothink")]
    assert len(variants) == 6
    for name in variants:
        base = name.removesuffix("-nothink")
        assert raw[name]["extends"] == base, name
        resolved = CATALOGUE["recipes"][base]
        for field, value in raw[name].items():
            if field == "extends":
                continue
            if isinstance(value, dict):
                assert all(resolved[field].get(k) != v for k, v in value.items()), (name, field)
            else:
                assert resolved.get(field) != value, (name, field)
        assert CATALOGUE["recipes"][name]["thinking"] is False


def test_a_variant_is_its_recipe_with_its_own_fields_on_top():
    raw = catalogue.load()
    merged = rules.merge_catalogue(raw)
    fp8, nothink = (merged["recipes"][f"sglang-qwen3-8b-fp8{s}"] for s in ("", "-nothink"))
    # A mapping merges field by field, in the base's order (argv keeps its JSON order).
    assert list(nothink["sampling"].items()) == [
        ("repetition_penalty", 1.2), ("temperature", 0.7), ("top_p", 0.8), ("top_k", 20),
        ("min_p", 0.0)]
    assert fp8["sampling"]["temperature"] == 0.6
    # A list given again replaces the base's.
    assert merged["recipes"]["llama-qwen3-8b-gguf-nothink"]["args"] == [
        "--ctx-size", "0", "--jinja", "--reasoning-budget", "0"]
    assert "extends" not in nothink
    # The inventory's change to a recipe reaches the recipes that extend it, and an
    # inventory recipe may extend one of the catalogue's and unset a field with null.
    changed = rules.merge_catalogue(raw, {"recipes": {
        "vllm-qwen3-8b": {"args": ["--max-model-len", "8192"]},
        "site-qwen3": {"extends": "vllm-qwen3-8b-nothink", "chat_template": None,
                       "served_name": "site"}}})
    assert changed["recipes"]["vllm-qwen3-8b-nothink"]["args"] == ["--max-model-len", "8192"]
    site = changed["recipes"]["site-qwen3"]
    assert site["served_name"] == "site" and "chat_template" not in site
    assert site["thinking"] is False and site["model"] == "Qwen/Qwen3-8B"


@pytest.mark.parametrize(("recipes", "message"), [
    ({"x": {"extends": "nowhere"}},
     "thorfleet_catalogue_extra.recipes.x: field extends: 'nowhere' is not in the "
     "catalogue's recipes"),
    ({"x": {"extends": ["vllm-qwen3-8b"]}},
     "thorfleet_catalogue_extra.recipes.x: field extends: ['vllm-qwen3-8b'] is not in"),
    ({"x": {"extends": "x"}},
     "thorfleet_catalogue_extra.recipes.x: field extends: 'x' leads back to it (x -> x)"),
    ({"a": {"extends": "b"}, "b": {"extends": "a"}},
     "thorfleet_catalogue_extra.recipes.b: field extends: 'a' leads back to it (a -> b -> a)"),
    # A variant is checked like any recipe once resolved.
    ({"x": {"extends": "vllm-qwen3-8b", "modality": "video"}},
     "thorfleet_catalogue_extra.recipes.x: field modality: 'video' is not one of"),
])
def test_a_recipe_that_extends_what_is_not_there_is_refused_naming_it(recipes, message):
    with pytest.raises(rules.CatalogueError) as raised:
        rules.merge_catalogue(catalogue.load(), {"recipes": recipes})
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(("recipes", "sections", "message"), [
    ({"tiny.yml": "tiny: {engine: vllm, model: acme/Tiny}\n",
      "zz-more.yml": "tiny: {engine: vllm, model: acme/Tiny}\n"}, {},
     r"recipe tiny is in both .*/recipes/tiny\.yml and .*/recipes/zz-more\.yml"),
    (None, {"models.yml": "- acme/Tiny\n"}, r"models\.yml: a mapping of entries by name"),
    (None, {"engines.yml": "vllm: [\n"}, r"engines\.yml: not YAML"),
    ({}, {}, r"recipes holds no recipes"),
    (None, {"files.yml": None}, r"files\.yml: No such file"),
])
def test_a_folder_that_is_not_a_catalogue_is_refused_naming_the_file(tmp_path, recipes,
                                                                      sections, message):
    written = folder(tmp_path, recipes, **{k: v for k, v in sections.items() if v})
    for name in [k for k, v in sections.items() if v is None]:
        (written / name).unlink()
    if recipes == {}:
        for path in (written / "recipes").iterdir():
            path.unlink()
    with pytest.raises(lookup.CatalogueFolderError, match=message):
        lookup.load(written)


def test_a_site_sets_its_own_catalogue_folder_in_the_inventory(tmp_path):
    # The way an Ansible user overrides a role's data: a group variable. The roles' view
    # of the catalogue (thorfleet's thorfleet_catalogue_merged) is the site's folder with the
    # inventory's thorfleet_catalogue_extra on top. Cost: one local run, about 2 s.
    site = folder(tmp_path / "site")
    inventory = tmp_path / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text("all: {hosts: {localhost: {}}}\n")
    (inventory / "group_vars/all.yml").write_text(yaml.safe_dump({
        "thorfleet_catalogue": f"{{{{ lookup('thorfleet_catalogue', '{site}') }}}}",
        "thorfleet_catalogue_extra": {"recipes": {"tiny-site": {
            "extends": "tiny", "served_name": "site"}}}}))
    playbook = tmp_path / "play.yml"
    said = tmp_path / "said.json"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False, "roles": ["thorfleet"],
        "tasks": [{"ansible.builtin.copy": {
            "content": "{{ thorfleet_catalogue_merged.recipes | to_json }}", "dest": str(said),
            "mode": "0644"}}]}]))
    done = bounded.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", str(inventory),
         "-c", "local", str(playbook)], 120, cwd=tmp_path,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
             "ANSIBLE_FILTER_PLUGINS": str(ROOT / "filter_plugins"),
             "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
             "ANSIBLE_PYTHON_INTERPRETER": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(said.read_text()) == {
        "tiny": {"engine": "vllm", "model": "acme/Tiny"},
        "tiny-site": {"engine": "vllm", "model": "acme/Tiny", "served_name": "site"}}

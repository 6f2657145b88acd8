"""The lab's vLLM and SGLang stand-in parses commands as the engines do: every container
recipe of the catalogue is accepted, and what an engine would refuse is refused."""

from __future__ import annotations

import pytest

from tests.unit.test_service_specs import CATALOGUE, guide, one
from thorfleet import engine_standin

CONTAINER_RECIPES = sorted(r for r, spec in CATALOGUE["recipes"].items()
                           if spec["engine"] in ("vllm", "sglang"))


def parse(engine, argv):
    skip = 1 if engine == "vllm" else 3
    return engine_standin.configure(engine, argv[skip:])


@pytest.fixture
def models(monkeypatch):
    """Every path exists: the parse is what is under test here."""
    monkeypatch.setattr(engine_standin.os.path, "exists", lambda _path: True)


@pytest.mark.parametrize("recipe", CONTAINER_RECIPES)
def test_each_container_recipe_is_accepted_with_its_settings(recipe, models):
    spec = one(recipe, port=8011, memory_share=0.3)
    settings = parse(spec["engine"], spec["argv"])
    assert (settings["port"], settings["served_name"]) == (8011, spec["served_name"])
    assert settings["model"] == spec["model"]


def test_the_guides_media_path_flag_without_a_value_is_refused(models):
    # What the guide writes: the flag with no value (the catalogue adds /models).
    argv = guide("vllm-qwen2.5-vl-7b-awq")[:-1]
    with pytest.raises(SystemExit) as refused:
        parse("vllm", argv)
    assert refused.value.code == 2


@pytest.mark.parametrize(("engine", "argv"), [
    ("vllm", ["vllm", "serve", "/m", "--no-such-flag"]),
    ("vllm", ["vllm", "serve", "/m", "--override-generation-config", "{temperature: 1"]),
    ("sglang", ["python", "-m", "sglang.launch_server", "--model-path", "/m",
                "--preferred-sampling-params", "[1,"]),
    ("sglang", ["python", "-m", "sglang.launch_server", "--port", "8000"]),  # no model
])
def test_what_the_engine_refuses_stops_the_stand_in(engine, argv, models):
    with pytest.raises(SystemExit) as refused:
        parse(engine, argv)
    assert refused.value.code == 2


def test_a_missing_model_stops_it_naming_the_path(tmp_path):
    with pytest.raises(SystemExit) as refused:
        parse("vllm", ["vllm", "serve", str(tmp_path / "absent")])
    assert "model" in str(refused.value.code) and "absent" in str(refused.value.code)

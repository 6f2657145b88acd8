"""The README's "Adding an engine", done as it says and nothing more: a throwaway
container engine, added to a copy of this checkout in the places the README names (its
catalogue entry, its recipes, its adapter, its stand-in entry), converges a lab host.

Cost: one converge of thor03 with one container service (the model's download, the
stand-in's pull, the unit, verify), 20 to 40 s; it runs beside thor01's first converge,
which the session waits for anyway (thor03 is no other test's in this lab).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.lab.conftest import PLAYBOOK_BOUND, RECAP, left_changed
from tests.suite import copy_tree
from tests.timing import record_run
from thorfleet import bounded

pytestmark = pytest.mark.beside_first_converge  # thor03 only

ROOT = Path(__file__).resolve().parents[2]
HOST = "thor03"
IMAGE = "nvcr.io/nvidia/toy-serve:0.1"
PORT = 8500

ENGINE_ENTRY = f"""toy:
  kind: container
  image: {IMAGE}
  port: {PORT}
  memory_share: 0.5
  caches: [/root/.cache/toy]
  start_timeout: 300
  memory_flag: --memory-fraction
  api_key_env: TOY_API_KEY
"""
RECIPES = """---
# A throwaway engine's one recipe (tests/lab/test_adding_an_engine.py).
toy-qwen3-8b:
  {engine: toy, model: Qwen/Qwen3-8B, served_name: qwen3-toy, modality: chat}
"""
ADAPTER = '''def _toy(run):
    return ["toy-serve", "--model", run["model"], "--served-model-name", run["served_name"],
            "--host", run["bind"], "--port", str(run["port"]), *run["args"], *_memory(run)]


'''
STANDIN_PARSER = '''def toy_parser() -> argparse.ArgumentParser:
    # Every flag required: the stand-in refuses a command that leaves one out.
    parser = argparse.ArgumentParser(prog="toy-serve", description=STANDIN, allow_abbrev=False)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--memory-fraction", type=float, required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--chat-template")
    return parser


'''
STANDIN_ENTRY = '''    "toy": Engine(
        toy_parser, ("toy-serve",), "model", "~/.cache/toy",
        {"usr/local/bin/toy-serve": "#!/usr/bin/python3\\nimport sys\\n"
                                    "from thorfleet_engine_standin import main\\n"
                                    'main("toy", ["toy-serve", *sys.argv[1:]])\\n'},
        api_key_env="TOY_API_KEY"),
'''
SERVICES = "collections/ansible_collections/thorfleet/lib/plugins/plugin_utils/services.py"
STANDIN = "src/thorfleet/engine_standin.py"


def insert(path: Path, before: str, text: str) -> None:
    """`text` put in front of the one place `before` is in the file."""
    source = path.read_text()
    assert source.count(before) == 1, f"{path}: {before!r} is not in it once"
    path.write_text(source.replace(before, text + before))


def add_engine(checkout: Path) -> None:
    """The README's steps, in the README's files."""
    with (checkout / "catalogue/engines.yml").open("a") as engines:
        engines.write(ENGINE_ENTRY)
    (checkout / "catalogue/recipes/toy.yml").write_text(RECIPES)
    insert(checkout / SERVICES, "# One adapter per engine:", ADAPTER)
    insert(checkout / SERVICES, '"vllm": _vllm,', '"toy": _toy, ')
    insert(checkout / STANDIN, "@dataclass(frozen=True)\nclass Engine:", STANDIN_PARSER)
    insert(checkout / STANDIN, '    "vllm": Engine(', STANDIN_ENTRY)


def changed_files(checkout: Path) -> list[str]:
    """The project's files the copy has that differ from this checkout's, or are new (the
    lab's inventory and state, copied and linked, left out)."""
    changed = []
    for path in sorted(checkout.rglob("*")):
        name = path.relative_to(checkout)
        if (name.parts[:2] == ("inventory", "lab") or name.parts[0] == ".lab"
                or not path.is_file() or path.is_symlink()):
            continue
        here = ROOT / name
        if not here.is_file() or here.read_bytes() != path.read_bytes():
            changed.append(str(name))
    return changed


@pytest.fixture
def checkout(lab, tmp_path):
    """A copy of this checkout (as tests/suite.py copies it for the second lab), with the
    running lab's inventory and state, and the engine added."""
    copy = tmp_path / "checkout"
    copy_tree(ROOT, copy)
    shutil.copytree(ROOT / "inventory/lab", copy / "inventory/lab")
    (copy / ".lab").symlink_to(lab.state)
    add_engine(copy)
    left_changed(HOST)  # a lab that was up gets thor03's own services back at the end
    return copy


def test_a_container_engine_added_as_the_readme_says_converges_a_host(lab, checkout):
    # Four files, one of them new, as the README counts them.
    assert changed_files(checkout) == ["catalogue/engines.yml", "catalogue/recipes/toy.yml",
                                       SERVICES, STANDIN]
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "ANSIBLE_NOCOLOR": "1"}
    # The lab publishes the new engine's stand-in under its image, as `lab up` does.
    pushed = bounded.run(
        ["python3", "-c", "from pathlib import Path; from thorfleet.lab import Lab; "
         "print(Lab(Path('.')).push_standin('toy', '0.1'))"], 600, cwd=checkout, env=env)
    assert pushed.returncode == 0, pushed.stderr
    services = [{"name": "toy", "recipe": "toy-qwen3-8b"}]
    argv = ["ansible-playbook", "site.yml", "-l", HOST,
            "-e", json.dumps({"thorfleet_services": services})]
    start = time.monotonic()
    run = bounded.run(argv, PLAYBOOK_BOUND, cwd=checkout, env=env)
    record_run(time.monotonic() - start, argv)
    output = run.stdout + run.stderr
    recap = {m["host"]: int(m["failed"]) for m in RECAP.finditer(output)}
    rc = run.returncode
    assert (rc, recap) == (0, {HOST: 0}), output[-6000:]

    unit = lab.ssh(HOST, "cat /etc/systemd/system/thorfleet-toy.service").stdout
    words = " ".join(word for word in unit.split() if word != "\\")  # lines joined
    # The image by the digest the lab pushed, then the command the adapter made.
    assert (f"/nvidia/toy-serve@{pushed.stdout.strip()} toy-serve --model /models/Qwen/Qwen3-8B "
            f"--served-model-name qwen3-toy --host 0.0.0.0 --port {PORT} "
            "--memory-fraction 0.5 ExecStop=") in words, unit
    state = lab.ssh(HOST, "systemctl is-active thorfleet-toy.service").stdout.strip()
    assert state == "active"
    # The stand-in serves the model by its served name, started by the engine's own words.
    models = json.loads(lab.ssh(HOST, f"curl -sf http://127.0.0.1:{PORT}/v1/models").stdout)
    assert [m["id"] for m in models["data"]] == ["qwen3-toy"]
    # Verify asked it as a person would, with the recipe's modality.
    assert "toy: chat: answered 200" in output, output[-3000:]

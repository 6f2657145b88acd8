"""thorfleet_lock: the lock file kept with the inventory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import load, run_module

thorfleet_lock = load("library/thorfleet_lock.py")


def lock(tmp_path, monkeypatch, check=False, **args):
    return run_module(thorfleet_lock, {"path": str(tmp_path / "thorfleet.lock.yml"), **args},
                      monkeypatch, check=check)


def test_reading_a_missing_lock_gives_empty_sections(tmp_path, monkeypatch):
    done = lock(tmp_path, monkeypatch, state="read")
    assert done.result == {"changed": False, "lock": {"models": {}, "files": {}, "images": {}}}
    assert not (tmp_path / "thorfleet.lock.yml").exists()


def test_entries_are_merged_into_their_section_and_others_kept(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, section="files", entries={"https://a/t.jinja": "1" * 64})
    done = lock(tmp_path, monkeypatch, section="models",
                entries={"huggingface:Qwen/Qwen3-8B@main": "c" * 40})
    assert done.result["changed"]
    written = yaml.safe_load((tmp_path / "thorfleet.lock.yml").read_text())
    assert written == {"models": {"huggingface:Qwen/Qwen3-8B@main": "c" * 40},
                       "files": {"https://a/t.jinja": "1" * 64}, "images": {}}
    assert (tmp_path / "thorfleet.lock.yml").read_text().startswith("# thorfleet lock file")


def test_the_same_entries_change_nothing(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, section="files", entries={"u": "1" * 64})
    before = (tmp_path / "thorfleet.lock.yml").stat().st_mtime_ns
    again = lock(tmp_path, monkeypatch, section="files", entries={"u": "1" * 64})
    assert again.result["changed"] is False
    assert (tmp_path / "thorfleet.lock.yml").stat().st_mtime_ns == before


def test_check_mode_shows_the_change_and_never_writes(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, section="images", entries={"nvcr.io/nvidia/vllm:25.10-py3": "a"})
    preview = lock(tmp_path, monkeypatch, check=True, section="images",
                   entries={"nvcr.io/nvidia/vllm:25.10-py3": "b"})
    assert preview.result["changed"]
    assert json.loads(preview.result["diff"]["before"]) == {"nvcr.io/nvidia/vllm:25.10-py3": "a"}
    assert json.loads(preview.result["diff"]["after"]) == {"nvcr.io/nvidia/vllm:25.10-py3": "b"}
    written = yaml.safe_load((tmp_path / "thorfleet.lock.yml").read_text())
    assert written["images"] == {"nvcr.io/nvidia/vllm:25.10-py3": "a"}


def test_a_lock_that_is_not_a_mapping_is_an_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / "thorfleet.lock.yml").write_text("- a list\n")
    done = lock(tmp_path, monkeypatch, state="read")
    assert done.failed and "thorfleet.lock.yml: not a mapping" in done.result["msg"]


def test_the_lock_beside_the_inventory_is_not_read_as_inventory(tmp_path, monkeypatch,
                                                                 project_root):
    inventory = tmp_path / "site"
    shutil.copytree(project_root / "inventory" / "sample", inventory)
    lock(inventory, monkeypatch, section="models",
         entries={"huggingface:Qwen/Qwen3-8B@main": "c" * 40})
    assert (inventory / "thorfleet.lock.yml").exists()
    command = [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inventory),
               "--list"]
    listed = subprocess.run(command, cwd=project_root, capture_output=True, text=True, check=True)
    assert "models" not in json.loads(listed.stdout)  # no group made of the lock's section
    assert "WARNING" not in listed.stderr, listed.stderr

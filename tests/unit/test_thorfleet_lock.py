"""thorfleet_lock: the lock file kept with the inventory."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, load, run_module
from thorfleet import bounded, stock

thorfleet_lock = load("library/thorfleet_lock.py")
LOCK_NAME = ".thorfleet.lock.yml"  # roles/thorfleet's default, beside the inventory


def lock(tmp_path, monkeypatch, check=False, **args):
    return run_module(thorfleet_lock, {"path": str(tmp_path / LOCK_NAME), **args},
                      monkeypatch, check=check)


def test_reading_a_missing_lock_gives_empty_sections(tmp_path, monkeypatch):
    done = lock(tmp_path, monkeypatch, state="read")
    assert done.result == {"changed": False, "lock": {"models": {}, "model_files": {},
                                                     "model_manifests": {}, "files": {},
                                                     "images": {}, "image_platforms": {},
                                                     "engines": {}}}
    assert not (tmp_path / LOCK_NAME).exists()


def test_entries_are_merged_into_their_section_and_others_kept(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, section="files", entries={"https://a/t.jinja": "1" * 64})
    done = lock(tmp_path, monkeypatch, section="models",
                entries={"huggingface:Qwen/Qwen3-8B@main": "c" * 40})
    assert done.result["changed"]
    written = yaml.safe_load((tmp_path / LOCK_NAME).read_text())
    assert written == {"models": {"huggingface:Qwen/Qwen3-8B@main": "c" * 40}, "model_files": {},
                       "model_manifests": {}, "files": {"https://a/t.jinja": "1" * 64},
                       "images": {}, "image_platforms": {}, "engines": {}}
    assert (tmp_path / LOCK_NAME).read_text().startswith("# thorfleet lock file")


def test_entries_are_merged_within_their_section(tmp_path, monkeypatch):
    """A second host's pins join the first's; an entry given again takes the new value."""
    lock(tmp_path, monkeypatch, section="images", entries={"a:1": "sha256:1", "b:1": "sha256:2"})
    done = lock(tmp_path, monkeypatch, section="images",
                entries={"b:1": "sha256:3", "c:1": "sha256:4"})
    assert json.loads(done.result["diff"]["after"]) == {"b:1": "sha256:3", "c:1": "sha256:4"}
    written = yaml.safe_load((tmp_path / LOCK_NAME).read_text())
    assert written["images"] == {"a:1": "sha256:1", "b:1": "sha256:3", "c:1": "sha256:4"}


def test_the_same_entries_change_nothing(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, section="files", entries={"u": "1" * 64})
    before = (tmp_path / LOCK_NAME).stat().st_mtime_ns
    again = lock(tmp_path, monkeypatch, section="files", entries={"u": "1" * 64})
    assert again.result["changed"] is False
    assert (tmp_path / LOCK_NAME).stat().st_mtime_ns == before


def test_check_mode_shows_the_change_and_never_writes(tmp_path, monkeypatch):
    lock(tmp_path, monkeypatch, section="images", entries={"nvcr.io/nvidia/vllm:25.10-py3": "a"})
    preview = lock(tmp_path, monkeypatch, check=True, section="images",
                   entries={"nvcr.io/nvidia/vllm:25.10-py3": "b"})
    assert preview.result["changed"]
    assert json.loads(preview.result["diff"]["before"]) == {"nvcr.io/nvidia/vllm:25.10-py3": "a"}
    assert json.loads(preview.result["diff"]["after"]) == {"nvcr.io/nvidia/vllm:25.10-py3": "b"}
    written = yaml.safe_load((tmp_path / LOCK_NAME).read_text())
    assert written["images"] == {"nvcr.io/nvidia/vllm:25.10-py3": "a"}


def test_a_lock_that_is_not_a_mapping_is_an_error_naming_it(tmp_path, monkeypatch):
    (tmp_path / LOCK_NAME).write_text("- a list\n")
    done = lock(tmp_path, monkeypatch, state="read")
    assert done.failed and ".thorfleet.lock.yml: not a mapping" in done.result["msg"]


def test_the_lock_beside_the_inventory_is_not_read_as_inventory(tmp_path, monkeypatch,
                                                                 project_root):
    inventory = tmp_path / "site"
    shutil.copytree(project_root / "inventory" / "sample", inventory)
    lock(inventory, monkeypatch, section="models",
         entries={"huggingface:Qwen/Qwen3-8B@main": "c" * 40})
    assert (inventory / LOCK_NAME).exists()
    command = [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(inventory),
               "--list"]
    # Under a configuration of the user's own, which knows nothing of the lock file.
    env = stock.environment(stock.write_config(project_root, tmp_path))
    listed = bounded.run(command, 120, cwd=tmp_path, env=env, check=True)
    assert "models" not in json.loads(listed.stdout)  # no group made of the lock's section
    assert "WARNING" not in listed.stderr, listed.stderr


def test_a_lock_under_its_old_name_stops_the_run_asking_for_a_rename(tmp_path, monkeypatch):
    old = tmp_path / "thorfleet.lock.yml"
    old.write_text("models: {a: b}\n")
    done = lock(tmp_path, monkeypatch, state="read", previous_path=str(old))
    assert done.failed
    assert done.result["msg"].startswith(f"the lock file is now {tmp_path / LOCK_NAME}: "
                                         f"rename {old} to it")
    (tmp_path / LOCK_NAME).write_text("models: {a: c}\n")
    read = lock(tmp_path, monkeypatch, state="read", previous_path=str(old))
    assert read.result["lock"]["models"] == {"a": "c"}


def test_the_roles_read_it_in_ansibles_own_process_with_the_modules_checks(tmp_path,
                                                                           monkeypatch):
    from ansible.errors import AnsibleLookupError

    lookup = load("roles/thorfleet/lookup_plugins/thorfleet_lock.py").LookupModule()
    path = str(tmp_path / LOCK_NAME)
    assert lookup.run([path]) == [{"models": {}, "model_files": {}, "model_manifests": {},
                                   "files": {}, "images": {}, "image_platforms": {}, "engines": {}}]
    lock(tmp_path, monkeypatch, section="images", entries={"r:t": "sha256:" + "1" * 64})
    assert lookup.run([path])[0]["images"] == {"r:t": "sha256:" + "1" * 64}
    # The same refusals as the module's, raised as Ansible errors that name the cause.
    old = tmp_path / "old" / "thorfleet.lock.yml"
    old.parent.mkdir()
    old.write_text("models: {a: b}\n")
    moved = str(old.parent / LOCK_NAME)
    try:
        lookup.run([moved], previous_path=str(old))
    except AnsibleLookupError as error:
        assert str(error).startswith(f"the lock file is now {moved}: rename {old} to it")
    else:
        raise AssertionError("a lock under its old name was read")
    (tmp_path / LOCK_NAME).write_text("- a list\n")
    try:
        lookup.run([path])
    except AnsibleLookupError as error:
        assert ".thorfleet.lock.yml: not a mapping" in str(error)
    else:
        raise AssertionError("a lock that is not a mapping was read")


def test_a_lists_platform_images_are_kept_as_a_mapping_and_checked_when_read(tmp_path,
                                                                            monkeypatch):
    listed, arm64, amd64 = ("sha256:" + c * 64 for c in "abc")
    lock(tmp_path, monkeypatch, section="image_platforms",
         entries={listed: {"linux/arm64": arm64}})
    done = lock(tmp_path, monkeypatch, section="image_platforms",
                entries={listed: {"linux/arm64": arm64, "linux/amd64": amd64}})
    assert done.result["changed"]
    written = yaml.safe_load((tmp_path / LOCK_NAME).read_text())
    assert written["image_platforms"] == {listed: {"linux/arm64": arm64, "linux/amd64": amd64}}
    again = lock(tmp_path, monkeypatch, section="image_platforms",
                 entries={listed: {"linux/arm64": arm64, "linux/amd64": amd64}})
    assert not again.result["changed"]
    refused = lock(tmp_path, monkeypatch, section="image_platforms", entries={listed: arm64})
    assert refused.failed and "image_platforms" in refused.result["msg"]
    # A hand-edited lock whose entry is not a mapping is refused when read, naming it.
    (tmp_path / LOCK_NAME).write_text(f"image_platforms:\n  {listed}: {arm64}\n")
    broken = lock(tmp_path, monkeypatch, state="read")
    assert broken.failed and listed in broken.result["msg"]


def test_a_write_waits_for_another_runs_write_and_loses_none_of_its_pins(tmp_path):
    # Two runs against one inventory each read, change and write the whole lock: a write
    # holds the inventory directory's lock (flock) from its read to its write. Here the
    # test holds it, standing for another run between its read and its write: the
    # module, run as Ansible runs it (its own process, its arguments in a file), waits.
    path = tmp_path / LOCK_NAME
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {
        "path": str(path), "section": "images", "entries": {"b": "sha256:" + "2" * 64}}}))
    with thorfleet_lock.locked(str(tmp_path)):
        # The other run's write, made while it holds the lock.
        path.write_text(yaml.safe_dump({"images": {"a": "sha256:" + "1" * 64}}))
        waiting = subprocess.Popen([sys.executable, str(ROOT / "library/thorfleet_lock.py"),
                                    str(args)], stdout=subprocess.PIPE, text=True)
        with contextlib.suppress(subprocess.TimeoutExpired):  # waiting, as it should
            waiting.wait(timeout=2)
        assert waiting.poll() is None, "the module wrote while another run held the lock"
    out, _ = waiting.communicate(timeout=60)
    assert json.loads(out)["changed"], out
    assert yaml.safe_load(path.read_text())["images"] == {
        "a": "sha256:" + "1" * 64, "b": "sha256:" + "2" * 64}

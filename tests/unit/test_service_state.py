"""The services phase's one read: what the units run (manifests, template sums, builds)
in the shapes the unit filter reads, which directories need fixing, which units need
enabling or starting, and the units and last good copies there are."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.conftest import load, run_module
from tests.unit.test_units import DOCKER, SERVICES

state = load("roles/inference_services/library/thorfleet_service_state.py")
units = load("filter_plugins/units.py")
images = load("filter_plugins/images.py")

COMMIT = "b" * 40
SHOW = """Id=thorfleet-chat.service
UnitFileState=enabled
ActiveState=active

Id=thorfleet-asr.service
UnitFileState=disabled
ActiveState=active

Id=thorfleet-new.service
UnitFileState=
ActiveState=inactive
"""


def host(tmp_path):
    """A host's files under tmp_path, for the two services of test_units."""
    chat, asr = SERVICES
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for name in ("thorfleet-chat.service", "thorfleet-old.service", "other.service"):
        service = name.removeprefix("thorfleet-").removesuffix(".service")
        # As the services phase writes it: ansible_managed's comment block first.
        (unit_dir / name).write_text(f"#\n# Ansible managed\n#\n# thorfleet service {service}: "
                                     "recipe r (e, chat).\n[Unit]\n")
    # thorfleet's units that are not services (thor_power's, thor_metrics').
    for name in ("thorfleet-jetson-clocks.service", "thorfleet-jetson-exporter.service"):
        (unit_dir / name).write_text("#\n# Ansible managed\n#\n[Unit]\nDescription=thorfleet "
                                     "service, not one of thorfleet_services\n"
                                     "# thorfleet service in a comment after the header\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "thorfleet-manifest.json").write_text(json.dumps({"commit": COMMIT}))
    template = tmp_path / "chat.jinja"
    template.write_text("{{ messages }}")
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "build-0123abcd").mkdir()
    (engine / "current").symlink_to("build-0123abcd")
    private = tmp_path / "private"
    private.mkdir(mode=0o755)
    os.chmod(private, 0o755)  # the umask may have left less
    last_good = tmp_path / "last-good"
    last_good.mkdir()
    (last_good / "thorfleet-chat.service").write_bytes(
        (unit_dir / "thorfleet-chat.service").read_bytes())
    (last_good / "chat.env").write_text("")
    return {"unit_dir": str(unit_dir), "model": str(model), "template": str(template),
            "engine": str(engine), "private": str(private), "missing": str(tmp_path / "no"),
            "last_good": str(last_good)}


def read(tmp_path, monkeypatch, units_=("thorfleet-chat.service", "thorfleet-asr.service",
                                        "thorfleet-new.service")):
    paths = host(tmp_path)
    asked = []

    def run_command(self, argv, **_kwargs):
        asked.append(argv)
        return 0, SHOW, ""

    monkeypatch.setattr(state.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(state.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False: f"/usr/bin/{name}")
    done = run_module(state, {
        "units": list(units_), "unit_dir": paths["unit_dir"],
        "model_dirs": [paths["model"], paths["missing"]], "templates": [paths["template"]],
        "engine_roots": [paths["engine"], paths["missing"]],
        "directories": [{"path": paths["private"], "mode": "0700"},
                        {"path": paths["model"], "mode": "0755"},
                        {"path": paths["missing"], "mode": "0755"}],
        "last_good_dir": paths["last_good"]}, monkeypatch, check=True)
    assert not done.failed, done.result
    return paths, done.result, asked


def test_one_read_finds_what_each_unit_runs(tmp_path, monkeypatch):
    paths, result, _ = read(tmp_path, monkeypatch)
    assert result["changed"] is False
    # Keyed by what was asked; what is not there is not a key.
    assert result["model_commits"] == {paths["model"]: COMMIT}
    assert result["template_sums"] == {
        paths["template"]: hashlib.sha256(b"{{ messages }}").hexdigest()}
    assert result["builds"] == {paths["engine"]: "build-0123abcd"}

    # What the filter makes of them.
    chat, asr = SERVICES
    relabel = {paths["model"]: chat["model_dir"], paths["engine"]: asr["engine_root"],
               paths["template"]: chat["chat_template"]}
    for key in ("model_commits", "template_sums", "builds"):
        result[key] = {relabel[k]: v for k, v in result[key].items()}
    plan = images.image_plan(SERVICES, {chat["image"]: "sha256:" + "4" * 64})
    chat_run, asr_run = units.unit_inputs(
        SERVICES, plan, result["builds"], result["model_commits"], result["template_sums"], [],
        {"chat": "", "asr": ""}, DOCKER)
    assert chat_run["run"]["model_commit"] == COMMIT
    assert chat_run["run"]["template_sum"] == hashlib.sha256(b"{{ messages }}").hexdigest()
    assert asr_run["run"]["build"] == "build-0123abcd"


def test_a_manifest_that_is_not_json_is_named_with_no_commit(tmp_path, monkeypatch):
    paths = host(tmp_path)
    (Path(paths["model"]) / "thorfleet-manifest.json").write_text("{not json")
    done = run_module(state, {"model_dirs": [paths["model"]],
                              "last_good_dir": paths["last_good"]}, monkeypatch, check=True)
    assert done.result["model_commits"] == {paths["model"]: None}
    chat = SERVICES[0]
    with pytest.raises(Exception, match="is not 40 hex characters"):
        units.unit_inputs([chat], [], {}, {chat["model_dir"]: None}, {}, [], {}, DOCKER)


def test_it_names_what_needs_fixing_starting_or_retiring(tmp_path, monkeypatch):
    paths, result, asked = read(tmp_path, monkeypatch)
    # A directory with another mode, and one missing; the one as wanted is left alone.
    assert result["directories_to_fix"] == [paths["private"], paths["missing"]]
    # One `systemctl show` for all units: a disabled one and a new one need starting.
    assert asked == [["/usr/bin/systemctl", "show", "--property=Id,UnitFileState,ActiveState",
                      "--", "thorfleet-chat.service", "thorfleet-asr.service",
                      "thorfleet-new.service"]]
    assert result["to_start"] == ["thorfleet-asr.service", "thorfleet-new.service"]
    # Only the services' own units, for retiring those no longer wanted: not other
    # units, nor thorfleet's units that are not services (jetson_clocks', the exporter).
    assert result["found"] == [
        "thorfleet-chat.service", "thorfleet-old.service"]
    assert sorted(result["last_good"]) == [
        "chat.env", "thorfleet-chat.service"]


def test_a_host_without_services_asks_systemd_nothing(tmp_path, monkeypatch):
    _, result, asked = read(tmp_path, monkeypatch, units_=())
    assert asked == [] and result["to_start"] == []


def test_unit_and_environment_files_are_summed_as_written_or_not_at_all(tmp_path, monkeypatch):
    paths = host(tmp_path)
    unit = os.path.join(paths["unit_dir"], "thorfleet-chat.service")
    os.chmod(unit, 0o644)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "chat.env").write_text("KEY=1\n")
    os.chmod(env_dir / "chat.env", 0o600)
    (env_dir / "asr.env").write_text("KEY=2\n")
    os.chmod(env_dir / "asr.env", 0o644)  # readable by all: to be written again
    monkeypatch.setattr(state.AnsibleModule, "run_command", lambda self, argv, **kw: (0, "", ""))
    monkeypatch.setattr(state.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False: f"/usr/bin/{name}")
    done = run_module(state, {
        "units": ["thorfleet-chat.service", "thorfleet-new.service"],
        "unit_dir": paths["unit_dir"], "last_good_dir": paths["last_good"],
        "env_files": [str(env_dir / "chat.env"), str(env_dir / "asr.env")]}, monkeypatch,
        check=True)
    assert done.result["file_sums"] == {
        unit: hashlib.sha1(Path(unit).read_bytes()).hexdigest(),
        os.path.join(paths["unit_dir"], "thorfleet-new.service"): "",
        str(env_dir / "chat.env"): hashlib.sha1(b"KEY=1\n").hexdigest(),
        str(env_dir / "asr.env"): ""}


def test_the_packages_the_units_need_are_asked_of_dpkg_in_the_same_read(tmp_path, monkeypatch):
    paths = host(tmp_path)
    asked = []

    def run_command(self, argv, **_kwargs):
        asked.append(argv)
        return 1, "curl ii \nbusybox un \n", "dpkg-query: no packages found matching jq\n"

    monkeypatch.setattr(state.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(state.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False: f"/usr/bin/{name}")
    done = run_module(state, {"last_good_dir": paths["last_good"],
                              "packages": ["curl", "busybox", "jq", "curl=8.5.0-2"]},
                      monkeypatch, check=True)
    assert asked == [["/usr/bin/dpkg-query", "--show",
                      "--showformat=${Package} ${db:Status-Abbrev}\n", "--",
                      "curl", "busybox", "jq", "curl=8.5.0-2"]]
    # Removed (`un`), unknown, or pinned to a version (apt judges those): to install.
    assert done.result["packages_missing"] == ["busybox", "jq", "curl=8.5.0-2"]


def test_files_that_differ_from_their_last_good_copy_are_named_unkept(tmp_path, monkeypatch):
    # A run that skipped verify (--tags services) wrote chat's unit and environment file:
    # they differ from the last good copies, so they are not yet what a rollback returns
    # to. A file with no last good copy is not named (there is nothing to go back to).
    paths = host(tmp_path)
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    (env_dir / "chat.env").write_text("KEY=new\n")
    (env_dir / "asr.env").write_text("KEY=2\n")
    monkeypatch.setattr(state.AnsibleModule, "run_command", lambda self, argv, **kw: (0, "", ""))
    monkeypatch.setattr(state.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False: f"/usr/bin/{name}")

    def unkept():
        done = run_module(state, {
            "units": ["thorfleet-chat.service", "thorfleet-asr.service"],
            "unit_dir": paths["unit_dir"], "last_good_dir": paths["last_good"],
            "env_files": [str(env_dir / "chat.env"), str(env_dir / "asr.env")]}, monkeypatch,
            check=True)
        return done.result["unkept"]

    assert unkept() == ["chat.env"]
    (tmp_path / "units/thorfleet-chat.service").write_text("[Unit]\nDescription=new\n")
    assert unkept() == ["thorfleet-chat.service", "chat.env"]
    (tmp_path / "last-good/chat.env").write_text("KEY=new\n")
    assert unkept() == ["thorfleet-chat.service"]

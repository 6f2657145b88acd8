"""ggml_build: the stamp, and builds of a real (tiny) CMake project through the module."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest

from tests.conftest import load, run_module

ggml_build = load("roles/ggml_build/library/ggml_build.py")
# What a build directory is: the role's module_utils, which the module imports.
from ansible.module_utils import thorfleet_build_dirs as build_dirs  # noqa: E402

RECORD = build_dirs.build_record("llama.cpp", "a" * 40, ["-DGGML_CUDA=ON"], ["llama-server"],
                                 "13.0.48", "cc (Ubuntu 13.3.0) 13.3.0")


def test_the_stamp_is_stable_and_ignores_target_order():
    same = build_dirs.build_record("llama.cpp", "a" * 40, ["-DGGML_CUDA=ON"],
                                   ["llama-server"], "13.0.48", "cc (Ubuntu 13.3.0) 13.3.0")
    assert build_dirs.stamp_of(RECORD) == build_dirs.stamp_of(same)
    two = build_dirs.build_record("x", "c", [], ["b", "a"], "", "cc")
    assert two["targets"] == ["a", "b"]


@pytest.mark.parametrize(("field", "value"), [
    ("commit", "b" * 40),
    ("cmake_flags", ["-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF"]),
    ("targets", ["llama-server", "llama-cli"]),
    ("cuda", "13.1.0"),
    ("compiler", "cc (Ubuntu 14.2.0) 14.2.0"),
])
def test_every_input_changes_the_stamp_and_is_named(field, value):
    changed = {**RECORD, field: value}
    assert build_dirs.stamp_of(changed) != build_dirs.stamp_of(RECORD)
    assert build_dirs.explain(RECORD, changed).startswith(f"{field} ")


def test_flag_order_matters_because_cmake_keeps_the_last():
    swapped = {**RECORD, "cmake_flags": ["-DX=1", "-DX=2"]}
    other = {**RECORD, "cmake_flags": ["-DX=2", "-DX=1"]}
    assert build_dirs.stamp_of(swapped) != build_dirs.stamp_of(other)


def test_explain_shortens_commits_and_names_a_first_build():
    changed = {**RECORD, "commit": "b" * 40}
    assert build_dirs.explain(RECORD, changed) == "commit aaaaaaaaaaaa -> bbbbbbbbbbbb"
    assert build_dirs.explain(None, RECORD) == "no build yet"


def test_error_excerpt_keeps_the_compilers_errors():
    output = ("[ 10%] Building C object x.o\n"
              "src/x.c:3:1: error: expected ';'\nmake: *** [x] Error 1\n")
    assert ggml_build.error_excerpt(output) == (
        "src/x.c:3:1: error: expected ';'\nmake: *** [x] Error 1")


# --- the module, building a real CMake project ------------------------------------------

CMAKELISTS = textwrap.dedent("""\
    cmake_minimum_required(VERSION 3.14)
    project(tiny C)
    set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
    add_executable(tiny-server main.c)
    """)


@pytest.fixture
def project(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "CMakeLists.txt").write_text(CMAKELISTS)
    (source / "main.c").write_text('#include <stdio.h>\nint main(void){puts("v1");return 0;}\n')
    return tmp_path


@pytest.fixture
def build(project, monkeypatch):
    def run(project, commit="c1", flags=(), check=False, keep=2, **more):
        args = {"name": "tiny", "source": str(project / "src"), "commit": commit,
                "build_root": str(project / "engine"), "cmake_flags": list(flags),
                "targets": ["tiny-server"], "jobs": 1, "keep": keep, **more}
        return run_module(ggml_build, args, monkeypatch, check=check)
    return run


def current(project):
    link = project / "engine" / "current"
    return os.readlink(link) if link.is_symlink() else None


def builds(project):
    return sorted(p.name for p in (project / "engine").glob("build-*"))


def test_first_run_builds_and_switches_current(project, build):
    result = build(project)
    assert not result.failed and result.result["changed"] and result.result["compiled"]
    stamp = result.result["stamp"]
    assert current(project) == f"build-{stamp}"
    assert os.access(result.result["binaries"]["tiny-server"], os.X_OK)
    record = json.loads((project / "engine" / f"build-{stamp}" / build_dirs.MARKER).read_text())
    assert record["commit"] == "c1" and record["targets"] == ["tiny-server"]


def test_same_inputs_run_no_compiler_and_change_nothing(project, build):
    first = build(project).result
    marker = project / "engine" / f"build-{first['stamp']}" / build_dirs.MARKER
    before = marker.stat().st_mtime_ns
    second = build(project)
    assert second.result["changed"] is False and second.result["compiled"] is False
    assert second.result["up_to_date"] is True
    assert second.result["stamp"] == first["stamp"]
    assert marker.stat().st_mtime_ns == before


def test_check_mode_says_why_and_touches_nothing(project, build):
    first = build(project).result
    preview = build(project, commit="c2", check=True)
    assert preview.result["changed"] is True and preview.result["compiled"] is False
    assert preview.result["up_to_date"] is False
    assert preview.result["reason"] == "commit c1 -> c2; building"
    assert '"commit": "c1"' in preview.result["diff"]["before"]
    assert '"commit": "c2"' in preview.result["diff"]["after"]
    assert current(project) == f"build-{first['stamp']}"
    assert builds(project) == [f"build-{first['stamp']}"]


def test_a_new_ref_builds_beside_the_old_one_and_keeps_it(project, build):
    old = build(project).result["stamp"]
    (project / "src" / "main.c").write_text('#include <stdio.h>\nint main(void){puts("v2");}\n')
    new = build(project, commit="c2").result
    assert new["compiled"] and new["previous"] == old
    assert current(project) == f"build-{new['stamp']}"
    assert builds(project) == sorted([f"build-{old}", f"build-{new['stamp']}"])


def test_a_failed_build_leaves_current_untouched_and_names_the_error(project, build):
    good = build(project).result["stamp"]
    (project / "src" / "main.c").write_text("int main(void){ return 0 }\n")
    failed = build(project, commit="c-broken")
    assert failed.failed
    assert "tiny build failed at commit c-broken" in failed.result["msg"]
    assert "error" in failed.result["msg"] and "main.c" in failed.result["msg"]
    assert current(project) == f"build-{good}"
    assert os.access(project / "engine" / "current" / "bin" / "tiny-server", os.X_OK)


def test_going_back_to_a_kept_build_switches_without_compiling(project, build):
    old = build(project).result["stamp"]
    build(project, flags=["-DCMAKE_C_FLAGS=-O1"])
    back = build(project).result
    assert back["changed"] and not back["compiled"]
    assert back["reason"].endswith("switching to the kept build")
    assert current(project) == f"build-{old}"


def test_only_the_newest_builds_are_kept(project, build):
    stamps = [build(project, flags=[f"-DCMAKE_C_FLAGS=-O{level}"]).result["stamp"]
              for level in (0, 1, 2)]
    assert builds(project) == sorted(f"build-{s}" for s in stamps[1:])
    assert current(project) == f"build-{stamps[2]}"


def test_retrying_a_failed_build_compiles_again_and_never_switches_to_it(project, build):
    good = build(project).result["stamp"]
    (project / "src" / "main.c").write_text("int main(void){ return 0 }\n")
    assert build(project, commit="c-broken").failed
    # The failed build's directory stays (a retry is incremental), without a marker...
    broken = [b for b in builds(project) if b != f"build-{good}"]
    assert len(broken) == 1 and not (project / "engine" / broken[0] / build_dirs.MARKER).exists()
    # ... so a retry of the same inputs compiles again, fails again, and `current` stays.
    retry = build(project, commit="c-broken")
    assert retry.failed and "tiny build failed at commit c-broken" in retry.result["msg"]
    assert current(project) == f"build-{good}"


def test_a_build_without_a_target_binary_fails_and_is_not_switched_to(project, build):
    good = build(project).result["stamp"]
    (project / "src" / "CMakeLists.txt").write_text(CMAKELISTS.replace(
        "add_executable(tiny-server main.c)", "add_executable(tiny-server main.c)\n"
        "add_custom_command(TARGET tiny-server POST_BUILD COMMAND ${CMAKE_COMMAND} -E rm "
        "$<TARGET_FILE:tiny-server>)"))
    missing = build(project, commit="c-lost")
    assert missing.failed, missing.result
    assert "tiny built, but without tiny-server" in missing.result["msg"]
    assert current(project) == f"build-{good}"


def test_a_failed_build_is_removed_once_another_succeeds(project, build):
    build(project)
    (project / "src" / "main.c").write_text("int main(void){ return 0 }\n")
    assert build(project, commit="c-broken").failed
    assert len(builds(project)) == 2
    (project / "src" / "main.c").write_text('#include <stdio.h>\nint main(void){puts("v3");}\n')
    fixed = build(project, commit="c-fixed").result
    assert fixed["compiled"] and current(project) == f"build-{fixed['stamp']}"
    # The good first build stays for rollback; the failed one is gone.
    assert len(builds(project)) == 2 and all(
        (project / "engine" / b / build_dirs.MARKER).exists() for b in builds(project))


# --- sharing a build with the fleet's other hosts (thorfleet_fleet_fetch) ----------------


def test_a_report_lists_the_builds_binaries_and_record_with_their_sums(project, build):
    stamp = build(project).result["stamp"]
    report = build(project, check=True, report=True).result
    assert report["changed"] is False and report["ready"] is True
    assert sorted(report["files"]) == sorted([build_dirs.MARKER, "bin/tiny-server"])
    binary = project / "engine" / f"build-{stamp}" / "bin" / "tiny-server"
    assert report["files"]["bin/tiny-server"] == {
        "size": binary.stat().st_size, "sha256": build_dirs.sha256_of(binary)}
    # Another commit's build is not here: nothing to offer.
    other = build(project, commit="c2", check=True, report=True).result
    assert other["ready"] is False and other["files"] == {}


def test_a_build_whose_record_has_another_stamp_is_never_switched_to(project, build):
    stamp = build(project).result["stamp"]
    kept = build(project, commit="c2")
    assert kept.result["compiled"]
    # The old build's directory now claims inputs it was not built from (a copy gone
    # wrong, a hand edit): the stamp guard refuses it, and the module compiles instead.
    marker = project / "engine" / f"build-{stamp}" / build_dirs.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "commit": "c9"}))
    back = build(project)
    assert not back.failed and back.result["compiled"], back.result
    assert build(project, check=True, report=True).result["ready"] is True


@pytest.mark.parametrize("files", [
    {"bin/tiny-server": {"size": 1, "sha256": "0" * 64}},  # no record
    {build_dirs.MARKER: {"size": 1, "sha256": "0" * 64},
     "../../etc/cron.d/x": {"size": 1, "sha256": "0" * 64}},
    {build_dirs.MARKER: {"size": 1, "sha256": "0" * 64},
     "bin/tiny-server": {"size": "1", "sha256": "0" * 64}},
    {build_dirs.MARKER: {"size": 1, "sha256": "0" * 64}, "bin/x": {"size": 1}},
    {build_dirs.MARKER: {"size": True, "sha256": "0" * 64}},  # a boolean is no size
    {build_dirs.MARKER: {"size": 1, "sha256": "0" * 64},
     "bin/" + "x" * 129: {"size": 1, "sha256": "0" * 64}}])  # a name past 128 characters
def test_a_peer_build_not_made_of_a_record_and_binaries_with_sums_is_refused(project, build,
                                                                             files):
    stamp = build(project, check=True).result["stamp"]
    done = build(project, peer={"name": "thor01", "files": files, "stamp": stamp,
                                "url": "rsync://10.0.0.1:873/thorfleet-builds/tiny/build-x"})
    assert done.failed and "peer thor01 reported a build" in done.result["msg"]
    assert not (project / "engine").exists() or builds(project) == []


def test_a_peer_build_of_another_stamp_is_not_received_but_compiled_here(project, build):
    done = build(project, peer={"name": "thor01", "files": {}, "stamp": "0" * 16,
                                "url": "rsync://10.0.0.1:873/thorfleet-builds/tiny/build-x"})
    assert not done.failed and done.result["compiled"], done.result
    assert "received_from" not in done.result
    assert done.result["reason"] == "no build yet; building (peer thor01's build is " \
        + "0" * 16 + ")"


@pytest.fixture
def peer(project, build, monkeypatch, tmp_path):
    """thor01 holding the wanted build (built here under another root), what its report
    says of it, and run_command as rsync from its share (or failing as a peer that went
    away, or with `tamper` changing a file after the copy)."""
    held = build(project, build_root=str(tmp_path / "thor01")).result
    report = build(project, check=True, report=True, build_root=str(tmp_path / "thor01")).result
    real = ggml_build.AnsibleModule.run_command

    class Peer:
        fail, tamper = "", None
        source = tmp_path / "thor01" / f"build-{held['stamp']}"
        offer = {"name": "thor01", "stamp": held["stamp"], "files": report["files"],
                 "url": f"rsync://10.0.0.1:873/thorfleet-builds/tiny/build-{held['stamp']}"}

    def run_command(self, argv, **kwargs):
        if not argv[0].endswith("rsync"):
            return real(self, argv, **kwargs)
        if Peer.fail:
            return 10, "", f"rsync: {Peer.fail}\nrsync error: error in socket IO (code 10)"
        for path in kwargs["data"].split("\0"):
            target = os.path.join(argv[-1], path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(Peer.source / path, target)
        if Peer.tamper:
            Peer.tamper(argv[-1])
        return 0, "", ""

    monkeypatch.setattr(ggml_build.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(ggml_build.AnsibleModule, "get_bin_path",
                        lambda self, name, required=False: shutil.which(name) or f"/usr/bin/{name}")
    return Peer


def test_a_build_is_received_from_a_peer_verified_and_switched_to_without_compiling(
        project, build, peer):
    done = build(project, peer=peer.offer)
    assert not done.failed and done.result["received_from"] == "thor01", done.result
    assert done.result["compiled"] is False
    assert current(project) == f"build-{peer.offer['stamp']}"
    assert os.access(project / "engine/current/bin/tiny-server", os.X_OK)
    assert not list((project / "engine").glob(".*.partial"))


def test_a_peer_lost_during_the_copy_fails_naming_it_and_nothing_is_switched(project, build,
                                                                            peer):
    peer.fail = "failed to connect to 10.0.0.1: Connection refused (111)"
    done = build(project, peer=peer.offer)
    assert done.failed and done.result["msg"] == (
        f"tiny: copy of build-{peer.offer['stamp']} from peer thor01 failed: "
        "rsync error: error in socket IO (code 10)")
    assert current(project) is None


def test_a_copy_that_is_not_what_the_peer_reported_is_refused(project, build, peer):
    def flip(partial):
        with open(os.path.join(partial, "bin/tiny-server"), "r+b") as binary:
            binary.seek(100)
            byte = binary.read(1)
            binary.seek(100)
            binary.write(bytes([byte[0] ^ 0xFF]))

    peer.tamper = flip
    done = build(project, peer=peer.offer)
    assert done.failed and "bin/tiny-server of build-" in done.result["msg"]
    assert "after the copy; the peer reported" in done.result["msg"]
    assert current(project) is None and builds(project) == []


def test_a_peers_build_whose_record_has_another_stamp_is_refused(project, build, peer):
    # The peer's record says other inputs, and it reports that record's own sum: the copy
    # checks out, the stamp guard does not.
    marker = peer.source / build_dirs.MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "commit": "c9"}))
    files = {**peer.offer["files"], build_dirs.MARKER: {
        "size": marker.stat().st_size, "sha256": build_dirs.sha256_of(marker)}}
    done = build(project, peer={**peer.offer, "files": files})
    assert done.failed and done.result["msg"] == (
        f"tiny: the build peer thor01 sent is not build-{peer.offer['stamp']} (its record has "
        "another stamp): refused")
    assert current(project) is None and not list((project / "engine").glob(".*"))


def test_a_peers_build_without_the_binary_is_refused(project, build, peer):
    files = {build_dirs.MARKER: peer.offer["files"][build_dirs.MARKER]}
    done = build(project, peer={**peer.offer, "files": files})
    assert done.failed and done.result["msg"] == (
        "tiny: the build peer thor01 sent has no tiny-server: refused")
    assert current(project) is None and not list((project / "engine").glob(".*"))

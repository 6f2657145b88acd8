"""`thorfleet deploy`'s progress and summary, from ansible-runner's events (shaped as
ansible-runner 2.4 sends them), and a real run of a playbook through ansible-runner."""

from __future__ import annotations

import io
import re

from tests.conftest import ROOT
from thorfleet import phases
from thorfleet.runs import Progress, run_playbook


def event(name, host=None, task="", **data):
    return {"event": name, "event_data": {"host": host, "task": task, **data}}


def play(name, uuid=None):
    return {"event": "playbook_on_play_start",
            "event_data": {"play": name, **({"play_uuid": uuid} if uuid else {})}}


def feed(progress, events):
    for one in events:
        assert progress(one) is True


def test_counts_per_host_and_phase_as_ansible_counts_them():
    progress = Progress(out=io.StringIO())
    feed(progress, [
        play("Preflight"),
        event("runner_on_ok", "thor01", "Facts", res={"changed": False}),
        event("runner_on_ok", "thor02", "Facts", res={"changed": False}),
        event("runner_on_skipped", "thor01", "Thor only"),
        play("Services"),
        event("runner_on_ok", "thor01", "Write the unit", res={"changed": True}),
        event("runner_on_failed", "thor01", "Optional", ignore_errors=True,
              res={"msg": "ignored", "changed": False}),
        event("runner_item_on_ok", "thor01", "Loop item", res={"changed": True}),
        event("runner_on_failed", "thor02", "Restart", res={"msg": "field port: clash"}),
    ])
    rows = [line.split() for line in progress.table().splitlines()]
    assert rows == [
        ["host", "phase", "ok", "changed", "failed", "skipped", "unreachable"],
        ["thor01", "Preflight", "1", "0", "0", "1", "0"],
        ["thor01", "Services", "2", "1", "0", "0", "0"],  # an ignored failure counts as ok
        ["thor02", "Preflight", "1", "0", "0", "0", "0"],
        ["thor02", "Services", "0", "0", "1", "0", "0"]]
    assert progress.failed()


def test_progress_shows_each_result_live_and_a_failure_with_its_message():
    out = io.StringIO()
    progress = Progress(out=out)
    feed(progress, [play("Models"),
                    event("runner_on_ok", "thor01", "Download", res={"changed": True}),
                    event("runner_on_unreachable", "thor02", "Download",
                          res={"msg": "ssh: connect timed out"}),
                    event("runner_on_failed", "thor01", "Check",
                          res={"msg": "thor01: service a: field port: 8000 is taken\nby b"})])
    lines = out.getvalue().splitlines()
    assert lines[0] == "== Models"
    assert lines[1].split() == ["thor01", "changed", "Download"]
    assert lines[2].split() == ["thor02", "unreachable", "Download"]
    assert lines[3].strip() == "ssh: connect timed out"
    assert lines[4].split() == ["thor01", "failed", "Check"]
    assert lines[5:] == [f"{'':16}thor01: service a: field port: 8000 is taken",
                         f"{'':16}by b"]


def test_a_playbook_runs_through_ansible_runner(tmp_path):
    (tmp_path / "ansible.cfg").write_text("[defaults]\ninventory = hosts\n")
    (tmp_path / "hosts").write_text(
        "all:\n  hosts:\n    here:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n")
    (tmp_path / "play.yml").write_text(
        "- name: Phase one\n  hosts: here\n  gather_facts: false\n  tasks:\n"
        "    - name: Report\n      ansible.builtin.debug:\n        msg: '{{ word }}'\n"
        "    - name: Change\n      ansible.builtin.command: 'true'\n"
        "    - name: Fail in check mode only\n      ansible.builtin.fail:\n"
        "        msg: checked\n      when: ansible_check_mode\n")
    out = io.StringIO()
    progress = Progress(out=out)
    assert run_playbook(tmp_path, "play.yml", progress, extravars={"word": "hi"}) == 0
    assert progress.counts == {("here", "Phase one"): {
        "ok": 2, "changed": 1, "failed": 0, "skipped": 1, "unreachable": 0}}
    assert progress.recap() == ("here: ok=2 changed=1 unreachable=0 failed=0 skipped=1 "
                                "rescued=0 ignored=0")
    checked = Progress(out=io.StringIO())
    assert run_playbook(tmp_path, "play.yml", checked, check=True,
                        extravars={"word": "hi"}) == 2
    assert checked.counts[("here", "Phase one")]["failed"] == 1
    assert "checked" in checked.out.getvalue()
    # What Ansible warns of is shown too: a limit that matches no host.
    nowhere = Progress(out=io.StringIO())
    assert run_playbook(tmp_path, "play.yml", nowhere, limit="there",
                        extravars={"word": "hi"}) != 0
    assert "there" in nowhere.out.getvalue()


def test_a_changed_file_shows_its_diff_in_a_loop_too():
    out = io.StringIO()
    progress = Progress(out=out)
    changed = {"changed": True, "diff": [
        {"before": "a\nport 8000\n", "after": "a\nport 8001\n",
         "before_header": "/etc/x.service", "after_header": "/etc/x.service"},
        {"before": {"state": "file"}, "after": {"state": "file"}}]}
    same = {"changed": False, "diff": [{"before": "b\n", "after": "c\n"}]}
    feed(progress, [play("Services"),
                    event("runner_on_ok", "thor01", "Write the unit", res=changed),
                    event("runner_on_ok", "thor01", "Write each unit",
                          res={"changed": True, "results": [same, changed]})])
    lines = [line.strip() for line in out.getvalue().splitlines()[1:]]
    diff = ["--- /etc/x.service", "+++ /etc/x.service", "@@ -1,2 +1,2 @@", "a", "-port 8000",
            "+port 8001"]
    assert lines == ["thor01       changed     Write the unit", *diff,
                     "thor01       changed     Write each unit", *diff]


def test_the_switch_counts_by_role_and_shows_its_batches_and_summary():
    out = io.StringIO()
    progress = Progress(out=out, phases=["Rollout", "Rollout"])
    feed(progress, [
        play("Switch"),
        event("runner_on_ok", "thor01", "Open this batch", res={"msg": "batch 1: thor01"}),
        event("runner_on_ok", "thor01", "Set the power mode", role="thor_power",
              res={"changed": False}),
        event("runner_on_ok", "thor01", "Write each service's unit", role="inference_services",
              res={"changed": True}),
        event("runner_on_ok", "thor01", "Wait for each service", role="service_verify",
              res={"changed": False}),
        event("runner_on_ok", "thor01", "Prune", role="ngc_images", res={"changed": False}),
        play("Rollout summary"),
        event("runner_on_ok", "thor01", "Summarise the rollout",
              res={"msg": ["batch 1: thor01 switched", "left untouched: none"]}),
    ])
    rows = [line.split() for line in progress.table().splitlines()][1:]
    assert [row[:4] for row in rows] == [["thor01", "Rollout", "2", "0"],
                                         ["thor01", "Power", "1", "0"],
                                         ["thor01", "Services", "2", "1"],
                                         ["thor01", "Verify", "1", "0"]]
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["== Switch", "   batch 1: thor01"]
    assert lines[-3:] == ["== Rollout summary", "   batch 1: thor01 switched",
                          "   left untouched: none"]


def test_a_task_that_only_includes_others_counts_but_prints_no_line():
    progress = Progress(out=io.StringIO(), phases=["Rollout"])
    feed(progress, [
        play("Switch"),
        event("runner_on_ok", "thor01", "Switch the canary alone, then each batch",
              task_action="ansible.builtin.include_tasks", res={"changed": False}),
        event("runner_on_ok", "thor01", "Open this batch", res={"msg": "batch 1: thor01"}),
        event("runner_on_failed", "thor01", "Switch this batch's hosts",
              task_action="ansible.builtin.include_tasks", res={"msg": "no such file"})])
    out = progress.out.getvalue()
    assert progress.counts[("thor01", "Rollout")]["ok"] == 2
    assert out.splitlines()[:2] == ["== Switch", "   batch 1: thor01"]
    assert "failed      Switch this batch's hosts" in out and "no such file" in out


def test_each_play_of_site_yml_says_its_phase_in_a_variable(tmp_path):
    # Not by its name: with every play renamed, each counts where it did.
    expected = ["Preflight", "Models", "Engines", "Images", "Metrics", "Metrics", "Rollout",
                "Rollout", "Rollout"]
    assert phases.plays(ROOT / "site.yml") == expected
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "site.yml").write_text((ROOT / "site.yml").read_text())
    for path in (ROOT / "playbooks").glob("*.yml"):
        (tmp_path / "playbooks" / path.name).write_text(
            re.sub(r"(?m)^- name: .*$", "- name: Renamed", path.read_text()))
    assert phases.plays(tmp_path / "site.yml") == expected
    progress = Progress(out=io.StringIO(), phases=phases.plays(ROOT / "site.yml"))
    feed(progress, [
        play("Check the hosts first", "u1"),
        event("runner_on_ok", "thor01", "Facts", res={"changed": False}),
        play("Models and chat templates", "u2"),
        event("runner_on_ok", "thor01", "Download", res={"changed": True}),
        # A play started again (serial) keeps its phase; the next one is the engines'.
        play("Models and chat templates", "u2_1"),
        event("runner_on_ok", "thor02", "Download", res={"changed": False}),
        play("Compile", "u3"),
        event("runner_on_ok", "thor01", "Build", res={"changed": False})])
    assert list(progress.counts) == [("thor01", "Preflight"), ("thor01", "Models"),
                                     ("thor02", "Models"), ("thor01", "Engines")]

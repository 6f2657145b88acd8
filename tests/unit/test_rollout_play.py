"""The switch (playbooks/switch.yml and playbooks/rollout/batch.yml) as ansible-playbook
runs it, on four local hosts, with stand-in roles in place of power, services, verify and
the prune that record what ran on which host and when, and fail where a test says. What
is tested is the playbook's own logic: batches, the canary, the health gate, the failure
budget, the rollback, hosts left out or lost, and the summary."""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

from tests.unit.test_run_lock import live_playbook
from thorfleet import bounded

ROOT = Path(__file__).resolve().parents[2]
HOSTS = ["h1", "h2", "h3", "h4"]

# Stand-ins for the roles the switch runs. Each appends [host, what, time] to a log per
# host; `fail_at` ({host: what, or a list of them}) makes that step fail there.
RECORD = """
- name: Record {what}
  ansible.builtin.shell: >-
    echo '["{{{{ inventory_hostname }}}}", "{what}", '$(date +%s.%N)']'
    >> {{{{ log_dir }}}}/{{{{ inventory_hostname }}}}.log
  changed_when: true
- name: Fail {what} where asked
  ansible.builtin.fail:
    msg: "{what} failed on {{{{ inventory_hostname }}}}"
  when: "'{what}' in [fail_at[inventory_hostname] | default('')] | flatten"
"""
ROLES = {
    # The host's run lock, as its switch starts (a copy in the log directory).
    "thor_power/tasks/main.yml": RECORD.format(what="power") + """
- name: Keep a copy of the run lock
  ansible.builtin.command: >-
    cp {{ thorfleet_run_lock_path }} {{ log_dir }}/{{ inventory_hostname }}.lock-seen
  changed_when: false
  failed_when: false
""",
    # The real role writes the units before it restarts anything; each stand-in hands
    # back its role's result as the role's README documents it.
    "inference_services/tasks/main.yml": """
- name: Stand in for the units written
  ansible.builtin.set_fact:
    inference_services_result: {units_written: true, restarted: [chat]}
""" + RECORD.format(what="services"),
    "inference_services/tasks/keep_last_good.yml": RECORD.format(what="keep"),
    "inference_services/tasks/rollback.yml": RECORD.format(what="rollback") + """
- name: Stand in for the services put back
  ansible.builtin.set_fact:
    inference_services_result: "{{ inference_services_result | combine({'put_back': ['chat']}) }}"
""",
    "service_verify/tasks/main.yml": RECORD.format(what="verify") + """
- name: Stand in for the answers
  ansible.builtin.set_fact:
    service_verify_result: {checks: 2}
    __verify_asked: "{{ __verify_asked | default(0) | int + 1 }}"
- name: Fail the check after the soak where asked
  ansible.builtin.fail:
    msg: "verify after the soak failed on {{ inventory_hostname }}"
  when: "__verify_asked | int > 1 and 'reverify' in [fail_at[inventory_hostname] | default('')]
         | flatten"
""",
    "ngc_images/tasks/prune.yml": RECORD.format(what="prune"),
    # No model revision staged: tests/unit/test_model_revisions.py covers those.
    "model_store/tasks/revisions.yml": """
- name: Stand in for the model revisions
  ansible.builtin.set_fact:
    model_store_result: {switched: []}
""",
}


@pytest.fixture
def switch(tmp_path):
    roles = tmp_path / "roles"
    for relative, text in ROLES.items():
        path = roles / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("---\n" + text)
    logs = tmp_path / "logs"
    logs.mkdir()
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")  # ansible-core's defaults
    # The real run lock (roles/thorfleet_common, with the settings of roles/thorfleet),
    # each host's in a file of its own.
    (roles / "thorfleet").symlink_to(ROOT / "roles/thorfleet")
    (roles / "thorfleet_common").symlink_to(ROOT / "roles/thorfleet_common")
    locks = tmp_path / "locks"
    locks.mkdir()
    # A first play that reaches every host and locks it, as preflight does in site.yml
    # (not in check mode), a stand-in for the phases that stage, then the switch.
    playbook = tmp_path / "site.yml"
    playbook.write_text(yaml.safe_dump([
        {"name": "Preflight", "hosts": "thor", "gather_facts": False, "tags": ["always"],
         "tasks": [{"name": "Reach the host", "ansible.builtin.ping": {}},
                   {"name": "Lock the run's hosts",
                    "ansible.builtin.include_role": {"name": "thorfleet_common",
                                                     "tasks_from": "run_lock"},
                    "when": "not ansible_check_mode"}]},
        {"name": "Staging", "hosts": "thor", "gather_facts": False,
         "tasks": [{"name": "Fail staging where asked",
                    "ansible.builtin.fail": {"msg": "staging failed"},
                    "when": "'staging' in [fail_at[inventory_hostname] | default('')] "
                            "| flatten"}]},
        {"name": "Switch", "ansible.builtin.import_playbook": str(ROOT / "playbooks/switch.yml")},
    ], sort_keys=False))

    def run(*extra: str, hosts: dict | None = None, fail_at: dict | None = None,
            playbook: Path = playbook):
        inventory = tmp_path / "hosts.yml"
        host_vars = {name: {"thorfleet_run_lock_path": str(locks / f"{name}.lock")}
                     for name in HOSTS}
        for name, settings in (hosts or {}).items():
            host_vars[name] = {**host_vars.get(name, {}), **settings}
        inventory.write_text(yaml.safe_dump({"thor": {"hosts": host_vars, "vars": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "log_dir": str(logs), "fail_at": fail_at or {}}}}))
        for log in logs.iterdir():
            log.unlink()
        env = {**os.environ, "ANSIBLE_ROLES_PATH": str(roles), "ANSIBLE_NOCOLOR": "1",
               "ANSIBLE_FILTER_PLUGINS": str(ROOT / "filter_plugins"),
               "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
               "ANSIBLE_LIBRARY": str(ROOT / "library"),
               "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
               "ANSIBLE_CALLBACK_RESULT_FORMAT": "json", "ANSIBLE_HOST_KEY_CHECKING": "false"}
        playbook_command = str(Path(sys.executable).with_name("ansible-playbook"))
        proc = bounded.run([playbook_command, "-i", str(inventory), str(playbook), *extra],
                           300, cwd=tmp_path, env=env)
        events = []
        for log in logs.glob("*.log"):
            events += [json.loads(line) for line in log.read_text().splitlines()]
        return Run(proc.returncode, proc.stdout + proc.stderr, sorted(events, key=lambda e: e[2]))

    return run


class Run:
    def __init__(self, rc, output, events):
        self.rc, self.output, self.events = rc, output, events

    def steps(self, host):
        return [what for name, what, _ in self.events if name == host]

    def first(self, host, what):
        return min(t for name, step, t in self.events if name == host and step == what)

    def last(self, host, what):
        return max(t for name, step, t in self.events if name == host and step == what)

    def summary(self):
        """The lines of the summary task's message."""
        marker = '"msg": ['
        start = self.output.index(marker, self.output.index("TASK [Summarise the rollout]"))
        return json.loads(self.output[start + len(marker) - 1:self.output.index("]", start) + 1])

    def __repr__(self):
        return f"rc={self.rc}\n{self.output[-5000:]}"


SWITCHED = ["power", "services", "verify", "keep", "prune"]


def test_by_default_a_fifth_of_the_hosts_at_a_time_and_at_least_one(switch):
    # 20% of 4 hosts rounds down to none: one at a time.
    run = switch()
    assert run.rc == 0, run
    for host in HOSTS:
        assert run.steps(host) == SWITCHED, run
    for before, after in zip(HOSTS, HOSTS[1:], strict=False):
        assert run.last(before, "prune") < run.first(after, "power"), run
    summary = run.summary()
    assert [line.split(":")[0] for line in summary[:4]] == [
        "batch 1", "batch 2", "batch 3", "batch 4"], run
    assert "switched: h1, h2, h3, h4" in summary and "left untouched: none" in summary


def test_all_hosts_at_once_with_a_batch_of_all(switch):
    run = switch("-e", "thorfleet_rollout_batch=100%")
    assert run.rc == 0, run
    for host in HOSTS:
        assert run.steps(host) == SWITCHED, run
    assert run.summary()[0].startswith(
        "batch 1: h1 switched (1 restarted: chat, 2 checks passed); h2 switched"), run


def test_each_batch_starts_only_after_the_previous_batch_verified(switch):
    run = switch("-e", "thorfleet_rollout_batch=1")
    assert run.rc == 0, run
    for before, after in zip(HOSTS, HOSTS[1:], strict=False):
        assert run.last(before, "prune") < run.first(after, "power"), run
    assert [line.split(":")[0] for line in run.summary()[:4]] == [
        "batch 1", "batch 2", "batch 3", "batch 4"]


def test_a_failed_verify_rolls_back_and_halts_the_rollout(switch):
    run = switch("-e", "thorfleet_rollout_batch=1", fail_at={"h1": "verify"})
    assert run.rc != 0, run
    assert run.steps("h1") == ["power", "services", "verify", "rollback"], run
    for host in ("h2", "h3", "h4"):
        assert run.steps(host) == [], run  # never touched
    summary = run.summary()
    assert summary[0] == ("batch 1: h1 failed (Fail verify where asked: "
                          "verify failed on h1), put back: chat"), run
    assert summary[1].startswith("halted: 1 host(s) failed (h1)"), run
    assert "left untouched: h2, h3, h4" in summary
    assert "fatal: [h1]: FAILED!" in run.output and "verify failed on h1" in run.output


def test_the_failure_budget_counts_over_the_whole_rollout(switch):
    run = switch("-e", "thorfleet_rollout_batch=1", "-e", "thorfleet_rollout_max_fail=1",
                 fail_at={"h1": "services", "h2": "verify"})
    assert run.rc != 0, run
    assert run.steps("h1") == ["power", "services", "rollback"], run
    assert run.steps("h2") == ["power", "services", "verify", "rollback"], run
    assert run.steps("h3") == run.steps("h4") == [], run
    assert "failed: h1, h2" in run.summary() and "left untouched: h3, h4" in run.summary()


def test_a_share_as_the_budget(switch):
    # 25% of 4 hosts: one may fail, and the rest go on.
    run = switch("-e", "thorfleet_rollout_batch=1", "-e", "thorfleet_rollout_max_fail=25%",
                 fail_at={"h2": "power"})
    assert run.rc != 0, run
    assert run.steps("h2") == ["power"], run  # nothing of the services ran: nothing to put back
    for host in ("h1", "h3", "h4"):
        assert run.steps(host) == SWITCHED, run
    assert "failed: h2" in run.summary() and "switched: h1, h3, h4" in run.summary()


def test_the_canary_goes_first_alone_then_the_batches(switch):
    run = switch("-e", "thorfleet_rollout_canary=h3", "-e", "thorfleet_rollout_batch=2")
    assert run.rc == 0, run
    assert run.last("h3", "prune") < min(run.first(h, "power") for h in ("h1", "h2", "h4")), run
    summary = run.summary()
    assert summary[0].startswith("batch 1: h3 switched"), run
    assert summary[1].startswith("batch 2: h1 switched") and "; h2 switched" in summary[1], run
    assert summary[2].startswith("batch 3: h4 switched"), run


def test_a_failed_canary_leaves_the_fleet_untouched(switch):
    run = switch("-e", "thorfleet_rollout_canary=h2", fail_at={"h2": "verify"})
    assert run.rc != 0, run
    for host in ("h1", "h3", "h4"):
        assert run.steps(host) == [], run
    assert "left untouched: h1, h3, h4" in run.summary()


UNREACHABLE = {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
               "ansible_ssh_common_args": "-o ConnectTimeout=2"}


def test_a_host_unreachable_at_the_start_is_left_out_and_not_counted(switch):
    run = switch("-e", "thorfleet_rollout_batch=1", hosts={"h2": UNREACHABLE})
    assert run.rc == 4, run  # Ansible's status for an unreachable host
    assert run.steps("h2") == []
    for host in ("h1", "h3", "h4"):
        assert run.steps(host) == SWITCHED, run
    summary = run.summary()
    assert "switched: h1, h3, h4" in summary and "failed: none" in summary, run
    assert "left out: h2" in summary, run


def lose_at_verify(tmp_path, host):
    """`host` becomes unreachable after its services restarted (a power cut in its
    switch): the stand-in verify points its connection at a closed port."""
    path = tmp_path / "roles/service_verify/tasks/main.yml"
    path.write_text("---\n" + ROLES["service_verify/tasks/main.yml"] + f"""
- name: Lose the host
  ansible.builtin.set_fact:
    ansible_connection: ssh
    ansible_host: 127.0.0.1
    ansible_port: 9
    ansible_ssh_common_args: -o ConnectTimeout=2
  when: inventory_hostname == '{host}'
- name: Reach it
  ansible.builtin.ping:
""")


def test_a_host_lost_during_its_switch_counts_as_failed(switch, tmp_path):
    lose_at_verify(tmp_path, "h2")
    run = switch("-e", "thorfleet_rollout_batch=2")
    assert run.rc == 4, run  # Ansible's status for an unreachable host
    assert run.steps("h1") == SWITCHED, run
    assert run.steps("h3") == run.steps("h4") == [], run
    summary = run.summary()
    assert summary[0] == ("batch 1: h1 switched (1 restarted: chat, 2 checks passed); h2 "
                          "failed (left the run during its switch (unreachable)): its state "
                          "is unknown"), run
    assert summary[1].startswith("halted: 1 host(s) failed (h2)"), run
    assert "state unknown (lost during its switch): h2" in summary, run
    assert "left untouched: h3, h4" in summary, run


@pytest.mark.parametrize(("max_fail", "switched", "untouched_hosts"),
                         [(1, ["h1", "h3", "h4"], []), (0, ["h1"], ["h3", "h4"])])
def test_a_batch_whose_every_host_is_lost_ends_in_the_summary_judged_by_the_budget(
        switch, tmp_path, max_fail, switched, untouched_hosts):
    # Batches of one (the default below ten hosts): h2's batch is lost whole. Ansible
    # ends a playbook there when batches are its `serial`; the switch's batches are a
    # loop in one play, so the rollout goes on as its budget says, prints its summary and
    # gives back the run lock of every host it can reach.
    lose_at_verify(tmp_path, "h2")
    run = switch("-e", "thorfleet_rollout_batch=1", "-e", f"thorfleet_rollout_max_fail={max_fail}")
    assert run.rc == 4, run
    for host in switched:
        assert run.steps(host) == SWITCHED, run
    assert untouched(run, untouched_hosts), run
    summary = run.summary()
    assert summary[1].startswith("batch 2: h2 failed (left the run during its switch"), run
    assert f"switched: {', '.join(switched)}" in summary and "failed: h2" in summary, run
    assert f"left untouched: {', '.join(untouched_hosts) or 'none'}" in summary, run
    if untouched_hosts:
        assert "halted: 1 host(s) failed (h2)" in " ".join(summary), run
    # Each reachable host's lock given back (h2's stays until it reboots: /run).
    assert sorted(path.name for path in (tmp_path / "locks").iterdir()) == ["h2.lock"], run


# --- failing safe (issue 34) ------------------------------------------------------------


def untouched(run, hosts):
    return all(run.steps(host) == [] for host in hosts)


def test_a_failed_canary_halts_the_rollout_whatever_the_budget(switch):
    # The README's 60-host command's settings: a budget of one is for the batches, not
    # for the canary.
    run = switch("-e", "thorfleet_rollout_canary=h1", "-e", "thorfleet_rollout_batch=10%",
                 "-e", "thorfleet_rollout_max_fail=1", fail_at={"h1": "verify"})
    assert run.rc != 0, run
    assert run.steps("h1") == ["power", "services", "verify", "rollback"], run
    assert untouched(run, ["h2", "h3", "h4"]), run
    summary = run.summary()
    assert ("halted: canary h1 failed (Fail verify where asked: verify failed on h1); later "
            "batches were not started") in summary, run
    assert "left untouched: h2, h3, h4" in summary, run


@pytest.mark.parametrize("how", ["unreachable", "staging"])
def test_a_canary_that_never_reaches_the_switch_halts_it(switch, how):
    hosts = {"h1": UNREACHABLE} if how == "unreachable" else None
    fail_at = {"h1": "staging"} if how == "staging" else None
    run = switch("-e", "thorfleet_rollout_canary=h1", "-e", "thorfleet_rollout_batch=1",
                 "-e", "thorfleet_rollout_max_fail=1", hosts=hosts, fail_at=fail_at)
    assert run.rc != 0, run
    assert untouched(run, HOSTS), run
    summary = run.summary()
    assert summary[0].startswith("halted: canary h1 failed (left out of the switch"), run
    assert "left untouched: h2, h3, h4" in summary and "left out: h1" in summary, run


@pytest.mark.parametrize(("max_fail", "switched"), [(1, ["h1", "h3", "h4"]), (0, ["h1"])])
def test_a_failed_rollback_in_batches_of_one_still_ends_in_the_summary(switch, max_fail,
                                                                       switched):
    run = switch("-e", "thorfleet_rollout_batch=1", "-e", f"thorfleet_rollout_max_fail={max_fail}",
                 fail_at={"h2": ["verify", "rollback"]})
    assert run.rc != 0, run
    assert run.steps("h2") == ["power", "services", "verify", "rollback"], run
    for host in switched:
        assert run.steps(host) == SWITCHED, run
    summary = run.summary()
    assert summary[1] == ("batch 2: h2 failed (Fail verify where asked: verify failed on h2), "
                          "rollback failed (Fail rollback where asked: rollback failed on h2): "
                          "its state is unknown"), run
    assert "state unknown (rollback failed): h2" in summary, run
    assert f"switched: {', '.join(switched)}" in summary, run
    assert "rollback failed, state unknown" in run.output, run  # the host's own failure


@pytest.mark.parametrize(("flag", "steps"), [("--tags=services", ["services"]),
                                             ("--skip-tags=verify", ["power", "services"])])
def test_a_run_that_skips_verify_keeps_nothing_and_prunes_nothing(switch, flag, steps):
    run = switch(flag)
    assert run.rc == 0, run
    for host in HOSTS:
        assert run.steps(host) == steps, run  # no keep, no prune
    assert run.summary()[0].startswith(
        "batch 1: h1 switched (1 restarted: chat, not verified: nothing kept as last good, "
        "nothing pruned)"), run


def test_housekeeping_that_fails_after_the_commit_point_is_a_warning(switch):
    run = switch("-e", "thorfleet_rollout_batch=2", fail_at={"h1": "prune"})
    assert run.rc == 0, run
    for host in HOSTS:
        assert run.steps(host) == SWITCHED, run  # h1: no rollback after its keep
    summary = run.summary()
    assert summary[0].startswith("batch 1: h1 switched (1 restarted: chat, 2 checks passed), "
                                 "warning: Fail prune where asked: prune failed on h1;"), run
    assert "failed: none" in summary, run


def test_a_run_of_other_phases_switches_nothing_and_prints_no_summary(switch):
    run = switch("--tags=models")
    assert run.rc == 0, run
    assert untouched(run, HOSTS), run
    assert "left untouched" not in run.output, run  # the summary was skipped


def test_a_failed_switch_under_tags_services_is_put_back_through_nested_includes(switch,
                                                                                 tmp_path):
    # The real rollback (roles/inference_services/tasks/rollback.yml) includes put_back.yml
    # per service: a run limited by tags must reach those tasks too.
    tasks = tmp_path / "roles/inference_services/tasks"
    (tasks / "put_back.yml").write_text("---\n" + RECORD.format(what="put_back"))
    (tasks / "rollback.yml").write_text("---\n" + ROLES["inference_services/tasks/rollback.yml"]
                                        + "\n- name: Put back each service\n"
                                        "  ansible.builtin.include_tasks: put_back.yml\n")
    run = switch("--tags=services", "-e", "thorfleet_rollout_batch=100%",
                 fail_at={"h1": "services"})
    assert run.rc != 0, run
    assert run.steps("h1") == ["services", "rollback", "put_back"], run
    assert run.steps("h2") == ["services"], run


# --- the soak and the run lock (issue 34) -------------------------------------------------


def lock_file(tmp_path, host):
    return tmp_path / "locks" / f"{host}.lock"


def test_a_soak_asks_each_batch_again_before_the_next_starts_under_the_run_lock(switch,
                                                                               tmp_path):
    run = switch("-e", "thorfleet_rollout_batch=2", "-e", "thorfleet_rollout_pause=2")
    assert run.rc == 0, run
    for host in HOSTS:
        assert run.steps(host) == ["power", "services", "verify", "verify", "keep",
                                   "prune"], run
        assert run.last(host, "verify") - run.first(host, "verify") >= 2, run
    assert run.last("h2", "prune") < run.first("h3", "power"), run
    # Each host's switch ran under this run's lock, which the summary gave back.
    seen = [json.loads((tmp_path / "logs" / f"{host}.lock-seen").read_text())
            for host in HOSTS]
    assert {lock["run"] for lock in seen} == {seen[0]["run"]}, seen
    assert seen[0]["holder"] == f"{getpass.getuser()}@{socket.gethostname()}", seen
    assert seen[0]["pid"] > 1 and seen[0]["since"].endswith("Z"), seen
    assert not any(lock_file(tmp_path, host).exists() for host in HOSTS)


def test_a_service_that_fails_after_the_soak_is_put_back_and_halts(switch):
    run = switch("-e", "thorfleet_rollout_batch=1", "-e", "thorfleet_rollout_pause=1",
                 fail_at={"h1": "reverify"})
    assert run.rc != 0, run
    assert run.steps("h1") == ["power", "services", "verify", "verify", "rollback"], run
    assert untouched(run, ["h2", "h3", "h4"]), run
    assert run.summary()[0] == ("batch 1: h1 failed (Fail the check after the soak where "
                                "asked: verify after the soak failed on h1), put back: chat"), run


OTHER_RUN = {"run": "alice@elsewhere:4242:2026-12-05T10:00:00Z", "holder": "alice@elsewhere",
             "controller": "elsewhere", "pid": 4242, "since": "2026-12-05T10:00:00Z"}


def test_a_host_another_run_holds_refuses_the_whole_run(switch, tmp_path):
    lock_file(tmp_path, "h3").write_text(json.dumps(OTHER_RUN))
    run = switch()
    assert run.rc != 0, run
    assert untouched(run, HOSTS), run
    assert ("h3 is locked by another run of site.yml: the run of alice@elsewhere "
            "(ansible-playbook pid 4242), since 2026-12-05T10:00:00Z. If that run is over, "
            "clear its lock with: ansible-playbook playbooks/unlock.yml -l h3") in run.output, run
    assert "not run: another run holds h3" in run.output, run
    assert json.loads(lock_file(tmp_path, "h3").read_text()) == OTHER_RUN
    assert not any(lock_file(tmp_path, host).exists() for host in ("h1", "h2", "h4")), run
    # A preview takes no lock and is not refused.
    preview = switch("--check")
    assert preview.rc == 0, preview
    assert json.loads(lock_file(tmp_path, "h3").read_text()) == OTHER_RUN
    assert not any(lock_file(tmp_path, host).exists() for host in ("h1", "h2", "h4"))


def test_a_live_run_of_this_controller_is_not_taken_over(switch, tmp_path):
    # A process that looks like ansible-playbook holds h2's lock: it is alive.
    with live_playbook() as live:
        try:
            lock_file(tmp_path, "h2").write_text(json.dumps({
                **OTHER_RUN, "controller": socket.gethostname(), "pid": live.pid,
                "run": f"x:{live.pid}"}))
            run = switch()
        finally:
            live.kill()
    assert run.rc != 0, run
    assert untouched(run, HOSTS), run
    assert f"h2 is locked by another run of site.yml: the run of alice@elsewhere " \
           f"(ansible-playbook pid {live.pid})" in run.output, run


def test_a_run_that_ends_before_its_summary_leaves_locks_the_next_run_takes_over(switch,
                                                                               tmp_path):
    # Every host fails staging: Ansible ends the run before the summary gives the locks
    # back; the run's ansible-playbook is gone, so the next run of this controller takes
    # them over.
    first = switch(fail_at={host: "staging" for host in HOSTS})
    assert first.rc != 0, first
    left = [json.loads(lock_file(tmp_path, host).read_text()) for host in HOSTS]
    assert {lock["pid"] for lock in left} != {0}, left
    second = switch("-e", "thorfleet_rollout_batch=100%", "-e", "thorfleet_rollout_max_fail=1",
                    fail_at={"h2": "staging"})
    assert second.rc != 0, second  # h2 failed its staging again
    for host in ("h1", "h3", "h4"):
        assert second.steps(host) == SWITCHED, second
    # h2 left the run before the summary: its lock was given back too.
    assert not any(lock_file(tmp_path, host).exists() for host in HOSTS), second


def test_the_unlock_playbook_clears_whatever_run_holds_the_lock(switch, tmp_path):
    lock_file(tmp_path, "h4").write_text(json.dumps(OTHER_RUN))
    run = switch("-l", "h4", playbook=ROOT / "playbooks/unlock.yml")
    assert run.rc == 0, run
    assert "cleared the lock of the run of alice@elsewhere, since 2026-12-05T10:00:00Z" \
        in run.output, run
    assert not lock_file(tmp_path, "h4").exists()

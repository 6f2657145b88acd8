"""The rollout's filters (filter_plugins/rollout.py): its settings checked in preflight,
naming the field, counts and shares of hosts, and what the summary says."""

from __future__ import annotations

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible.utils.helpers import pct_to_int

from tests.conftest import ROOT, load

rollout = load("filter_plugins/rollout.py")
HOSTS = ["thor01", "thor02", "thor03", "thor04"]
GROUPS = {"all": HOSTS, "thor": HOSTS, "canaries": ["thor02"], "elsewhere": ["thor09"]}


def problems(batch="100%", canary="", max_fail=0, hosts=HOSTS, pause=0):
    return rollout.rollout_problems(batch, canary, max_fail, hosts, GROUPS, pause)


@pytest.mark.parametrize("settings", [
    {}, {"batch": 1}, {"batch": "1"}, {"batch": "10%"}, {"batch": " 3 "},
    {"max_fail": "1"}, {"max_fail": "0%"}, {"max_fail": "100%"}, {"max_fail": 2},
    {"canary": "thor01"}, {"canary": "canaries"},
    {"pause": 0}, {"pause": "30"}, {"pause": 86400}])
def test_settings_a_rollout_takes(settings):
    assert problems(**settings) == []


@pytest.mark.parametrize(("settings", "field"), [
    ({"batch": 0}, "thorfleet_rollout_batch"), ({"batch": "0%"}, "thorfleet_rollout_batch"),
    ({"batch": "101%"}, "thorfleet_rollout_batch"), ({"batch": "-1"}, "thorfleet_rollout_batch"),
    ({"batch": "all"}, "thorfleet_rollout_batch"), ({"batch": True}, "thorfleet_rollout_batch"),
    ({"batch": "1;reboot"}, "thorfleet_rollout_batch"),
    ({"batch": "1\nserial: 0"}, "thorfleet_rollout_batch"),
    ({"max_fail": -1}, "thorfleet_rollout_max_fail"),
    ({"max_fail": "5 %"}, "thorfleet_rollout_max_fail"),
    ({"max_fail": "1.5"}, "thorfleet_rollout_max_fail"),
    ({"canary": "thor05"}, "thorfleet_rollout_canary"),
    ({"canary": "elsewhere"}, "thorfleet_rollout_canary"),
    ({"canary": "thor:!thor01"}, "thorfleet_rollout_canary"),
    ({"canary": "thor01;id"}, "thorfleet_rollout_canary"),
    ({"canary": "thor01\n"}, "thorfleet_rollout_canary"),
    ({"canary": ["thor01"]}, "thorfleet_rollout_canary"),
    ({"pause": -1}, "thorfleet_rollout_pause"), ({"pause": 86401}, "thorfleet_rollout_pause"),
    ({"pause": "1.5"}, "thorfleet_rollout_pause"), ({"pause": True}, "thorfleet_rollout_pause"),
    ({"pause": "30;reboot"}, "thorfleet_rollout_pause"),
    ({"pause": "30\n"}, "thorfleet_rollout_pause"),
    ({"pause": " 5"}, "thorfleet_rollout_pause"),
    ({"pause": 2.0}, "thorfleet_rollout_pause"), ({"pause": None}, "thorfleet_rollout_pause")])
def test_a_bad_setting_is_refused_naming_its_field(settings, field):
    found = problems(**settings)
    assert len(found) == 1 and found[0].startswith(field + ": "), found


def test_a_canary_outside_this_runs_hosts_is_refused():
    (found,) = problems(canary="thor03", hosts=["thor01", "thor02"])
    assert "among the hosts of this run (thor01, thor02)" in found


@pytest.mark.parametrize(("value", "total", "count"), [
    (0, 60, 0), ("1", 60, 1), (3, 4, 3), ("10%", 60, 6), ("25%", 4, 1), ("10%", 4, 0),
    ("100%", 7, 7)])
def test_a_count_or_a_share_of_the_hosts(value, total, count):
    assert rollout.rollout_count(value, total) == count


@pytest.mark.parametrize(("hosts", "batch"), [(1, 1), (4, 1), (9, 1), (10, 2), (17, 3),
                                             (60, 12)])
def test_the_default_batch_is_a_fifth_of_the_hosts_and_at_least_one(hosts, batch):
    # As Ansible's `serial` takes the default: a share, rounded down, at least one host.
    default = yaml.safe_load((ROOT / "playbooks/vars/rollout.yml").read_text())
    assert problems(batch=default["thorfleet_rollout_batch"]) == []
    assert pct_to_int(default["thorfleet_rollout_batch"], hosts) == batch
    assert default["thorfleet_rollout_pause"] == 0
    names = [f"thor{number:02}" for number in range(1, hosts + 1)]
    batches = rollout.rollout_batches(names, [], default["thorfleet_rollout_batch"])
    assert [len(b) for b in batches[:-1]] == [batch] * (len(batches) - 1), batches
    assert 0 < len(batches[-1]) <= batch and sum(batches, []) == names


@pytest.mark.parametrize(("hosts", "canary", "batch", "sizes"), [
    (1, "", "20%", [1]), (1, "thor01", "10%", [1]),
    (4, "", 1, [1, 1, 1, 1]), (4, "thor03", "50%", [1, 1, 1, 1]), (4, "", "100%", [4]),
    (17, "", "20%", [3, 3, 3, 3, 3, 2]), (17, "thor09", 5, [1, 5, 5, 5, 1]),
    # The README's command at 60 hosts: the canary, then 10% of the 59 others (5).
    (60, "thor01", "10%", [1] + [5] * 11 + [4]), (60, "", "20%", [12] * 5),
    (60, "", 7, [7] * 8 + [4])])
def test_the_canary_alone_then_batches_cut_as_serial_would(hosts, canary, batch, sizes):
    names = [f"thor{number:02}" for number in range(1, hosts + 1)]
    canaries = rollout.rollout_canaries(names, canary, GROUPS)
    batches = rollout.rollout_batches(names, canaries, batch)
    assert [len(b) for b in batches] == sizes, batches
    others = [name for name in names if name != canary]
    assert sum(batches, []) == ([canary] if canary else []) + others
    if canary:
        assert batches[0] == [canary]
    # Each batch after the canary's is as big as Ansible's `serial` would make it.
    if others:
        assert len(batches[1 if canary else 0]) == pct_to_int(batch, len(others))


def test_a_canary_group_is_one_batch_and_a_left_out_canary_keeps_its_place():
    # A canary host unreachable when the switch starts is still its batch: nobody runs
    # it, and the next batch halts on it (rollout_halt).
    batches = rollout.rollout_batches(HOSTS, rollout.rollout_canaries(HOSTS, "canaries",
                                                                      GROUPS), 2)
    assert batches == [["thor02"], ["thor01", "thor03"], ["thor04"]]
    with pytest.raises(AnsibleFilterError, match="thorfleet_rollout_batch: 'x'"):
        rollout.rollout_batches(HOSTS, [], "x")


def test_a_count_that_is_neither_fails_naming_the_field():
    with pytest.raises(AnsibleFilterError, match="thorfleet_rollout_max_fail: 'x'"):
        rollout.rollout_count("x", 4)


def test_a_host_without_a_result_left_the_run():
    results = rollout.rollout_results(["thor01", "thor02"], [{"restarted": [], "verified": 1},
                                                             {}])
    assert rollout.rollout_failed(results) == ["thor02"]
    assert "unreachable" in results["thor02"]["failed"]


def test_the_summary_names_each_batch_the_halt_and_the_hosts_left():
    results = {"thor01": {"restarted": ["chat"], "verified": 2},
               "thor02": {"failed": "Verify: chat: no answer", "put_back": ["chat"]}}
    halt = rollout.rollout_halt(results, 0, ["thor01"], HOSTS)
    lines = rollout.rollout_summary([["thor01"], ["thor02"]], results, HOSTS, 0, halt)
    assert lines == [
        "batch 1: thor01 switched (1 restarted: chat, 2 checks passed)",
        "batch 2: thor02 failed (Verify: chat: no answer), put back: chat",
        "halted: 1 host(s) failed (thor02), more than thorfleet_rollout_max_fail allows (0); "
        "later batches were not started",
        "switched: thor01", "failed: thor02", "left untouched: thor03, thor04"]
    assert rollout.rollout_left_out(["thor01", "thor05"], HOSTS) == ["thor05"]


# --- at the edges: the longest count and name taken, one more refused ---------------------


@pytest.mark.parametrize(("batch", "taken"), [("999999", True), ("1000000", False),
                                              ("100%", True), ("101%", False)])
def test_a_count_of_up_to_six_digits_is_taken_and_a_longer_one_refused(batch, taken):
    assert (problems(batch=batch) == []) is taken


def test_a_canary_name_of_128_characters_is_a_name_and_one_of_129_is_not():
    longest, longer = "t" * 128, "t" * 129
    assert problems(canary=longest, hosts=[*HOSTS, longest]) == []
    (found,) = problems(canary=longer, hosts=[*HOSTS, longer])
    assert found.startswith("thorfleet_rollout_canary: ") and "is not the name" in found


def test_a_share_rounds_down_even_from_a_half_or_more():
    # 10% of 15 is 1.5 hosts, 10% of 19 is 1.9: one host each, as max_fail_percentage.
    assert [rollout.rollout_count("10%", total) for total in (15, 19, 20)] == [1, 1, 2]


def test_results_that_do_not_pair_with_the_hosts_started_are_an_error():
    with pytest.raises(ValueError):
        rollout.rollout_results(["thor01", "thor02"], [{"restarted": [], "verified": 1}])


def test_a_switch_that_says_no_checks_passed_none():
    lines = rollout.rollout_summary([["thor01"]], {"thor01": {"restarted": []}}, HOSTS, 0)
    assert lines[0] == "batch 1: thor01 switched (0 restarted, 0 checks passed)"


# --- the canary gates; the budget is for the hosts after it --------------------------------


def fleet(size):
    return [f"thor{n:02d}" for n in range(1, size + 1)]


@pytest.mark.parametrize("size", [1, 4, 17, 60])
def test_a_failed_canary_halts_whatever_the_budget(size):
    hosts = fleet(size)
    results = {"thor01": {"failed": "Send each service the requests: chat: 500"}}
    for budget in (0, 1, size):
        assert rollout.rollout_halt(results, budget, ["thor01"], hosts) == (
            "halted: canary thor01 failed (Send each service the requests: chat: 500)")
    # In the canary's own batch (no canaries passed) only the budget counts.
    assert rollout.rollout_halt(results, 1, [], hosts) == ""


@pytest.mark.parametrize("size", [1, 4, 17, 60])
def test_a_canary_left_out_or_lost_halts_too(size):
    hosts = fleet(size)
    left_out = rollout.rollout_halt({}, size, ["thor01"], hosts[1:])
    assert left_out.startswith("halted: canary thor01 failed (left out of the switch"), left_out
    lost = rollout.rollout_results(["thor01"], [None])
    assert rollout.rollout_halt(lost, size, ["thor01"], hosts) == (
        "halted: canary thor01 failed (left the run during its switch (unreachable))")


@pytest.mark.parametrize(("size", "max_fail", "budget"), [
    (1, "10%", 0), (4, "10%", 0), (17, "10%", 1), (60, "10%", 6), (60, 1, 1), (17, "25%", 4)])
def test_a_passed_canary_leaves_the_budget_to_the_batches(size, max_fail, budget):
    hosts = fleet(size)
    assert rollout.rollout_count(max_fail, size) == budget
    results = {"thor01": {"restarted": ["chat"], "verified": 2},
               **{host: {"failed": "x"} for host in hosts[1:budget + 1]}}
    assert rollout.rollout_halt(results, budget, ["thor01"], hosts) == ""
    if budget + 2 <= size:  # one more failed host than the budget halts
        results[hosts[budget + 1]] = {"failed": "x"}
        assert rollout.rollout_halt(results, budget, ["thor01"], hosts).startswith(
            f"halted: {budget + 1} host(s) failed")


def test_a_canary_group_fails_on_any_of_its_hosts():
    hosts = fleet(17)
    canaries = rollout.rollout_canaries(hosts, "canaries", {"canaries": ["thor09", "thor02"]})
    assert canaries == ["thor02", "thor09"]  # in the run's order
    results = {"thor02": {"restarted": [], "verified": 1}, "thor09": {"failed": "power: x"}}
    assert rollout.rollout_halt(results, 5, canaries, hosts) == (
        "halted: canary thor09 failed (power: x)")
    assert rollout.rollout_canaries(hosts, "thor03", {}) == ["thor03"]
    assert rollout.rollout_canaries(hosts, "", {}) == []
    assert rollout.rollout_canaries(hosts, "thor99", {}) == []


def test_a_failed_rollback_is_named_with_the_host_state_unknown():
    results = {"thor01": {"failed": "Restart: chat did not start", "put_back": [],
                          "rollback_failed": "Put back the last good unit: No such file"}}
    lines = rollout.rollout_summary([["thor01"]], results, HOSTS, 1,
                                    rollout.rollout_halt(results, 1, [], HOSTS))
    assert lines[0] == ("batch 1: thor01 failed (Restart: chat did not start), rollback "
                        "failed (Put back the last good unit: No such file): its state is "
                        "unknown")
    assert "failed: thor01" in lines and "state unknown (rollback failed): thor01" in lines
    assert not any(line.startswith("halted") for line in lines)  # within the budget of 1
    assert rollout.rollout_failed(results) == ["thor01"]  # counts against it


def test_a_switch_not_verified_or_with_a_warning_says_so():
    results = {"thor01": {"restarted": ["chat"], "verified": 0, "unverified": True},
               "thor02": {"restarted": [], "verified": 1,
                          "warning": "Prune images no service runs: disk busy"}}
    lines = rollout.rollout_summary([["thor01", "thor02"]], results, HOSTS, 0, "")
    assert lines[0] == (
        "batch 1: thor01 switched (1 restarted: chat, not verified: nothing kept as last good, "
        "nothing pruned); thor02 switched (0 restarted, 1 check passed), warning: Prune "
        "images no service runs: disk busy")
    assert "switched: thor01, thor02" in lines

"""Filters of the fleet rollout (playbooks/switch.yml): its settings checked, counts and
shares of hosts, and what each batch did.

A count is a whole number of hosts (`5`) or a share of some total (`"10%"`), as
Ansible's `serial` takes it. A host's switch leaves a result fact behind:
{restarted: [...], verified: N} when it passed (with `unverified` when the run skipped
verify, and `warning` when housekeeping after its commit point failed), {failed: "...",
put_back: [...]} when it did not (with `rollback_failed` when putting it back failed too);
a host that started its switch and has no result left the run during it.

The canary is a gate: when a canary host failed, was lost, or never reached the switch,
no later batch starts, whatever the failure budget allows; the budget is for the hosts
after it.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

WHOLE = r"(0|[1-9][0-9]{0,5})"  # a whole number, at most six digits
COUNT = re.compile(WHOLE + r"(%?)")
HOST_OR_GROUP = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
# The result of a host lost during its switch: what it runs now is not known.
LEFT = {"failed": "left the run during its switch (unreachable)", "lost": True}


def _parse(value):
    """(number, is_share) of a count or share, or None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value, False) if value >= 0 else None
    match = COUNT.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not match:
        return None
    number, share = int(match[1]), bool(match[2])
    return None if share and number > 100 else (number, share)


PAUSE_MAX = 86400  # a day: a soak longer than that is a typo


def _seconds(value):
    """A whole number of seconds from 0 to PAUSE_MAX, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and re.fullmatch(WHOLE, value):
        value = int(value)
    return value if isinstance(value, int) and 0 <= value <= PAUSE_MAX else None


def rollout_problems(batch, canary, max_fail, hosts, groups, pause=0):
    """What is wrong with the rollout settings of a run, one message per field; `hosts`
    are the run's hosts, `groups` the inventory's groups."""
    problems = []
    parsed = _parse(batch)
    if parsed is None or parsed[0] == 0:
        problems.append(f"thorfleet_rollout_batch: {str(batch)[:40]!r} is not a number of "
                        "hosts (at least 1) or a share of them (1% to 100%)")
    if _parse(max_fail) is None:
        problems.append(f"thorfleet_rollout_max_fail: {str(max_fail)[:40]!r} is not a number "
                        "of hosts (0 or more) or a share of them (0% to 100%)")
    if _seconds(pause) is None:
        problems.append(f"thorfleet_rollout_pause: {str(pause)[:40]!r} is not a whole "
                        f"number of seconds from 0 to {PAUSE_MAX}")
    canary = canary or ""
    if canary:
        if not isinstance(canary, str) or not HOST_OR_GROUP.fullmatch(canary):
            problems.append(f"thorfleet_rollout_canary: {str(canary)[:40]!r} is not the name "
                            "of a host or a group")
        else:
            members = set((groups or {}).get(canary) or []) | ({canary} & set(hosts or []))
            if not members & set(hosts or []):
                problems.append(f"thorfleet_rollout_canary: {canary} is neither a host nor a "
                                f"group among the hosts of this run ({', '.join(hosts or [])})")
    return problems


def rollout_count(value, total, field="thorfleet_rollout_max_fail"):
    """The number of hosts a count or share stands for, out of `total`: a share rounds
    down, as Ansible's max_fail_percentage does."""
    parsed = _parse(value)
    if parsed is None:
        raise AnsibleFilterError(f"{field}: {value!r} is not a number of hosts or a share")
    number, share = parsed
    return int(number * int(total) / 100) if share else number


def rollout_batches(run_hosts, canaries, batch):
    """The switch's batches, in order: the canary's hosts alone (when there is one), then
    the run's other hosts in the run's order, `batch` of them at a time (a count, or a
    share of them rounded down and at least one: Ansible's rule for `serial`)."""
    canaries = list(canaries or [])
    others = [host for host in run_hosts or [] if host not in canaries]
    size = max(rollout_count(batch, len(others), field="thorfleet_rollout_batch"), 1)
    return (([canaries] if canaries else [])
            + [others[start:start + size] for start in range(0, len(others), size)])


def rollout_results(started, results):
    """{host: result} for the hosts whose switch started, `results` being each one's
    result fact in the same order (undefined, for one that left the run during it)."""
    return {host: (result if isinstance(result, dict) and result else dict(LEFT))
            for host, result in zip(started or [], results or [], strict=True)}


def rollout_failed(results):
    """The hosts whose switch failed, in the order they started."""
    return [host for host, result in results.items() if "failed" in result]


def rollout_canaries(run_hosts, canary, groups):
    """The run's hosts that are the canary: the host of that name, or the members of the
    group, in the run's order (also those left out before the switch: unreachable, or
    their staging failed)."""
    if not canary:
        return []
    members = set((groups or {}).get(canary) or []) | {canary}
    return [host for host in run_hosts or [] if host in members]


def _failure(host, result):
    text = f"{host} failed ({result['failed']})"
    if result.get("lost"):
        return text + ": its state is unknown"
    if result.get("rollback_failed"):
        return text + f", rollback failed ({result['rollback_failed']}): its state is unknown"
    back = result.get("put_back") or []
    return text + (f", put back: {', '.join(back)}" if back else "")


def _success(host, result):
    restarted, checks = result.get("restarted") or [], int(result.get("verified", 0))
    text = (f"{host} switched ({len(restarted)} restarted"
            + (f": {', '.join(restarted)}" if restarted else ""))
    if result.get("unverified"):
        text += ", not verified: nothing kept as last good, nothing pruned)"
    else:
        text += f", {checks} check{'' if checks == 1 else 's'} passed)"
    if result.get("warning"):
        text += f", warning: {result['warning']}"
    return text


def rollout_summary(batches, results, hosts, budget, halt=""):
    """Lines telling what the rollout did: one per batch, why it halted (`halt`, from
    rollout_halt), and which hosts switched, failed, were left untouched (a later batch
    that never started) or left out (unreachable, or failed before the switch). `hosts`
    are the hosts the switch started with."""
    lines = []
    for number, batch in enumerate(batches or [], 1):
        parts = []
        for host in batch:
            result = results.get(host, LEFT)
            parts.append(_failure(host, result) if "failed" in result
                         else _success(host, result))
        lines.append(f"batch {number}: " + "; ".join(parts))
    failed = rollout_failed(results)
    started = [host for batch in batches or [] for host in batch]
    untouched = [host for host in hosts or [] if host not in started]
    if halt:
        lines.append(halt + "; later batches were not started")
    lines.append("switched: " + (", ".join(h for h in started if h not in failed) or "none"))
    lines.append("failed: " + (", ".join(failed) or "none"))
    unknown = [host for host in failed if results[host].get("rollback_failed")]
    if unknown:
        lines.append("state unknown (rollback failed): " + ", ".join(unknown))
    lost = [host for host in failed if results[host].get("lost")]
    if lost:
        lines.append("state unknown (lost during its switch): " + ", ".join(lost))
    lines.append("left untouched: " + (", ".join(untouched) or "none"))
    return lines


def rollout_halt(results, budget, canaries=(), hosts=None):
    """Why no later batch may start, or "" when they may: a canary host that failed, was
    lost or never reached the switch (not among `hosts`, those the switch started with),
    or more failed hosts than the budget allows. The canary's own batch passes no
    `canaries`."""
    for host in canaries or []:
        if hosts is not None and host not in hosts:
            return (f"halted: canary {host} failed (left out of the switch: unreachable "
                    "when it started, or its staging failed)")
        if "failed" in results.get(host, {}):
            return f"halted: canary {host} failed ({results[host]['failed']})"
    failed = rollout_failed(results)
    if len(failed) <= int(budget):
        return ""
    return (f"halted: {len(failed)} host(s) failed ({', '.join(failed)}), more than "
            f"thorfleet_rollout_max_fail allows ({budget})")


def rollout_left_out(run_hosts, hosts):
    """The run's hosts the switch did not start with: unreachable when the run started,
    or failed before the switch (their staging), so they switched nothing."""
    return [host for host in run_hosts or [] if host not in (hosts or [])]


class FilterModule:
    def filters(self):
        return {"thorfleet_rollout_problems": rollout_problems,
                "thorfleet_rollout_batches": rollout_batches,
                "thorfleet_rollout_count": rollout_count,
                "thorfleet_rollout_results": rollout_results,
                "thorfleet_rollout_failed": rollout_failed,
                "thorfleet_rollout_summary": rollout_summary,
                "thorfleet_rollout_halt": rollout_halt,
                "thorfleet_rollout_canaries": rollout_canaries,
                "thorfleet_rollout_left_out": rollout_left_out}

"""Playbook runs through ansible-runner, for ``thorfleet deploy`` and ``thorfleet bench``:
live progress per host while it runs, and a summary per host and phase at the end.

ansible-runner runs ``ansible-playbook`` in the checkout (so its ansible.cfg, roles and
plugins apply) and hands every event of the run to a callback here; a phase is a play of
the playbook (site.yml imports one per phase). Its own output stays quiet: what it would
print is what the progress lines say.
"""

from __future__ import annotations

import difflib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

from thorfleet import phases
from thorfleet.tables import text_table

COUNTS = ("ok", "changed", "failed", "skipped", "unreachable")
# The switch's tasks whose message is the rollout's progress: each batch's hosts (or the
# halt), and the rollout's summary.
SHOWN = ("Open this batch", "Summarise the rollout")
# Tasks that only bring in other tasks (the switch's batches, a role's entry point): they
# count, as Ansible counts them, but their line says nothing the next lines do not.
INCLUDES = frozenset({"include_tasks", "include_role", "ansible.builtin.include_tasks",
                      "ansible.builtin.include_role"})


@dataclass
class Progress:
    """Counts per (host, phase), in the order phases ran, and a line per task result."""

    out: object = field(default_factory=lambda: sys.stdout)
    counts: dict = field(default_factory=dict)
    # The phase of each play of the playbook, in order (phases.plays; run_playbook reads
    # them): ansible-runner's events name a play, not its variables.
    phases: list = field(default_factory=list)
    play: str = ""
    phase: str = ""
    stats: dict = field(default_factory=dict)  # Ansible's own recap, at the end
    started: list = field(default_factory=list)  # the plays started, by uuid

    def __call__(self, event: dict) -> bool:
        name, data = event.get("event", ""), event.get("event_data") or {}
        if name == "playbook_on_play_start":
            # The switch's play names each batch as it opens it (Open this batch).
            self.play = data.get("play") or data.get("name") or "?"
            # A play started again (serial, the free strategy) has its uuid with "_N".
            uuid = str(data.get("play_uuid") or len(self.started)).split("_")[0]
            if uuid not in self.started:
                self.started.append(uuid)
            index = self.started.index(uuid)
            self.phase = self.phases[index] if index < len(self.phases) else self.play
            self._print(f"== {self.play}")
        elif name == "playbook_on_stats":
            self.stats = data
        elif name in ("warning", "error", "verbose", "playbook_on_no_hosts_matched"):
            # Ansible's own warnings and errors (a limit matching no host, a syntax error).
            text = (event.get("stdout") or "").strip()
            if name != "verbose" or "ERROR" in text or "WARNING" in text:
                self._print(text)
        elif name in ("runner_on_ok", "runner_on_failed", "runner_on_skipped",
                      "runner_on_unreachable"):
            self.result(name.removeprefix("runner_on_"), data)
        return True  # keep the event in ansible-runner's artifacts too

    def result(self, outcome: str, data: dict) -> None:
        host, res = data.get("host", "?"), data.get("res") or {}
        where = phases.phase(self.phase, data.get("role"))
        count = self.counts.setdefault((host, where), dict.fromkeys(COUNTS, 0))
        if outcome == "failed" and data.get("ignore_errors"):
            outcome = "ok"  # as Ansible counts it: ignored, not failed
        count[outcome] += 1
        changed = outcome == "ok" and bool(res.get("changed"))
        if changed:
            count["changed"] += 1
        if outcome == "skipped" or (outcome == "ok" and data.get("task_action") in INCLUDES):
            return
        if data.get("task") in SHOWN and self.phase == phases.SWITCH and res.get("msg"):
            said = res["msg"]
            self._print("\n".join(f"   {line}" for line in
                                   (said if isinstance(said, list) else [said])))
            return
        shown = "changed" if changed else outcome
        line = f"   {host:<12} {shown:<11} {data.get('task', '')}"
        if outcome in ("failed", "unreachable"):
            line += "\n" + "\n".join(f"{'':16}{text}" for text in _message(res).splitlines())
        elif changed:  # with --diff: what changed, or would change in check mode
            line += "".join(f"\n{'':16}{text}" for text in _diff(res))
        self._print(line)

    def failed(self) -> bool:
        return any(c["failed"] or c["unreachable"] for c in self.counts.values())

    def table(self) -> str:
        rows = [("host", "phase", *COUNTS)]
        for host in sorted({host for host, _ in self.counts}):
            for (where, phase), count in self.counts.items():
                if where == host:
                    rows.append((host, phase, *(str(count[c]) for c in COUNTS)))
        return text_table(rows)

    def recap(self) -> str:
        """Ansible's totals per host (its PLAY RECAP), which count a rescued failure as
        rescued where the table above, built from task results, counts it failed."""
        names = (("ok", "ok"), ("changed", "changed"), ("dark", "unreachable"),
                 ("failures", "failed"), ("skipped", "skipped"), ("rescued", "rescued"),
                 ("ignored", "ignored"))
        hosts = sorted({host for key, _ in names for host in self.stats.get(key) or {}})
        return "\n".join(f"{host}: " + " ".join(
            f"{shown}={(self.stats.get(key) or {}).get(host, 0)}" for key, shown in names)
            for host in hosts)

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _message(res: dict) -> str:
    """What a failed task said: its msg, else stderr or stdout of a command."""
    for key in ("msg", "stderr", "stdout"):
        if res.get(key):
            value = res[key]
            return "\n".join(value) if isinstance(value, list) else str(value)
    return "failed"


def _diff(res: dict, limit: int = 40) -> list[str]:
    """A changed result's diff (file contents, as modules report them with --diff) as
    unified diff lines, at most `limit` of them."""
    lines, diffs = [], []
    # A loop's diffs are its items'.
    for one in [res, *(item for item in res.get("results") or [] if item.get("changed"))]:
        found = one.get("diff") or []
        diffs += found if isinstance(found, list) else [found]
    for diff in diffs:
        before, after = diff.get("before"), diff.get("after")
        if not (isinstance(before, str) and isinstance(after, str)):
            continue
        lines += [line.rstrip("\n") for line in difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            diff.get("before_header", "before"), diff.get("after_header", "after"))]
    return lines if len(lines) <= limit else [*lines[:limit], f"... {len(lines) - limit} more"]


def use_installed_ansible() -> None:
    """Put the Ansible installed beside this Python (the checkout's .venv) first on PATH:
    ansible-runner and ``thorfleet status`` start its commands by name."""
    here = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != here:
        os.environ["PATH"] = f"{here}{os.pathsep}{os.environ.get('PATH', '')}"


def run_playbook(project: Path, playbook: str, progress: Progress, inventory: str | None = None,
                 limit: str | None = None, check: bool = False,
                 extravars: dict | None = None) -> int:
    """ansible-playbook `playbook` (relative to the checkout) through ansible-runner;
    returns its exit status."""
    use_installed_ansible()
    progress.phases = phases.plays(Path(project) / playbook)
    with tempfile.TemporaryDirectory(prefix="thorfleet-run-") as private:
        run = ansible_runner.run(
            private_data_dir=private, project_dir=str(project), playbook=playbook,
            inventory=str(Path(inventory).resolve()) if inventory else None, limit=limit,
            cmdline="--check --diff" if check else None, extravars=extravars or None,
            event_handler=progress, quiet=True,
            envvars={"ANSIBLE_NOCOLOR": "1"})
        return run.rc

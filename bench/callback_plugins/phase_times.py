"""When each phase of a run started, and when the run ended: the bench's per-phase
breakdown. A phase is what a play of site.yml says in its variable thorfleet_phase,
except in the switch, whose tasks count to their role's phase (thorfleet.phases, which
`thorfleet deploy` counts by too).

Enabled by bench/noop_rerun.py only, for both arms alike: ANSIBLE_CALLBACK_PLUGINS names
this directory, ANSIBLE_CALLBACKS_ENABLED names phase_times, and THORFLEET_PHASE_TIMES
names the JSON file to write ([[phase, seconds since the epoch], ..., ["end", ...]]).
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

from thorfleet.phases import phase, play_phase

DOCUMENTATION = """
name: phase_times
type: aggregate
short_description: write when each play started and when the run ended
description:
  - Writes a JSON list of [phase, time] pairs, then ["end", time], to the file that
    THORFLEET_PHASE_TIMES names.
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "phase_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.marks = []
        self.play = ""

    def _mark(self, name):
        if not self.marks or self.marks[-1][0] != name:
            self.marks.append([name, time.time()])

    def v2_playbook_on_play_start(self, play):
        # The play's phase by its variable thorfleet_phase, not its name.
        self.play = play_phase({"vars": play.vars, "name": play.get_name()})
        self._mark(phase(self.play, None))

    def v2_playbook_on_task_start(self, task, is_conditional):
        role = task._role.get_name() if task._role else None
        self._mark(phase(self.play, role))

    def v2_playbook_on_stats(self, stats):
        self.marks.append(["end", time.time()])
        path = os.environ.get("THORFLEET_PHASE_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self.marks, handle)

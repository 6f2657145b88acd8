"""When each play of a run started, and when the run ended: the bench's per-phase
breakdown (each phase of site.yml is one play).

Enabled by bench/noop_rerun.py only, for both arms alike: ANSIBLE_CALLBACK_PLUGINS names
this directory, ANSIBLE_CALLBACKS_ENABLED names phase_times, and THORFLEET_PHASE_TIMES
names the JSON file to write ([[play name, seconds since the epoch], ..., ["end", ...]]).
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: phase_times
type: aggregate
short_description: write when each play started and when the run ended
description:
  - Writes a JSON list of [play name, time] pairs, then ["end", time], to the file that
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

    def v2_playbook_on_play_start(self, play):
        self.marks.append([play.get_name(), time.time()])

    def v2_playbook_on_stats(self, stats):
        self.marks.append(["end", time.time()])
        path = os.environ.get("THORFLEET_PHASE_TIMES")
        if path:
            with open(path, "w", encoding="utf-8") as handle:
                json.dump(self.marks, handle)

"""Which phase a task of site.yml belongs to, for `thorfleet deploy`'s summary and the
bench's breakdown alike. Each play of site.yml says its phase in its variable
`thorfleet_phase` (Preflight, Models, Engines, Images), never by its name; the switch's
plays (playbooks/switch.yml) say `Rollout`: they run power, services and verify batch by
batch, so there a task counts to its role's phase, and the switch's own tasks (batches,
the failure budget, the rollback's bookkeeping, the summary) to Rollout."""

from __future__ import annotations

from pathlib import Path

import yaml

SWITCH = "Rollout"
ROLE_PHASES = {"thor_power": "Power", "inference_services": "Services",
               "ngc_images": "Services", "service_verify": "Verify"}
IMPORTS = ("ansible.builtin.import_playbook", "import_playbook")


def phase(play_phase: str, role: str | None) -> str:
    """A task's phase: its play's, or in the switch its role's."""
    if play_phase == SWITCH:
        return ROLE_PHASES.get(role or "", SWITCH)
    return play_phase


def play_phase(play: dict) -> str:
    """A play's phase: its `thorfleet_phase`, else (a playbook of a user's own) its name."""
    return str((play.get("vars") or {}).get("thorfleet_phase")
               or play.get("name") or play.get("hosts") or "?")


def plays(playbook: Path) -> list[str]:
    """The phase of each play of `playbook`, in the order Ansible starts them, the
    playbooks it imports followed (relative to the importing file, as Ansible reads
    them)."""
    found = []
    for entry in yaml.safe_load(Path(playbook).read_text()) or []:
        imported = next((entry[key] for key in IMPORTS if key in entry), None)
        if imported is not None:
            found += plays(Path(playbook).parent / imported)
        else:
            found.append(play_phase(entry))
    return found

"""Which phase a task of site.yml belongs to, for `thorfleet deploy`'s summary and the
bench's breakdown alike: the play it runs in (site.yml imports one per phase), except in
the switch (playbooks/switch.yml), whose plays run power, services and verify batch by
batch: there a task counts to its role's phase, and the switch's own tasks (batches,
the failure budget, the rollback's bookkeeping, the summary) to `Rollout`."""

from __future__ import annotations

SWITCH_PLAYS = frozenset({"Rollout", "Switch", "Rollout summary"})
ROLE_PHASES = {"thor_power": "Power", "inference_services": "Services",
               "ngc_images": "Services", "service_verify": "Verify"}


def phase(play: str, role: str | None) -> str:
    if play in SWITCH_PLAYS:
        return ROLE_PHASES.get(role or "", "Rollout")
    return play

"""Every inventory and `-e` snippet of README.md and the role READMEs, run as written.

What runs each kind of snippet (tests/snippets.py finds them):
- inventory (a YAML mapping): its exact text as an extra-vars file (so every value in it
  takes effect, above the lab's own settings) through preflight on thor01, where the
  catalogue, services, types and argument specs are checked;
- extra_vars (an `-e` in prose or in a `thorfleet` command): its value, verbatim, through
  the phase its variables belong to (a role's prefix names the phase) on thor01;
- playbook (a YAML list of plays, a role's example with a real Thor's values, such as
  200 GB free): ansible-playbook --syntax-check;
- command (an ansible-playbook command line with `-e`): run verbatim by the lab test
  named for it in COMMANDS below, which takes it from the README with
  tests.snippets.commands_with.

A snippet of no known kind, or a command no test claims, fails here.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.lab.conftest import ROOT, Playbook
from tests.snippets import Snippet, snippets

# The phase each role's variables belong to: where a snippet setting them is run.
PHASES = {"thorfleet": ("site.yml", "preflight"), "thor_preflight": ("site.yml", "preflight"),
          "model_store": ("site.yml", "models"), "ggml_build": ("site.yml", "engines"),
          "ngc_images": ("site.yml", "images"), "inference_services": ("site.yml", "services"),
          "service_verify": ("site.yml", "verify"),
          "service_bench": ("playbooks/bench.yml", None)}
# README commands, by a string only they hold, and the lab test that runs each verbatim.
COMMANDS = {
    '{"vllm": {"image": "nvcr.io/nvidia/vllm:25.11-py3"}}':
        "tests/lab/test_services.py::test_the_readmes_image_bump_restarts_only_the_vllm_services",
    "-e ngc_images_refresh=true":
        "tests/lab/test_services.py::test_the_readmes_image_bump_restarts_only_the_vllm_services",
    "-e thorfleet_rollout_canary=thor01":
        "tests/lab/test_rollout.py::test_the_readmes_rollout_goes_canary_first_then_batch_by_batch",
    "-e thorfleet_lab=false":
        "tests/lab/test_site.py::test_the_same_host_made_to_look_like_a_thor_passes_preflight",
}
# Inventory snippets a lab test runs verbatim rather than through preflight alone (they
# need a bundle on the site cache), by a string only they hold, and the test.
INVENTORY_CLAIMS = {
    "thorfleet_bundle:":
        "tests/lab/test_bundle.py::test_a_fresh_host_provisions_from_a_bundle_with_no_route_out",
}
ALL = snippets()


def claimed(snippet: Snippet) -> bool:
    return any(needle in snippet.text for needle in INVENTORY_CLAIMS)


def of_kind(kind: str) -> list[Snippet]:
    return [s for s in ALL if s.kind == kind]


def test_every_snippet_is_of_a_kind_a_test_runs():
    kinds = {"inventory", "extra_vars", "playbook", "command"}
    assert {s.kind for s in ALL} <= kinds
    assert len(of_kind("inventory")) >= 5 and of_kind("extra_vars") and of_kind("command")
    for snippet in of_kind("command"):
        claims = [test for needle, test in COMMANDS.items() if needle in snippet.text]
        assert len(claims) == 1, f"{snippet}: no lab test runs this README command"
        path, name = claims[0].split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE), claims[0]
    for snippet in of_kind("inventory"):
        assert snippet.inventory_file, f"{snippet}: name the inventory file in its first line"
    for needle, test in INVENTORY_CLAIMS.items():
        assert [s for s in of_kind("inventory") if needle in s.text], needle
        path, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.MULTILINE), test


def phase_of(snippet: Snippet) -> tuple[str, str | None]:
    """The playbook and tag of the latest phase an -e snippet's variables belong to."""
    variables = (yaml.safe_load(snippet.text) if snippet.text.startswith("{")
                 else dict([snippet.text.split("=", 1)]))
    roles = {next((role for role in sorted(PHASES, key=len, reverse=True)
                   if name.startswith(role + "_")), None) for name in variables}
    assert None not in roles, f"{snippet}: a variable of no role: {sorted(variables)}"
    phases = {PHASES[role] for role in roles}
    # Preflight runs before every phase anyway.
    return sorted(phases, key=lambda p: list(PHASES.values()).index(p))[-1]


# Settings only a Jetson takes: their snippets run through the power phase on a lab host
# made to look like a Thor (with nvpmodel and jetson_clocks stand-ins).
JETSON_ONLY = ("thorfleet_power_mode", "thorfleet_jetson_clocks", "thorfleet_allow_reboot")


# Preflight only: the second lab runs these while its thor01 waits for its first converge
# (tests/suite.py).
@pytest.mark.before_first_converge
@pytest.mark.parametrize("snippet", [s for s in of_kind("inventory") if not claimed(s)],
                         ids=lambda s: s.where)
def test_an_inventory_snippet_passes_preflight(lab, snippet, tmp_path, request):
    extra = tmp_path / "snippet.yml"
    extra.write_text(snippet.text)
    if snippet.inventory_file == "hosts.yml":
        # Groups of hosts: an inventory source beside the lab's, as a user adds them.
        run = Playbook("-i", "inventory/lab", "-i", str(extra), "site.yml", "-l", "thor01",
                       "--tags", "preflight")
        assert run.rc == 0 and run.recap["thor01"]["failed"] == 0, run
        return
    if set(yaml.safe_load(snippet.text)) & set(JETSON_ONLY):
        request.getfixturevalue("jetson")
        run = Playbook("site.yml", "-l", "thor02", "--tags", "power", "-e", f"@{extra}")
        assert run.rc == 0 and run.recap["thor02"]["failed"] == 0, run
        return
    run = Playbook("site.yml", "-l", "thor01", "--tags", "preflight", "-e", f"@{extra}")
    assert run.rc == 0, run
    assert run.recap["thor01"]["failed"] == 0, run


@pytest.mark.parametrize("snippet", of_kind("extra_vars"), ids=lambda s: s.where)
def test_an_extra_vars_snippet_runs_in_its_phase(lab, snippet):
    playbook, tag = phase_of(snippet)
    run = Playbook(playbook, "-l", "thor01", *(["--tags", tag] if tag else []), *snippet.argv)
    assert run.rc == 0, run
    assert run.recap["thor01"]["failed"] == 0, run


@pytest.mark.parametrize("snippet", of_kind("playbook"), ids=lambda s: s.where)
def test_a_playbook_snippet_is_a_valid_playbook(snippet, tmp_path):
    playbook = tmp_path / "example.yml"
    playbook.write_text(snippet.text)
    run = Playbook(str(playbook), "--syntax-check")
    assert run.rc == 0, run

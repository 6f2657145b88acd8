"""Commands with a bound: a hang ends with a message naming the command."""

from __future__ import annotations

import subprocess
import time

import pytest

from thorfleet import bounded


def test_a_command_within_its_bound_returns_its_output_and_status():
    done = bounded.run(["sh", "-c", "cat; echo err >&2; exit 3"], 10, input="in\n")
    assert (done.returncode, done.stdout, done.stderr) == (3, "in\n", "err\n")


def test_a_command_past_its_bound_is_stopped_with_what_it_started(tmp_path):
    marker = tmp_path / "grandchild-ran-on"
    start = time.monotonic()
    with pytest.raises(bounded.Overrun) as overrun:
        # The grandchild would write the marker after the bound if it survived.
        bounded.run(["sh", "-c", f"echo started; (sleep 3; touch {marker}) & sleep 60"], 1)
    assert time.monotonic() - start < 10
    message = str(overrun.value)
    assert message.startswith("sh -c echo started;") and "after 1 s" in message
    assert message.endswith("started\n")
    time.sleep(3.5)
    assert not marker.exists()


def test_a_command_reads_nothing_unless_given_input():
    # No input: standard input is empty, not this process's terminal.
    assert bounded.run(["cat"], 10).stdout == ""


def test_a_command_killed_by_a_signal_is_a_failure():
    killed = bounded.run(["sh", "-c", "kill -9 $$"], 10)
    assert killed.returncode == -9
    with pytest.raises(subprocess.CalledProcessError):
        bounded.run(["sh", "-c", "kill -9 $$"], 10, check=True)
    assert bounded.run(["true"], 10, check=True).returncode == 0


def test_an_overrun_shows_the_last_4000_characters_printed():
    with pytest.raises(bounded.Overrun) as overrun:
        bounded.run(["sh", "-c", "printf 'x%.0s' $(seq 5000); printf END; sleep 60"], 1)
    shown = str(overrun.value).split("it printed last:\n", 1)[1]
    assert len(shown) == 4000 and shown.endswith("END")


def test_a_watched_command_has_the_action_done_once_at_its_marker_while_it_runs(tmp_path):
    # The command waits for the file the action makes: it ends only if the action ran
    # at the marker, before the command's end; the marker printed again calls nothing.
    made = tmp_path / "made"
    calls = []

    def action():
        calls.append(made.exists())
        made.touch()

    script = (f"echo one; echo 'TASK [two]' >&2; until [ -e {made} ]; do sleep 0.05; done; "
              "echo after; echo 'TASK [two] again'; exit 4")
    done = bounded.run_watching(["sh", "-c", script], 10, [("TASK [two]", action),
                                                           ("after", lambda: calls.append(1))])
    assert calls == [False, 1]
    assert (done.returncode, done.stdout) == (4, "one\nTASK [two]\nafter\nTASK [two] again\n")


def test_a_watched_command_past_its_bound_is_stopped_with_what_it_printed(tmp_path):
    marker = tmp_path / "grandchild-ran-on"
    start = time.monotonic()
    with pytest.raises(bounded.Overrun) as overrun:
        bounded.run_watching(
            ["sh", "-c", f"echo started; (sleep 3; touch {marker}) & sleep 60"], 1,
            [("never printed", lambda: None)])
    assert time.monotonic() - start < 10
    assert str(overrun.value).endswith("started\n")
    time.sleep(3.5)
    assert not marker.exists()

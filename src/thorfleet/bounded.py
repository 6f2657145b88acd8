"""Commands with a bound: what the tests and benchmarks start ends, or fails saying so.

A command still running at its bound is killed together with everything it started (its
process group: ansible-playbook's workers and their SSH sessions), and `Overrun` names
the command, the bound and the end of what it printed, instead of a run that waits for
ever on a hung host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence


class Overrun(RuntimeError):
    """A command ran past its bound."""

    def __init__(self, argv: Sequence[str], timeout: float, output: str):
        self.argv, self.timeout, self.output = list(argv), timeout, output
        tail = output[-4000:]
        super().__init__(f"{' '.join(argv)} was still running after {timeout:.0f} s and was "
                         f"stopped; it printed last:\n{tail}")


def run(argv: Sequence[str], timeout: float, *, input: str | None = None, check: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True, check=check) that ends within
    `timeout` seconds or raises Overrun."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else
                          subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                out, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a grandchild of its own session holds a pipe
                out, err = "", ""
            raise Overrun(argv, timeout, (out or "") + (err or "")) from None
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv, out, err)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_watching(argv: Sequence[str], timeout: float,
                 watches: Sequence[tuple[str, Callable[[], None]]],
                 **kwargs) -> subprocess.CompletedProcess:
    """run() with standard error in standard output, read line by line: for each (marker,
    action) of `watches`, the action is called once, as soon as a line containing its
    marker is printed, while the command goes on (a test that cuts a host's power at a
    given step of a run); the command's output waits while an action runs. Ends within
    `timeout` seconds or raises Overrun."""
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True,
                          **kwargs) as proc:
        stopped = threading.Event()

        def stop() -> None:
            stopped.set()
            os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, stop)
        timer.start()
        lines, waiting = [], list(watches)
        try:
            for line in proc.stdout:
                lines.append(line)
                for watch in [w for w in waiting if w[0] in line]:
                    waiting.remove(watch)
                    watch[1]()
            proc.wait()
        finally:
            timer.cancel()
    if stopped.is_set():
        raise Overrun(argv, timeout, "".join(lines))
    return subprocess.CompletedProcess(argv, proc.returncode, "".join(lines), "")

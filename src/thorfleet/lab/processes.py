"""The lab's background processes (its services and its hosts), each with a pid file under
.lab/run, and the lock that keeps two lab commands apart."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from thorfleet.lab.config import LabError, pid_alive


class Processes:
    """Started, found and stopped by name; state under self.state."""

    @staticmethod
    def _require_root() -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (systemd-nspawn, bridges, network namespaces)")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _pid(self, name: str) -> int | None:
        pidfile = self.state / "run" / f"{name}.pid"
        try:
            pid = int(pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def _start_process(self, name: str, argv: list[str], env: dict | None = None,
                       cwd: Path | None = None) -> None:
        run_dir = self.state / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / f"{name}.log", "ab") as logfile:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfile,
                                    stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd,
                                    env={**os.environ, **(env or {})})
        (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")

    def _stop_process(self, name: str, grace: float = 10) -> None:
        self._stop_processes([name], grace)

    def _stop_processes(self, names: list[str], grace: float = 10) -> None:
        """Stop processes together: each is asked (SIGTERM) at once and given the same
        `grace`, then its group is killed; a lab of several takes one grace, not the sum."""
        asked = {}
        for name in names:
            pid = self._pid(name)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                asked[name] = pid
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(pid_alive(pid) for pid in asked.values()):
            for pid in asked.values():
                self._reap(pid)
            time.sleep(0.1)
        for pid in asked.values():
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
                while pid_alive(pid):
                    self._reap(pid)
                    time.sleep(0.1)
        for name in names:
            (self.state / "run" / f"{name}.pid").unlink(missing_ok=True)

    @staticmethod
    def _reap(pid: int) -> None:
        # A process started by this same Python stays a zombie (and "alive") until reaped.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text() if path.exists() else ""

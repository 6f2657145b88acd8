"""Filters of the run lock (library/thorfleet_run_lock.py): who this run is, whether the
run that holds a host's lock is gone, and the refusal that names it.

A run is named by the user and controller that started it, the process id of its
ansible-playbook and the time it took its locks. A lock whose run was started on this
controller and whose ansible-playbook process is gone (killed, or ended by a failure
before its summary released the lock) is taken over; one held from another controller
is never guessed at: the refusal names it and the command that clears it.
"""

from __future__ import annotations

import getpass
import os
import socket

UNLOCK = "ansible-playbook playbooks/unlock.yml -l {host}"


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
        # The command's name, in parentheses, may hold spaces: the fields after it count.
        return int(handle.read().rsplit(")", 1)[1].split()[1])


def _is_ansible_playbook(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            argv = handle.read().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(arg) == b"ansible-playbook" for arg in argv[:2])


def _playbook_pid() -> int:
    """The process id of the ansible-playbook this code runs under: the outermost one,
    since Ansible's workers are forks of it that carry its command line and end with
    their task; 0 when there is none to be found."""
    pid, found = os.getpid(), 0
    while pid > 1:
        if _is_ansible_playbook(pid):
            found = pid
        try:
            pid = _parent(pid)
        except (OSError, IndexError, ValueError):
            break
    return found


def run_identity(since):
    """This run, taking its locks at `since` (an ISO time): {run, holder, controller,
    pid, since}."""
    controller = socket.gethostname()
    holder = f"{getpass.getuser()}@{controller}"
    pid = _playbook_pid()
    return {"run": f"{holder}:{pid}:{since}", "holder": holder, "controller": controller,
            "pid": pid, "since": str(since)}


def run_lock_stale(held):
    """Whether the run that holds a lock is gone: it was started on this controller and
    its ansible-playbook process no longer runs."""
    if not isinstance(held, dict) or held.get("controller") != socket.gethostname():
        return False
    pid = held.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1:
        return False
    # This run's own process id, taken again by the system: that run is over.
    return pid == _playbook_pid() or not _is_ansible_playbook(pid)


def run_lock_refusal(held, host):
    """Why `host` is refused to this run: the run that holds its lock, and how to clear a
    lock whose run is over."""
    held = held if isinstance(held, dict) else {}
    holder, since, pid = (str(held.get(key) or "")[:120] for key in ("holder", "since", "pid"))
    return (f"{host} is locked by another run of site.yml: the run of {holder or 'unknown'}"
            + (f" (ansible-playbook pid {pid})" if pid else "")
            + f", since {since or 'an unknown time'}. If that run is over, clear its lock "
            f"with: {UNLOCK.format(host=host)}")


class FilterModule:
    def filters(self):
        return {
            "thorfleet_run_identity": run_identity,
            "thorfleet_run_lock_stale": run_lock_stale,
            "thorfleet_run_lock_refusal": run_lock_refusal,
        }

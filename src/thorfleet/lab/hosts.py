"""The lab's hosts: each a copy of the root file system, booted with systemd-nspawn on the
lab bridge (rebooting as a Thor does), reached over SSH with pinned host keys, and made
to look like a Thor on demand."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from thorfleet import bounded
from thorfleet.lab import thor as lab_thor
from thorfleet.lab.config import (
    BRIDGE,
    CCACHE_IN_HOST,
    GATEWAY,
    LOGIN_USER,
    NETWORK,
    NSPAWN_ARGS,
    NSPAWN_ENV,
    REBOOTING,
    REGISTRY,
    LabError,
    host_address,
    host_name,
    machine_name,
    pid_alive,
    run,
)


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if proc.name.isdigit():
                stat = (proc / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(proc.name))
    return found


class Hosts:
    """Booted by `up`, shut down by `down`; a host's files live under .lab/hosts."""

    def _root(self, name: str) -> Path:
        return self.state / "hosts" / name / "root"

    def _ensure_host(self, index: int, base: Path, log) -> None:
        name, address = host_name(index), host_address(index)
        if self._pid(name) is not None:
            return
        root = self._root(name)
        if not root.exists():
            log(f"creating {name} ({address})")
            partial = root.with_name("root.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.parent.mkdir(parents=True, exist_ok=True)
            run(["cp", "-a", "--reflink=auto", str(base), str(partial)])
            self._personalise(partial, name, address)
            partial.rename(root)
        # A host whose power was cut (power_off) leaves its end of the veth pair behind,
        # and nspawn will not boot on top of it.
        self._drop_link(name, wait=0)
        # One compiler cache for all hosts: a second host's build is mostly cache hits.
        ccache = self.cache / "ccache"
        ccache.mkdir(parents=True, exist_ok=True)
        log(f"booting {name}")
        self._start_process(name, ["/bin/sh", "-c", REBOOTING, "nspawn",
                                   "systemd-nspawn", "-D", str(root),
                                   f"--machine={machine_name(name)}", f"--hostname={name}",
                                   f"--network-bridge={BRIDGE}",
                                   f"--bind={ccache}:{CCACHE_IN_HOST}", *NSPAWN_ARGS],
                            env=NSPAWN_ENV)

    def _personalise(self, root: Path, name: str, address: str) -> None:
        (root / "etc/hostname").write_text(f"{name}\n")
        (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n{address} {name}\n")
        (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        # Sorted before systemd's own 80-container-host0.network, so this one applies.
        network = root / "etc/systemd/network/10-thorfleet-lab.network"
        network.parent.mkdir(parents=True, exist_ok=True)
        network.write_text(
            "[Match]\nName=host0\n\n"
            f"[Network]\nAddress={address}/{NETWORK.prefixlen}\nGateway={GATEWAY}\n"
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(self.key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        run(["chroot", str(root), "useradd", "--create-home", "--shell", "/bin/bash",
             "--groups", "sudo", LOGIN_USER])
        sudoers = root / "etc/sudoers.d/thorfleet-lab"
        sudoers.write_text(f"{LOGIN_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n")
        sudoers.chmod(0o440)
        user_ssh = root / "home" / LOGIN_USER / ".ssh"
        user_ssh.mkdir(mode=0o700)
        (user_ssh / "authorized_keys").write_text(authorized.read_text())
        run(["chroot", str(root), "chown", "-R", f"{LOGIN_USER}:{LOGIN_USER}",
             f"/home/{LOGIN_USER}/.ssh"])
        run(["ssh-keygen", "-A", "-f", str(root)])
        docker = root / "etc/docker"
        (docker / "certs.d" / REGISTRY).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.lab_ca, docker / "certs.d" / REGISTRY / "ca.crt")
        (docker / "daemon.json").write_text(json.dumps(lab_thor.daemon_config(False),
                                                       indent=2) + "\n")

    def _wait_for_host(self, name: str, address: str, log, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._pid(name) is None:
                raise LabError(f"{name} stopped while booting: see {self.state / 'run' / name}.log")
            with contextlib.suppress(OSError), socket.create_connection((address, 22), timeout=1):
                break
            time.sleep(0.5)
        else:
            raise LabError(f"{name} ({address}) did not open SSH within {timeout:.0f} s")
        self._learn_host_key(name, address)
        state = self.ssh(name, "systemctl is-system-running --wait", check=False).stdout.strip()
        if state == "degraded":
            # Booting several hosts at once on two cores, a unit now and then fails to
            # start (systemd-user-sessions with 219/CGROUP, seen here): one more try.
            self.ssh(name, "systemctl --failed --no-legend --plain | cut -d' ' -f1 | "
                           "xargs -r systemctl restart", check=False)
            state = self.ssh(name, "systemctl is-system-running --wait",
                             check=False).stdout.strip()
        if state != "running":
            failed = self.ssh(name, "systemctl --failed --no-legend --plain", check=False).stdout
            raise LabError(f"{name} booted {state or 'badly'}; failed units:\n{failed}")
        log(f"{name} is up at {address}")

    def _learn_host_key(self, name: str, address: str) -> None:
        key = (self._root(name) / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        lines = [line for line in self._read(self.known_hosts).splitlines()
                 if line.split(" ", 1)[0] != address]
        lines.append(f"{address} {key[0]} {key[1]}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def _ssh_options(self) -> list[str]:
        return ["-i", str(self.key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]

    def _ssh_ok(self, address: str) -> bool:
        argv = ["ssh", *self._ssh_options(), f"root@{address}", "true"]
        return bounded.run(argv, 30).returncode == 0

    def power_off(self, name: str, timeout: float = 60) -> None:
        """Cut a host's power: its processes killed at once, no shutdown (what a later
        `up` boots again, as a Thor whose power came back)."""
        self._require_root()
        with self._locked():
            pid = self._pid(name)
            if pid is None:
                raise LabError(f"{name} is not running")
            # The host's systemd (nspawn's child): the kernel kills everything in its PID
            # namespace with it, and nspawn, left without a host, exits as after a
            # shutdown. Killing nspawn instead would leave the host running, orphaned.
            for nspawn in _children(pid):
                for init in _children(nspawn):
                    os.kill(init, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while pid_alive(pid):
                if time.monotonic() > deadline:
                    raise LabError(f"{name} did not stop within {timeout:.0f} s")
                self._reap(pid)
                time.sleep(0.1)
            (self.state / "run" / f"{name}.pid").unlink(missing_ok=True)

    def _stop_host(self, name: str) -> None:
        self._stop_hosts([name])

    def _stop_hosts(self, names: list[str]) -> None:
        # nspawn turns SIGTERM into an orderly shutdown of the host's systemd; the hosts
        # shut down side by side.
        self._stop_processes(names, grace=60)
        for name in names:
            self._drop_link(name, wait=10)

    def _drop_link(self, name: str, wait: float) -> None:
        """The host's end of its veth pair gone: the kernel removes it once the host's
        network namespace is, a moment after nspawn exits; waited for up to `wait`
        seconds, then removed, so that a stopped host leaves no link behind."""
        link = f"vb-{machine_name(name)}"
        deadline = time.monotonic() + wait
        while bounded.run(["ip", "link", "show", link], 60).returncode == 0:
            if time.monotonic() >= deadline:
                bounded.run(["ip", "link", "del", link], 60)  # gone meanwhile: no matter
                return
            time.sleep(0.2)

    def _set_as_thor(self, name: str, on: bool) -> None:
        lab_thor.apply(self._root(name), on)
        daemon = self._root(name) / "etc/docker/daemon.json"
        config = json.dumps(lab_thor.daemon_config(on), indent=2) + "\n"
        if self._read(daemon) != config:
            daemon.write_text(config)
            # Docker's unit allows 3 starts a minute; switching back and forth is no crash.
            self.ssh(name, "systemctl reset-failed docker.service; systemctl restart docker")

    def ssh(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command on a lab host over SSH, as Ansible would reach it."""
        index = int(name.removeprefix("thor"))
        argv = ["ssh", *self._ssh_options(), f"root@{host_address(index)}", command]
        if check:
            return run(argv)
        return bounded.run(argv, 1200)

    def compilations(self, name: str, ccache_dir: str) -> int:
        """The compilations a host's compiler cache was asked for (hits and misses)."""
        proc = self.ssh(name, f"CCACHE_DIR={ccache_dir} ccache --print-stats 2>/dev/null || true")
        stats = dict(line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line)
        return sum(int(stats.get(key, 0)) for key in
                   ("direct_cache_hit", "preprocessed_cache_hit", "cache_miss"))

    def as_thor(self, name: str, on: bool) -> None:
        self._require_root()
        with self._locked():
            if self._pid(name) is None:
                raise LabError(f"{name} is not running; `thorfleet lab up` first")
            self._set_as_thor(name, on)

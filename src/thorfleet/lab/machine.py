"""This machine's part of the lab: its packages, the hosts' root file system (built once,
cached), the lab's SSH key, and the bridge the hosts join with NAT to the outside."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from thorfleet import bounded
from thorfleet.lab.config import (
    BRIDGE,
    BRIDGE_MAC,
    GATEWAY,
    MACHINE_PACKAGES,
    NETWORK,
    ROOTFS_DISABLED,
    ROOTFS_PACKAGES,
    ROOTFS_RECIPE,
    SUITE,
    debian_mirror,
    run,
)


class Machine:
    """Set up once per machine; the network is taken down with the lab."""

    def _ensure_machine_packages(self, log) -> None:
        missing = sorted({pkg for cmd, pkg in MACHINE_PACKAGES.items() if not shutil.which(cmd)})
        if not missing:
            return
        log(f"installing on this machine: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)

    def _ensure_rootfs(self, log) -> Path:
        recipe = json.dumps([SUITE, ROOTFS_PACKAGES, ROOTFS_DISABLED, ROOTFS_RECIPE]).encode()
        base = self.cache / "rootfs" / f"{SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}"
        if (base / ".thorfleet-complete").exists():
            return base
        mirror = debian_mirror()
        log(f"building the lab root file system ({SUITE}, a few minutes, cached in {base})")
        partial = base.with_name(base.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOTFS_PACKAGES)}",
             SUITE, str(partial), mirror])
        # Per-host identity is made per host: host keys and machine id.
        for key in (partial / "etc" / "ssh").glob("ssh_host_*"):
            key.unlink()
        (partial / "etc" / "machine-id").write_text("")
        wants = partial / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (wants / "systemd-networkd.service").symlink_to(
                "/lib/systemd/system/systemd-networkd.service")
        for unit in ROOTFS_DISABLED:
            (wants / unit).unlink(missing_ok=True)
        run(["chroot", str(partial), "apt-get", "clean"])
        (partial / ".thorfleet-complete").write_text(recipe.decode())
        partial.rename(base)
        return base

    def _ensure_key(self) -> None:
        if self.key.exists():
            return
        self.key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "thorfleet-lab",
             "-f", str(self.key)])

    def _ensure_network(self) -> None:
        if bounded.run(["ip", "link", "show", BRIDGE], 60).returncode:
            # A fixed address: a bridge otherwise takes the lowest of its ports', so each
            # host booted would change it under the hosts already running, and SSH to
            # them would fail until their ARP entries expired.
            run(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge"])
            run(["ip", "addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # Hosts reach the package registries this machine reaches, through NAT.
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        saved = self._saved_forwarding()
        if not saved.exists():
            saved.write_text(forward.read_text())
        forward.write_text("1\n")
        if bounded.run(["iptables", "-t", "nat", "-C", *self._nat_rule()], 60).returncode:
            run(["iptables", "-t", "nat", "-A", *self._nat_rule()])

    def _remove_nat(self) -> None:
        while bounded.run(["iptables", "-t", "nat", "-C", *self._nat_rule()], 60).returncode == 0:
            run(["iptables", "-t", "nat", "-D", *self._nat_rule()])

    def _remove_network(self) -> None:
        self._remove_nat()
        if bounded.run(["ip", "link", "show", BRIDGE], 60).returncode == 0:
            run(["ip", "link", "del", BRIDGE])
        saved = self._saved_forwarding()
        # Another checkout's lab still up (THORFLEET_LAB_NUMBER) still needs forwarding;
        # the last lab down puts back what the machine had before the first.
        if saved.exists() and not self._other_labs_up():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
            saved.unlink()

    def _saved_forwarding(self) -> Path:
        """Where the machine's own IP forwarding setting is kept while labs run: one file
        for the machine, whichever lab came up first."""
        self.cache.mkdir(parents=True, exist_ok=True)
        return self.cache / "ip_forward.orig"

    @staticmethod
    def _other_labs_up() -> bool:
        """Whether a lab of another number has its bridge on this machine."""
        links = bounded.run(["ip", "-o", "link", "show", "type", "bridge"], 60).stdout
        return any(line.split(":")[1].strip().startswith("thorlab")
                   for line in links.splitlines() if line.count(":") >= 2)

    @contextlib.contextmanager
    def _cache_locked(self) -> Iterator[None]:
        """This machine's part (its packages, the cache of root file system, sources,
        images and hubs) made by one lab at a time: two labs brought up at once on a fresh
        machine build it once, the second waiting for the first."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @staticmethod
    def _nat_rule() -> list[str]:
        return ["POSTROUTING", "-s", str(NETWORK), "!", "-d", str(NETWORK),
                "-j", "MASQUERADE", "-m", "comment", "--comment", "thorfleet-lab"]

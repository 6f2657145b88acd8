"""The built-in lab fleet: Debian hosts booted as real systemd machines on this machine.

Each host is a ``systemd-nspawn --boot`` container with its own network namespace,
joined to one bridge whose address on this machine (the gateway, ``10.213.0.1``) also
carries the lab's services: an image registry today, mirrors in later phases. Hosts run
sshd, Python and a Docker engine, so Ansible reaches them exactly as it reaches a Thor.

Nothing here needs a cache; a root file system built once is kept under the cache
directory and copied per host, which makes a second ``up`` take seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from thorfleet import bounded, lab_hub, lab_images, lab_thor
from thorfleet.lab_hub import GIT_IDENTITY
from thorfleet.tables import text_table

NETWORK = ipaddress.ip_network("10.213.0.0/24")
GATEWAY = "10.213.0.1"
BRIDGE = "thorlab0"
REGISTRY_PORT = 5000
REGISTRY = f"{GATEWAY}:{REGISTRY_PORT}"
# NGC's login: the user is literally `$oauthtoken`, the password an API key; the lab's
# registry wants the same, with this lab-only key.
REGISTRY_USER = "$oauthtoken"
REGISTRY_PASSWORD = "thorfleet-lab-ngc-api-key"
SOURCE_MIRROR = f"git://{GATEWAY}"
HF_MIRROR = f"http://{GATEWAY}:8090"  # olah, offline, serving the lab's repositories
MODELSCOPE = f"http://{GATEWAY}:8091"  # the ModelScope API stand-in
FILE_MIRROR = f"http://{GATEWAY}:8092"  # plain files by URL (the chat template)
CCACHE_IN_HOST = "/var/cache/thorfleet/ccache"  # ggml_build_ccache_dir's default
FIRST_HOST_OCTET = 11
# A login user with passwordless sudo on every host, as on a Thor (the sample inventory
# connects as `nvidia` and becomes root). The lab inventory logs in as root; tests of the
# main job under ansible-core's defaults log in as this user.
LOGIN_USER = "nvidia"
MAX_HOSTS = 8

SUITE = "bookworm"
HOST_PYTHON = "3.11"  # bookworm's, for the wheels the hosts install
# Everything a host needs that a real Thor ships or that the roles install: baking it in
# keeps CI off the network for most runs, while the roles' apt tasks stay real (NAT
# gives hosts a route to the Debian registry for anything missing).
ROOTFS_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "sudo", "iproute2",
    "python3", "python3-apt", "python3-requests", "ca-certificates", "curl",
    "docker.io",
    "build-essential", "cmake", "git", "ccache",
)
# Raised when what goes into the root file system changes in a way the package list
# does not show, so cached trees are rebuilt.
ROOTFS_RECIPE = 1

# Commands the lab needs on this machine, and the Debian package of each.
MACHINE_PACKAGES = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
    "openssl": "openssl",
    "iptables": "iptables",
    "ip": "iproute2",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}

NSPAWN_ARGS = (
    "--boot",
    "--register=no",  # no system bus on this machine to register with
    "--keep-unit",
    "--capability=all",  # Docker inside the host needs them
    "--system-call-filter=@keyring bpf",
    "--console=passive",
)
NSPAWN_ENV = {"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1"}  # cgroup v2 for Docker inside
# A host that reboots (systemctl reboot, nvpmodel asking for one) ends nspawn with exit
# status 133: boot it again, as a Thor comes back. SIGTERM shuts the host down for good.
REBOOTING = (
    'trap \'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143\' TERM\n'
    'while :; do\n'
    '  "$@" & child=$!\n'
    '  wait "$child"; status=$?\n'
    '  [ "$status" -eq 133 ] || exit "$status"\n'
    'done\n'
)

# What thor01 runs in the lab: a service of each engine, recipes of the catalogue, models
# from both hubs.
LAB_SERVICES = [
    {"name": "qwen3", "recipe": "llama-qwen3-8b-gguf-nothink"},
    {"name": "qwen3-vllm", "recipe": "vllm-qwen3-8b-nothink", "port": 8001,
     "memory_share": 0.2},
    {"name": "whisper-vllm", "recipe": "vllm-whisper-small", "port": 8002,
     "memory_share": 0.15, "source": "modelscope"},
    {"name": "qwen3-sglang", "recipe": "sglang-qwen3-8b-nothink", "port": 8003,
     "memory_share": 0.2},
    {"name": "whisper", "recipe": "whisper-large-v3-turbo"},
]

# Background processes of the lab itself, with their addresses; every other pid file is
# a host.
SERVICES = {
    "registry": REGISTRY,
    "git-daemon": SOURCE_MIRROR,
    "hf-mirror": HF_MIRROR,
    "modelscope": MODELSCOPE,
    "file-mirror": FILE_MIRROR,
}


@dataclass(frozen=True)
class Source:
    """An engine's source tree, taken from the PyPI sdist that vendors it (no GitHub here).

    The lab's git server carries it under the upstream release tag it corresponds to, as
    a mirror would, so the roles' default pins resolve in the lab as on a real fleet.
    """

    requirement: str
    subdir: str
    tag: str


SOURCES = {
    # llama-cpp-python 0.3.36 vendors llama.cpp 0c1e57098, release b11312.
    "llama.cpp": Source("llama-cpp-python==0.3.36", "vendor/llama.cpp", "b11312"),
    # pywhispercpp 1.5.1 vendors whisper.cpp 1.8.5.
    "whisper.cpp": Source("pywhispercpp==1.5.1", "whisper.cpp", "v1.8.5"),
}


class LabError(RuntimeError):
    """A lab operation that cannot go on; the message says what to do."""


@dataclass
class HostStatus:
    name: str
    address: str
    running: bool
    ssh: bool
    as_thor: bool


def host_name(index: int) -> str:
    return f"thor{index:02d}"


def host_address(index: int) -> str:
    return str(NETWORK.network_address + FIRST_HOST_OCTET - 1 + index)


def run(argv: list[str], timeout: float = 1200, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, raising LabError with its output when it fails or outlasts its bound
    (the longest, debootstrap and the sdists' downloads, take a few minutes)."""
    try:
        proc = bounded.run(argv, timeout, **kwargs)
    except bounded.Overrun as overrun:
        raise LabError(str(overrun)) from None
    if proc.returncode != 0:
        output = ((proc.stdout or "") + (proc.stderr or "")).strip()
        raise LabError(f"{' '.join(argv)} failed ({proc.returncode}): {output[-2000:]}")
    return proc


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses, so the lab goes where apt goes."""
    if os.environ.get("THORFLEET_LAB_DEBIAN_MIRROR"):
        return os.environ["THORFLEET_LAB_DEBIAN_MIRROR"]
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[1].rstrip("/").endswith("/debian"):
                return parts[1]
    raise LabError("no Debian mirror found in apt's sources; set THORFLEET_LAB_DEBIAN_MIRROR")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Lab:
    """The lab fleet of one project checkout."""

    def __init__(self, project: Path, cache: Path | None = None):
        self.project = project
        self.state = project / ".lab"
        self.cache = cache or Path(os.environ.get("THORFLEET_LAB_CACHE", "/var/cache/thorfleet"))
        self.inventory = project / "inventory" / "lab"
        self.key = self.state / "ssh" / "id_ed25519"
        self.known_hosts = self.state / "ssh" / "known_hosts"

    # ----------------------------------------------------------------- public

    def up(self, hosts: int, as_thor: list[str] | None = None, log=print) -> list[HostStatus]:
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, got {hosts}")
        names = [host_name(i) for i in range(1, hosts + 1)]
        unknown = sorted(set(as_thor or []) - set(names))
        if unknown:
            raise LabError(f"--as-thor names hosts this lab does not have: {', '.join(unknown)}")
        self._require_root()
        with self._locked():
            self._ensure_machine_packages(log)
            base = self._ensure_rootfs(log)
            self._ensure_key()
            self._ensure_network()
            self._ensure_registry(log)
            self._ensure_images(log)
            self._ensure_sources(log)
            self._ensure_hubs(log)
            for index in range(hosts + 1, MAX_HOSTS + 1):
                self._stop_host(host_name(index))
            for index in range(1, hosts + 1):
                self._ensure_host(index, base, log)
            for index, name in enumerate(names, start=1):
                self._wait_for_host(name, host_address(index), log)
            for name in as_thor or []:
                self._set_as_thor(name, True)
            self._write_inventory(names)
        return self.status()

    def down(self, log=print) -> None:
        self._require_root()
        with self._locked():
            for pidfile in sorted((self.state / "run").glob("*.pid")):
                if pidfile.stem not in SERVICES:
                    self._stop_host(pidfile.stem)
                    log(f"stopped {pidfile.stem}")
            for service in SERVICES:
                self._stop_process(service)
            self._remove_network()
            for directory in ("hosts", "registry", "git", "hub", "www"):
                shutil.rmtree(self.state / directory, ignore_errors=True)
            shutil.rmtree(self.inventory, ignore_errors=True)
        log("lab is down")

    def status(self) -> list[HostStatus]:
        result = []
        for index in range(1, MAX_HOSTS + 1):
            name = host_name(index)
            if not (self.state / "hosts" / name).exists():
                continue
            address = host_address(index)
            running = self._pid(name) is not None
            result.append(HostStatus(
                name=name,
                address=address,
                running=running,
                ssh=running and self._ssh_ok(address),
                as_thor=(self._root(name) / lab_thor.MARKER.lstrip("/")).exists(),
            ))
        return result

    def services_running(self) -> dict[str, bool]:
        return {service: self._pid(service) is not None for service in SERVICES}

    def source_repo(self, engine: str) -> Path:
        """The lab's git repository of an engine (tests commit to it, as upstream would)."""
        return self.state / "git" / f"{engine}.git"

    def commit_to_source(self, engine: str, path: str, line: str, tag: str) -> str:
        """Add a line to a file of an engine's lab repository, commit, tag; the new commit."""
        with tempfile.TemporaryDirectory() as work:
            run(["git", "clone", "-q", str(self.source_repo(engine)), work])
            with open(Path(work) / path, "a") as source:
                source.write(f"\n{line}\n")
            env = {**os.environ, **GIT_IDENTITY}
            for argv in (["commit", "-qam", f"lab: {tag}"], ["tag", "-f", tag],
                         ["push", "-q", "-f", "origin", f"refs/tags/{tag}"]):
                run(["git", "-C", work, *argv], env=env)
            return run(["git", "-C", work, "rev-parse", "HEAD"]).stdout.strip()

    @contextlib.contextmanager
    def borrowed(self, hosts: int = 1) -> Iterator[Lab]:
        """The running lab, or one booted for the occasion and taken down after."""
        booted = not any(h.running for h in self.status())
        if booted:
            self.up(hosts, log=lambda _msg: None)
        try:
            yield self
        finally:
            if booted:
                self.down(log=lambda _msg: None)

    def as_thor(self, name: str, on: bool) -> None:
        self._require_root()
        with self._locked():
            if self._pid(name) is None:
                raise LabError(f"{name} is not running; `thorfleet lab up` first")
            self._set_as_thor(name, on)

    def ssh(self, name: str, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell command on a lab host over SSH, as Ansible would reach it."""
        index = int(name.removeprefix("thor"))
        argv = ["ssh", *self._ssh_options(), f"root@{host_address(index)}", command]
        if check:
            return run(argv)
        return bounded.run(argv, 1200)

    # ----------------------------------------------------------- the machine

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

    def _ensure_machine_packages(self, log) -> None:
        missing = sorted({pkg for cmd, pkg in MACHINE_PACKAGES.items() if not shutil.which(cmd)})
        if not missing:
            return
        log(f"installing on this machine: {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)

    def _ensure_rootfs(self, log) -> Path:
        recipe = json.dumps([SUITE, ROOTFS_PACKAGES, ROOTFS_RECIPE]).encode()
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
            run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            run(["ip", "addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE])
        run(["ip", "link", "set", BRIDGE, "up"])
        # Hosts reach the package registries this machine reaches, through NAT.
        forward = Path("/proc/sys/net/ipv4/ip_forward")
        saved = self.state / "ip_forward.orig"
        if not saved.exists():
            saved.write_text(forward.read_text())
        forward.write_text("1\n")
        if bounded.run(["iptables", "-t", "nat", "-C", *self._nat_rule()], 60).returncode:
            run(["iptables", "-t", "nat", "-A", *self._nat_rule()])

    def _remove_network(self) -> None:
        while bounded.run(["iptables", "-t", "nat", "-C", *self._nat_rule()], 60).returncode == 0:
            run(["iptables", "-t", "nat", "-D", *self._nat_rule()])
        saved = self.state / "ip_forward.orig"
        if saved.exists():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
            saved.unlink()
        if bounded.run(["ip", "link", "show", BRIDGE], 60).returncode == 0:
            run(["ip", "link", "del", BRIDGE])

    @staticmethod
    def _nat_rule() -> list[str]:
        return ["POSTROUTING", "-s", str(NETWORK), "!", "-d", str(NETWORK),
                "-j", "MASQUERADE", "-m", "comment", "--comment", "thorfleet-lab"]

    # ---------------------------------------------------------- the registry

    def _ensure_registry(self, log) -> None:
        """The lab registry, as nvcr.io is: TLS (a lab CA the hosts trust) and a login."""
        if self._pid("registry") is not None:
            return
        home = self.state / "registry"
        (home / "data").mkdir(parents=True, exist_ok=True)
        self._ensure_lab_ca(home)
        htpasswd = home / "htpasswd"
        htpasswd.write_text(run(["htpasswd", "-nbB", REGISTRY_USER,
                                 REGISTRY_PASSWORD]).stdout.strip() + "\n")
        config = home / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {home / 'data'}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {REGISTRY}\n"
            f"  tls:\n    certificate: {home / 'registry.crt'}\n    key: {home / 'registry.key'}\n"
            f"auth:\n  htpasswd:\n    realm: thorfleet-lab\n    path: {htpasswd}\n"
        )
        self._start_process("registry", ["docker-registry", "serve", str(config)])
        if not lab_hub.answers_http(f"https://{REGISTRY}/v2/",
                                    lambda: self._pid("registry") is not None,
                                    cafile=self.lab_ca):
            raise LabError(f"the lab registry did not answer on {REGISTRY}: see "
                           f"{self.state / 'run' / 'registry'}.log")
        log(f"registry answers on {REGISTRY} (TLS, login {REGISTRY_USER})")

    @property
    def lab_ca(self) -> Path:
        """The lab's certificate authority, which the hosts' Docker trusts."""
        return self.state / "registry" / "ca.crt"

    def _ensure_lab_ca(self, home: Path) -> None:
        if (home / "registry.crt").exists():
            return
        days = ["-days", "3650"]
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
             str(home / "ca.key"), "-out", str(home / "ca.crt"), *days,
             "-subj", "/CN=thorfleet lab CA"])
        run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout",
             str(home / "registry.key"), "-out", str(home / "registry.csr"),
             "-subj", f"/CN={GATEWAY}"])
        (home / "san.ext").write_text(f"subjectAltName=IP:{GATEWAY}\n")
        run(["openssl", "x509", "-req", "-in", str(home / "registry.csr"), "-CA",
             str(home / "ca.crt"), "-CAkey", str(home / "ca.key"), "-CAcreateserial",
             "-out", str(home / "registry.crt"), *days, "-extfile", str(home / "san.ext")])

    def registry(self) -> lab_images.Registry:
        return lab_images.Registry(REGISTRY, REGISTRY_USER, REGISTRY_PASSWORD, self.lab_ca)

    def push_standin(self, engine: str, tag: str, version: str | None = None,
                     broken: bool = False) -> str:
        """Push the stand-in of `engine` ("vllm", "sglang") as nvidia/<engine>:<tag>.

        `version` labels the image (default: the tag), so one tag can be moved to a
        different image, as a publisher moving a tag would; a `broken` one exits at start.
        Returns the digest.
        """
        layer = lab_images.build_layer(self._ensure_rootfs(lambda _msg: None))
        parts = lab_images.image(layer, engine, version or tag, broken)
        return self.registry().push(f"nvidia/{engine}", tag, parts)

    def _ensure_images(self, log) -> None:
        """The stand-ins, under the paths and tags of the catalogue's NGC images."""
        catalogue = yaml.safe_load((self.project / "roles/thorfleet/vars/main.yml").read_text())
        for engine, spec in catalogue["thorfleet_catalogue"]["engines"].items():
            if spec["kind"] != "container":
                continue
            repository, tag = spec["image"].removeprefix("nvcr.io/").rsplit(":", 1)
            if repository != f"nvidia/{engine}":
                raise LabError(f"the lab has no stand-in for {spec['image']}")
            digest = self.push_standin(engine, tag)
            log(f"stand-in pushed as {REGISTRY}/{repository}:{tag} ({digest[:19]})")

    # ----------------------------------------------------------- the sources

    def _ensure_sources(self, log) -> None:
        for engine in SOURCES:
            repo = self.source_repo(engine)
            if not repo.exists():
                cached = self.cached_source(engine, log)
                repo.parent.mkdir(parents=True, exist_ok=True)
                run(["git", "clone", "-q", "--bare", str(cached), str(repo)])
        if self._pid("git-daemon") is None:
            git = self.state / "git"
            self._start_process("git-daemon", [
                "git", "daemon", "--reuseaddr", "--export-all", f"--base-path={git}",
                f"--listen={GATEWAY}", str(git)])
            log(f"sources served at {SOURCE_MIRROR}/<engine>.git")

    def source_file(self, engine: str, ref: str, path: str) -> bytes:
        """A file of an engine's source at a ref, from the lab's repository."""
        return subprocess.run(["git", "--git-dir", str(self.source_repo(engine)), "show",
                               f"{ref}:{path}"], capture_output=True, check=True,
                              timeout=60).stdout

    def cached_source(self, engine: str, log=print) -> Path:
        """A bare repository of the sdist's tree, tagged, built once per machine."""
        source = SOURCES[engine]
        name = f"{engine}-{source.requirement.replace('==', '-')}.git"
        cached = self.cache / "sources" / name
        if (cached / "thorfleet-complete").exists():
            return cached
        downloads = self.cache / "sources" / "sdists"
        downloads.mkdir(parents=True, exist_ok=True)
        package, version = source.requirement.split("==")
        log(f"fetching {source.requirement} (sdist) for the {engine} sources")
        run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--no-binary", package, source.requirement, "-d", str(downloads)])
        prefix = package.replace("-", "_").lower()
        sdist = next(p for p in downloads.glob("*.tar.gz")
                     if p.name.lower().replace("-", "_").startswith(f"{prefix}_{version}"))
        with tempfile.TemporaryDirectory() as tmp:
            run(["tar", "--no-same-owner", "-xzf", str(sdist), "-C", tmp])
            tree = next(Path(tmp).iterdir()) / source.subdir
            # A vendored submodule carries a .git file pointing at its parent's repository.
            (tree / ".git").unlink(missing_ok=True)
            env = {**os.environ, **GIT_IDENTITY}
            for argv in (["git", "init", "-q", "-b", "master"], ["git", "add", "-A", "-f"],
                         ["git", "commit", "-q", "-m", f"{engine} from {source.requirement}"],
                         ["git", "tag", source.tag]):
                run(argv, cwd=tree, env=env)
            shutil.rmtree(cached, ignore_errors=True)
            run(["git", "clone", "-q", "--bare", str(tree), str(cached)])
        (cached / "thorfleet-complete").write_text(source.requirement + "\n")
        return cached

    # ------------------------------------------------------------ the hubs

    def hub(self) -> lab_hub.LabHub:
        return lab_hub.LabHub(self.state, self.cache, self.source_file)

    def _ensure_hubs(self, log) -> None:
        hub = self.hub()
        hub.ensure()
        hub.write_file_server(self.state / "www")
        # The image the verify phase's vision check sends by URL, as a LAN copy would be.
        shutil.copyfile(self.project / "roles/service_verify/files/verify.png",
                        self.state / "www" / "verify.png")
        self._ensure_wheels(self.state / "www" / "wheels", log)
        home = self.state / "hub"
        if self._pid("hf-mirror") is None:
            config = home / "olah.toml"
            config.write_text(
                "[basic]\n"
                f'host = "{GATEWAY}"\nport = {urlsplit(HF_MIRROR).port}\n'
                f'repos-path = "{home / "olah-cache"}"\n'
                f'mirrors-path = ["{hub.hub_root("huggingface")}"]\n'
                f'mirror-netloc = "{urlsplit(HF_MIRROR).netloc}"\n'
                f'mirror-lfs-netloc = "{urlsplit(HF_MIRROR).netloc}"\n'
                "[accessibility]\noffline = true\n")
            self._start_process("hf-mirror", [sys.executable, "-m", "olah.server", "-c",
                                              str(config)], cwd=home)  # it logs to ./logs
        if self._pid("modelscope") is None:
            config = home / "modelscope-standin.json"
            config.write_text(json.dumps({
                "root": str(hub.hub_root("modelscope")), "host": GATEWAY,
                "port": urlsplit(MODELSCOPE).port,
                "gated": {"thorfleet-lab/gated": lab_hub.GATED_TOKEN},
                "hostile": lab_hub.HOSTILE,
                # About what olah serves at here, so an interrupted download is
                # interrupted part-way in tests, as on a real link.
                "rate": lab_hub.MODELSCOPE_RATE}))
            self._start_process("modelscope", [sys.executable, "-m",
                                               "thorfleet.modelscope_standin", "--config",
                                               str(config)])
        if self._pid("file-mirror") is None:
            self._start_process("file-mirror", [
                sys.executable, "-m", "http.server", "--bind", GATEWAY,
                "--directory", str(self.state / "www"), str(urlsplit(FILE_MIRROR).port)])
        for service, probe in (("hf-mirror", f"{HF_MIRROR}/api/models/Qwen/Qwen3-8B/revision/main"),
                               ("modelscope", f"{MODELSCOPE}/api/v1/models/Qwen/none/revisions"),
                               ("file-mirror", f"{FILE_MIRROR}/")):
            self._wait_http(service, probe)
        log(f"models served at {HF_MIRROR} (Hugging Face mirror) and {MODELSCOPE} "
            f"(ModelScope stand-in), files at {FILE_MIRROR}")

    def _ensure_wheels(self, target: Path, log) -> None:
        """The hub clients the model_store role installs on hosts, as a PyPI mirror of an
        air-gapped site would serve them (the hosts install with --no-index)."""
        defaults = yaml.safe_load((self.project / "roles/model_store/defaults/main.yml")
                                  .read_text())
        wanted = defaults["model_store_pip_packages"]
        cached = self.cache / "wheels" / hashlib.sha256(
            "\n".join([*wanted, HOST_PYTHON]).encode()).hexdigest()[:12]
        if not (cached / "thorfleet-complete").exists():
            log(f"fetching wheels for the hosts: {' '.join(wanted)}")
            cached.mkdir(parents=True, exist_ok=True)
            run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:",
                 "--python-version", HOST_PYTHON, "-d", str(cached), *wanted])
            (cached / "thorfleet-complete").write_text("\n".join(wanted) + "\n")
        target.mkdir(parents=True, exist_ok=True)
        for wheel in cached.glob("*.whl"):
            if not (target / wheel.name).exists():
                lab_hub.link_or_copy(wheel, target / wheel.name)

    def _wait_http(self, service: str, url: str) -> None:
        if not lab_hub.answers_http(url, lambda: self._pid(service) is not None):
            raise LabError(f"the lab's {service} did not answer at {url}: see "
                           f"{self.state / 'run' / service}.log")

    # ------------------------------------------------------------- the hosts

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
        # One compiler cache for all hosts: a second host's build is mostly cache hits.
        ccache = self.cache / "ccache"
        ccache.mkdir(parents=True, exist_ok=True)
        log(f"booting {name}")
        self._start_process(name, ["/bin/sh", "-c", REBOOTING, "nspawn",
                                   "systemd-nspawn", "-D", str(root), f"--machine={name}",
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

    def _stop_host(self, name: str) -> None:
        # nspawn turns SIGTERM into an orderly shutdown of the host's systemd.
        self._stop_process(name, grace=60)

    def _set_as_thor(self, name: str, on: bool) -> None:
        lab_thor.apply(self._root(name), on)
        daemon = self._root(name) / "etc/docker/daemon.json"
        config = json.dumps(lab_thor.daemon_config(on), indent=2) + "\n"
        if self._read(daemon) != config:
            daemon.write_text(config)
            # Docker's unit allows 3 starts a minute; switching back and forth is no crash.
            self.ssh(name, "systemctl reset-failed docker.service; systemctl restart docker")

    def _write_inventory(self, names: list[str]) -> None:
        hosts = {name: {"ansible_host": host_address(i)} for i, name in enumerate(names, 1)}
        inventory = {
            "thor": {
                "hosts": hosts,
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args":
                        f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes",
                },
            }
        }
        group_vars = self.inventory / "group_vars" / "thor"
        group_vars.mkdir(parents=True, exist_ok=True)
        header = "# Written by `thorfleet lab up`; rewritten on every up.\n"
        catalogue = yaml.safe_load((self.project / "roles/thorfleet/vars/main.yml").read_text())
        template_url = catalogue["thorfleet_catalogue"]["files"]["qwen3_nonthinking.jinja"]["url"]
        template_sum = hashlib.sha256(lab_hub.NONTHINKING_TEMPLATE.encode()).hexdigest()
        (self.inventory / "hosts.yml").write_text(
            header + "---\n" + yaml.safe_dump(inventory, sort_keys=False))
        # The lab profile: the differences from a real Thor that DESIGN.md allows, and
        # nothing else. Everything else comes from the same defaults a real fleet uses.
        (group_vars / "lab.yml").write_text(
            header + "---\n"
            "thorfleet_lab: true\n"
            "# No NVIDIA container runtime without a GPU; Docker's default stands in.\n"
            "thorfleet_container_runtime: runc\n"
            "# nspawn mounts /proc/sys read-only: no page-cache flush before a service starts.\n"
            "inference_services_drop_caches: false\n"
            "# The lab's git server mirrors the engines' sources.\n"
            f"thorfleet_source_mirror: {SOURCE_MIRROR}\n"
            "# Hubs: a real Hugging Face mirror (olah) and the ModelScope API stand-in,\n"
            "# both serving repositories the lab makes; files by URL from a file mirror.\n"
            f"thorfleet_hf_endpoint: {HF_MIRROR}\n"
            f"thorfleet_modelscope_endpoint: {MODELSCOPE}\n"
            f"thorfleet_file_mirror: {FILE_MIRROR}\n"
            "# The file mirror serves the lab's own nonthinking template (the published one\n"
            "# is upstream): its sum stands in for the one the catalogue pins.\n"
            f"thorfleet_file_checksums:\n  {template_url}: {template_sum}\n"
            "# NGC's images from the lab registry (stand-ins for vLLM and SGLang under\n"
            "# NGC's paths), with a login as nvcr.io wants; a lab-only key, no secret.\n"
            f"thorfleet_registry_mirror: {REGISTRY}\n"
            f"thorfleet_ngc_api_key: {REGISTRY_PASSWORD}\n"
            "# whisper.cpp's test model has random weights: it answers, but hears nothing.\n"
            "service_verify_require_transcript_text: false\n"
            "# The vision check's image from the file mirror: no internet here.\n"
            f"service_verify_image_url: {FILE_MIRROR}/verify.png\n"
            "# The hub clients from the lab's wheel mirror, as on an air-gapped site.\n"
            "model_store_pip_env:\n  PIP_NO_INDEX: \"1\"\n"
            f"  PIP_FIND_LINKS: {FILE_MIRROR}/wheels/\n  PIP_TRUSTED_HOST: {GATEWAY}\n"
        )
        # The demo host runs one service of each kind the lab can serve, from both hubs.
        host_vars = self.inventory / "host_vars"
        host_vars.mkdir(parents=True, exist_ok=True)
        (host_vars / "thor01.yml").write_text(
            header + "---\n" + yaml.safe_dump({"thorfleet_services": LAB_SERVICES},
                                               sort_keys=False))

    # ------------------------------------------------- background processes

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
        pidfile = self.state / "run" / f"{name}.pid"
        pid = self._pid(name)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while pid_alive(pid) and time.monotonic() < deadline:
                self._reap(pid)
                time.sleep(0.2)
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)
                while pid_alive(pid):
                    self._reap(pid)
                    time.sleep(0.1)
        pidfile.unlink(missing_ok=True)

    @staticmethod
    def _reap(pid: int) -> None:
        # A process started by this same Python stays a zombie (and "alive") until reaped.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    @staticmethod
    def _read(path: Path) -> str:
        return path.read_text() if path.exists() else ""


def status_table(hosts: list[HostStatus], services: dict[str, bool]) -> str:
    rows = [("host", "address", "state", "ssh", "looks like")]
    for host in hosts:
        rows.append((host.name, host.address, "running" if host.running else "stopped",
                     "ok" if host.ssh else "-", "Thor" if host.as_thor else "lab host"))
    lines = [text_table(rows)]
    for service, address in SERVICES.items():
        lines.append(f"{service} {address}: {'running' if services[service] else 'stopped'}")
    return "\n".join(lines)


def status_json(hosts: list[HostStatus], services: dict[str, bool]) -> str:
    return json.dumps({
        "hosts": [asdict(h) for h in hosts],
        "services": {name: {"address": address, "running": services[name]}
                     for name, address in SERVICES.items()},
    }, indent=2)

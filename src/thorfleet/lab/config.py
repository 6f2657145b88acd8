"""The lab's layout and settings: its network and addresses, the services it runs on this
machine, the hosts' root file system and how they boot, and the helpers every part uses."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from thorfleet import bounded


def lab_number(environ=os.environ) -> int:
    """Which lab of this machine a command acts on: 0 unless THORFLEET_LAB_NUMBER says
    otherwise. Two checkouts can each run a lab at once (the test suite does), each on its
    own network, bridge and host interfaces; the machine's cache is shared."""
    said = environ.get("THORFLEET_LAB_NUMBER", "0")
    if not (said.isascii() and said.isdigit() and int(said) <= MAX_LAB_NUMBER):
        raise LabError(f"THORFLEET_LAB_NUMBER must be a whole number from 0 to "
                       f"{MAX_LAB_NUMBER}, got {said!r}")
    return int(said)


class LabError(RuntimeError):
    """A lab operation that cannot go on; the message says what to do."""


MAX_LAB_NUMBER = 9
# A wrong number stops every lab command (Lab()) with this message, not the import.
try:
    LAB_NUMBER, LAB_NUMBER_ERROR = lab_number(), ""
except LabError as error:
    LAB_NUMBER, LAB_NUMBER_ERROR = 0, str(error)
NETWORK = ipaddress.ip_network(f"10.213.{LAB_NUMBER}.0/24")
GATEWAY = str(NETWORK.network_address + 1)
BRIDGE = f"thorlab{LAB_NUMBER}"
BRIDGE_MAC = f"02:54:48:4f:52:{LAB_NUMBER + 1:02x}"  # locally administered
REGISTRY_PORT = 5000
REGISTRY = f"{GATEWAY}:{REGISTRY_PORT}"
# Its token service, as nvcr.io's (https://nvcr.io/proxy_auth): the registry wants a token
# from it, which a client gets with NGC's login.
REGISTRY_AUTH = f"{GATEWAY}:5001"
REGISTRY_SERVICE = "thorfleet-lab-registry"  # the tokens' audience
REGISTRY_ISSUER = "thorfleet-lab-registry-auth"
# NGC's login: the user is literally `$oauthtoken`, the password an API key; the lab's
# registry wants the same, with this lab-only key.
REGISTRY_USER = "$oauthtoken"
REGISTRY_PASSWORD = "thorfleet-lab-ngc-api-key"
SOURCE_MIRROR = f"git://{GATEWAY}"
# Where this machine's skopeo (bundle create) finds the CA of the lab registry.
CONTAINERS_CERTS = Path("/etc/containers/certs.d") / REGISTRY
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
    # Role thor_metrics on every host, role monitoring on the host a test makes the
    # fleet's monitor (prometheus is left disabled until then: ROOTFS_DISABLED).
    "prometheus-node-exporter", "prometheus",
)
# Services of the packages above that a lab host does not start until a role enables
# them: the monitoring role's Prometheus runs on the monitor only.
ROOTFS_DISABLED = ("prometheus.service",)
# Raised when what goes into the root file system changes in a way the package list
# does not show, so cached trees are rebuilt.
ROOTFS_RECIPE = 1

# Commands the lab needs on this machine, and the Debian package of each.
MACHINE_PACKAGES = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "docker-registry": "docker-registry",
    "openssl": "openssl",
    # `thorfleet bundle create` copies images with it, as on a site's connected machine.
    "skopeo": "skopeo",
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

# What hosts added for fleet tests (thor03 and up) run: one stand-in container service,
# nothing to compile, so that a fleet's converge stays within CI's time.
FLEET_SERVICES = [
    {"name": "chat", "recipe": "vllm-qwen3-8b-nothink", "memory_share": 0.5},
]
FIRST_FLEET_HOST = 3

# A fleet converged from empty (bench/fleet_fetch.py, and a lab test with the fleet
# settings): every host runs a native service (whisper-server, built from whisper.cpp)
# and a container one (the vLLM stand-in serving Qwen3-8B), with a compiler cache of its
# own rather than the lab's shared one, so that a compile on one host is not a cache hit
# on another.
FROM_EMPTY_CCACHE = "/var/cache/thorfleet/ccache-own"
FROM_EMPTY_SETTINGS = {
    "thorfleet_services": [
        {"name": "whisper", "recipe": "whisper-large-v3-turbo"},
        {"name": "chat", "recipe": "vllm-qwen3-8b-nothink", "port": 8001,
         "memory_share": 0.4},
    ],
    "ggml_build_ccache_dir": FROM_EMPTY_CCACHE,
}
# What empties a host (run as root there): no services, containers, images, models,
# engine builds or checkouts, compiler or compile caches, and no site cache.
FROM_EMPTY = ("systemctl stop 'thorfleet-*' || true; "
              "docker ps -aq | xargs -r docker rm -f >/dev/null; "
              "docker images -q | sort -u | xargs -r docker rmi -f >/dev/null; "
              "rm -rf /models/* /models/.[!.]* /opt/thorfleet/whisper.cpp "
              f"{FROM_EMPTY_CCACHE} /var/cache/thorfleet/jit "
              "/var/lib/thorfleet/site-cache /etc/thorfleet/site-cache; "
              "systemctl disable --quiet thorfleet-site-cache 2>/dev/null || true; "
              "rm -f /etc/systemd/system/thorfleet-site-cache*.service; "
              "systemctl daemon-reload")

# Background processes of the lab itself, with their addresses; every other pid file is
# a host.
SERVICES = {
    "registry-auth": f"https://{REGISTRY_AUTH}/proxy_auth",
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


def machine_name(name: str) -> str:
    """A host's machine name on this machine (nspawn's, which names the host's end of its
    network link `vb-<machine name>`): the host's own name in lab 0, marked with the lab's
    number in the others, so that two labs' links do not clash."""
    return name if LAB_NUMBER == 0 else f"{name}-{LAB_NUMBER}"


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

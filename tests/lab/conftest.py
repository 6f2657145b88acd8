"""The lab fleet for end-to-end tests: booted once per test run, torn down after.

When a lab is already up (a developer's), the tests use it and leave it running.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import testinfra

from tests.conftest import converge_file, wait_until_first_converge_over
from tests.timing import minutes, record_command, record_phase, record_run
from thorfleet import bounded
from thorfleet.lab import BRIDGE, Lab, host_address
from thorfleet.lab import images as lab_images
from thorfleet.lab.config import GATEWAY, NETWORK, machine_name

ROOT = Path(__file__).resolve().parents[2]
# thor01 runs one service of each engine, thor02 is the host preflight and power tests
# reshape, thor03 and thor04 run a stand-in service each (fleet tests).
HOSTS = ["thor01", "thor02", "thor03", "thor04"]
RECAP = re.compile(r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
                   r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)", re.MULTILINE)


# Bounds of what the tests start, so that a hang fails with a message: a playbook run
# (the longest compiles both engines on 2 cores with a cold compiler cache), a thorfleet
# command (`lab up` builds the lab's root file system and images).
PLAYBOOK_BOUND = 2400
THORFLEET_BOUND = 1800


def thorfleet(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    start = time.monotonic()
    try:
        return bounded.run(["thorfleet", *args], THORFLEET_BOUND, cwd=ROOT, env=env)
    finally:
        record_command(["thorfleet", *args], time.monotonic() - start)


class Playbook:
    """One ansible-playbook run, as a user types it in the checkout. `env` replaces the
    environment it runs in (default: this one)."""

    def __init__(self, *args: str, env: dict | None = None, bound: float = PLAYBOOK_BOUND,
                 at: tuple[str, Callable[[], None]] | list | None = None):
        """`at`: (a line's text, an action), or a list of them, to do each action once, as
        soon as the run prints that line (a task's banner), while it goes on."""
        self.argv = ["ansible-playbook", *args]
        self.started = time.time()
        start = time.monotonic()
        runs_in = {**os.environ, "ANSIBLE_NOCOLOR": "1"} if env is None else env
        if at is None:
            proc = bounded.run(self.argv, bound, cwd=ROOT, env=runs_in)
        else:
            watches = at if isinstance(at, list) else [at]
            proc = bounded.run_watching(self.argv, bound, watches, cwd=ROOT, env=runs_in)
        record_run(time.monotonic() - start, self.argv)
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.recap = {m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
                      for m in RECAP.finditer(self.output)}
        if self.rc == 0 and args == MAIN_JOB and env is None:
            CONVERGED["thor01"] = fingerprint("thor01")

    def __repr__(self) -> str:  # what pytest shows when an assertion on a run fails
        return f"<{' '.join(self.argv)} rc={self.rc}>\n{self.output[-6000:]}{self.journals()}"

    def journals(self) -> str:
        """What the services' journals say since the run started, on each host where a task
        failed: the run's output says that a service did not start, its journal says why."""
        said = []
        for host, counts in self.recap.items():
            if counts["failed"] and re.fullmatch(r"thor\d+", host):
                tail = Lab(ROOT).ssh(host, JOURNAL.format(since=int(self.started)), check=False)
                said.append(f"\n--- {host}: journalctl -u 'thorfleet-*' since the run began\n"
                            f"{tail.stdout}{tail.stderr}")
        return "".join(said)


def serving(host) -> bool:
    """Whether a share of the project's (an rsync or git daemon) listens on the host."""
    return re.search(r'"(rsync|git[^"]*)"', host.check_output("ss -ltnpH")) is not None


def connects(lab, name: str | None, address: str, port: int) -> bool:
    """Whether a TCP connection to address:port opens within 4 s, from a lab host (`name`,
    with bash's /dev/tcp: no client of its own needed) or from the lab machine itself
    (None: its bridge address). A share's address filter drops the packets of any other
    address: from there, the connection never opens."""
    if name is None:
        try:
            with socket.create_connection((address, port), timeout=4):
                return True
        except OSError:
            return False
    probe = f"timeout 4 bash -c 'exec 3<>/dev/tcp/{address}/{port}' && echo connected"
    return lab.ssh(name, probe, check=False).stdout.strip() == "connected"


# The services' journal of a host since a time, less the health probes' and the requests'
# lines: the ends of the last starts and stops.
JOURNAL = ("journalctl --no-pager -o short-precise --since @{since} -u 'thorfleet-*' "
           "| grep -v -e 'GET /health' -e 'POST /v1' | tail -n 60")


# The main job on thor01, as the README runs it.
MAIN_JOB = ("site.yml", "-l", "thor01")
# What a host looked like right after the main job last passed on it (fingerprint()).
CONVERGED: dict[str, str] = {}
# What a converge would put back, read in one command: each unit's file, environment
# file, state and main process (a restart is a new pid), preflight's record, the engine
# builds and models (names, sizes, times), the containers and images, and the lock file.
FINGERPRINT = (
    "systemctl show --property=Id,ActiveState,SubState,MainPID,NRestarts 'thorfleet-*'; "
    "sha256sum /etc/systemd/system/thorfleet-* /etc/thorfleet/services/* "
    "/etc/ansible/facts.d/* 2>&1; "
    "find /opt/thorfleet -maxdepth 2 -printf '%p %l %T@\\n' 2>&1 | sort; "
    "find /models -printf '%p %s %T@\\n' 2>&1 | sort; "
    "docker ps -a --no-trunc --format '{{.Names}} {{.Image}} {{.ID}} {{.State}}' | sort; "
    "docker images --no-trunc --digests "
    "--format '{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}}' | sort")


def fingerprint(host: str) -> str:
    """A digest of what the main job sets on `host` and of the lab's lock file: equal to
    CONVERGED[host] when nothing a converge would change has changed since it passed."""
    lab = Lab(ROOT)
    said = lab.ssh(host, FINGERPRINT, check=False).stdout
    lock = ROOT / "inventory/lab/.thorfleet.lock.yml"
    pins = lock.read_bytes() if lock.exists() else b""
    return hashlib.sha256(said.encode() + b"\0" + pins).hexdigest()


# For runs that set hosts up or put them back (not the rollouts under test): every host's
# switch at once. The default batch is a fifth of the hosts, one at a time on four.
AT_ONCE = ("-e", "thorfleet_rollout_batch=100%")


# Hosts a test left changed (other services, images or settings than the lab's own), to be
# converged back when the lab outlives the session (a developer's); in a session's own
# lab, each later test converges the hosts it relies on first, so nothing waits on this.
LEFT_CHANGED: set[str] = set()


def left_changed(*names: str) -> None:
    LEFT_CHANGED.update(names)


def lab_leftovers() -> list[str]:
    """Anything this checkout's lab leaves on this machine after `down` (another lab, of
    another number and checkout, may run beside it: `make test` runs two)."""
    state = f"{ROOT / '.lab'}/"
    found = []
    processes = bounded.run(["ps", "-eo", "args"], 30).stdout
    # The lab's processes name its state directory (host trees, settings) or its gateway;
    # the unit tests' own hubs (the same programs on loopback, alive until the session
    # ends) do neither.
    found += [f"process: {line}" for line in processes.splitlines()
              if (line.startswith(("systemd-nspawn", "docker-registry serve", "git daemon",
                                   "git-daemon", "/bin/sh -c trap"))
                  and (state in line or GATEWAY in line.split()))
              or f"http.server --bind {GATEWAY} " in line
              or f"--listen={GATEWAY} " in line
              or (state in line and any(server in line for server in (
                  "-m olah.server", "thorfleet.modelscope_standin",
                  "thorfleet.lab.registry_auth")))]
    if bounded.run(["ip", "link", "show", BRIDGE], 30).returncode == 0:
        found.append(f"link: {BRIDGE}")
    links = bounded.run(["ip", "-o", "link"], 30).stdout
    ours = {f"vb-{machine_name(name)}" for name in HOSTS}
    found += [f"link: {line.split(':')[1].strip()}" for line in links.splitlines()
              if line.split(":")[1].strip().split("@")[0] in ours]
    addresses = bounded.run(["ip", "-o", "addr"], 30).stdout
    prefix = GATEWAY.rsplit(".", 1)[0] + "."
    found += [f"address: {line}" for line in addresses.splitlines() if f" {prefix}" in line]
    nat = bounded.run(["iptables", "-t", "nat", "-S"], 30).stdout
    found += [f"nat rule: {line}" for line in nat.splitlines()
              if "thorfleet-lab" in line and f" {NETWORK} " in line]
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount: {line}" for line in mounts.splitlines() if state in line]
    return found


class BringUp:
    """`thorfleet lab up`, started when the session's tests are known and a lab test is
    among them, so that the lab boots while the unit tests run (the unit tests go
    first; under `make test`'s two workers, the unit tests run on the other worker and
    the lab fixture starts it); the `lab` fixture waits for it. Not started when a lab is
    up already (a developer's): that one is used and left running.

    Then thor01's first converge (its engines' builds, from a cold compiler cache on a
    fresh machine, are the longest part of any run), started as soon as the lab is up:
    the lab tests that leave thor01 alone (marked `beside_first_converge`) run meanwhile,
    and every other lab test starts once it has passed (the `first_converge` fixture).
    Under workers the unit tests hold off while it runs (tests/conftest.py)."""

    def __init__(self):
        self.was_up: bool | None = None
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.output = None
        self.waited_for = False
        self.converge: subprocess.Popen | None = None
        self.converge_output = None
        self.converge_started = 0.0
        self.published: Path | None = None

    def start(self) -> None:
        self.was_up = sum(h.running for h in Lab(ROOT).status()) >= len(HOSTS)
        if self.was_up:
            return
        self.output = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read back by wait)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["thorfleet", "lab", "up", "--hosts", str(len(HOSTS))],
                                     cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.output,
                                     stderr=subprocess.STDOUT, text=True)

    def wait(self) -> tuple[int, str]:
        """(its exit status, what it printed), within the bound of a thorfleet command."""
        self.waited_for = True
        return _waited(self.proc, self.output, THORFLEET_BOUND - (time.monotonic() - self.started))

    def start_first_converge(self) -> None:
        """Start it; its pid is written to `self.published` (when set) while it runs, and
        `over` after, for the unit tests on the other worker, which hold off meanwhile,
        and for the second lab's session, which waits for it (tests/conftest.py)."""
        self.converge_output = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read back)
        self.converge_started = time.monotonic()
        self.converge = subprocess.Popen(
            FIRST_CONVERGE, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=self.converge_output,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
        if self.published is not None:
            self.published.write_text(f"{self.converge.pid}\n")

    def converge_over(self) -> None:
        if self.published is not None:
            self.published.write_text("over\n")

    def wait_first_converge(self) -> tuple[int, str]:
        """(its exit status, what it printed), within the bound of a playbook run; (0, "")
        when none was started (a lab that was up already)."""
        if self.converge is None:
            return 0, ""
        left = PLAYBOOK_BOUND - (time.monotonic() - self.converge_started)
        rc, said = _waited(self.converge, self.converge_output, left)
        self.converge_over()
        # A phase of its own in the summary (the first_converge fixture), not a test's run.
        record_command(FIRST_CONVERGE, time.monotonic() - self.converge_started)
        self.converge = None
        return rc, said

    def stop_first_converge(self) -> None:
        """Stop thor01's first converge if it still runs (no selected test needed it)."""
        if self.converge is not None and self.converge.poll() is None:
            self.converge.terminate()
            try:
                self.converge.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.converge.kill()
                self.converge.wait()
        self.converge_over()


def _waited(proc: subprocess.Popen, output, left: float) -> tuple[int, str]:
    """Wait for a background command for at most `left` seconds (killed past them):
    its exit status and what it printed."""
    try:
        rc = proc.wait(timeout=max(left, 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = -9
        output.write("\n(killed at its bound)\n")
    output.seek(0)
    return rc, output.read()


# thor01's first converge, run beside the lab tests that leave thor01 alone.
FIRST_CONVERGE = ["ansible-playbook", "site.yml", "-l", "thor01"]
# In the second lab's session (tests/suite.py): where the first lab's session says how its
# thor01 converge stands. This lab's starts once that one is over, so that its builds hit
# the compiler cache the labs share; the tests that leave thor01 alone run meanwhile.
AFTER_FIRST_LAB = os.environ.get("THORFLEET_TESTS_AFTER_CONVERGE", "")
BRING_UP = BringUp()


def before_converge(item) -> bool:
    """Whether a test runs before thor01's first converge has passed: beside it (tests
    that leave thor01 alone), or, in the second lab's session, before it starts (tests
    that need thor01 up but not converged, which run while this lab waits for the first
    lab's converge: they take thor01's run lock, so they cannot run beside a converge)."""
    return (item.get_closest_marker("beside_first_converge") is not None
            or (bool(AFTER_FIRST_LAB)
                and item.get_closest_marker("before_first_converge") is not None))


def pytest_collection_modifyitems(session, items):
    """The unit tests first (the lab boots meanwhile), then the lab tests: first those
    that leave thor01 alone (they run beside its first converge), last those marked
    `from_empty`, which empty every lab host. Every other test of the lab needs thor01's
    first converge (`first_converge`, set up before the test's other fixtures); tests
    under tests/lab that use no lab (the README's snippets read as text) need neither."""
    lab_dir = Path(__file__).parent
    items.sort(key=lambda item: (lab_dir in item.path.parents, not before_converge(item),
                                 item.get_closest_marker("from_empty") is not None))
    for item in items:
        if "lab" in item.fixturenames and not before_converge(item):
            item.fixturenames.insert(0, "first_converge")
    # Under xdist each worker collects every test: the worker that runs the lab tests
    # starts the bring-up (the `lab` fixture), while the other runs the unit tests.
    if (session.config.option.collectonly or BRING_UP.was_up is not None
            or os.environ.get("PYTEST_XDIST_WORKER")):
        return
    if any(lab_dir in item.path.parents for item in items):
        BRING_UP.start()


def pytest_sessionfinish(session):
    """A bring-up started for lab tests that never ran (the session stopped before
    them): the lab it booted is taken down again."""
    if BRING_UP.proc is not None and not BRING_UP.waited_for:
        BRING_UP.wait()
        thorfleet("lab", "down")


@pytest.fixture(scope="session")
def lab(request):
    existing = Lab(ROOT)
    BRING_UP.published = converge_file(request.config)
    if BRING_UP.was_up is None:  # lab tests selected by a later hook than collection's
        BRING_UP.start()
    already_up = BRING_UP.was_up
    # Whether the session takes the lab down at its end (a test that leaves the hosts
    # changed need not put them back then).
    existing.session_only = not already_up
    if not already_up:
        start = time.monotonic()
        rc, said = BRING_UP.wait()
        took = time.monotonic() - BRING_UP.started
        record_phase(f"lab bring-up (thorfleet lab up, {minutes(took)} from its start "
                     "beside the unit tests): waited for", time.monotonic() - start)
        if rc != 0:
            BRING_UP.converge_over()  # none will come
            thorfleet("lab", "down")  # a half-booted lab leaves nothing behind either
            pytest.fail(f"thorfleet lab up failed:\n{said}")
        if not AFTER_FIRST_LAB:  # else started by the first test that needs it
            BRING_UP.start_first_converge()
    else:
        BRING_UP.converge_over()  # a lab that was up: none
    yield existing
    if already_up and LEFT_CHANGED:
        back = Playbook("site.yml", "-l", ",".join(sorted(LEFT_CHANGED)), *AT_ONCE)
        assert back.rc == 0, back
    if not already_up:
        BRING_UP.stop_first_converge()  # when no test needed it
        start = time.monotonic()
        down = thorfleet("lab", "down")
        record_phase("lab take-down (thorfleet lab down)", time.monotonic() - start)
        assert down.returncode == 0, down.stdout + down.stderr
        assert lab_leftovers() == []
    if BRING_UP.published is not None and not os.environ.get("THORFLEET_TESTS_CONVERGE_FILE"):
        BRING_UP.published.unlink(missing_ok=True)  # the run's own, under workers


@pytest.fixture(scope="session")
def first_converge(lab):
    """thor01's first converge, started when the session's lab came up, has passed (in a
    lab that was up already, there is none: each module converges what it needs)."""
    if AFTER_FIRST_LAB and not BRING_UP.was_up and BRING_UP.converge_output is None:
        start = time.monotonic()
        wait_until_first_converge_over(Path(AFTER_FIRST_LAB))
        record_phase("the first lab's thor01 converge, waited for before this lab's (the "
                     "labs' hosts share the compiler cache)", time.monotonic() - start)
        BRING_UP.start_first_converge()
    start = time.monotonic()
    rc, said = BRING_UP.wait_first_converge()
    if said:
        took = time.monotonic() - BRING_UP.converge_started
        record_phase(f"thor01's first converge (beside the lab tests that leave thor01 "
                     f"alone; {minutes(took)} from its start to the first test that needs "
                     "it): waited for", time.monotonic() - start)
    assert rc == 0, f"<{' '.join(FIRST_CONVERGE)} rc={rc}>\n{said[-6000:]}"
    if said and "thor01" not in CONVERGED:
        CONVERGED["thor01"] = fingerprint("thor01")


@pytest.fixture(scope="session")
def hosts(lab):
    """testinfra views of the lab hosts, over the same SSH Ansible uses."""
    return {
        name: testinfra.get_host(
            f"ssh://root@{host_address(index)}",
            ssh_identity_file=str(lab.key),
            ssh_extra_args=f"-o UserKnownHostsFile={lab.known_hosts} -o StrictHostKeyChecking=yes",
        )
        for index, name in enumerate(HOSTS, start=1)
    }


@pytest.fixture(scope="module")
def thor01(lab, hosts):
    """thor01 after the main job: converged, its services answering. Modules that need it
    otherwise (no engines yet, no models yet) define their own. Not run again when
    nothing a converge sets has changed since the main job last passed on thor01 (its
    fingerprint is as it was then): a module after one that leaves thor01 as it found it
    starts at once."""
    main_job_unless_converged()
    return hosts["thor01"]


def main_job_unless_converged() -> None:
    """The main job on thor01, unless its fingerprint is as the last passing one left it."""
    if CONVERGED.get("thor01") != fingerprint("thor01"):
        run = Playbook(*MAIN_JOB)
        assert run.rc == 0, run


CLOCKS_UNIT = "/etc/systemd/system/thorfleet-jetson-clocks.service"


@pytest.fixture
def jetson(lab):
    """thor02 as a fresh Thor (power mode MAXN, no clocks unit, the stand-ins' record
    empty); a plain lab host again after."""
    def plain():
        lab.ssh("thor02", f"systemctl disable --now {CLOCKS_UNIT.rsplit('/', 1)[1]}; "
                          f"rm -f {CLOCKS_UNIT}; systemctl daemon-reload", check=False)
        made = thorfleet("lab", "as-thor", "thor02", "--off")
        assert made.returncode == 0, made.stderr
    plain()
    made = thorfleet("lab", "as-thor", "thor02")
    assert made.returncode == 0, made.stderr
    # Preflight records the platform it found: settled here, so that a test's counts
    # are its own phase's.
    settled = Playbook("site.yml", "-l", "thor02", "--tags", "preflight")
    assert settled.rc == 0, settled
    yield lambda command: lab.ssh("thor02", command).stdout
    plain()


def push_standin(lab: Lab, engine: str, tag: str, version: str | None = None,
                 broken: bool | str = False, repository: str | None = None) -> str:
    """Push an engine's stand-in under `tag` as a publisher would: `version` labels the
    image (default: the tag), so one tag can be moved to a different image; a `broken`
    one exits at start, one broken="answers" starts and fails every request. In the
    engine's repository (NGC's path), or `repository`. Returns the digest."""
    repository = repository or lab.container_engines()[engine][0]
    parts = lab_images.image(lab.standin_layer(), engine, version or tag, broken)
    return lab.registry().push(repository, tag, parts)


def push_standin_list(lab: Lab, engine: str, tag: str,
                      repository: str | None = None) -> tuple[str, str, str]:
    """Push an engine's stand-in under `tag` as NGC publishes its images: a
    multi-architecture list with the stand-in as this machine's platform's image (the
    lab's hosts' platform) and a small image of its own, with a layer of its own, as the
    other platform's; in the engine's repository, or `repository`. Returns (the list's
    digest, the hosts' image's, the other's)."""
    repository = repository or lab.container_engines()[engine][0]
    mine = lab_images.machine_arch()
    other = "arm64" if mine != "arm64" else "amd64"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = f"{engine} {tag} for linux/{other}: not for this lab's hosts\n".encode()
        info = tarfile.TarInfo("README")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    images = {f"linux/{mine}": lab_images.image(lab.standin_layer(), engine, tag),
              f"linux/{other}": lab_images.image(buffer.getvalue(), engine, tag, arch=other)}
    listed = lab.registry().push_list(repository, tag, images)
    digests = {name: "sha256:" + hashlib.sha256(parts[2]).hexdigest()
               for name, parts in images.items()}
    return listed, digests[f"linux/{mine}"], digests[f"linux/{other}"]

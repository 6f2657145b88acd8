"""Servers on loopback for the unit tests: hubs for the download module's tests (the real
olah mirror, offline, and the ModelScope stand-in, both serving small repositories made
here), and the vLLM stand-in."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from thorfleet import bounded, engine_standin
from thorfleet.lab import hub as lab_hub
from thorfleet.lab.hub import Commit, Repo

GATED_TOKEN = "ms-unit-test-token-7f3a"
CONFIG = b'{"model_type": "qwen3"}\n'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def repositories(hub: str, branch: str) -> list[Repo]:
    return [
        Repo(hub, "unit/tiny", [
            Commit({"README.md": b"# tiny\n", "config.json": CONFIG,
                    "weights.bin": lab_hub.pseudo_random(40_000, "w1"),
                    "other.bin": lab_hub.pseudo_random(3_000, "o1")}, tag="v1"),
            Commit({"weights.bin": lab_hub.pseudo_random(50_000, "w2")}, tag="v2"),
        ], branch=branch),
        Repo(hub, "unit/corrupt", [
            Commit({"config.json": CONFIG, "weights.bin": lab_hub.pseudo_random(9_000, "c")}),
        ], branch=branch),
        Repo(hub, "unit/gated", [Commit({"config.json": CONFIG})], branch=branch),
    ]


def make_hub(root: Path, hub: str, branch: str) -> None:
    for repo in repositories(hub, branch):
        path = root / "models" / repo.repo_id
        path.mkdir(parents=True)
        lab_hub.make_repository(path, repo)
    # The hub lists the LFS object's sha256 but serves other bytes of the same size.
    for obj in (root / "models" / "unit" / "corrupt" / ".git" / "lfs" / "objects").rglob("*"):
        if obj.is_file():
            obj.write_bytes(bytes(obj.stat().st_size))


def wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    if not lab_hub.answers_http(url, lambda: proc.poll() is None):
        raise RuntimeError(f"{url} did not answer; log:\n{log.read_text()[-3000:]}")


@dataclass
class Hubs:
    endpoints: dict[str, str]
    commits: dict[str, dict[str, str]]  # hub -> revision -> commit of unit/tiny
    modelscope_log: Path


@pytest.fixture(scope="session")
def hubs(tmp_path_factory):
    base = tmp_path_factory.mktemp("hubs")
    make_hub(base / "huggingface", "huggingface", "main")
    make_hub(base / "modelscope", "modelscope", "master")
    hf_port, ms_port = free_port(), free_port()
    (base / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {hf_port}\nrepos-path = "{base / "cache"}"\n'
        f'mirrors-path = ["{base / "huggingface"}"]\n'
        f'mirror-netloc = "127.0.0.1:{hf_port}"\nmirror-lfs-netloc = "127.0.0.1:{hf_port}"\n'
        "[accessibility]\noffline = true\n")
    (base / "ms.json").write_text(
        f'{{"root": "{base / "modelscope"}", "host": "127.0.0.1", "port": {ms_port}, '
        f'"gated": {{"unit/gated": "{GATED_TOKEN}"}}}}')
    logs = {name: base / f"{name}.log" for name in ("olah", "modelscope")}
    procs = []
    with contextlib.ExitStack() as stack:
        for name, argv in (
                ("olah", [sys.executable, "-m", "olah.server", "-c", str(base / "olah.toml")]),
                ("modelscope", [sys.executable, "-m", "thorfleet.modelscope_standin",
                                "--config", str(base / "ms.json")])):
            out = stack.enter_context(open(logs[name], "wb"))
            procs.append(subprocess.Popen(argv, cwd=base, stdout=out, stderr=subprocess.STDOUT))
        try:
            hf, ms = f"http://127.0.0.1:{hf_port}", f"http://127.0.0.1:{ms_port}"
            wait_http(f"{hf}/api/models/unit/tiny/revision/main", procs[0], logs["olah"])
            wait_http(f"{ms}/api/v1/models/unit/tiny/revisions", procs[1], logs["modelscope"])
            commits = {}
            for hub in ("huggingface", "modelscope"):
                repo = base / hub / "models" / "unit" / "tiny"
                commits[hub] = {rev: bounded.run(
                    ["git", "-C", str(repo), "rev-parse", f"{rev}^{{commit}}"], 30,
                    check=True).stdout.strip()
                    for rev in ("v1", "v2")}
            yield Hubs({"huggingface": hf, "modelscope": ms}, commits, logs["modelscope"])
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=10)


@pytest.fixture
def standin(tmp_path):
    """The stand-in serving on loopback: vLLM started with the nonthinking template."""
    template = tmp_path / "qwen3_nonthinking.jinja"
    template.write_text("{{ x }}<|im_start|>assistant\n<think>\n\n</think>\n\n")
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "cat.png").write_bytes(b"\x89PNG")
    command = ["vllm", "serve", str(tmp_path), "--served-model-name", "qwen3", "--port", "0",
               "--chat-template", str(template), "--allowed-local-media-path",
               str(tmp_path / "media")]

    def start(argv):
        engine = "sglang" if argv[0] == "python" else "vllm"
        settings = engine_standin.configure(
            engine, argv[len(engine_standin.ENGINES[engine].command):])
        server = ThreadingHTTPServer(("127.0.0.1", 0),
                                     engine_standin.make_handler(settings, argv))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    servers = []

    def serve(argv=command):
        servers.append(start(argv))
        return f"http://127.0.0.1:{servers[-1].server_address[1]}"
    yield serve, tmp_path
    for server in servers:
        server.shutdown()

"""The lab's model hubs: repositories it makes, a real Hugging Face mirror serving them
(olah, offline) and the ModelScope stand-in, plus a plain file server for URL downloads.

Repositories are git work trees as olah expects them (``<root>/models/<org>/<name>``);
large files are committed as LFS pointers with their objects under ``.git/lfs/objects``,
exactly as a mirror of the real hub holds them. Each repository is committed with a
fixed identity and date, so its commits are the same on every machine.

Some repositories carry the catalogue's ids (``Qwen/Qwen3-8B-GGUF``, ...) so the lab
fleet runs the catalogue unchanged; their content is small and made here, never the real
weights. The others exist for tests: revisions, allow patterns, a large file for
interrupted downloads, a gated repository.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from thorfleet.lab import gguf as lab_gguf

# A token the ModelScope stand-in requires for its gated repository (lab only).
GATED_TOKEN = "ms-lab-gated-0a1b2c3d4e5f"
# Repositories the ModelScope stand-in answers for as a broken or hostile mirror might:
# a commit with a unit directive after a newline, a file list leaving the model directory.
HOSTILE = {"thorfleet-lab/hostile-commit": "commit", "thorfleet-lab/hostile-path": "path"}
BIG_FILE_SIZE = 256 * 1024 * 1024
MODELSCOPE_RATE = 32 * 1024 * 1024  # bytes per second the stand-in serves a download at

LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# Every repository the lab makes is committed with this identity and date, so it has the
# same commits on every machine.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "thorfleet lab", "GIT_AUTHOR_EMAIL": "lab@thorfleet.invalid",
    "GIT_COMMITTER_NAME": "thorfleet lab", "GIT_COMMITTER_EMAIL": "lab@thorfleet.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}

# Our own nonthinking chat template for the lab's file server. A real fleet fetches the
# one the Qwen documentation publishes; this one has the same effect: an empty thinking
# block opens every assistant turn, so the model answers without thinking.
NONTHINKING_TEMPLATE = """\
{#- thorfleet lab: a nonthinking chat template for Qwen3-style models. -#}
{%- for message in messages -%}
<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
<think>

</think>

{% endif -%}
"""


@dataclass(frozen=True)
class Commit:
    """One commit of a lab repository: files as bytes, or a producer of a cached path."""

    files: dict[str, bytes | Callable[[], Path]]
    tag: str | None = None


@dataclass(frozen=True)
class Repo:
    hub: str  # huggingface | modelscope
    repo_id: str
    commits: list[Commit]
    branch: str = "main"
    lfs_over: int = 1024  # files larger than this are committed as LFS pointers


def _json(text: str) -> bytes:
    return (text.strip() + "\n").encode()


class LabHub:
    """Makes the lab's repositories under ``state/hub``; ``cache`` keeps large blobs."""

    def __init__(self, state: Path, cache: Path, source: Callable[[str, str, str], bytes]):
        self.root = state / "hub"
        self.cache = cache
        self.source = source  # (engine, ref, path) -> bytes, from the lab's source repos

    def hub_root(self, hub: str) -> Path:
        return self.root / hub

    def repositories(self) -> list[Repo]:
        vocab = partial(self.source, "llama.cpp", "b11312", "models/ggml-vocab-qwen2.gguf")
        whisper_tiny = partial(self.source, "whisper.cpp", "v1.8.5",
                               "models/for-tests-ggml-tiny.bin")
        config = _json('{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}')
        return [
            # --- for tests of the download module and role
            Repo("huggingface", "thorfleet-lab/tiny", [
                Commit({"README.md": b"# tiny\nA lab repository.\n", "config.json": config,
                        "weights.bin": pseudo_random(64 * 1024, "tiny-1")}, tag="v1"),
                Commit({"weights.bin": pseudo_random(96 * 1024, "tiny-2"),
                        "extra.bin": pseudo_random(8 * 1024, "tiny-extra")}, tag="v2"),
            ]),
            Repo("huggingface", "thorfleet-lab/big", [
                Commit({"config.json": config, "big.bin": self._big_file}),
            ]),
            Repo("modelscope", "thorfleet-lab/tiny", [
                Commit({"README.md": b"# tiny\nA lab repository.\n", "config.json": config,
                        "weights.bin": pseudo_random(64 * 1024, "ms-tiny-1")}, tag="v1"),
                Commit({"weights.bin": pseudo_random(96 * 1024, "ms-tiny-2")}, tag="v2"),
            ], branch="master"),
            Repo("modelscope", "thorfleet-lab/big", [
                Commit({"config.json": config, "big.bin": self._big_file}),
            ], branch="master"),
            Repo("modelscope", "thorfleet-lab/gated", [
                Commit({"config.json": config, "weights.bin": pseudo_random(4096, "gated")}),
            ], branch="master"),
            # Served as a hub answering nonsense would (see HOSTILE below).
            *(Repo("modelscope", repo_id, [Commit({"config.json": config})], branch="master")
              for repo_id in HOSTILE),
            # --- the catalogue's ids, small content made here
            Repo("huggingface", "Qwen/Qwen3-8B", [
                Commit({"config.json": config,
                        "model.safetensors": pseudo_random(32 * 1024, "qwen3-8b")}),
            ]),
            Repo("huggingface", "Qwen/Qwen3-8B-GGUF", [
                # A one-layer Qwen3 that llama-server loads and generates with.
                Commit({"Qwen3-8B-Q5_K_M.gguf": lambda: lab_gguf.tiny_qwen3(vocab()),
                        "Qwen3-8B-Q4_K_M.gguf": pseudo_random(16 * 1024, "q4")}),
            ]),
            Repo("huggingface", "ggerganov/whisper.cpp", [
                # whisper.cpp's tiny test model (random weights: the server answers).
                Commit({"ggml-large-v3-turbo.bin": whisper_tiny,
                        "ggml-small.bin": pseudo_random(16 * 1024, "small")}),
            ]),
            Repo("huggingface", "Qwen/Qwen2.5-VL-7B-Instruct-AWQ", [
                Commit({"config.json": _json('{"model_type": "qwen2_5_vl"}'),
                        "model.safetensors": pseudo_random(32 * 1024, "qwen2.5-vl")}),
            ]),
            Repo("modelscope", "openai-mirror/whisper-small", [
                Commit({"config.json": _json('{"model_type": "whisper"}'),
                        "model.safetensors": pseudo_random(32 * 1024, "whisper-small")}),
            ], branch="master"),
        ]

    def ensure(self) -> None:
        """Make every repository that is missing (a repository is made in one go)."""
        for repo in self.repositories():
            path = self.hub_root(repo.hub) / "models" / repo.repo_id
            if (path / ".git" / "thorfleet-complete").exists():
                continue
            partial = path.with_name(path.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            make_repository(partial, repo)
            shutil.rmtree(path, ignore_errors=True)
            partial.rename(path)

    def write_file_server(self, www: Path) -> None:
        www.mkdir(parents=True, exist_ok=True)
        (www / "qwen3_nonthinking.jinja").write_text(NONTHINKING_TEMPLATE)

    def _big_file(self) -> Path:
        """A few hundred MB of fixed pseudo-random bytes, made once per machine."""
        path = self.cache / "hub" / f"big-{BIG_FILE_SIZE}.bin"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            with open(partial, "wb") as out:
                rng = random.Random("thorfleet-big")
                for _ in range(BIG_FILE_SIZE // (1 << 24)):
                    out.write(rng.randbytes(1 << 24))
            partial.rename(path)
        return path


def answers_http(url: str, alive: Callable[[], bool], timeout: float = 60,
                 cafile: Path | None = None) -> bool:
    """Whether a server answers HTTP at url (any status) before timeout, while alive()."""
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            time.sleep(0.2)
    return False


def pseudo_random(size: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(size)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def make_repository(path: Path, repo: Repo) -> None:
    env = {**os.environ, **GIT_IDENTITY}

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, env=env,
                       timeout=300)

    git("init", "-q", "-b", repo.branch)
    objects = path / ".git" / "lfs" / "objects"
    for number, commit in enumerate(repo.commits, start=1):
        for name, content in commit.files.items():
            target = path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if callable(content):
                content = content()
            if isinstance(content, Path) or len(content) > repo.lfs_over:
                if isinstance(content, Path):
                    size, oid = content.stat().st_size, _sha256_file(content)
                else:
                    size, oid = len(content), hashlib.sha256(content).hexdigest()
                obj = objects / oid[:2] / oid[2:4] / oid
                obj.parent.mkdir(parents=True, exist_ok=True)
                if not obj.exists():
                    if isinstance(content, Path):
                        link_or_copy(content, obj)
                    else:
                        obj.write_bytes(content)
                target.write_text(LFS_POINTER.format(oid=oid, size=size))
            else:
                target.write_bytes(content)
        git("add", "-A")
        git("commit", "-q", "-m", f"lab commit {number}")
        if commit.tag:
            git("tag", commit.tag)
    (path / ".git" / "thorfleet-complete").write_text("")

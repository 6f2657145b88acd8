"""The lab's stand-in images for vLLM and SGLang, built and pushed without Docker.

Each image is one layer: the Python of the lab's root file system (the interpreter, the
libraries it links and its standard library), its shell (dash, as /bin/sh) and
:mod:`thorfleet.engine_standin`, with
the engines' entry points (``vllm`` on PATH, the ``sglang.launch_server`` module). The
layer is written reproducibly (fixed times and owners), so the same inputs give the same
digest, and pushed through the registry's HTTP API under NGC's repository paths.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import os
import platform
import posixpath
import re
import ssl
import subprocess
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urljoin

from thorfleet import engine_standin

PYTHON = "python3.11"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Not worth carrying into a stand-in: tests, GUI toolkits, bundled installers.
SKIP_STDLIB = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "pydoc_data", "__pycache__")
STANDIN_MODULE = "usr/local/lib/python3.11/dist-packages/thorfleet_engine_standin.py"
# Commands people type: `python` and `python3` both start the interpreter; `sh`, the
# shell NGC's images have too (a unit's container command may start with /bin/sh -c).
LINKS = {"usr/bin/python3": PYTHON, "usr/bin/python": PYTHON, "usr/bin/sh": "dash"}


def _libraries(root: Path) -> set[str]:
    """Shared libraries the interpreter and its extension modules load, inside `root`."""
    binaries = [f"/usr/bin/{PYTHON}", "/usr/bin/dash"] + [
        "/" + str(p.relative_to(root))
        for p in (root / f"usr/lib/{PYTHON}/lib-dynload").glob("*.so")]
    out = subprocess.run(["chroot", str(root), "ldd", *binaries], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    found = set(re.findall(r"(/\S+\.so[.\d]*) \(0x", out))
    return {path for path in found if (root / path.lstrip("/")).exists()}


class _Layer:
    """A reproducible tar: entries as root:root with time 0, each path once."""

    def __init__(self, root: Path):
        self.root = root
        self.buffer = io.BytesIO()
        self.tar = tarfile.TarFile(fileobj=self.buffer, mode="w", format=tarfile.PAX_FORMAT)
        self.seen: set[str] = set()

    def _entry(self, info: tarfile.TarInfo, data=None) -> None:
        if info.name in self.seen:
            return
        self.seen.add(info.name)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        self.tar.addfile(info, data)

    def copy(self, relative: str, follow: bool = True) -> None:
        """A file, a directory tree or a symlink (and, if `follow`, what it points to)."""
        relative = self._real_parent(relative)
        source = self.root / relative
        info = self.tar.gettarinfo(str(source), arcname=relative)
        if info.isfile():
            with open(source, "rb") as data:
                self._entry(info, data)
        else:
            self._entry(info)
        if info.issym() and follow:
            target = os.readlink(source)
            self.copy(target.lstrip("/") if target.startswith("/")
                      else posixpath.normpath(posixpath.join(posixpath.dirname(relative),
                                                             target)))
        elif info.isdir():
            for child in sorted(source.iterdir()):
                if child.name not in SKIP_STDLIB:
                    self.copy(f"{relative}/{child.name}")

    def _real_parent(self, relative: str) -> str:
        """The path with its directories' symlinks resolved inside the root (lib -> usr/lib)."""
        parts = relative.split("/")
        done: list[str] = []
        for part in parts[:-1]:
            candidate = self.root.joinpath(*done, part)
            if candidate.is_symlink():
                target = os.readlink(candidate)
                base = [] if target.startswith("/") else done
                done = posixpath.normpath(posixpath.join(*base, target.lstrip("/"))
                                          if base else target.lstrip("/")).split("/")
            else:
                done.append(part)
        return "/".join([*done, parts[-1]])

    def text(self, name: str, text: str, mode: int = 0o644) -> None:
        data = text.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        self._entry(info, io.BytesIO(data))

    def special(self, name: str, kind: bytes, mode: int = 0o755, target: str = "") -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.linkname = kind, mode, target
        self._entry(info)

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buffer.getvalue()


def build_layer(root: Path) -> bytes:
    """The stand-in's one layer, as an uncompressed tar."""
    layer = _Layer(root)
    # Merged /usr: /lib, /lib64 and /bin are links into /usr on the host and here.
    for top in ("bin", "lib", "lib64"):
        if (root / top).is_symlink():
            layer.copy(top, follow=False)
    libraries = sorted(p.lstrip("/") for p in _libraries(root))
    for relative in [f"usr/bin/{PYTHON}", "usr/bin/dash", *libraries, f"usr/lib/{PYTHON}"]:
        layer.copy(relative)
    for link, target in LINKS.items():
        layer.special(link, tarfile.SYMTYPE, target=target)
    layer.special("tmp", tarfile.DIRTYPE, 0o1777)
    layer.text(STANDIN_MODULE, Path(engine_standin.__file__).read_text())
    for name, text in engine_standin.ENTRY_POINTS.items():
        layer.text(name, text, 0o755 if "/bin/" in name else 0o644)
    return layer.bytes()


def machine_arch() -> str:
    """This machine's architecture as images name it (amd64, arm64)."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@functools.lru_cache(maxsize=2)
def _compressed(layer: bytes) -> bytes:
    """The layer gzipped, once per process (each tag a test pushes has the same layer):
    at the fastest level, the same bytes for the same layer."""
    return gzip.compress(layer, compresslevel=1, mtime=0)


def image(layer: bytes, engine: str, version: str, broken: bool | str = False,
          arch: str | None = None) -> tuple[bytes, bytes, bytes]:
    """(compressed layer, config, manifest) of a stand-in image; a broken one exits at
    start, or with broken="answers" starts and answers every request with an error.
    `arch`: the platform its config names (default: this machine's)."""
    compressed = _compressed(layer)
    arch = arch or machine_arch()
    config = json.dumps({
        "architecture": arch, "os": "linux",
        "config": {
            # NGC's images run as root with their home in /root, where the engines keep
            # their compile caches (the catalogue's `caches`).
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME=/root"]
            + ([f"{engine_standin.BROKEN}={'1' if broken is True else broken}"]
               if broken else []),
            "Labels": {"org.thorfleet.standin": engine, "org.thorfleet.version": version},
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": f"{engine_standin.STANDIN} for {engine} {version}"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "size": len(config), "digest": _digest(config)},
        "layers": [{"mediaType": LAYER_TYPE, "size": len(compressed),
                    "digest": _digest(compressed)}],
    }, sort_keys=True).encode()
    return compressed, config, manifest


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """A Docker registry's HTTP API, as far as pushing an image goes (TLS, and a login to
    the token service its challenge names, as a Docker client does with nvcr.io)."""

    def __init__(self, address: str, user: str, password: str, cafile: Path):
        self.base = f"https://{address}"
        login = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.login = {"Authorization": f"Basic {login}"}
        self.tokens: dict[str, str] = {}  # by the challenge's scope
        self.context = ssl.create_default_context(cafile=str(cafile))

    def _request(self, method: str, url: str, data: bytes | None = None,
                 headers: dict | None = None):
        scope = self._scope_of(url)
        auth = {"Authorization": f"Bearer {self.tokens[scope]}"} if scope in self.tokens else {}
        request = urllib.request.Request(urljoin(self.base, url), data=data, method=method,
                                         headers={**auth, **(headers or {})})
        try:
            return urllib.request.urlopen(request, context=self.context, timeout=60)
        except urllib.error.HTTPError as error:
            challenge = error.headers.get("WWW-Authenticate", "")
            if error.code != 401 or scope in self.tokens or not challenge.startswith("Bearer "):
                raise
            self.tokens[scope] = self._token(challenge, scope)
            return self._request(method, url, data, headers)

    @staticmethod
    def _scope_of(url: str) -> str:
        """What a push needs of the repository a URL names."""
        repository = url.split("/v2/", 1)[1].split("/blobs/")[0].split("/manifests/")[0]
        return f"repository:{repository}:pull,push"

    def _token(self, challenge: str, scope: str) -> str:
        fields = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urlencode({"service": fields.get("service", ""), "scope": scope})
        request = urllib.request.Request(f"{fields['realm']}?{query}", headers=self.login)
        with urllib.request.urlopen(request, context=self.context, timeout=60) as response:
            return json.loads(response.read())["token"]

    def push_blob(self, repository: str, data: bytes) -> None:
        digest = _digest(data)
        try:
            self._request("HEAD", f"/v2/{repository}/blobs/{digest}").close()
            return
        except urllib.error.HTTPError as error:
            if error.code != 404:
                raise
        with self._request("POST", f"/v2/{repository}/blobs/uploads/") as response:
            location = response.headers["Location"]
        separator = "&" if "?" in location else "?"
        self._request("PUT", f"{location}{separator}digest={digest}", data,
                      {"Content-Type": "application/octet-stream"}).close()

    def push(self, repository: str, tag: str, parts: tuple[bytes, bytes, bytes]) -> str:
        """Push an image; the digest the registry gives its manifest."""
        compressed, config, manifest = parts
        self.push_blob(repository, compressed)
        self.push_blob(repository, config)
        with self._request("PUT", f"/v2/{repository}/manifests/{tag}", manifest,
                           {"Content-Type": MANIFEST_TYPE}) as response:
            return response.headers["Docker-Content-Digest"]

    def push_list(self, repository: str, tag: str,
                  images: dict[str, tuple[bytes, bytes, bytes]]) -> str:
        """Push a multi-architecture list, as NGC publishes its images: each platform's
        image ({"linux/arm64": parts}) by its digest, then the list under `tag`. Returns
        the list's digest."""
        entries = []
        for name, parts in sorted(images.items()):
            compressed, config, manifest = parts
            self.push_blob(repository, compressed)
            self.push_blob(repository, config)
            digest = _digest(manifest)
            self._request("PUT", f"/v2/{repository}/manifests/{digest}", manifest,
                          {"Content-Type": MANIFEST_TYPE}).close()
            os_name, arch = name.split("/")
            entries.append({"mediaType": MANIFEST_TYPE, "size": len(manifest), "digest": digest,
                            "platform": {"architecture": arch, "os": os_name}})
        listing = json.dumps({"schemaVersion": 2, "mediaType": LIST_TYPE,
                              "manifests": entries}, sort_keys=True).encode()
        with self._request("PUT", f"/v2/{repository}/manifests/{tag}", listing,
                           {"Content-Type": LIST_TYPE}) as response:
            return response.headers["Docker-Content-Digest"]

    def digest(self, repository: str, tag: str) -> str:
        with self._request("HEAD", f"/v2/{repository}/manifests/{tag}",
                           headers={"Accept": MANIFEST_TYPE}) as response:
            return response.headers["Docker-Content-Digest"]

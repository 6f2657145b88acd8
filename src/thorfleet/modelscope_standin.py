"""LAB STAND-IN for the ModelScope hub API: no ModelScope mirror exists and the lab has no
internet, so the lab serves its model repositories through this small server instead.

It answers the routes the real ``modelscope`` client (1.40) calls to list and download a
model, from git repositories laid out like the lab's Hugging Face mirror
(``<root>/models/<owner>/<name>``, LFS objects under ``.git/lfs/objects``):

- ``GET /api/v1/models/<owner>/<name>/revisions``: branches and tags with their commits;
- ``GET /api/v1/models/<owner>/<name>/repo/files?Revision=&Recursive=``: the file list,
  with sizes and sha256;
- ``GET /api/v1/models/<owner>/<name>/repo?Revision=&FilePath=``: a file, honouring
  ``Range`` (206), so the client resumes an interrupted download;
- anything else: 404 with ModelScope's error body.

A repository listed under ``gated`` in the config answers 401 unless the request carries
its token (as ``Authorization: Bearer`` or the ``m_session_id`` cookie the client sends).
A repository listed under ``hostile`` answers as a broken mirror or a man in the middle
might: ``commit``, its commits with a unit directive after a newline; ``path``, its file
list with a path that leaves the model's directory.
Every request is logged with the byte range asked for and the bytes really sent, so tests
can count what was fetched.
"""

from __future__ import annotations

import argparse
import hashlib
import http.cookies
import json
import re
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_POINTER = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\n"
                         rb"oid sha256:([0-9a-f]{64})\nsize (\d+)\n")
ROUTE = re.compile(r"^/api/v1/models/([^/]+)/([^/]+)(/.*)?$")
CHUNK = 1 << 20
# What a hostile repository answers (see the module's description).
HOSTILE_COMMIT = "\nExecStartPre=+/bin/touch /tmp/thorfleet-hostile-commit"
HOSTILE_PATH = "../../../etc/thorfleet-hostile-path"


class HubError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Repository:
    """A model repository: a git work tree whose large files are LFS pointers."""

    def __init__(self, path: Path):
        self.path = path

    def git(self, *args: str) -> bytes:
        proc = subprocess.run(["git", "-C", str(self.path), *args], capture_output=True,
                              check=False)
        if proc.returncode:
            raise HubError(404, proc.stderr.decode(errors="replace").strip())
        return proc.stdout

    def commit(self, revision: str) -> str:
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")\
                .decode().strip()
        except HubError:
            raise HubError(404, f"revision {revision} not found") from None

    def refs(self) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {"Branches": [], "Tags": []}
        lines = self.git("for-each-ref", "--format=%(refname) %(objectname) %(*objectname)",
                         "refs/heads", "refs/tags").decode().splitlines()
        for line in lines:
            ref, obj, peeled = (line.split() + [""])[:3]
            kind = "Branches" if ref.startswith("refs/heads/") else "Tags"
            found[kind].append({"Revision": ref.split("/", 2)[2], "CommitId": peeled or obj})
        return found

    def files(self, commit: str) -> list[dict]:
        entries = []
        for line in self.git("ls-tree", "-r", "-l", "-z", commit).split(b"\0"):
            if not line:
                continue
            meta, path = line.split(b"\t", 1)
            _mode, _kind, blob, _size = meta.split()
            size, sha256, _ = self._content(blob.decode())
            name = path.decode()
            entries.append({"Path": name, "Name": name.rsplit("/", 1)[-1], "Type": "blob",
                            "Size": size, "Sha256": sha256, "Revision": commit})
        return entries

    def open(self, commit: str, path: str) -> tuple[int, Path | bytes]:
        """(size, LFS object path or the blob itself) of a file at a commit."""
        try:
            blob = self.git("rev-parse", "--verify", "--quiet", f"{commit}:{path}").decode().strip()
        except HubError:
            raise HubError(404, f"file {path} not found at {commit}") from None
        size, _sha, content = self._content(blob)
        return size, content

    def _content(self, blob: str) -> tuple[int, str, Path | bytes]:
        data = self.git("cat-file", "blob", blob)
        pointer = LFS_POINTER.fullmatch(data)
        if pointer:
            oid = pointer.group(1).decode()
            obj = self.path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
            return int(pointer.group(2)), oid, obj
        return len(data), hashlib.sha256(data).hexdigest(), data


class Handler(BaseHTTPRequestHandler):
    server_version = "thorfleet-modelscope-standin"
    root: Path
    gated: dict[str, str]
    hostile: dict[str, str] = {}
    rate: float = 0  # bytes per second per download; 0: as fast as the machine goes

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        self.served, self.sent = "-", 0
        try:
            self.route()
        except HubError as error:
            self.reply_json(error.status, {"Code": error.status, "Success": False,
                                           "Message": str(error)})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (an interrupted download): nothing to answer

    def route(self) -> None:
        url = urlparse(self.path)
        query = {k.lower(): v[-1] for k, v in parse_qs(url.query).items()}
        match = ROUTE.match(unquote(url.path))
        if not match:
            raise HubError(404, f"no route {url.path}")
        owner, name, rest = match.group(1), match.group(2), match.group(3) or ""
        repo = self.repository(owner, name)
        hostile = self.hostile.get(f"{owner}/{name}")
        if rest == "/revisions":
            refs = repo.refs()
            if hostile == "commit":
                for ref in refs["Branches"] + refs["Tags"]:
                    ref["CommitId"] += HOSTILE_COMMIT
            self.reply_json(200, self.ok({"RevisionMap": refs}))
        elif rest == "/repo/files":
            commit = repo.commit(query.get("revision") or "master")
            files = repo.files(commit)
            if hostile == "path":
                files.append({"Path": HOSTILE_PATH, "Name": HOSTILE_PATH.rsplit("/", 1)[-1],
                              "Type": "blob", "Size": 6, "Revision": commit,
                              "Sha256": hashlib.sha256(b"owned\n").hexdigest()})
            self.reply_json(200, self.ok({"Files": files}))
        elif rest == "/repo":
            commit = repo.commit(query.get("revision") or "master")
            self.send_file(*repo.open(commit, query.get("filepath", "")))
        elif rest == "":
            commit = repo.commit("master") + (HOSTILE_COMMIT if hostile == "commit" else "")
            self.reply_json(200, self.ok({"Id": f"{owner}/{name}", "Revision": commit}))
        else:
            raise HubError(404, f"no route {url.path}")

    def repository(self, owner: str, name: str) -> Repository:
        model_id = f"{owner}/{name}"
        path = self.root / "models" / owner / name
        if not (path / ".git").is_dir():
            raise HubError(404, f"model {model_id} not found")
        token = self.gated.get(model_id)
        if token is not None and self.token() != token:
            raise HubError(401, f"model {model_id} is gated: a valid token is required")
        return Repository(path)

    def token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):]
        cookies = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
        return cookies["m_session_id"].value if "m_session_id" in cookies else None

    @staticmethod
    def ok(data: dict) -> dict:
        return {"Code": 200, "Success": True, "Message": "", "Data": data}

    def reply_json(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def send_file(self, size: int, content: Path | bytes) -> None:
        start, end = 0, size - 1
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if wanted:
            start = int(wanted.group(1))
            end = min(int(wanted.group(2)), end) if wanted.group(2) else end
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.served = f"bytes {start}-{end}/{size}"
        if isinstance(content, bytes):
            self.wfile.write(content[start:end + 1])
            self.sent = end - start + 1
            return
        began = time.monotonic()
        with open(content, "rb") as source:
            source.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = source.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
                self.sent += len(chunk)
                if self.rate:  # a link of this speed, as a hub across a WAN is
                    time.sleep(max(0.0, self.sent / self.rate - (time.monotonic() - began)))

    def log_request(self, code="-", size="-") -> None:
        """Logged once the answer is sent, with the byte range of a file (never headers:
        they may carry a token)."""
        self.status = code

    def finish(self) -> None:
        if getattr(self, "status", None) is not None:
            self.log_message('"%s" %s %s sent %d', self.requestline, self.status,
                             getattr(self, "served", "-"), getattr(self, "sent", 0))
        super().finish()


def serve(root: Path, host: str, port: int, gated: dict[str, str], rate: float = 0,
          hostile: dict[str, str] | None = None) -> None:
    handler = type("BoundHandler", (Handler,), {"root": root, "gated": gated, "rate": rate,
                                                "hostile": hostile or {}})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    print(f"modelscope stand-in serving {root} on http://{host}:{port}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True,
                        help="JSON: {root, host, port, gated: {owner/name: token}, "
                             "rate: bytes per second, hostile: {owner/name: commit|path}}")
    args = parser.parse_args(argv)
    config = json.loads(args.config.read_text())
    sys.stderr.reconfigure(line_buffering=True)
    serve(Path(config["root"]), config["host"], int(config["port"]), config.get("gated", {}),
          float(config.get("rate", 0)), config.get("hostile", {}))


if __name__ == "__main__":
    main()

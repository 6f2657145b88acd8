#!/usr/bin/python
"""Ansible module: a model repository from Hugging Face or ModelScope, pinned and verified."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_download
short_description: Download a model from Hugging Face or ModelScope at a pinned revision
description:
  - Downloads the files of a model repository that match O(allow_patterns) and not
    O(ignore_patterns), at O(revision) resolved to a commit, with the real C(huggingface_hub)
    or C(modelscope) client, to O(dest).
  - A manifest in O(dest) (C(thorfleet-manifest.json)) records source, repository, revision,
    commit, patterns, and each file's size and hashes. When it matches the request and the
    files are there, nothing is downloaded, the hub is not contacted (an offline re-run
    succeeds) and the result is not changed.
  - Files download to a staging directory beside O(dest) and are moved into O(dest) only when
    every wanted file is complete and verified (size, then sha256, or the git blob hash for
    small files a hub lists without sha256). A file a hub lists with no hash at all is
    checked against O(sha256s) when given; otherwise its sha256 is returned in
    C(first_sums), for the lock file to pin. A failed or interrupted run leaves O(dest) as
    it was; the next run resumes the partial file and does not fetch finished files again.
  - What a hub answers is data, checked before use: the commit must be 40 hex characters,
    and every listed path must stay inside O(dest) (relative, no C(..), no control
    characters, not the manifest). A manifest that fails the same checks is not trusted.
  - Files already in O(dest) with the hashes the new revision lists are kept, not fetched.
  - Free space is checked against the sizes the hub reports before anything is fetched.
  - Check mode reports the files and bytes a run would fetch; diff mode shows the old and new
    revision and commit.
options:
  source:
    description: The hub.
    type: str
    required: true
    choices: [huggingface, modelscope]
  repo_id:
    description: Repository id on that hub, C(<org>/<name>).
    type: str
    required: true
  revision:
    description:
      - Branch, tag or full commit. A branch or tag is resolved to a commit, which the
        manifest and the result record. Defaults to the hub's main branch.
    type: str
  allow_patterns:
    description: Glob patterns of the files to fetch (all files when omitted).
    type: list
    elements: str
  ignore_patterns:
    description: Glob patterns of files to leave out.
    type: list
    elements: str
  dest:
    description: The model directory, for example C(/models/Qwen/Qwen3-8B).
    type: path
    required: true
  token:
    description: Access token for gated or private repositories. Never logged or recorded.
    type: str
  endpoint:
    description:
      - Hub endpoint, for a mirror (C(HF_ENDPOINT) for Hugging Face, the ModelScope
        endpoint). Empty for the public hub.
    type: str
  sha256s:
    description:
      - sha256 by path of files the hub lists without a hash, pinned by an earlier run (the
        lock file). A fetched file must match.
    type: dict
    default: {}
  staging_dir:
    description:
      - Where files are fetched before they are verified; must be on the file system of
        O(dest). Defaults to C(.<name>.partial) beside O(dest).
    type: path
requirements:
  - huggingface_hub (for O(source=huggingface)), modelscope (for O(source=modelscope)),
    on the managed host.
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Only the Q5_K_M file of a GGUF repository, through a LAN mirror
  model_download:
    source: huggingface
    repo_id: Qwen/Qwen3-8B-GGUF
    revision: main
    allow_patterns: [Qwen3-8B-Q5_K_M.gguf]
    dest: /models/Qwen/Qwen3-8B-GGUF
    endpoint: http://hf-mirror.example.internal
    token: "{{ thorfleet_hf_token | default(omit) }}"

- name: Whisper from ModelScope at a tag
  model_download:
    source: modelscope
    repo_id: openai-mirror/whisper-small
    revision: v1.0.0
    dest: /models/openai-mirror/whisper-small
"""

RETURN = r"""
commit:
  description: The commit the files come from.
  returned: success
  type: str
files:
  description: The files of the model, relative to O(dest).
  returned: success
  type: list
  elements: str
fetched:
  description: The files fetched (or, in check mode, to be fetched) in this run.
  returned: success
  type: list
  elements: str
first_sums:
  description: sha256 by path of the files fetched that the hub lists no hash for and
    O(sha256s) did not pin.
  returned: success
  type: dict
bytes_to_fetch:
  description: Bytes the run had to fetch, less what an earlier interrupted run left.
  returned: success
  type: int
bytes_downloaded:
  description: Bytes received from the hub in this run, counted by the client's progress.
  returned: success
  type: int
manifest:
  description: Path of the manifest.
  returned: success
  type: str
"""

import fnmatch  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

MANIFEST = "thorfleet-manifest.json"
DEFAULT_REVISION = {"huggingface": "main", "modelscope": "master"}
FULL_COMMIT = re.compile(r"[0-9a-f]{40}")  # fullmatch only: `$` would allow a newline
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class HubError(Exception):
    """A cause a person can act on: the message names it."""


class RemoteFile:
    def __init__(self, path, size, sha256=None, git_sha1=None):
        self.path, self.size, self.sha256, self.git_sha1 = path, size, sha256, git_sha1


# ------------------------------------------------------- what a hub says, checked


def is_commit(value):
    return isinstance(value, str) and FULL_COMMIT.fullmatch(value) is not None


def check_commit(commit):
    if not is_commit(commit):
        raise HubError(f"the hub answered commit {str(commit)[:80]!r}, not 40 hex characters: "
                       "refused")
    return commit


def confined(path):
    """Whether a path a hub lists stays inside the model's directory once joined to it."""
    return (isinstance(path, str) and 0 < len(path) <= 4096 and not path.startswith("/")
            and not CONTROL.search(path) and path != MANIFEST
            and all(part not in ("", ".", "..") for part in path.split("/")))


def check_paths(paths):
    for path in paths:
        if not confined(path):
            raise HubError(f"the hub lists path {str(path)[:200]!r}, outside the model's "
                           "directory: refused")


# ---------------------------------------------------------------- the manifest


def read_manifest(dest):
    """The manifest of dest, or None when there is none or it fails the checks a hub's
    answer must pass (its commit and paths go into units and file operations)."""
    try:
        with open(os.path.join(dest, MANIFEST)) as source:
            manifest = json.load(source)
        files = manifest["files"]
        if (is_commit(manifest["commit"]) and isinstance(files, dict)
                and all(confined(p) and isinstance(m, dict) and isinstance(m.get("size"), int)
                        for p, m in files.items())):
            return manifest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def manifest_satisfies(manifest, request, dest):
    """Whether what is in dest is what was asked for, without asking the hub."""
    if not manifest:
        return False
    for key in ("source", "repo_id", "allow_patterns", "ignore_patterns"):
        if manifest.get(key) != request[key]:
            return False
    if request["revision"] not in (manifest.get("revision"), manifest.get("commit")):
        return False
    for path, meta in manifest.get("files", {}).items():
        try:
            if os.path.getsize(os.path.join(dest, path)) != meta["size"]:
                return False
        except OSError:
            return False
    return True


def select(paths, allow, ignore):
    """Paths matching an allow pattern (or all) and no ignore pattern, as the hubs match."""
    chosen = []
    for path in paths:
        if allow and not any(fnmatch.fnmatch(path, pattern) for pattern in allow):
            continue
        if ignore and any(fnmatch.fnmatch(path, pattern) for pattern in ignore):
            continue
        chosen.append(path)
    return sorted(chosen)


def reusable(old_files, remote, dest):
    """A file already in dest with the hash the new revision lists need not be fetched."""
    old = (old_files or {}).get(remote.path)
    if not old or old.get("size") != remote.size:
        return False
    same = ((remote.sha256 and old.get("sha256") == remote.sha256)
            or (remote.git_sha1 and old.get("git_sha1") == remote.git_sha1))
    try:
        return bool(same) and os.path.getsize(os.path.join(dest, remote.path)) == remote.size
    except OSError:
        return False


def file_hashes(path):
    sha256, git = hashlib.sha256(), hashlib.sha1()  # noqa: S324 (git's blob id is sha1)
    git.update(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            sha256.update(chunk)
            git.update(chunk)
    return sha256.hexdigest(), git.hexdigest()


def verify(path, remote):
    """Raise HubError unless the staged file is exactly what the hub listed."""
    try:
        return _verify(path, remote)
    except HubError:
        os.unlink(path)  # fetched again on the next run, never moved into dest
        raise


def _verify(path, remote):
    size = os.path.getsize(path)
    if size != remote.size:
        raise HubError(f"{remote.path}: size {size} after download, the hub lists {remote.size}")
    sha256, git_sha1 = file_hashes(path)
    if remote.sha256 and sha256 != remote.sha256:
        raise HubError(f"{remote.path}: sha256 {sha256} after download, the hub lists "
                       f"{remote.sha256}")
    if not remote.sha256 and remote.git_sha1 and git_sha1 != remote.git_sha1:
        raise HubError(f"{remote.path}: git blob {git_sha1} after download, the hub lists "
                       f"{remote.git_sha1}")
    return {"size": size, "sha256": sha256, "git_sha1": git_sha1}


def free_bytes(path):
    while not os.path.exists(path):
        path = os.path.dirname(path)
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def partial_bytes(staging):
    total = 0
    for root, _dirs, names in os.walk(staging):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in names)
    return total


# ------------------------------------------------------------------ the hubs


class Counter:
    """Bytes received, as reported by the clients' progress hooks."""

    received = 0


def import_client(name):
    """Import a hub client from this interpreter's own site-packages.

    Under Mitogen, a finder on sys.meta_path offers to fetch any missing module from the
    controller, so optional-dependency probes in the clients (find_spec("torch")) succeed
    and the import that follows fails. The clients are installed on the host; they are
    imported with the interpreter's own finders only.
    """
    import importlib
    import sys

    remote = [f for f in sys.meta_path if type(f).__module__.startswith("mitogen")]
    for finder in remote:
        sys.meta_path.remove(finder)
    try:
        return importlib.import_module(name)
    finally:
        sys.meta_path[:0] = remote


class HuggingFace:
    def __init__(self, endpoint, token):
        os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
        huggingface_hub = import_client("huggingface_hub")
        self.hub, self.errors = huggingface_hub, import_client("huggingface_hub.errors")
        self.endpoint = endpoint or None
        self.token = token or False  # False: never read a token from the host's files
        self.api = huggingface_hub.HfApi(endpoint=self.endpoint, token=self.token)

    def resolve(self, repo_id, revision):
        try:
            commit = check_commit(self.api.model_info(repo_id, revision=revision).sha)
            tree = self.api.list_repo_tree(repo_id, revision=commit, recursive=True)
            files = {}
            for entry in tree:
                if isinstance(entry, self.hub.hf_api.RepoFile):
                    files[entry.path] = RemoteFile(
                        entry.path, entry.size, entry.lfs.sha256 if entry.lfs else None,
                        None if entry.lfs else entry.blob_id)
            return commit, files
        except HubError:
            raise
        except Exception as error:  # noqa: BLE001 (the client's errors, translated below)
            raise HubError(self.explain(error, repo_id, revision)) from None

    def explain(self, error, repo_id, revision):
        errors = self.errors
        if isinstance(error, errors.GatedRepoError):
            return "the repository is gated: set a token that has access (thorfleet_hf_token)"
        if isinstance(error, errors.RevisionNotFoundError):
            return f"revision {revision} not found"
        if isinstance(error, errors.HfHubHTTPError):  # RepositoryNotFoundError among them
            status = getattr(getattr(error, "response", None), "status_code", None)
            if revision != "main" and self._exists(repo_id):
                return f"revision {revision} not found"
            if status in (401, 403) and not self.token:
                return ("repository not found, or private/gated and no token was given "
                        "(thorfleet_hf_token)")
            return f"repository not found (HTTP {status})"
        return f"hub unreachable at {self.endpoint or 'huggingface.co'}: {error}"

    def _exists(self, repo_id):
        try:
            self.api.model_info(repo_id, revision="main")
            return True
        except Exception:  # noqa: BLE001
            return False

    def download(self, repo_id, commit, remote_files, staging):
        class Progress(self.hub.utils.tqdm):
            def update(self, n=1):
                Counter.received += n or 0
                return super().update(n)

        for remote in remote_files:
            try:
                self.hub.hf_hub_download(repo_id, remote.path, revision=commit,
                                         local_dir=staging, endpoint=self.endpoint,
                                         token=self.token, tqdm_class=Progress)
            except Exception as error:  # noqa: BLE001
                raise HubError(f"{remote.path}: {self.explain(error, repo_id, commit)}") from None


class ModelScope:
    def __init__(self, endpoint, token):
        modelscope_hub = import_client("modelscope_hub")
        self.modelscope, self.ms_hub = import_client("modelscope"), modelscope_hub
        self.ms_errors = import_client("modelscope_hub.errors")
        self.ms_api = import_client("modelscope.hub.api")
        self.ms_callback = import_client("modelscope.hub.callback")
        self.endpoint = endpoint or None
        self.token = token or None
        self.api = modelscope_hub.HubApi(endpoint=self.endpoint, token=self.token)

    def resolve(self, repo_id, revision):
        try:
            commit = check_commit(revision if is_commit(revision)
                                  else self._commit_of(repo_id, revision))
            listing = self.api.list_repo_files(repo_id, "model", revision=commit)
        except HubError:
            raise
        except Exception as error:  # noqa: BLE001
            raise HubError(self.explain(error)) from None
        files = {f.path: RemoteFile(f.path, f.size, f.sha256 or None)
                 for f in listing if f.type != "tree"}
        return commit, files

    def _commit_of(self, repo_id, revision):
        api = self.ms_api.HubApi(endpoint=self.endpoint, token=self.token)
        branches, tags = api.get_model_branches_and_tags_details(repo_id)
        for ref in list(branches or []) + list(tags or []):
            if ref.get("Revision") == revision:
                return ref["CommitId"]
        raise HubError(f"revision {revision} not found")

    def explain(self, error):
        errors = self.ms_errors
        if isinstance(error, errors.AuthenticationError):
            return ("the repository is gated: set a token that has access "
                    "(thorfleet_modelscope_token)")
        if isinstance(error, errors.NotExistError):
            return "repository or revision not found"
        if isinstance(error, errors.NetworkError):
            return f"hub unreachable at {self.endpoint or 'modelscope.cn'}"
        if isinstance(error, errors.FileDownloadError) and error.failed_files:
            return "; ".join(f"{path}: {self.explain(cause)}"
                             for path, cause in sorted(error.failed_files.items()))
        return str(error).splitlines()[0]

    def download(self, repo_id, commit, remote_files, staging):
        incomplete = import_client("modelscope_hub._download")._incomplete_path

        class Progress(self.ms_callback.ProgressCallback):
            """Counts bytes received. The client first reports the bytes of a partial file
            it resumes from (and takes them back, negative, if the server makes it start
            over): those were not received in this run."""

            def __init__(self, filename, file_size):
                super().__init__(filename, file_size)
                partial = incomplete(Path(staging) / filename)
                self.resumed = partial.stat().st_size if partial.exists() else 0

            def update(self, size):
                if self.resumed and size == self.resumed:
                    self.resumed = 0
                elif size > 0:
                    Counter.received += size

        # Exact names, escaped: the client matches these as patterns.
        wanted = [re.sub(r"([*?\[])", r"[\1]", remote.path) for remote in remote_files]
        try:
            self.modelscope.snapshot_download(
                repo_id, revision=commit, local_dir=staging, allow_patterns=wanted,
                token=self.token, endpoint=self.endpoint, progress_callbacks=[Progress])
        except Exception as error:  # noqa: BLE001
            raise HubError(self.explain(error)) from None


HUBS = {"huggingface": HuggingFace, "modelscope": ModelScope}


# ------------------------------------------------------------------- the run


def move_into(staging, dest, fetched, stale):
    """Move verified files into dest, drop files of the old revision, then the manifest."""
    for path in fetched:
        target = os.path.join(dest, path)
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        os.chmod(os.path.join(staging, path), 0o644)
        os.replace(os.path.join(staging, path), target)
    for path in stale:
        if os.path.lexists(os.path.join(dest, path)):
            os.unlink(os.path.join(dest, path))


def write_manifest(module, dest, manifest):
    tmp = os.path.join(dest, f".{MANIFEST}.tmp")
    with open(tmp, "w") as out:
        json.dump(manifest, out, indent=2, sort_keys=True)
        out.write("\n")
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, os.path.join(dest, MANIFEST))


def run(module):
    params = module.params
    source = params["source"]
    dest = params["dest"].rstrip("/")
    request = {
        "source": source,
        "repo_id": params["repo_id"],
        "revision": params["revision"] or DEFAULT_REVISION[source],
        "allow_patterns": params["allow_patterns"] or [],
        "ignore_patterns": params["ignore_patterns"] or [],
    }
    staging = params["staging_dir"] or os.path.join(
        os.path.dirname(dest), f".{os.path.basename(dest)}.partial")
    label = f"model {request['repo_id']}@{request['revision']} ({source})"
    old = read_manifest(dest)
    result = {"changed": False, "manifest": os.path.join(dest, MANIFEST), "fetched": [],
              "first_sums": {}, "bytes_to_fetch": 0, "bytes_downloaded": 0}

    if manifest_satisfies(old, request, dest):
        module.exit_json(commit=old["commit"], files=sorted(old["files"]), **result)

    try:
        hub = HUBS[source](params["endpoint"], params["token"])
        commit, remote = hub.resolve(request["repo_id"], request["revision"])
        check_commit(commit)
        check_paths(remote)
        for path, known in (params["sha256s"] or {}).items():
            if path in remote and not (remote[path].sha256 or remote[path].git_sha1):
                remote[path].sha256 = known
        wanted = select(remote, request["allow_patterns"], request["ignore_patterns"])
        if not wanted:
            raise HubError(f"no file at commit {commit} matches allow_patterns "
                           f"{request['allow_patterns']} and ignore_patterns "
                           f"{request['ignore_patterns']}")
        old_files = (old or {}).get("files", {})
        fetch = [remote[p] for p in wanted if not reusable(old_files, remote[p], dest)]
        already = partial_bytes(staging) if os.path.isdir(staging) else 0
        to_fetch = max(sum(r.size for r in fetch) - already, 0)
        available = free_bytes(dest)
        if to_fetch > available:
            raise HubError(f"needs {to_fetch} bytes under {dest}, only {available} free")
    except HubError as error:
        module.fail_json(msg=f"{label}: {error}", dest=dest)

    before = {"revision": (old or {}).get("revision"), "commit": (old or {}).get("commit")}
    after = {"revision": request["revision"], "commit": commit}
    result.update(changed=True, commit=commit, files=wanted,
                  fetched=[r.path for r in fetch], bytes_to_fetch=to_fetch,
                  diff={"before": json.dumps(before, indent=1) + "\n",
                        "after": json.dumps(after, indent=1) + "\n",
                        "before_header": f"{dest} (revision)",
                        "after_header": f"{dest} (revision)"})
    if module.check_mode:
        module.exit_json(**result)

    os.makedirs(staging, mode=0o700, exist_ok=True)
    Counter.received = 0
    try:
        hub.download(request["repo_id"], commit, fetch, staging)
        records = {r.path: verify(os.path.join(staging, r.path), r) for r in fetch}
    except (HubError, OSError) as error:
        module.fail_json(msg=f"{label}: {error}", dest=dest, bytes_downloaded=Counter.received)

    files = {p: (records[p] if p in records else old_files[p]) for p in wanted}
    result["first_sums"] = {r.path: records[r.path]["sha256"] for r in fetch
                            if not (r.sha256 or r.git_sha1)}
    os.makedirs(dest, mode=0o755, exist_ok=True)
    # Between the first move and the new manifest, dest is neither revision: without a
    # manifest, a run cut off here is a download to redo, never a match.
    if old:
        os.unlink(os.path.join(dest, MANIFEST))
    move_into(staging, dest, [r.path for r in fetch], sorted(set(old_files) - set(wanted)))
    write_manifest(module, dest, {**request, "commit": commit, "files": files})
    shutil.rmtree(staging, ignore_errors=True)
    result["bytes_downloaded"] = Counter.received
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "str", "required": True, "choices": list(HUBS)},
            "repo_id": {"type": "str", "required": True},
            "revision": {"type": "str"},
            "allow_patterns": {"type": "list", "elements": "str"},
            "ignore_patterns": {"type": "list", "elements": "str"},
            "dest": {"type": "path", "required": True},
            "token": {"type": "str", "no_log": True},
            "sha256s": {"type": "dict", "default": {}},
            "endpoint": {"type": "str"},
            "staging_dir": {"type": "path"},
        },
        supports_check_mode=True,
    )
    run(module)


if __name__ == "__main__":
    main()

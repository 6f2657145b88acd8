"""The hub clients model_download drives: the real huggingface_hub and modelscope
libraries, each answering the same questions (a revision's commit, its file list with
hashes, the files themselves into a staging directory), their errors explained; and a
host of the fleet that already holds the revision, answering the same questions from its
manifest, its files copied with rsync."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ansible.module_utils.thorfleet_formats import is_commit
from ansible.module_utils.thorfleet_model_files import (
    HubError,
    RemoteFile,
    check_commit,
    check_paths,
)


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
        # The client's own default branch, where the catalogue names no revision.
        self.default_revision = import_client("huggingface_hub.constants").DEFAULT_REVISION
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
            if revision != self.default_revision and self._exists(repo_id):
                return f"revision {revision} not found"
            if status in (401, 403) and not self.token:
                return ("repository not found, or private/gated and no token was given "
                        "(thorfleet_hf_token)")
            return f"repository not found (HTTP {status})"
        return f"hub unreachable at {self.endpoint or 'huggingface.co'}: {error}"

    def _exists(self, repo_id):
        try:
            # At the client's own default branch (olah offline wants a revision).
            self.api.model_info(repo_id, revision=self.default_revision)
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


class Peer:
    """A host of the fleet that holds the revision, read from its rsync daemon's share.

    What it holds is its manifest, read over Ansible's own connection to it (the
    model_manifests module, delegated), not over rsync: the files that rsync brings are
    verified against those sums exactly as a hub's files are against the hub's listing.
    Files of a revision staged beside the peer's model (`fetched`) are in its staging
    directory, the rest in the model's directory.
    """

    TIMEOUT = 300  # seconds without a byte before rsync gives up
    CONNECT_TIMEOUT = 30

    def __init__(self, module, peer, request):
        self.module, self.name, self.request = module, peer["name"], request
        self.url, self.staging_url = peer["url"].rstrip("/"), peer["staging_url"].rstrip("/")
        self.manifest, self.fetched = peer["manifest"], set(peer.get("fetched") or [])

    def resolve(self, repo_id, revision):
        manifest = self.manifest
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or any(
                manifest.get(key) != self.request[key]
                for key in ("source", "repo_id", "allow_patterns", "ignore_patterns")):
            raise HubError(f"peer {self.name} does not hold {repo_id} as asked "
                           "(source, patterns)")
        commit = check_commit(manifest.get("commit"))
        if revision not in (manifest.get("revision"), commit):
            raise HubError(f"peer {self.name} holds {repo_id}@{commit}, not {revision}")
        check_paths(files)
        remote = {}
        for path, meta in files.items():
            if not (isinstance(meta, dict) and isinstance(meta.get("size"), int)
                    and is_sha256(meta.get("sha256"))):
                raise HubError(f"peer {self.name}: its manifest lists {path!r} without a "
                               "size and sha256: refused")
            remote[path] = RemoteFile(path, meta["size"], meta["sha256"])
        return commit, remote

    def download(self, repo_id, commit, remote_files, staging):
        from_staging = [r.path for r in remote_files if r.path in self.fetched]
        from_model = [r.path for r in remote_files if r.path not in self.fetched]
        for base, paths in ((self.staging_url, from_staging), (self.url, from_model)):
            if paths:
                self._rsync(base, paths, staging)

    def _rsync(self, base, paths, staging):
        # The paths were checked (check_paths) and go on standard input, never as options.
        rsync = self.module.get_bin_path("rsync", required=True)
        argv = [rsync, "--files-from=-", "--from0", "--partial", "--stats", "--no-motd",
                f"--timeout={self.TIMEOUT}", f"--contimeout={self.CONNECT_TIMEOUT}",
                f"{base}/", f"{staging}/"]
        rc, out, err = self.module.run_command(argv, data="\0".join(paths), binary_data=True)
        if rc != 0:
            last = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
            raise HubError(f"copy from peer {self.name} ({base}) failed: {last}")
        received = re.search(r"Total bytes received: ([\d,.]+)", out)
        if received:
            Counter.received += int(re.sub(r"[,.]", "", received.group(1)))


def is_sha256(value):
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


HUBS = {"huggingface": HuggingFace, "modelscope": ModelScope}

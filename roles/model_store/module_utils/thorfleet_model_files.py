"""What model_download checks and keeps on the host: the manifest a download leaves in
its model directory, what a hub's answer may hold (a commit, paths inside the model),
and each file's hash against what the hub or the lock lists."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil

from ansible.module_utils.thorfleet_formats import is_commit

MANIFEST = "thorfleet-manifest.json"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class HubError(Exception):
    """A cause a person can act on: the message names it."""


class RemoteFile:
    def __init__(self, path, size, sha256=None, git_sha1=None):
        self.path, self.size, self.sha256, self.git_sha1 = path, size, sha256, git_sha1


# ------------------------------------------------------- what a hub says, checked


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


def manifest_digest(manifest):
    """A manifest's digest: the sha256 of its commit and each file's size and sha256, as
    canonical JSON. The lock pins it on the first fetch (model_manifests in the lock
    file); a copy from a fleet peer or a bundle must have it."""
    body = {"commit": manifest["commit"],
            "files": {path: {"sha256": meta.get("sha256"), "size": meta["size"]}
                      for path, meta in manifest["files"].items()}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


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


# ------------------------------------------------- a revision staged beside a model
# A new revision of a model in service is made ready beside it: its fetched files, and
# STAGED (the full manifest and what the switch moves), in the staging directory. The
# switch moves them in and keeps what they replace in the previous directory, so that a
# failed switch can put the revision that ran before back.
STAGED = "thorfleet-staged.json"


def staging_dir(dest):
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial")


def previous_dir(dest):
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.previous")


def read_staged(dest, staging=None):
    """The revision staged beside dest ({manifest, fetched, stale}), or None; checked as
    a manifest is, and each fetched file there at its size."""
    staging = staging or staging_dir(dest)
    try:
        with open(os.path.join(staging, STAGED)) as source:
            staged = json.load(source)
        manifest, fetched, stale = staged["manifest"], staged["fetched"], staged["stale"]
        files = manifest["files"]
        paths = [*files, *fetched, *stale]
        if not (is_commit(manifest["commit"]) and isinstance(files, dict)
                and isinstance(fetched, list) and isinstance(stale, list)
                and all(confined(p) for p in paths) and set(fetched) <= set(files)):
            return None
        for path, meta in files.items():
            where = staging if path in fetched else dest
            if os.path.getsize(os.path.join(where, path)) != meta["size"]:
                return None
        return staged
    except (OSError, ValueError, KeyError, TypeError):
        return None


def staged_satisfies(staged, request):
    manifest = (staged or {}).get("manifest")
    if not manifest:
        return False
    for key in ("source", "repo_id", "allow_patterns", "ignore_patterns"):
        if manifest.get(key) != request[key]:
            return False
    return request["revision"] in (manifest.get("revision"), manifest.get("commit"))


def stage(module, staging, manifest, fetched, stale):
    """Mark the verified files in staging as a revision ready to switch in."""
    tmp = os.path.join(staging, f".{STAGED}.tmp")
    with open(tmp, "w") as out:
        json.dump({"manifest": manifest, "fetched": fetched, "stale": stale}, out,
                  indent=2, sort_keys=True)
        out.write("\n")
    module.atomic_move(tmp, os.path.join(staging, STAGED))


def _move(source, target):
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    os.replace(source, target)


def switch_in(module, dest):
    """Move the revision staged beside dest into it; what it replaces or drops, and the
    old manifest, go to the previous directory. Returns whether there was one."""
    staged = read_staged(dest)
    if staged is None:
        return False
    previous, staging = previous_dir(dest), staging_dir(dest)
    shutil.rmtree(previous, ignore_errors=True)
    os.makedirs(previous, mode=0o700)
    # Without a manifest in dest, a switch cut off half-way is a download to redo.
    if os.path.exists(os.path.join(dest, MANIFEST)):
        _move(os.path.join(dest, MANIFEST), os.path.join(previous, MANIFEST))
    for path in sorted(set(staged["fetched"]) | set(staged["stale"])):
        if os.path.lexists(os.path.join(dest, path)):
            _move(os.path.join(dest, path), os.path.join(previous, path))
    move_into(staging, dest, staged["fetched"], [])
    write_manifest(module, dest, staged["manifest"])
    shutil.rmtree(staging, ignore_errors=True)
    return True


def switch_back(module, dest):
    """Put the revision that ran before the last switch back into dest. Returns whether
    there was one to put back."""
    previous = previous_dir(dest)
    old = read_manifest(previous)
    if old is None:
        return False
    current = read_manifest(dest) or {"files": {}}
    if os.path.exists(os.path.join(dest, MANIFEST)):
        os.unlink(os.path.join(dest, MANIFEST))
    for path in sorted(set(current["files"]) - set(old["files"])):
        if os.path.lexists(os.path.join(dest, path)):
            os.unlink(os.path.join(dest, path))
    for root, _dirs, names in os.walk(previous):
        for name in names:
            path = os.path.relpath(os.path.join(root, name), previous)
            if path != MANIFEST:
                _move(os.path.join(previous, path), os.path.join(dest, path))
    write_manifest(module, dest, old)
    shutil.rmtree(previous, ignore_errors=True)
    return True

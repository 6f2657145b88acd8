"""What a ggml_build build directory is: the record of the inputs it was built from, their
stamp (the directory's name, build-<stamp>), the files another host needs to run it, and
how builds are kept beside the `current` link."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

MARKER = "thorfleet-build.json"
STAMP_FIELDS = ("engine", "commit", "cmake_flags", "targets", "cuda", "compiler")


def build_record(engine, commit, cmake_flags, targets, cuda, compiler):
    """What a build is made of; its stamp is a hash of exactly this."""
    return {"engine": engine, "commit": commit, "cmake_flags": list(cmake_flags),
            "targets": sorted(targets), "cuda": cuda or "", "compiler": compiler}


def stamp_of(record):
    canonical = json.dumps({k: record[k] for k in STAMP_FIELDS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def explain(old, new):
    """Which inputs differ between two build records, for people."""
    if not old:
        return "no build yet"
    changes = []
    for field in STAMP_FIELDS:
        if old.get(field) != new[field]:
            before, after = old.get(field), new[field]
            if field == "commit":
                before, after = (before or "")[:12], after[:12]
            changes.append(f"{field} {before} -> {after}")
    return "; ".join(changes) or "same inputs, build incomplete"


def read_record(build_dir):
    try:
        with open(os.path.join(build_dir, MARKER)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_record(build_dir, record):
    """The record, written last and atomically: a build without it is incomplete."""
    tmp = os.path.join(build_dir, MARKER + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(build_dir, MARKER))


def ready(build_dir, stamp):
    """Whether build_dir holds a complete build whose record has exactly `stamp`."""
    record = read_record(build_dir)
    try:
        return record is not None and stamp_of(record) == stamp
    except (KeyError, TypeError):
        return False


def missing_targets(build_dir, targets):
    return [t for t in targets if not os.access(os.path.join(build_dir, "bin", t), os.X_OK)]


def build_files(build_dir):
    """The files another host needs to run this build: its binaries (bin/, regular files
    only, else none: such a build is compiled where it runs) and its record, each with its
    size and sha256."""
    found = {}
    for path in [MARKER, *sorted(f"bin/{n}" for n in os.listdir(os.path.join(build_dir, "bin")))]:
        info = os.lstat(os.path.join(build_dir, path))
        if not stat.S_ISREG(info.st_mode):
            return {}
        found[path] = {"size": info.st_size, "sha256": sha256_of(os.path.join(build_dir, path))}
    return found


def current_dir(root):
    current = os.path.join(root, "current")
    if not os.path.islink(current):
        return None
    return os.path.join(root, os.readlink(current))


def switch(root, build_dir):
    """Point `current` at build_dir, atomically."""
    current = os.path.join(root, "current")
    tmp = current + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(build_dir), tmp)
    os.replace(tmp, current)
    os.utime(os.path.join(build_dir, MARKER))


def prune(root, keep_dir, keep):
    """Keep the newest `keep` complete builds (keep_dir among them); drop failed ones."""
    builds = [os.path.join(root, d) for d in os.listdir(root)
              if d.startswith("build-") and os.path.isdir(os.path.join(root, d))]
    others = [b for b in builds if b != keep_dir and os.path.exists(os.path.join(b, MARKER))]
    # A marker's time is when its build last became current (see switch).
    others.sort(key=lambda b: os.path.getmtime(os.path.join(b, MARKER)), reverse=True)
    kept = {keep_dir, *others[: max(keep, 1) - 1]}
    for build in builds:
        if build not in kept:
            shutil.rmtree(build, ignore_errors=True)

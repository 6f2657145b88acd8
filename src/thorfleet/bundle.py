"""Bundles for sites with no internet: `thorfleet bundle create` (playbooks/bundle.yml,
then the checksum manifest) and `thorfleet bundle verify`.

SHA256SUMS lists every file of the bundle in sha256sum's own format, so that
`sha256sum -c SHA256SUMS` checks a bundle where thorfleet is not installed (the site
cache host); verify also checks that nothing is missing or added and that the index
names only what is there.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

SUMS = "SHA256SUMS"
INDEX = "bundle.json"
# What a bundle's index names (each entry's field: a file or directory in the bundle).
NAMED = {"models": "dir", "files": "file", "images": "archive"}


class BundleError(RuntimeError):
    """A bundle that cannot be used; the message names what is wrong."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file of the bundle but SHA256SUMS, relative, sorted; a link or anything but a
    plain file or directory is refused (a bundle is carried between machines)."""
    found = []
    for directory, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(directory) / name
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise BundleError(f"{path.relative_to(root)}: not a plain file or directory")
        for name in names:
            relative = (Path(directory) / name).relative_to(root).as_posix()
            if relative != SUMS:
                found.append(relative)
    return sorted(found)


def write_sums(root: Path) -> int:
    """SHA256SUMS of every file; returns how many."""
    files = _files(root)
    lines = [f"{_sha256(root / name)}  {name}\n" for name in files]
    for name in files:
        if "\n" in name or "\\" in name:
            raise BundleError(f"{name!r}: a file name sha256sum cannot list")
    partial = root / f".{SUMS}.partial"
    partial.write_text("".join(lines))
    partial.replace(root / SUMS)
    return len(files)


def verify(root: Path, sums: Path | None = None) -> list[str]:
    """What is wrong with the bundle at root: each file against SHA256SUMS (the bundle's
    own, or `sums`, a copy kept apart from the bundle: whoever could change a file in the
    bundle could change its SHA256SUMS too), files missing or not listed, and what the
    index names that is not there. Empty: it is whole."""
    root = Path(root)
    sums = Path(sums) if sums is not None else root / SUMS
    said = str(sums) if sums != root / SUMS else SUMS
    if not sums.is_file():
        return [f"{said}: missing (not a bundle, or one not finished)"]
    listed = {}
    for number, line in enumerate(sums.read_text().splitlines(), 1):
        digest, separator, name = line.partition("  ")
        if not separator or len(digest) != 64 or not name:
            return [f"{said}: line {number} is not `<sha256>  <file>`"]
        listed[name] = digest
    problems = []
    present = set(_files(root))
    for name in sorted(set(listed) - present):
        problems.append(f"{name}: listed in {said}, missing")
    for name in sorted(present - set(listed)):
        problems.append(f"{name}: not listed in {said}")
    for name in sorted(set(listed) & present):
        if _sha256(root / name) != listed[name]:
            problems.append(f"{name}: its sha256 is not the one {said} lists")
    if INDEX not in present:
        return problems + [f"{INDEX}: missing"]
    try:
        index = json.loads((root / INDEX).read_text())
    except ValueError:
        return problems + [f"{INDEX}: not JSON"]
    for section, field in NAMED.items():
        for entry in index.get(section) or []:
            where = str(entry.get(field) or "")
            if not where or not (root / where).exists():
                problems.append(f"{INDEX}: {section}: {where or entry}: not in the bundle")
    for entry in index.get("sources") or []:
        ref = root / "sources" / f"{entry.get('engine')}.git" / "refs" / "thorfleet" / str(
            entry.get("commit"))
        if not ref.is_file():
            problems.append(f"{INDEX}: sources: {entry.get('engine')} at {entry.get('commit')}: "
                            "not in the bundle")
    return problems


def create(project: Path, inventories: list[str], directory: Path, timeout: float) -> int:
    """playbooks/bundle.yml into directory, then SHA256SUMS; ansible-playbook's exit
    status (its output goes to the terminal)."""
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    # A half-written bundle is never taken for a whole one.
    (directory / SUMS).unlink(missing_ok=True)
    playbook = Path(sys.executable).with_name("ansible-playbook")
    argv = [str(playbook) if playbook.exists() else "ansible-playbook", "playbooks/bundle.yml",
            "-e", json.dumps({"thorfleet_bundle_create": str(directory),
                              "thorfleet_bundle": ""})]
    for inventory in reversed(inventories):
        argv[2:2] = ["-i", str(Path(inventory).resolve())]
    try:
        rc = subprocess.run(argv, cwd=project, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
        print(f"thorfleet: bundle create did not finish within {timeout:.0f} s", file=sys.stderr)
        return 124
    if rc != 0:
        return rc
    count = write_sums(directory)
    print(f"thorfleet: bundle written to {directory} ({count} files, {SUMS})")
    return 0

#!/usr/bin/python
"""Ansible module: the engines' compile caches a host holds, per image digest, and a copy
of those it lacks from a host of the fleet that holds them."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: jit_caches
short_description: Report the compile caches held per image digest; copy missing ones from peers
description:
  - The container engines keep the kernels they compile (torch.compile, FlashInfer,
    Triton) under O(root)/sha256-<hex>, one directory per image digest
    (thorfleet_jit_cache_root). A digest is held, and offered to the fleet, only when its
    cache is marked complete: the switch marks the caches of a host's images (O(mark))
    once its services passed verify, so a host whose switch failed never offers the
    partial cache its engine left.
  - The mark is the cache's manifest (C(.thorfleet-complete), JSON): each file's path,
    size and sha256 and each link's target, as they were when the host's services passed
    verify. RV(manifests) gives each held cache's manifest sha256, which the rollout's
    other hosts receive over Ansible's connection, not over the share.
  - With O(peers), each digest whose cache directory holds no file yet is copied from
    the peer named for it (rsync, from the read-only share of the thorfleet role): first
    the peer's manifest, refused unless its sha256 is the one named in the peer entry,
    then exactly the files and links it lists, into a directory beside its place. Each
    one is checked against the manifest (size, sha256, link target; nothing else may be
    there) and the copy is moved into place only when all match: rsync's protocol is not
    authenticated, so whatever came over the network is trusted only as far as the
    manifest read over Ansible's connection. A cache this host's engine already wrote to
    is never replaced. A cache is an optimisation: a copy that fails or is refused leaves
    this host as it was, is reported in RV(not_copied) and as a warning naming the file
    and the peer (not as C(failed), which would fail the task), and the engine compiles
    its kernels itself on its first start.
  - Check mode reports what would be copied and copies nothing.
options:
  root:
    description: Where the caches live, one directory per image digest.
    type: path
    required: true
  peers:
    description:
      - The caches to copy where this host's directory of the digest holds no file;
        C(digest) (C(sha256:<hex>)), C(name) (the peer's host name, for messages),
        C(url) (C(rsync://<address>:<port>/thorfleet-jit/sha256-<hex>)) and C(manifest)
        (the sha256 of the peer's manifest of that cache, as the peer's RV(manifests)
        gave it).
    type: list
    elements: dict
    default: []
  mark:
    description:
      - Digests (C(sha256:<hex>)) whose caches to mark complete, after this host's services
        on those images passed verify. A digest whose cache directory holds no file (or
        that has none) is left alone.
    type: list
    elements: str
    default: []
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Copy the compile caches of a new image from the canary
  jit_caches:
    root: /var/cache/thorfleet/jit
    peers:
      - digest: sha256:0123...
        name: thor01
        url: rsync://10.0.0.11:873/thorfleet-jit/sha256-0123...
        manifest: 4567...
"""

RETURN = r"""
held:
  description: The digests (C(sha256:<hex>)) whose caches this host holds complete (marked),
    after the marks.
  returned: success
  type: list
copied:
  description: The digests copied from a peer (in check mode, those that would be).
  returned: success
  type: list
marked:
  description: The digests of O(mark) newly marked complete (in check mode, those that would be).
  returned: success
  type: list
manifests:
  description: For each digest of RV(held), the sha256 (hex) of its manifest.
  returned: success
  type: dict
not_copied:
  description: The copies that failed or were refused, each C(digest), C(peer) and
    C(error) (for a refused one, the file that differed from the manifest).
  returned: success
  type: list
"""

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
SHA256 = re.compile(r"[0-9a-f]{64}")
DIR = re.compile(r"sha256-[0-9a-f]{64}")
# Written in a cache directory once the host's services on that image passed verify: the
# cache's manifest.
COMPLETE = ".thorfleet-complete"
# rsync URL of a peer's share: an address or host name, a port, the caches' module.
URL = re.compile(r"rsync://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/thorfleet-jit/"
                 r"sha256-[0-9a-f]{64}")
# A manifest larger than this is not a cache's (rsync's --max-size while copying it).
MANIFEST_MAX = "64m"


def holds(path):
    """Whether a cache directory holds a regular file (the walk stops at the first)."""
    for top, _dirs, files in os.walk(path):
        for name in files:
            if os.path.isfile(os.path.join(top, name)):
                return True
    return False


def digests(root, test):
    """The digests whose cache directories under root pass `test` (a path's)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(name.replace("-", ":", 1) for name in names
                  if DIR.fullmatch(name) and test(os.path.join(root, name)))


def sha256(path):
    """The sha256 (hex) of a file's bytes (Python 3.11's file_digest: a Thor's JetPack 7
    has Python 3.12)."""
    with open(path, "rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def inside(target, link):
    """Whether a link's target, read from where the link is (`link`: its path relative to
    the cache), stays inside the cache: what rsync's --safe-links keeps."""
    if os.path.isabs(target):
        return False
    parts = os.path.normpath(os.path.join(os.path.dirname(link), target)).split(os.sep)
    return parts[0] != ".."


def listing(path):
    """What a cache directory holds: {files: {relpath: {size, sha256}}, links: {relpath:
    target}}; links leading out of the cache, the mark and anything neither a regular file
    nor a link (a socket, a FIFO) are left out, as the copy leaves them out."""
    files, links = {}, {}
    for top, dirs, names in os.walk(path):
        for name in sorted(dirs + names):
            full = os.path.join(top, name)
            rel = os.path.relpath(full, path)
            mode = os.lstat(full).st_mode
            if rel == COMPLETE:
                continue
            if stat.S_ISLNK(mode):
                target = os.readlink(full)
                if inside(target, rel):
                    links[rel] = target
            elif stat.S_ISREG(mode):
                files[rel] = {"size": os.lstat(full).st_size, "sha256": sha256(full)}
    return {"files": files, "links": links}


def manifest_of(path):
    """A cache directory's manifest as its mark holds it, or None (no mark, or a mark
    that is no manifest: an earlier release's, offered no more until marked again)."""
    try:
        with open(os.path.join(path, COMPLETE), "rb") as mark:
            manifest = json.loads(mark.read())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) \
            or not isinstance(manifest.get("links"), dict):
        return None
    return manifest


def complete(path):
    """Whether a cache directory is marked complete, with its manifest."""
    return manifest_of(path) is not None


def held(root):
    """The digests whose caches are marked complete: what this host offers."""
    return digests(root, complete)


def mark(path):
    """Mark a cache directory complete: write its manifest."""
    data = json.dumps(listing(path), sort_keys=True, indent=1).encode()
    with open(os.path.join(path, f"{COMPLETE}.new"), "wb") as out:
        out.write(data)
    os.replace(os.path.join(path, f"{COMPLETE}.new"), os.path.join(path, COMPLETE))


def refused(peer):
    """Why a peer entry is refused, or None: everything in it reaches rsync's argv."""
    digest, url = str(peer.get("digest", "")), str(peer.get("url", ""))
    if not DIGEST.fullmatch(digest):
        return f"digest {digest[:80]!r} is not sha256:<64 hex>"
    if not URL.fullmatch(url) or not url.endswith(digest.replace(":", "-")):
        return f"url {url[:120]!r} is not the thorfleet-jit share's directory of {digest}"
    if not SHA256.fullmatch(str(peer.get("manifest", ""))):
        return f"manifest {str(peer.get('manifest', ''))[:80]!r} is not a sha256 (64 hex)"
    return None


def safe(rel):
    """Whether a manifest's path is one inside the cache, fit for rsync's list of files."""
    return (isinstance(rel, str) and rel and "\0" not in rel and not os.path.isabs(rel)
            and os.path.normpath(rel) == rel and rel.split(os.sep)[0] != ".."
            and rel != COMPLETE)


def untrusted(manifest, peer):
    """Why a peer's manifest (its sha256 already checked) cannot be followed, or None."""
    for rel, entry in manifest["files"].items():
        if not safe(rel) or not isinstance(entry, dict) \
                or not isinstance(entry.get("size"), int) \
                or not SHA256.fullmatch(str(entry.get("sha256"))):
            return f"{str(rel)[:120]!r} in {peer}'s manifest is not a file of the cache"
    for rel, target in manifest["links"].items():
        if not safe(rel) or not isinstance(target, str) or not inside(target, rel):
            return f"{str(rel)[:120]!r} in {peer}'s manifest is not a link inside the cache"
    return None


def differs(partial, manifest, peer):
    """The first file of a copy that is not as the peer's manifest says, as a message, or
    None when every file and link is, and nothing else is there."""
    got = listing(partial)
    for rel in sorted(set(got["files"]) | set(manifest["files"])):
        want, have = manifest["files"].get(rel), got["files"].get(rel)
        if have is None:
            return f"{rel}: missing from the copy of {peer}'s cache"
        if want is None:
            return f"{rel}: not in {peer}'s manifest"
        if have != {"size": want["size"], "sha256": want["sha256"]}:
            return f"{rel}: differs from {peer}'s manifest (size {have['size']}, sha256 " \
                   f"{have['sha256']}; the manifest says size {want['size']}, sha256 " \
                   f"{want['sha256']})"
    if got["links"] != manifest["links"]:
        rel = sorted(set(got["links"].items()) ^ set(manifest["links"].items()))[0][0]
        return f"{rel}: a link that differs from {peer}'s manifest"
    return None


def copy(module, root, peer):
    """Copy one digest's cache from a peer and check it against the peer's manifest; why
    it was not copied (a message), or None."""
    name = peer["digest"].replace(":", "-")
    dest = os.path.join(root, name)
    partial = os.path.join(root, f".{name}.partial")
    listed = os.path.join(root, f".{name}.files")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial, mode=0o755)
    rsync = module.get_bin_path("rsync", required=True)
    # --timeout and --contimeout bound a peer that stops answering.
    bounds = ["--no-motd", "--timeout=300", "--contimeout=30"]
    who = peer.get("name") or "the peer"
    try:
        rc, _out, err = module.run_command(
            [rsync, *bounds, f"--max-size={MANIFEST_MAX}", f"{peer['url']}/{COMPLETE}",
             f"{partial}/{COMPLETE}"])
        if rc != 0:
            return (err.strip().splitlines() or [f"rsync exit status {rc}"])[-1]
        got = sha256(os.path.join(partial, COMPLETE))
        if got != peer["manifest"]:
            return f"{who}'s manifest has sha256 {got}, not the {peer['manifest']} it " \
                   "gave over Ansible's connection: refused"
        manifest = manifest_of(partial)
        if manifest is None:
            return f"{who}'s manifest is not one: refused"
        os.unlink(os.path.join(partial, COMPLETE))
        reason = untrusted(manifest, who)
        if reason:
            return f"{reason}: refused"
        with open(listed, "wb") as out:
            out.write(b"".join(rel.encode() + b"\0" for rel in
                               sorted([*manifest["files"], *manifest["links"]])))
        # Exactly what the manifest lists (NUL-separated, so any name is one name); links
        # as links, never followed.
        rc, _out, err = module.run_command(
            [rsync, *bounds, "--from0", f"--files-from={listed}", "--links", "--perms",
             "--times", "--owner", "--group", f"{peer['url']}/", f"{partial}/"])
        if rc != 0:
            return (err.strip().splitlines() or [f"rsync exit status {rc}"])[-1]
        reason = differs(partial, manifest, who)
        if reason:
            return f"{reason}: refused"
        # What is there holds no file (else it is not copied over): the directories the
        # services role made for it.
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(partial, dest)
        return None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if os.path.exists(listed):
            os.unlink(listed)


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "peers": {"type": "list", "elements": "dict", "default": []},
            "mark": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    root, peers = module.params["root"], module.params["peers"]
    for peer in peers:
        reason = refused(peer)
        if reason:
            module.fail_json(msg=f"jit_caches: peers: {reason}: refused")
    for digest in module.params["mark"]:
        if not DIGEST.fullmatch(digest):
            module.fail_json(msg=f"jit_caches: mark: {digest[:80]!r} is not sha256:<64 hex>")
    marked = []
    for digest in module.params["mark"]:
        path = os.path.join(root, digest.replace(":", "-"))
        # A cache its engine wrote nothing to is left unmarked: nothing to offer.
        if os.path.isdir(path) and holds(path) and not complete(path):
            if not module.check_mode:
                mark(path)
            marked.append(digest)
    have = set(digests(root, holds))
    copied, not_copied = [], []
    for peer in peers:
        if peer["digest"] in have or peer["digest"] in copied:
            continue
        if not module.check_mode:
            os.makedirs(root, mode=0o755, exist_ok=True)
            error = copy(module, root, peer)
            if error:
                not_copied.append({"digest": peer["digest"], "peer": peer.get("name"),
                                   "error": error})
                module.warn(f"compile caches of {peer['digest']} not copied from "
                            f"{peer.get('name')} ({error}): the engine compiles them")
                continue
        copied.append(peer["digest"])
    offered = held(root)
    module.exit_json(changed=bool(copied or marked), held=offered, copied=copied,
                     not_copied=not_copied, marked=marked,
                     manifests={digest: sha256(os.path.join(
                         root, digest.replace(":", "-"), COMPLETE)) for digest in offered})


if __name__ == "__main__":
    main()

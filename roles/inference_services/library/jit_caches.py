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
  - With O(peers), each digest whose cache directory holds no file yet is copied from
    the peer named for it (rsync, from the read-only share of the thorfleet role, without
    the peer's mark), into a directory beside its place, and moved into place only once
    complete; a cache this host's engine already wrote to is never replaced. A cache is
    an optimisation: a copy
    that fails leaves this host as it was, is reported in RV(not_copied) and as a warning
    (not as C(failed), which would fail the task), and the engine compiles its kernels
    itself on its first start.
  - Check mode reports what would be copied and copies nothing.
options:
  root:
    description: Where the caches live, one directory per image digest.
    type: path
    required: true
  peers:
    description:
      - The caches to copy where this host's directory of the digest holds no file;
        C(digest) (C(sha256:<hex>)), C(name) (the peer's host name, for messages) and
        C(url) (C(rsync://<address>:<port>/thorfleet-jit/sha256-<hex>)).
    type: list
    elements: dict
    default: []
  mark:
    description:
      - Digests (C(sha256:<hex>)) whose caches to mark complete, after this host's services
        on those images passed verify. A digest without a cache directory is left alone.
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
not_copied:
  description: The copies that failed, each C(digest), C(peer) and C(error).
  returned: success
  type: list
"""

import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DIR = re.compile(r"sha256-[0-9a-f]{64}")
# Written in a cache directory once the host's services on that image passed verify.
COMPLETE = ".thorfleet-complete"
# rsync URL of a peer's share: an address or host name, a port, the caches' module.
URL = re.compile(r"rsync://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}/thorfleet-jit/"
                 r"sha256-[0-9a-f]{64}")


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


def complete(path):
    """Whether a cache directory is marked complete."""
    return os.path.isfile(os.path.join(path, COMPLETE))


def held(root):
    """The digests whose caches are marked complete: what this host offers."""
    return digests(root, complete)


def refused(peer):
    """Why a peer entry is refused, or None: everything in it reaches rsync's argv."""
    digest, url = str(peer.get("digest", "")), str(peer.get("url", ""))
    if not DIGEST.fullmatch(digest):
        return f"digest {digest[:80]!r} is not sha256:<64 hex>"
    if not URL.fullmatch(url) or not url.endswith(digest.replace(":", "-")):
        return f"url {url[:120]!r} is not the thorfleet-jit share's directory of {digest}"
    return None


def copy(module, root, peer):
    """Copy one digest's cache from a peer; the error's last line, or None."""
    name = peer["digest"].replace(":", "-")
    dest = os.path.join(root, name)
    partial = os.path.join(root, f".{name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial, mode=0o755)
    rsync = module.get_bin_path("rsync", required=True)
    # --timeout and --contimeout bound a peer that stops answering; --safe-links leaves
    # out a link of the peer's that points outside the cache (absolute, or up out of it).
    rc, _out, err = module.run_command(
        [rsync, "--recursive", "--links", "--safe-links", "--perms", "--times", "--owner",
         "--group", f"--exclude=/{COMPLETE}",
         "--no-motd", "--timeout=300", "--contimeout=30", f"{peer['url']}/", f"{partial}/"])
    if rc != 0:
        shutil.rmtree(partial, ignore_errors=True)
        return (err.strip().splitlines() or [f"rsync exit status {rc}"])[-1]
    # What is there holds no file (else it is not copied over): the directories the services
    # role made for it.
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return None


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
        if os.path.isdir(path) and not complete(path):
            if not module.check_mode:
                with open(os.path.join(path, COMPLETE), "w") as out:
                    out.write("passed verify on this host\n")
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
    module.exit_json(changed=bool(copied or marked), held=held(root), copied=copied,
                     not_copied=not_copied, marked=marked)


if __name__ == "__main__":
    main()

"""Receiving a build from a host of the fleet that holds it (thorfleet_fleet_fetch): its
record and binaries copied with rsync from the peer's share of its builds, each checked
against the size and sha256 the peer reported over Ansible's connection, then against this
host's own stamp, before anything is moved in."""

from __future__ import annotations

import os
import re
import shutil

from ansible.module_utils.thorfleet_build_dirs import (
    MARKER,
    missing_targets,
    ready,
    sha256_of,
)

BINARY = re.compile(r"bin/[A-Za-z0-9._+-]{1,128}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def report_is_a_build(files):
    """Whether what a peer reported is a record and binaries, each with a size and a sum."""
    return (isinstance(files, dict) and MARKER in files
            and all(path == MARKER or BINARY.fullmatch(path) for path in files)
            and all(isinstance(meta, dict) and type(meta.get("size")) is int
                    and SHA256.fullmatch(str(meta.get("sha256"))) for meta in files.values()))


def receive(module, name, build_dir, stamp, peer, targets):
    """Copy the build with `stamp` from `peer` ({name, url, files}) into build_dir, or fail
    naming the peer and what is wrong; nothing is moved in unless all of it checks."""
    partial = os.path.join(os.path.dirname(build_dir),
                           f".{os.path.basename(build_dir)}.partial")
    files = peer["files"]
    if not report_is_a_build(files):
        module.fail_json(msg=f"{name}: peer {peer['name']} reported a build that is not its "
                             "record and binaries with sizes and sums: refused")
    os.makedirs(os.path.join(partial, "bin"), mode=0o755, exist_ok=True)
    rsync = module.get_bin_path("rsync", required=True)
    rc, _out, err = module.run_command(
        [rsync, "--files-from=-", "--from0", "--partial", "--executability", "--no-motd",
         "--timeout=300", "--contimeout=30", f"{peer['url'].rstrip('/')}/", f"{partial}/"],
        data="\0".join(sorted(files)), binary_data=True)
    if rc != 0:
        last = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        module.fail_json(msg=f"{name}: copy of build-{stamp} from peer {peer['name']} "
                             f"failed: {last}")
    for path, meta in sorted(files.items()):
        local = os.path.join(partial, path)
        size = os.path.getsize(local)
        digest = sha256_of(local)
        if (size, digest) != (meta["size"], meta["sha256"]):
            os.unlink(local)  # copied again next time, never switched to
            module.fail_json(msg=f"{name}: {path} of build-{stamp} from peer {peer['name']}: "
                                 f"size {size}, sha256 {digest} after the copy; the peer "
                                 f"reported {meta['size']}, {meta['sha256']}")
    # The guard: the record received must be this host's own stamp.
    if not ready(partial, stamp):
        shutil.rmtree(partial, ignore_errors=True)
        module.fail_json(msg=f"{name}: the build peer {peer['name']} sent is not "
                             f"build-{stamp} (its record has another stamp): refused")
    missing = missing_targets(partial, targets)
    if missing:
        shutil.rmtree(partial, ignore_errors=True)
        module.fail_json(msg=f"{name}: the build peer {peer['name']} sent has no "
                             f"{', '.join(missing)}: refused")
    shutil.rmtree(build_dir, ignore_errors=True)  # an incomplete build of this stamp
    os.replace(partial, build_dir)

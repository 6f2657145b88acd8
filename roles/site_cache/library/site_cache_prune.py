#!/usr/bin/python
"""Ansible module: remove from the site cache the images it no longer keeps."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: site_cache_prune
short_description: Remove from the site cache's registry the images it no longer keeps
description:
  - For each repository path in O(keep), removes from the registry's storage every image
    manifest of that repository whose digest is not kept (the revision links of Docker's
    distribution, under C(docker/registry/v2/repositories/<path>/_manifests/revisions)),
    then, when it removed any, runs the registry's own C(garbage-collect), which deletes the
    blobs no manifest refers to any more (layers other images share stay).
  - The cache copies images by digest, with no tags, so a manifest is named by its digest
    alone.
  - A repository with nothing to keep is left alone, as is every repository O(keep) does
    not name.
options:
  storage:
    description: The registry's root directory (thorfleet_site_cache_storage).
    type: path
    required: true
  keep:
    description: The digests to keep, C({repository path: [digest, ...]}).
    type: dict
    required: true
  config:
    description: A configuration of the registry on that storage, for C(garbage-collect).
    type: path
    required: true
  command:
    description: The registry's program.
    type: str
    default: docker-registry
  timeout:
    description: Seconds the garbage collection may take.
    type: int
    default: 7200
notes:
  - Check mode says what would be removed, and removes nothing.
  - The garbage collection runs while the cache serves, read-only, as distribution's
    documentation allows; no copy into it runs at the same time.
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Remove the images the cache no longer keeps
  site_cache_prune:
    storage: /var/lib/thorfleet/site-cache
    keep: {nvidia/vllm: ["sha256:...", "sha256:..."]}
    config: /etc/thorfleet/site-cache/fill.yml
"""

RETURN = r"""
removed:
  description: What was removed (path@digest), or would be in check mode.
  returned: always
  type: list
"""

import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# What names in the registry look like: this role's module_utils/.
from ansible.module_utils.thorfleet_registry_names import DIGEST, PATH  # noqa: E402

HEX = re.compile(r"[0-9a-f]{64}")


class PruneError(Exception):
    pass


def revisions(storage, path):
    return os.path.join(storage, "docker", "registry", "v2", "repositories", *path.split("/"),
                        "_manifests", "revisions", "sha256")


def unkept(storage, keep):
    """(path, digest, directory) of each manifest the cache holds and does not keep."""
    found = []
    for path, digests in sorted((keep or {}).items()):
        if not (isinstance(path, str) and PATH.fullmatch(path)):
            raise PruneError(f"keep: {str(path)[:80]!r} is not a repository path")
        digests = list(digests or [])
        if not all(isinstance(d, str) and DIGEST.fullmatch(d) for d in digests):
            raise PruneError(f"keep: {path}: not a list of sha256 digests")
        if not digests:
            continue  # nothing to keep is no reason to remove everything
        directory = revisions(storage, path)
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            if HEX.fullmatch(name) and f"sha256:{name}" not in digests:
                found.append((path, f"sha256:{name}", os.path.join(directory, name)))
    return found


def prune(storage, keep, config, command, timeout, check_mode):
    found = unkept(storage, keep)
    removed = [f"{path}@{digest}" for path, digest, _directory in found]
    if check_mode or not found:
        return removed
    for _path, _digest, directory in found:
        shutil.rmtree(directory)
    try:
        done = subprocess.run([command, "garbage-collect", config], capture_output=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise PruneError(f"{command} is not installed on the site cache") from None
    except subprocess.TimeoutExpired:
        raise PruneError(f"{command} garbage-collect did not finish within {timeout} s") \
            from None
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip().splitlines()
        raise PruneError(f"{command} garbage-collect failed: "
                         f"{(error or ['no message'])[-1][:400]}")
    return removed


def main():
    module = AnsibleModule(
        argument_spec={
            "storage": {"type": "path", "required": True},
            "keep": {"type": "dict", "required": True},
            "config": {"type": "path", "required": True},
            "command": {"type": "str", "default": "docker-registry"},
            "timeout": {"type": "int", "default": 7200},
        },
        supports_check_mode=True,
    )
    params = module.params
    try:
        removed = prune(params["storage"], params["keep"], params["config"], params["command"],
                        params["timeout"], module.check_mode)
    except PruneError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=bool(removed), removed=removed)


if __name__ == "__main__":
    main()

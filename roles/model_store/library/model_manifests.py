#!/usr/bin/python
"""Ansible module: which models already hold the revision asked for, from their manifests."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_manifests
short_description: Say which models already hold their requested revision
description:
  - Reads the manifest (C(thorfleet-manifest.json)) that M(model_download) leaves in each
    model directory and checks it against the request exactly as M(model_download) does
    before it would ask a hub: same source, repository and patterns, the revision asked
    for (or its commit), and every file there at its recorded size. A revision that
    M(model_download) staged beside the model (O(stage)) counts as present too, and is
    listed in C(staged).
  - Needs no hub client and runs on the host's own Python, so a converged host is checked
    in one task and M(model_download) runs only for the models listed in C(missing).
  - Checks the files fetched by URL (O(files)) the way M(url_file) leaves them: there,
    of the pinned sha256, owned by root with mode 0644.
  - Never changes anything.
options:
  models:
    description:
      - The requests, each with C(dest), C(source), C(repo_id), C(revision) and optional
        C(allow_patterns) and C(ignore_patterns), as M(model_download) takes them.
        Other keys are kept in each result's C(item).
    type: list
    elements: dict
    required: true
  files:
    description:
      - Files fetched by URL, each with C(dest) and C(sha256) (empty when none is pinned
        yet: such a file is always listed in C(files_missing), to be fetched and its sum
        recorded).
    type: list
    elements: dict
    default: []
  report:
    description:
      - Return each present model's manifest and, for a revision staged beside its model,
        the files that lie in the staging directory (C(manifest), C(fetched) in each
        result): what a host of the fleet copying the model from this one verifies against.
    type: bool
    default: false
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Check each model against its manifest
  model_manifests:
    models: "{{ model_store_result.models }}"
    files: "{{ model_store_result.files }}"
  register: __model_store_present
"""

RETURN = r"""
missing:
  description: C(dest) of each model whose directory does not hold what was asked.
  returned: always
  type: list
  elements: str
files_missing:
  description: C(dest) of each file that is absent, of another sum, or not as M(url_file) leaves it.
  returned: always
  type: list
  elements: str
staged:
  description: C(dest) of each model whose asked-for revision waits beside it for the switch.
  returned: always
  type: list
  elements: str
results:
  description:
    - One entry per model already present, shaped as a registered loop of
      M(model_download) (C(item), C(commit), C(files), C(first_sums)), so the lock's
      filters read both alike; with O(report), also C(manifest) and C(fetched).
  returned: always
  type: list
  elements: dict
"""

import os  # noqa: E402
import stat  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.thorfleet_model_files import (  # noqa: E402
    file_hashes,
    manifest_digest,
    manifest_satisfies,
    read_manifest,
    read_staged,
    staged_satisfies,
)


def present(model):
    """What the host holds of what `model` asks for: (manifest, None) in its directory,
    (manifest, [files in the staging directory]) staged beside it for the switch, else
    (None, None)."""
    dest = str(model["dest"]).rstrip("/")
    request = {"source": model["source"], "repo_id": model["repo_id"],
               "revision": model["revision"],
               "allow_patterns": model.get("allow_patterns") or [],
               "ignore_patterns": model.get("ignore_patterns") or []}
    staged = read_staged(dest)
    manifest = read_manifest(dest)
    if manifest_satisfies(manifest, request, dest):
        # A revision staged beside it that no one asks for is for model_download to drop.
        return (None, None) if staged else (manifest, None)
    if manifest and staged_satisfies(staged, request):
        return staged["manifest"], staged["fetched"]
    return None, None


def file_present(entry):
    """Whether a file fetched by URL is at its dest as url_file leaves it."""
    dest, expected = str(entry.get("dest") or ""), str(entry.get("sha256") or "").lower()
    try:
        info = os.stat(dest)
    except OSError:
        return False
    if not (expected and stat.S_ISREG(info.st_mode) and info.st_uid == 0 and info.st_gid == 0
            and stat.S_IMODE(info.st_mode) == 0o644):
        return False
    return file_hashes(dest)[0] == expected


def main():
    module = AnsibleModule(
        argument_spec={"models": {"type": "list", "elements": "dict", "required": True},
                       "files": {"type": "list", "elements": "dict", "default": []},
                       "report": {"type": "bool", "default": False}},
        supports_check_mode=True,
    )
    missing, staged, results = [], [], []
    for model in module.params["models"]:
        for key in ("dest", "source", "repo_id", "revision"):
            if not isinstance(model.get(key), str) or not model[key]:
                module.fail_json(msg=f"models: an entry has no {key}")
        manifest, beside = present(model)
        if manifest is None:
            missing.append(model["dest"])
            continue
        if beside is not None:
            staged.append(model["dest"])
        results.append({"item": model, "changed": False, "commit": manifest["commit"],
                        "files": sorted(manifest["files"]), "first_sums": {},
                        "manifest_digest": manifest_digest(manifest)})
        if module.params["report"]:
            results[-1].update(manifest=manifest, fetched=beside or [])
    files_missing = [entry.get("dest") for entry in module.params["files"]
                     if not file_present(entry)]
    module.exit_json(changed=False, missing=missing, staged=staged,
                     files_missing=files_missing, results=results)


if __name__ == "__main__":
    main()

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
    for (or its commit), and every file there at its recorded size.
  - Needs no hub client and runs on the host's own Python, so a converged host is checked
    in one task and M(model_download) runs only for the models listed in C(missing).
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
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Check each model against its manifest
  model_manifests:
    models: "{{ __model_store_plan.models }}"
  register: __model_store_present
"""

RETURN = r"""
missing:
  description: C(dest) of each model whose directory does not hold what was asked.
  returned: always
  type: list
  elements: str
results:
  description:
    - One entry per model already present, shaped as a registered loop of
      M(model_download) (C(item), C(commit), C(files), C(first_sums)), so the lock's
      filters read both alike.
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.thorfleet_model_files import (  # noqa: E402
    manifest_satisfies,
    read_manifest,
)


def present(model):
    """The manifest of a model whose directory holds what `model` asks for, else None."""
    dest = str(model["dest"]).rstrip("/")
    request = {"source": model["source"], "repo_id": model["repo_id"],
               "revision": model["revision"],
               "allow_patterns": model.get("allow_patterns") or [],
               "ignore_patterns": model.get("ignore_patterns") or []}
    manifest = read_manifest(dest)
    return manifest if manifest_satisfies(manifest, request, dest) else None


def main():
    module = AnsibleModule(
        argument_spec={"models": {"type": "list", "elements": "dict", "required": True}},
        supports_check_mode=True,
    )
    missing, results = [], []
    for model in module.params["models"]:
        for key in ("dest", "source", "repo_id", "revision"):
            if not isinstance(model.get(key), str) or not model[key]:
                module.fail_json(msg=f"models: an entry has no {key}")
        manifest = present(model)
        if manifest is None:
            missing.append(model["dest"])
        else:
            results.append({"item": model, "changed": False, "commit": manifest["commit"],
                            "files": sorted(manifest["files"]), "first_sums": {}})
    module.exit_json(changed=False, missing=missing, results=results)


if __name__ == "__main__":
    main()

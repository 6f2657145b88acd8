#!/usr/bin/python
"""Ansible module: a model repository from Hugging Face or ModelScope, pinned and verified."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_download
short_description: Download a model from Hugging Face or ModelScope at a pinned revision
description:
  - Downloads the files of a model repository that match O(allow_patterns) and not
    O(ignore_patterns), at O(revision) resolved to a commit, with the real C(huggingface_hub)
    or C(modelscope) client, to O(dest).
  - A manifest in O(dest) (C(thorfleet-manifest.json)) records source, repository, revision,
    commit, patterns, and each file's size and hashes. When it matches the request and the
    files are there, nothing is downloaded, the hub is not contacted (an offline re-run
    succeeds) and the result is not changed.
  - Files download to a staging directory beside O(dest) and are moved into O(dest) only when
    every wanted file is complete and verified (size, then sha256, or the git blob hash for
    small files a hub lists without sha256). A file a hub lists with no hash at all is
    checked against O(sha256s) when given; otherwise its sha256 is returned in
    C(first_sums), for the lock file to pin. A failed or interrupted run leaves O(dest) as
    it was; the next run resumes the partial file and does not fetch finished files again.
  - What a hub answers is data, checked before use: the commit must be 40 hex characters,
    and every listed path must stay inside O(dest) (relative, no C(..), no control
    characters, not the manifest). A manifest that fails the same checks is not trusted.
  - Files already in O(dest) with the hashes the new revision lists are kept, not fetched.
  - With O(stage), a new revision of a model O(dest) already holds is made ready beside
    it instead of moved in (its files and a C(thorfleet-staged.json) in the staging
    directory): the running service keeps reading the revision it loaded until the
    switch moves the new one in (module M(model_revisions)). A staged revision that
    matches the request counts as present; one that does not is discarded.
  - With O(peer), the files come from a host of the fleet that holds the revision (its
    rsync daemon's share) instead of the hub: the peer's manifest, read over Ansible's
    connection, is the listing, and each file is verified against its sha256 as a hub's
    file is. Staging, resume, O(stage) and the manifest are the same; the hub is not
    contacted and no hub client is needed.
  - Free space is checked against the sizes the hub reports before anything is fetched.
  - Check mode reports the files and bytes a run would fetch; diff mode shows the old and new
    revision and commit.
options:
  source:
    description: The hub.
    type: str
    required: true
    choices: [huggingface, modelscope]
  repo_id:
    description: Repository id on that hub, C(<org>/<name>).
    type: str
    required: true
  revision:
    description:
      - Branch, tag or full commit. A branch or tag is resolved to a commit, which the
        manifest and the result record. The catalogue names each model's (the hub's
        default branch where it names none).
    type: str
    required: true
  allow_patterns:
    description: Glob patterns of the files to fetch (all files when omitted).
    type: list
    elements: str
  ignore_patterns:
    description: Glob patterns of files to leave out.
    type: list
    elements: str
  dest:
    description: The model directory, for example C(/models/Qwen/Qwen3-8B).
    type: path
    required: true
  token:
    description: Access token for gated or private repositories. Never logged or recorded.
    type: str
  endpoint:
    description:
      - Hub endpoint, for a mirror (C(HF_ENDPOINT) for Hugging Face, the ModelScope
        endpoint). Empty for the public hub.
    type: str
  sha256s:
    description:
      - sha256 by path of files the hub lists without a hash, pinned by an earlier run (the
        lock file). A fetched file must match.
    type: dict
    default: {}
  staging_dir:
    description:
      - Where files are fetched before they are verified; must be on the file system of
        O(dest). Defaults to C(.<name>.partial) beside O(dest).
    type: path
  stage:
    description:
      - Make a new revision of a model O(dest) already holds ready beside it, for
        M(model_revisions) to switch in, instead of moving it into O(dest).
    type: bool
    default: false
  manifest_digest:
    description:
      - The digest the lock pins for this revision's manifest (its commit and each file's
        size and sha256; RV(manifest_digest)). With O(peer), the peer's manifest must
        have it, else nothing is copied and the module fails naming both digests.
    type: str
    default: ""
  peer:
    description:
      - A host of the fleet to copy the revision from instead of the hub.
    type: dict
    suboptions:
      name:
        description: The peer's inventory name, for messages.
        type: str
        required: true
      url:
        description: rsync URL of the model's directory on the peer
          (C(rsync://<address>:<port>/thorfleet-models/<path>)).
        type: str
        required: true
      staging_url:
        description: rsync URL of the peer's staging directory of the model, where the
          files of a revision it staged beside the model are.
        type: str
        required: true
      manifest:
        description: The peer's manifest of the revision (M(model_manifests) with
          O(model_manifests.report)): the files, with size and sha256, to verify against.
        type: dict
        required: true
      fetched:
        description: The files of that revision in the peer's staging directory.
        type: list
        elements: str
        default: []
requirements:
  - huggingface_hub (for O(source=huggingface)), modelscope (for O(source=modelscope)),
    on the managed host; rsync, for O(peer).
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Only the Q5_K_M file of a GGUF repository, through a LAN mirror
  model_download:
    source: huggingface
    repo_id: Qwen/Qwen3-8B-GGUF
    revision: main
    allow_patterns: [Qwen3-8B-Q5_K_M.gguf]
    dest: /models/Qwen/Qwen3-8B-GGUF
    endpoint: http://hf-mirror.example.internal
    token: "{{ thorfleet_hf_token | default(omit) }}"

- name: Whisper from ModelScope at a tag
  model_download:
    source: modelscope
    repo_id: openai-mirror/whisper-small
    revision: v1.0.0
    dest: /models/openai-mirror/whisper-small
"""

RETURN = r"""
commit:
  description: The commit the files come from.
  returned: success
  type: str
files:
  description: The files of the model, relative to O(dest).
  returned: success
  type: list
  elements: str
fetched:
  description: The files fetched (or, in check mode, to be fetched) in this run.
  returned: success
  type: list
  elements: str
first_sums:
  description: sha256 by path of the files fetched that the hub lists no hash for and
    O(sha256s) did not pin.
  returned: success
  type: dict
bytes_to_fetch:
  description: Bytes the run had to fetch, less what an earlier interrupted run left.
  returned: success
  type: int
bytes_downloaded:
  description: Bytes received from the hub in this run, counted by the client's progress.
  returned: success
  type: int
manifest:
  description: Path of the manifest.
  returned: success
  type: str
manifest_digest:
  description: The digest of the revision's manifest (its commit and each file's size and
    sha256, as canonical JSON), for the lock to pin.
  returned: success, but not in check mode for a revision not held yet
  type: str
staged:
  description: Whether the revision waits beside O(dest) for the switch (O(stage)).
  returned: success
  type: bool
origin:
  description: Where the files fetched came from, C(hub) or the peer's name.
  returned: success
  type: str
"""

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# The hub clients and the checks of what they answer: this role's module_utils/.
from ansible.module_utils.thorfleet_hub_clients import HUBS, Counter, Peer  # noqa: E402
from ansible.module_utils.thorfleet_model_files import (  # noqa: E402
    MANIFEST,
    STAGED,
    HubError,
    check_commit,
    check_paths,
    free_bytes,
    manifest_digest,
    manifest_satisfies,
    move_into,
    partial_bytes,
    read_manifest,
    read_staged,
    reusable,
    select,
    stage,
    staged_satisfies,
    staging_dir,
    verify,
    write_manifest,
)


def run(module):
    params = module.params
    source = params["source"]
    dest = params["dest"].rstrip("/")
    request = {
        "source": source,
        "repo_id": params["repo_id"],
        "revision": params["revision"],
        "allow_patterns": params["allow_patterns"] or [],
        "ignore_patterns": params["ignore_patterns"] or [],
    }
    staging = params["staging_dir"] or staging_dir(dest)
    peer = params["peer"]
    origin = peer["name"] if peer else "hub"
    label = (f"model {request['repo_id']}@{request['revision']} ({source}"
             f"{', from peer ' + origin if peer else ''})")
    old = read_manifest(dest)
    result = {"changed": False, "manifest": os.path.join(dest, MANIFEST), "fetched": [],
              "first_sums": {}, "bytes_to_fetch": 0, "bytes_downloaded": 0, "staged": False,
              "origin": origin}

    in_place = manifest_satisfies(old, request, dest)
    staged = read_staged(dest, staging)
    wanted_stage = bool(params["stage"] and old and not in_place
                        and staged_satisfies(staged, request))
    if os.path.exists(os.path.join(staging, STAGED)) and not wanted_stage:
        # A staged revision no one asks for any more: the switch must never move it in.
        result["changed"] = True
        if not module.check_mode:
            shutil.rmtree(staging, ignore_errors=True)
    if in_place:
        module.exit_json(commit=old["commit"], files=sorted(old["files"]),
                         manifest_digest=manifest_digest(old), **result)
    if wanted_stage:
        manifest = staged["manifest"]
        module.exit_json(commit=manifest["commit"], files=sorted(manifest["files"]),
                         manifest_digest=manifest_digest(manifest),
                         **{**result, "staged": True})
    pinned = params["manifest_digest"]
    if peer and pinned:
        # A fleet peer's or a bundle's manifest: read over Ansible's connection, but
        # whoever could change the files there could change it too. The lock pinned the
        # manifest the first fetch from the hub made.
        try:
            got = manifest_digest(peer["manifest"])
        except (KeyError, TypeError, AttributeError):
            got = "none (not a manifest)"
        if got != pinned:
            module.fail_json(msg=f"{label}: {origin}'s manifest has digest {got}, not the "
                                 f"{pinned} the lock pins (model_manifests): refused, nothing "
                                 "copied", dest=dest)

    try:
        hub = (Peer(module, peer, request) if peer
               else HUBS[source](params["endpoint"], params["token"]))
        commit, remote = hub.resolve(request["repo_id"], request["revision"])
        check_commit(commit)
        check_paths(remote)
        for path, known in (params["sha256s"] or {}).items():
            if path in remote and not (remote[path].sha256 or remote[path].git_sha1):
                remote[path].sha256 = known
        wanted = select(remote, request["allow_patterns"], request["ignore_patterns"])
        if not wanted:
            raise HubError(f"no file at commit {commit} matches allow_patterns "
                           f"{request['allow_patterns']} and ignore_patterns "
                           f"{request['ignore_patterns']}")
        old_files = (old or {}).get("files", {})
        fetch = [remote[p] for p in wanted if not reusable(old_files, remote[p], dest)]
        already = partial_bytes(staging) if os.path.isdir(staging) else 0
        to_fetch = max(sum(r.size for r in fetch) - already, 0)
        available = free_bytes(dest)
        if to_fetch > available:
            raise HubError(f"needs {to_fetch} bytes under {dest}, only {available} free")
    except HubError as error:
        module.fail_json(msg=f"{label}: {error}", dest=dest)

    before = {"revision": (old or {}).get("revision"), "commit": (old or {}).get("commit")}
    after = {"revision": request["revision"], "commit": commit}
    result.update(changed=True, commit=commit, files=wanted,
                  fetched=[r.path for r in fetch], bytes_to_fetch=to_fetch,
                  diff={"before": json.dumps(before, indent=1) + "\n",
                        "after": json.dumps(after, indent=1) + "\n",
                        "before_header": f"{dest} (revision)",
                        "after_header": f"{dest} (revision)"})
    if module.check_mode:
        module.exit_json(**result)

    os.makedirs(staging, mode=0o700, exist_ok=True)
    Counter.received = 0
    try:
        hub.download(request["repo_id"], commit, fetch, staging)
        records = {r.path: verify(os.path.join(staging, r.path), r) for r in fetch}
    except (HubError, OSError) as error:
        module.fail_json(msg=f"{label}: {error}", dest=dest, bytes_downloaded=Counter.received)

    files = {p: (records[p] if p in records else old_files[p]) for p in wanted}
    result["manifest_digest"] = manifest_digest({"commit": commit, "files": files})
    result["first_sums"] = {r.path: records[r.path]["sha256"] for r in fetch
                            if not (r.sha256 or r.git_sha1)}
    result["bytes_downloaded"] = Counter.received
    if params["stage"] and old:
        stage(module, staging, {**request, "commit": commit, "files": files},
              [r.path for r in fetch], sorted(set(old_files) - set(wanted)))
        module.exit_json(**{**result, "staged": True})
    os.makedirs(dest, mode=0o755, exist_ok=True)
    # Between the first move and the new manifest, dest is neither revision: without a
    # manifest, a run cut off here is a download to redo, never a match.
    if old:
        os.unlink(os.path.join(dest, MANIFEST))
    move_into(staging, dest, [r.path for r in fetch], sorted(set(old_files) - set(wanted)))
    write_manifest(module, dest, {**request, "commit": commit, "files": files})
    shutil.rmtree(staging, ignore_errors=True)
    module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec={
            "source": {"type": "str", "required": True, "choices": list(HUBS)},
            "repo_id": {"type": "str", "required": True},
            "revision": {"type": "str", "required": True},
            "allow_patterns": {"type": "list", "elements": "str"},
            "ignore_patterns": {"type": "list", "elements": "str"},
            "dest": {"type": "path", "required": True},
            "token": {"type": "str", "no_log": True},
            "sha256s": {"type": "dict", "default": {}},
            "endpoint": {"type": "str"},
            "staging_dir": {"type": "path"},
            "stage": {"type": "bool", "default": False},
            "manifest_digest": {"type": "str", "default": ""},
            "peer": {"type": "dict", "options": {
                "name": {"type": "str", "required": True},
                "url": {"type": "str", "required": True},
                "staging_url": {"type": "str", "required": True},
                "manifest": {"type": "dict", "required": True},
                "fetched": {"type": "list", "elements": "str", "default": []},
            }},
        },
        supports_check_mode=True,
    )
    run(module)


if __name__ == "__main__":
    main()

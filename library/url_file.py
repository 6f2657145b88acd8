#!/usr/bin/python
"""Ansible module: a file fetched by URL and pinned by sha256."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: url_file
short_description: Fetch a file by URL, pinned by its sha256
description:
  - Places the file at O(url) at O(dest), checked against O(sha256).
  - When O(dest) already has that sha256, nothing is fetched (an offline re-run succeeds)
    and nothing changes.
  - Without O(sha256), the file is fetched and its sum returned, for the caller to record
    (trust on first use; thorfleet keeps it in the lock file and passes it ever after).
  - The file is fetched to a temporary file beside O(dest) and moved into place only when
    its sum is right. A mismatch fails, naming the URL and both sums, and leaves O(dest)
    as it was.
  - With O(content), the file's bytes read elsewhere (a site's bundle, over Ansible's
    connection to the host that holds it) are written instead of fetching O(url), which
    then only names the file; they are checked against O(sha256) the same way.
  - Check mode reports whether the file would be fetched; diff mode shows old and new sum.
options:
  url:
    description: Where to fetch the file (the upstream URL or a mirror of it).
    type: str
    required: true
  dest:
    description: Where the file goes.
    type: path
    required: true
  sha256:
    description: The file's expected sha256; empty to fetch and report it.
    type: str
    default: ""
  timeout:
    description: Seconds to wait for the server.
    type: int
    default: 30
  content:
    description: The file's bytes, base64-encoded (as M(ansible.builtin.slurp) returns
      them), written instead of fetching O(url); needs O(sha256).
    type: str
extends_documentation_fragment:
  - ansible.builtin.files
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: The Qwen3 nonthinking chat template, beside the model that uses it
  url_file:
    url: https://qwen.readthedocs.io/en/latest/_downloads/c101120b5bebcc2f12ec504fc93a965e/qwen3_nonthinking.jinja
    dest: /models/templates/qwen3_nonthinking.jinja
    sha256: "{{ lock.files[url] | default('') }}"
    owner: root
    group: root
    mode: "0644"
"""

RETURN = r"""
sha256:
  description: The sha256 of the file at O(dest) (in check mode, of what is there now, or empty).
  returned: success
  type: str
fetched:
  description: Whether the URL was fetched in this run (not when O(content) was written).
  returned: success
  type: bool
"""

import base64  # noqa: E402
import binascii  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.urls import fetch_url  # noqa: E402


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(module, url, directory):
    """The URL's content in a temporary file in directory, and its sha256."""
    response, info = fetch_url(module, url, timeout=module.params["timeout"])
    if info["status"] != 200:
        module.fail_json(msg=f"{url}: cannot fetch ({info['status']}: {info.get('msg', '')})",
                         url=url)
    digest = hashlib.sha256()
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".url_file.")
    with os.fdopen(handle, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 16), b""):
            digest.update(chunk)
            out.write(chunk)
    return tmp, digest.hexdigest()


def written(module, content, directory):
    """The given bytes (base64) in a temporary file in directory, and their sha256."""
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        module.fail_json(msg=f"content: {module.params['dest']}: not base64")
    handle, tmp = tempfile.mkstemp(dir=directory, prefix=".url_file.")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return tmp, hashlib.sha256(data).hexdigest()


def main():
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "dest": {"type": "path", "required": True},
            "sha256": {"type": "str", "default": ""},
            "timeout": {"type": "int", "default": 30},
            "content": {"type": "str"},
        },
        add_file_common_args=True,
        supports_check_mode=True,
    )
    url, dest = module.params["url"], module.params["dest"]
    expected = module.params["sha256"].lower()
    if module.params["content"] is not None and not expected:
        module.fail_json(msg=f"sha256: {dest}: the sum its content must have, with content")
    current = sha256_of(dest) if os.path.isfile(dest) else ""
    result = {"changed": False, "url": url, "dest": dest, "sha256": current, "fetched": False}

    if not (expected and current == expected):
        result["diff"] = {"before": f"{current or '(none)'}\n",
                          "after": f"{expected or '(to fetch)'}\n",
                          "before_header": f"{dest} (sha256)", "after_header": f"{dest} (sha256)"}
        if module.check_mode:
            module.exit_json(**{**result, "changed": True})
        directory = os.path.dirname(dest)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if module.params["content"] is not None:
            tmp, fetched = written(module, module.params["content"], directory)
        else:
            tmp, fetched = fetch(module, url, directory)
        if expected and fetched != expected:
            os.unlink(tmp)
            module.fail_json(msg=f"{url}: sha256 mismatch: expected {expected}, got {fetched}; "
                                 f"{dest} left as it was", url=url, expected=expected, got=fetched)
        result.update(fetched=module.params["content"] is None, sha256=fetched,
                      changed=fetched != current)
        if result["changed"]:
            module.atomic_move(tmp, dest)
        else:
            os.unlink(tmp)

    file_args = module.load_file_common_arguments(module.params, path=dest)
    if os.path.exists(dest):
        result["changed"] = module.set_fs_attributes_if_different(file_args, result["changed"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()

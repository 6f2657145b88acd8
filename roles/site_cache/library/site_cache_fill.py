#!/usr/bin/python
"""Ansible module: copy container images into the site cache's registry with skopeo."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: site_cache_fill
short_description: Copy images the fleet lacks from their registry into the site cache, once
description:
  - For each image and platform in O(images), finds the digest of that platform's image
    and copies it, unless the cache holds it already, from the upstream registry into the
    cache's registry with C(skopeo copy --preserve-digests), so the cache serves it under
    the same digest.
  - An image is named by its tag and the digest the lock pinned for it (C(locked)); with
    no pinned digest, the tag is resolved (C(skopeo inspect --raw), the digest of the
    manifest the registry gives). When that digest names a multi-architecture list, the
    list is read (and checked against its digest) for the platform's image, unless
    O(platforms) (the lock's) already says which it is. Only that image is copied: a
    registry keeps a list only with every platform's image in it.
  - Nothing the registry answers is used unchecked: a manifest whose bytes do not give
    its digest, or that is not a manifest, fails naming the image.
options:
  images:
    description: What to copy, each a dict with C(ref) (the catalogue's reference, named in
      errors), C(upstream) (the repository to copy from, with its registry), C(tag),
      C(path) (the repository's path in the cache), C(locked) (the lock's digest, or
      empty to resolve the tag) and C(platform) (C(linux/arm64)).
    type: list
    elements: dict
    required: true
  platforms:
    description: The lock's image_platforms, C({list digest: {platform: digest}}).
    type: dict
    default: {}
  registry:
    description: The cache's writable registry (C(127.0.0.1:5444), plain HTTP, on the
      loopback address).
    type: str
    default: ""
  authfile:
    description: skopeo's login file for the upstream registries.
    type: path
    required: true
  archive_dir:
    description:
      - Copy into OCI archives in this directory (C(<platform digest hex>.tar), a bundle's
        C(images/)) instead of a registry: what C(thorfleet bundle create) carries to a site
        with no internet. Each keeps the image's manifest byte for byte, so its digest.
    type: path
  archives:
    description:
      - Copy from these OCI archives instead of the upstream, C({platform digest: archive
        path}) (a bundle's, on the site cache): an image not among them fails, naming it.
    type: dict
  timeout:
    description: Seconds one skopeo command may take.
    type: int
    default: 7200
notes:
  - Check mode resolves and reads, and copies nothing.
author:
  - thorfleet
"""

EXAMPLES = r"""
- name: Copy the hosts' images into the cache
  site_cache_fill:
    images:
      - {ref: nvcr.io/nvidia/vllm:25.10-py3, upstream: nvcr.io/nvidia/vllm,
         path: nvidia/vllm, tag: 25.10-py3, locked: "", platform: linux/arm64}
    registry: 127.0.0.1:5444
    authfile: /etc/thorfleet/site-cache/auth.json
"""

RETURN = r"""
resolved:
  description: The digest each tag resolved to, C({ref: digest}), for the lock's images.
  returned: always
  type: dict
platforms:
  description: The platform's image found in each list, C({list digest: {platform: digest}}).
  returned: always
  type: dict
copied:
  description: What was copied into the cache (repository@digest), or would be in check mode.
  returned: always
  type: list
wanted:
  description: The digest of each image asked for, copied or held already, by repository
    path, C({path: [digest, ...]}) (not in check mode on a new cache).
  returned: always
  type: dict
"""

import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

# What names in the registry look like: this role's module_utils/.
from ansible.module_utils.thorfleet_registry_names import DIGEST, PATH, REPOSITORY  # noqa: E402

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9]+(?:/[a-z0-9]+)?")
LISTS = ("application/vnd.docker.distribution.manifest.list.v2+json",
         "application/vnd.oci.image.index.v1+json")
IMAGES = ("application/vnd.docker.distribution.manifest.v2+json",
          "application/vnd.oci.image.manifest.v1+json")


class FillError(Exception):
    pass


def digest_of(raw):
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def platform_image(ref, listed, raw, platform):
    """The digest of `platform`'s image in the manifest `raw` (of digest `listed`): the
    manifest's own digest when it is one image, else the list's entry for the platform."""
    if digest_of(raw) != listed:
        raise FillError(f"image {ref}: the registry's manifest for {listed} does not have "
                        "that digest")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise FillError(f"image {ref}: the registry's manifest for {listed} is not JSON") \
            from None
    if not isinstance(manifest, dict):
        raise FillError(f"image {ref}: the registry's manifest for {listed} is not a manifest")
    kind = manifest.get("mediaType")
    if kind not in LISTS and not (kind is None and "manifests" in manifest):
        if kind in IMAGES or (kind is None and "layers" in manifest):
            return listed
        raise FillError(f"image {ref}: the registry's manifest for {listed} is of a kind "
                        f"thorfleet does not copy ({str(kind)[:80]!r})")
    os_name, _, arch = platform.partition("/")
    arch, _, variant = arch.partition("/")
    offered = []
    for entry in manifest.get("manifests") or []:
        found = (entry or {}).get("platform") or {} if isinstance(entry, dict) else {}
        offered.append(f"{found.get('os')}/{found.get('architecture')}")
        if found.get("os") == os_name and found.get("architecture") == arch \
                and (not variant or found.get("variant") == variant):
            digest = entry.get("digest")
            if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
                raise FillError(f"image {ref}: the list {listed} names no valid digest for "
                                f"{platform}")
            return digest
    raise FillError(f"image {ref}: the list {listed} has no {platform} image (it has "
                    f"{', '.join(sorted(set(offered)))[:200] or 'none'})")


class Skopeo:
    def __init__(self, module, authfile, timeout):
        self.module, self.authfile, self.timeout = module, authfile, timeout

    def run(self, args, what):
        argv = ["skopeo", *args]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise FillError(f"{what}: skopeo is not installed on the site cache") from None
        except subprocess.TimeoutExpired:
            raise FillError(f"{what}: skopeo did not finish within {self.timeout} s "
                            "(site_cache_copy_timeout)") from None
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip().splitlines()
            raise FillError(f"{what}: skopeo failed: {(error or ['no message'])[-1][:400]}")
        return done.stdout

    def manifest(self, reference, what):
        return self.run(["inspect", "--raw", "--retry-times", "3",
                         "--authfile", self.authfile, f"docker://{reference}"], what)

    def copy(self, source, destination, what):
        """Both as skopeo names them (docker://..., oci-archive:...)."""
        self.run(["copy", "--quiet", "--preserve-digests", "--retry-times", "3",
                  "--src-authfile", self.authfile, "--dest-tls-verify=false",
                  source, destination], what)


def held(registry, path, digest):
    """Whether the cache's registry has the manifest (plain HTTP on the loopback address);
    a registry not running (check mode) holds nothing."""
    request = urllib.request.Request(
        f"http://{registry}/v2/{path}/manifests/{digest}", method="HEAD",
        headers={"Accept": ", ".join(IMAGES + LISTS)})
    try:
        with urllib.request.urlopen(request, timeout=30):
            return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise FillError(f"the cache's registry answered {error.code} for {path}@{digest}") \
            from None
    except OSError:
        return False


def checked(image):
    """An entry of `images`, its fields checked: they become skopeo's arguments."""
    ref = str(image.get("ref") or "")[:200]
    fields = {"upstream": REPOSITORY, "path": PATH, "tag": TAG, "platform": PLATFORM}
    for field, pattern in fields.items():
        value = image.get(field)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise FillError(f"image {ref}: field {field}: {str(value)[:80]!r} is not valid")
    locked = image.get("locked") or ""
    if locked and not DIGEST.fullmatch(str(locked)):
        raise FillError(f"image {ref}: the lock's digest {str(locked)[:80]!r} is not a sha256 "
                        "digest")
    return {**image, "ref": ref, "locked": locked}


def archive_of(directory, digest):
    return os.path.join(directory, digest.removeprefix("sha256:") + ".tar")


def fill(images, platforms, registry, skopeo, check_mode, archive_dir=None, archives=None):
    images = [checked(image) for image in images]
    if check_mode and (shutil.which("skopeo") is None or not os.path.exists(skopeo.authfile)):
        # Check mode on a new cache: skopeo or its login is not there yet, so nothing can
        # be resolved; every image would be copied.
        return {"resolved": {}, "platforms": {},
                "copied": [f"{image['path']}:{image['tag']}" for image in images],
                "wanted": {}}
    resolved, learned, copied, wanted = {}, {}, [], {}
    for image in images:
        ref, upstream, platform = image["ref"], image["upstream"], image["platform"]
        raw, listed = None, image["locked"]
        if not listed:
            raw = skopeo.manifest(f"{upstream}:{image['tag']}", f"image {ref}")
            listed = resolved[ref] = digest_of(raw)
        digest = ((platforms or {}).get(listed) or {}).get(platform)
        if not (isinstance(digest, str) and DIGEST.fullmatch(digest)):
            if raw is None:
                raw = skopeo.manifest(f"{upstream}@{listed}", f"image {ref}")
            digest = platform_image(ref, listed, raw, platform)
            learned.setdefault(listed, {})[platform] = digest
        path = image["path"]
        if digest not in wanted.setdefault(path, []):
            wanted[path].append(digest)
        source = f"docker://{upstream}@{digest}"
        if archives is not None:
            if not isinstance(archives.get(digest), str):
                raise FillError(f"image {ref}: the bundle has no {platform} image {digest}")
            source = f"oci-archive:{archives[digest]}"
        if archive_dir:
            destination = archive_of(archive_dir, digest)
            if os.path.exists(destination):
                continue
        elif held(registry, path, digest):
            continue
        copied.append(f"{path}@{digest}")
        if check_mode:
            continue
        what = f"image {ref} ({platform})"
        if archive_dir:
            # Written aside and moved in: an archive there is a whole one.
            partial = destination + ".partial"
            if os.path.exists(partial):
                os.unlink(partial)
            skopeo.copy(source, f"oci-archive:{partial}", what)
            os.replace(partial, destination)
        else:
            skopeo.copy(source, f"docker://{registry}/{path}@{digest}", what)
    return {"resolved": resolved, "platforms": learned, "copied": copied, "wanted": wanted}


def main():
    module = AnsibleModule(
        argument_spec={
            "images": {"type": "list", "elements": "dict", "required": True},
            "platforms": {"type": "dict", "default": {}},
            "registry": {"type": "str", "default": ""},
            "archive_dir": {"type": "path"},
            "archives": {"type": "dict"},
            "authfile": {"type": "path", "required": True},
            "timeout": {"type": "int", "default": 7200},
        },
        supports_check_mode=True,
    )
    params = module.params
    skopeo = Skopeo(module, params["authfile"], params["timeout"])
    try:
        if not (params["registry"] or params["archive_dir"]):
            raise FillError("registry or archive_dir: one is needed")
        result = fill(params["images"], params["platforms"], params["registry"], skopeo,
                      module.check_mode, params["archive_dir"], params["archives"])
    except FillError as error:
        module.fail_json(msg=str(error))
    module.exit_json(changed=bool(result["copied"]), **result)


if __name__ == "__main__":
    main()

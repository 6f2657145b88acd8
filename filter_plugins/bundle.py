"""Filters of the bundle for sites with no internet (thorfleet_bundle): what an inventory
needs at its locked pins, gathered from every host once (what `thorfleet bundle create`
writes), and what a bundle lacks of what a host needs (what preflight refuses).

A host says what it needs with the plans the roles already make (model_store's models
and files, ngc_images' images, ggml_build's engines). The bundle's index (bundle.json)
lists what it holds by the same keys: a model by path, hub, repository, commit and
patterns; a file by name and sha256; an image by the platform's digest; an engine's
source by its commit.
"""

from __future__ import annotations

import json
import re

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils.formats import COMMIT, is_commit
from ansible_collections.thorfleet.lib.plugins.plugin_utils.models import bundle_model_id

BUNDLE_FORMAT = 1
INDEX = "bundle.json"
SHA256 = re.compile(r"[0-9a-f]{64}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class BundleError(ValueError):
    """A bundle or its index that cannot be used; the message names what."""


def model_id(entry):
    """The directory of a model request in the bundle (models/<id>): one per model_key
    (path, hub, repository, revision and patterns), as two hosts asking alike share one
    copy, as when fetching once per fleet."""
    return bundle_model_id(entry)


def _model_name(entry):
    return f"model {entry['path']} ({entry['source']} {entry['repo_id']}@{entry['revision']})"


def _pinned_model(entry):
    return entry["revision"] != entry["requested_revision"] or bool(
        is_commit(entry["revision"]))


def image_archive(platform_digest):
    """Where an image lies in the bundle: an OCI archive named by its platform's digest."""
    return f"images/{platform_digest.removeprefix('sha256:')}.tar"


def bundle_need(hostvars):
    """What one host needs (its hostvars, after roles/thor_preflight/tasks/bundle_needs.yml:
    the role's result, thor_preflight_result.bundle_needs)."""
    needs = (hostvars.get("thor_preflight_result") or {}).get("bundle_needs") or {}
    return {"host": hostvars["inventory_hostname"],
            **{part: needs.get(part) or [] for part in ("models", "files", "images", "engines")}}


# Per part of a host's needs: where it goes in the bundle's contents, whether the lock
# pins it, the key that makes two hosts' needs one thing, and what is said when unpinned.
PARTS = (
    ("models", "models", _pinned_model, model_id,
     lambda e: f"{_model_name(e)}: the lock pins no commit for {e['lock_key']}"),
    ("files", "files", lambda e: SHA256.fullmatch(str(e.get("sha256") or "")),
     lambda e: e["name"], lambda e: f"file {e['name']}: no sha256 pins {e['upstream_url']}"),
    ("images", "images", lambda e: DIGEST.fullmatch(str(e.get("locked") or "")),
     lambda e: (e["ref"], e["platform"]), lambda e: f"image {e['ref']}: the lock pins no digest"),
    ("engines", "sources", lambda e: is_commit(e.get("pin")),
     lambda e: e["lock_key"],
     lambda e: f"engine {e['name']}: the lock pins no commit for {e['lock_key']}"),
)


def bundle_contents(needs):
    """What a bundle holds for the hosts' needs ([{host, models, files, images, engines}],
    each the roles' plans): {models: [entry + id], files: [entry], images: [entry], sources:
    [entry], unpinned: [what the lock does not pin yet, named with a host asking for it]}.
    Each thing once, however many hosts need it, in the order of its key."""
    held = {section: {} for _part, section, *_rest in PARTS}
    unpinned = set()
    for need in needs or []:
        for part, section, pinned, key, unpinned_message in PARTS:
            for entry in need.get(part) or []:
                if not pinned(entry):
                    unpinned.add(f"{unpinned_message(entry)}, for {need['host']}")
                    continue
                held[section].setdefault(key(entry), entry)
    contents = {section: [entries[k] for k in sorted(entries)] for section, entries in held.items()}
    contents["models"] = [{**entry, "id": model_id(entry)} for entry in contents["models"]]
    return {**contents, "unpinned": sorted(unpinned)}


def bundle_index(contents, images_platforms, packages):
    """bundle.json: what the bundle holds, each with where it lies in it. images_platforms:
    the lock's image_platforms with what the copy learned ({list digest: {platform:
    digest}})."""
    images = []
    for entry in contents["images"]:
        digest = ((images_platforms or {}).get(entry["locked"]) or {}).get(entry["platform"])
        if not (isinstance(digest, str) and DIGEST.fullmatch(digest)):
            raise BundleError(f"image {entry['ref']}: no {entry['platform']} image was found "
                              f"in {entry['locked']}")
        images.append({"ref": entry["ref"], "locked": entry["locked"],
                       "platform": entry["platform"], "digest": digest, "path": entry["path"],
                       "archive": image_archive(digest)})
    fields = ("path", "source", "repo_id", "revision", "allow_patterns", "ignore_patterns")
    return {
        "format": BUNDLE_FORMAT,
        "models": [{"id": m["id"], **{k: m.get(k) or ([] if k.endswith("patterns") else "")
                                       for k in fields}, "dir": f"models/{m['id']}"}
                   for m in contents["models"]],
        "files": [{"name": f["name"], "upstream_url": f["upstream_url"], "sha256": f["sha256"],
                   "file": f"files/{f['name']}"} for f in contents["files"]],
        "images": images,
        "sources": [{"engine": s["name"], "ref": s["ref"], "lock_key": s["lock_key"],
                     "commit": s["pin"], "repository": f"sources/{s['name']}.git"}
                    for s in contents["sources"]],
        "packages": {host: sorted(set(names)) for host, names in sorted(packages.items())},
    }


def bundle_checked(index, where="the bundle"):
    """bundle.json as read back (a dict, or its text): its format and every field that
    reaches a path, a URL or an argument checked."""
    if isinstance(index, (str, bytes)):
        try:
            index = json.loads(index)
        except ValueError:
            raise BundleError(f"{where}: {INDEX} is not JSON") from None
    if not isinstance(index, dict) or index.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where}: {INDEX} is not a thorfleet bundle of format "
                          f"{BUNDLE_FORMAT}")
    for section in ("models", "files", "images", "sources"):
        if not isinstance(index.get(section), list) or not all(
                isinstance(e, dict) for e in index[section]):
            raise BundleError(f"{where}: {INDEX}: {section} is not a list of entries")
    checks = {
        "models": {"id": re.compile(r"[0-9a-f]{20}"), "revision": re.compile(r"\S{1,200}")},
        "files": {"name": NAME, "sha256": SHA256},
        "images": {"digest": DIGEST, "locked": DIGEST, "platform": re.compile(r"linux/[a-z0-9]+"),
                   "archive": re.compile(r"images/[0-9a-f]{64}\.tar")},
        "sources": {"engine": NAME, "commit": COMMIT},
    }
    for section, fields in checks.items():
        for entry in index[section]:
            for field, pattern in fields.items():
                if not pattern.fullmatch(str(entry.get(field) or "")):
                    raise BundleError(f"{where}: {INDEX}: {section}: field {field}: "
                                      f"{str(entry.get(field))[:80]!r} is not valid")
    return index


def bundle_problems(index, host, models=None, files=None, images=None, engines=None):
    """What the bundle (its checked index) lacks of what `host` needs, each named: the
    model, file, image or engine source, at the pin the lock gives it."""
    index = bundle_checked(index)
    held_models = {m["id"] for m in index["models"]}
    held_files = {(f["name"], f["sha256"]) for f in index["files"]}
    held_images = {(i["locked"], i["platform"]) for i in index["images"]}
    held_sources = {(s["engine"], s["commit"]) for s in index["sources"]}
    problems = []
    for entry in models or []:
        if model_id(entry) not in held_models:
            problems.append(f"{_model_name(entry)}, for {host}")
    for entry in files or []:
        if (entry["name"], entry["sha256"]) not in held_files:
            problems.append(f"file {entry['name']} (sha256 {entry['sha256'] or 'not pinned'}), "
                            f"for {host}")
    for entry in images or []:
        if (entry["locked"], entry["platform"]) not in held_images:
            problems.append(f"image {entry['ref']} ({entry['platform']} of "
                            f"{entry['locked'] or 'an unpinned tag'}), for {host}")
    for entry in engines or []:
        if (entry["name"], entry["pin"]) not in held_sources:
            problems.append(f"engine source {entry['name']} at "
                            f"{entry['pin'] or 'an unpinned ' + entry['ref']}, for {host}")
    return problems


def bundle_platforms(index, known):
    """The lock's image_platforms ({list digest: {platform: digest}}) with the bundle's
    (its checked index, or {} for none) on top."""
    merged = {listed: dict(found) for listed, found in (known or {}).items()}
    for image in (index or {}).get("images") or []:
        merged.setdefault(image["locked"], {})[image["platform"]] = image["digest"]
    return merged


def bundle_archives(index, bundle):
    """Where each image's archive lies on the site cache: {platform digest: path}."""
    return {image["digest"]: f"{bundle.rstrip('/')}/{image['archive']}"
            for image in bundle_checked(index)["images"]}


class FilterModule:
    def filters(self):
        return {
            "thorfleet_bundle_need": bundle_need,
            "thorfleet_bundle_contents": bundle_contents,
            "thorfleet_bundle_index": bundle_index,
            "thorfleet_bundle_checked": bundle_checked,
            "thorfleet_bundle_problems": bundle_problems,
            "thorfleet_bundle_model_id": model_id,
            "thorfleet_bundle_platforms": bundle_platforms,
            "thorfleet_bundle_archives": bundle_archives,
        }

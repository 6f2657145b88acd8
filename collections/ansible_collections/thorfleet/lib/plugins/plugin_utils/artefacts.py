"""The artefact pipeline's table of kinds (roles/artefacts).

A role that needs artefacts plans them: one entry per artefact a host needs, all of one
shape, `{kind, key, pin, dest, path, platform, item}`:

- `kind`: a key of KINDS;
- `key`: what makes two hosts' artefacts the same copy (the fleet copies it host to
  host; a bundle carries it once);
- `pin`: what the lock pins it to ("" while nothing is pinned yet);
- `dest`: where it lands on the host;
- `path`: where it lies in the host's share of its kind (rsync's module);
- `platform`: what the host must match for another host's copy to serve it ("" when any
  copy serves);
- `item`: the planning role's own entry, as its modules take it.

The pipeline (roles/artefacts) moves every kind the same way: it reads what each host
holds with the kind's `read` module (over Ansible's connection), gives what nobody holds
to one host to get from upstream (the kind's role, `tasks_from: upstream`), and copies
from the hosts that hold it with the kind's `copy` module, which checks every byte
against what the source reported before anything is moved in. This module says, per
kind, which modules those are and how an entry becomes their arguments; adding a kind is
an entry in KINDS and a planner (see the README, "Adding an artefact kind").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath

from .models import bundle_model_id, model_key


class ArtefactError(ValueError):
    """An entry or a kind the pipeline cannot take."""


def share_url(address, port, kind, path):
    """rsync URL of a path in a host's share of `kind` (its module thorfleet-<kind>:
    `models`, its model root; `builds`, its engine builds' root; `jit`, its compile
    caches: roles/artefacts/templates/fleet-share.conf.j2)."""
    kind_of(kind)
    host = f"[{address}]" if ":" in str(address) else str(address)
    return f"rsync://{host}:{int(port)}/thorfleet-{kind}/{path}"


# --- models: model_store plans them, model_manifests reads them, model_download copies.

def _model_entry(item, platform=""):
    return {"kind": "models", "key": model_key(item), "pin": item.get("manifest_digest") or "",
            "dest": item["dest"], "path": item["path"], "platform": platform, "item": item}


def _model_read_args(entry):
    return {"models": [entry["item"]], "report": True}


def _model_source_read_args(entry):
    # The source's own entry: its model root may differ from this host's.
    return _model_read_args(entry["peer_entry"])


def _model_report(entry, result):
    """What the source holds of the model: its manifest and the files staged beside it,
    or None when it does not hold the revision."""
    held = [r for r in (result or {}).get("results") or []
            if isinstance(r, dict) and r.get("manifest")]
    return held[0] if held else None


def _pin_refusal(entry, label, what, found, unpinned_ok, checker=""):
    """Why a source's `what` (its `found` value) is not what the lock pins (the entry's
    pin), or None; with `unpinned_ok`, nothing pinned yet refuses nothing."""
    pin = entry["pin"]
    if found == pin or (unpinned_ok and not pin):
        return None
    return (f"{label} ({entry['dest']}): {entry['peer']['name']}'s {what} {found}, not the "
            f"{pin or '(none)'} the lock pins{checker}: refused, nothing copied")


def _model_refusal(entry, report):
    """Why a source's copy of the model cannot be the one the lock pins: its manifest's
    digest is another (whoever could change a file in the source could write the
    manifest again to match it; model_download checks it again). A model nothing pins
    yet (a first fetch) takes the source's."""
    return _pin_refusal(entry, entry["item"]["repo_id"], "manifest has digest",
                        report.get("manifest_digest"), True, " (model_manifests)")


def _model_copy_args(entry, peer, report):
    item = entry["item"]
    parent, name = posixpath.split(entry["peer_entry"]["path"])
    # A bundle's models wait in place (no partial copy beside them): the peer says where.
    staging = peer.get("staging_url") or share_url(
        peer["address"], peer["port"], "models", posixpath.join(parent, f".{name}.partial"))
    args = {"source": item["source"], "repo_id": item["repo_id"], "revision": item["revision"],
            "dest": item["dest"], "manifest_digest": item.get("manifest_digest") or "",
            "stage": True,
            "peer": {"name": peer["name"], "url": peer["url"], "staging_url": staging,
                     "manifest": report["manifest"], "fetched": report.get("fetched") or []}}
    for patterns in ("allow_patterns", "ignore_patterns"):
        if item.get(patterns):
            args[patterns] = item[patterns]
    return args


def _model_got(entry, result):
    return entry if result.get("commit") else None


def _model_bundle_entry(entry, directory):
    """The bundle's own entry of the model (models/<id>, _model_bundle): its dest there."""
    path = f"models/{bundle_model_id(entry['item'])}"
    item = {**entry["item"], "dest": posixpath.join(directory, path)}
    return {**entry, "dest": item["dest"], "path": path, "item": item}


# --- builds: ggml_build plans them and its module reads, compiles and copies them.

def _build_entry(item, platform=""):
    engine = item["engine"]
    return {"kind": "builds",
            "key": json.dumps([engine["name"], engine["ref"], item["args"]["build_root"]]),
            "pin": engine.get("pin") or "", "dest": item["args"]["build_root"],
            "path": engine["name"], "platform": platform, "item": item}


def _build_args(entry, commit=None):
    args = dict(entry["item"]["args"])
    args["commit"] = commit or entry["pin"] or args.get("commit") or ""
    return {key: value for key, value in args.items() if value is not None}


def _build_read_args(entry):
    return {**_build_args(entry), "report": True}


def _build_source_read_args(entry):
    # This host's own build (its flags, its stamp) asked of the source: a source whose
    # build has another stamp (another GPU, another compiler) does not hold it.
    return {**_build_args(entry, entry["pin"] or entry["peer_entry"]["pin"]), "report": True}


def _build_report(entry, result):
    """The source's build with the stamp its pin asks for, when it holds it complete."""
    result = result or {}
    return result if result.get("ready") and result.get("stamp") else None


def _build_copy_args(entry, peer, report):
    # A build that was not pinned when this host planned it: the commit its source built.
    commit = entry["pin"] or entry["peer_entry"]["pin"]
    return {**_build_args(entry, commit),
            "peer": {"name": peer["name"], "url": f"{peer['url']}/build-{report['stamp']}",
                     "stamp": report["stamp"], "files": report["files"]}}


def _build_got(entry, result):
    """The entry as the build left it: a ref resolved by the compile is pinned now."""
    if not result.get("stamp"):
        return None
    commit = result.get("commit") or entry["pin"]
    item = {**entry["item"], "engine": {**entry["item"]["engine"], "pin": commit}}
    return {**entry, "pin": commit, "item": item}


# --- jit: the engines' compile caches, one per image digest; inference_services plans
# them (the images its services run), jit_caches reads and copies them. Nothing upstream
# makes them: a host's engines compile them on a first start, and the switch marks them
# complete (their manifest) once the host passed verify, for the rollout's later hosts.

def _jit_entry(item, platform=""):
    name = item["digest"].replace(":", "-")
    return {"kind": "jit", "key": item["digest"], "pin": item["digest"],
            "dest": posixpath.join(item["root"], name), "path": name, "platform": platform,
            "item": item}


def _jit_read_args(entry):
    return {"root": entry["item"]["root"]}


def _jit_source_read_args(entry):
    return _jit_read_args(entry["peer_entry"])


def _jit_report(entry, result):
    """The sha256 of the source's manifest of the cache, when it holds it complete."""
    manifest = ((result or {}).get("manifests") or {}).get(entry["key"])
    return {"manifest": manifest} if isinstance(manifest, str) and manifest else None


def _jit_copy_args(entry, peer, report):
    return {"root": entry["item"]["root"],
            "peers": [{"digest": entry["key"], "name": peer["name"], "url": peer["url"],
                       "manifest": report["manifest"]}]}


def _jit_got(entry, result):
    return entry if entry["key"] in (result.get("copied") or []) else None


# --- files by URL: model_store plans them (the chat templates), url_file fetches each.
# They go no host to host (small: each host fetches its own by URL, through the site's
# proxy); on a site provisioned from a bundle, each is read in the bundle over Ansible's
# connection to the site cache (slurp) and written only with the sum the lock pins.

def _file_entry(item, platform=""):
    return {"kind": "files", "key": json.dumps([item["name"], item["sha256"]]),
            "pin": item["sha256"], "dest": item["dest"], "path": item["name"],
            "platform": platform, "item": item}


def _file_read_args(entry):
    return {"models": [], "files": [entry["item"]]}


def _file_report(entry, result):
    """The file's sum, when the host holds it as url_file leaves it."""
    result = result or {}
    missing = result.get("files_missing")
    if not isinstance(missing, list) or entry["dest"] in missing:
        return None
    return {"sha256": entry["pin"]}


def _file_source_read_args(entry):
    return {"src": entry["peer_entry"]["dest"]}


def _file_source_report(entry, result):
    """The bytes the source holds (slurp's base64) and their sum."""
    content = (result or {}).get("content")
    if not isinstance(content, str):
        return None
    try:
        data = base64.b64decode(content, validate=True)
    except (binascii.Error, ValueError):
        return None
    return {"sha256": hashlib.sha256(data).hexdigest(), "content": content}


def _file_refusal(entry, report):
    """Why the source's bytes are not the file the lock pins (a file on a site always has
    a pin: its bundle carries it at one)."""
    return _pin_refusal(entry, f"files {entry['item']['name']}",
                        f"{entry['peer_entry']['dest']} has sha256", report.get("sha256"), False)


def _file_copy_args(entry, peer, report):
    item = entry["item"]
    return {"url": item["url"], "dest": item["dest"], "sha256": entry["pin"],
            "content": report["content"], "owner": "root", "group": "root", "mode": "0644"}


def _file_got(entry, result):
    return entry


def _file_bundle_entry(entry, directory):
    """The bundle's own entry of the file (files/<name>): its dest there."""
    path = f"files/{entry['item']['name']}"
    return {**entry, "dest": posixpath.join(directory, path), "path": path}


# --- The bundle for a site with no internet (playbooks/bundle.yml; roles/artefacts,
# tasks/bundle.yml): each thing the inventory's hosts need, once (filter
# thorfleet_bundle_contents gathers it from the same plans as above), written from its
# upstream into the bundle's directory on the controller, at the lock's pin. Per kind,
# the module that writes one thing and its arguments; `settings` are the run's
# (`endpoints` and `tokens` of the hubs, skopeo's `authfile`, the lock's
# `image_platforms`, a copy's `timeout`). Each writes nothing that is already there.

def _model_bundle(item, directory, settings):
    args = {"source": item["source"], "repo_id": item["repo_id"], "revision": item["revision"],
            "dest": posixpath.join(directory, "models", item["id"]),
            "endpoint": (settings.get("endpoints") or {}).get(item["source"]),
            "token": (settings.get("tokens") or {}).get(item["source"]),
            "sha256s": item.get("sha256s"),
            "allow_patterns": item.get("allow_patterns"),
            "ignore_patterns": item.get("ignore_patterns")}
    return "model_download", args, \
        f"models/{item['id']} <- {item['source']}:{item['repo_id']}@{item['revision']}"


def _file_bundle(item, directory, settings):
    return "url_file", {"url": item["url"], "sha256": item["sha256"], "mode": "0644",
                        "dest": posixpath.join(directory, "files", item["name"])}, \
        f"files/{item['name']} <- {item['url']}"


def _source_bundle(item, directory, settings):
    # The engine's source at its commit, fetched alone (depth 1) into the bundle's bare
    # repository of it (its layout: playbooks/bundle.yml), under refs/thorfleet/<commit>:
    # the site cache serves it with git's daemon as the hosts' source mirror. (A git
    # bundle file cannot carry a shallow history.)
    repository = posixpath.join(directory, "sources", f"{item['name']}.git")
    return "ansible.legacy.command", {
        "argv": ["git", "-C", repository, "fetch", "--quiet", "--depth", "1", item["repo"],
                 f"+{item['pin']}:refs/thorfleet/{item['pin']}"],
        "creates": posixpath.join(repository, "refs", "thorfleet", item["pin"])}, \
        f"sources/{item['name']}.git {item['ref']} = {item['pin'][:12]}"


def _image_bundle(item, directory, settings):
    # An OCI archive of the hosts' platform's image, by the digest the lock pins
    # (images/<platform digest>.tar), copied with skopeo as the site cache copies; the
    # platforms' images it finds are recorded in the lock (bundle_lock_writes).
    return "site_cache_fill", {"images": [item], "platforms": settings.get("image_platforms") or {},
                               "archive_dir": posixpath.join(directory, "images"),
                               "authfile": settings.get("authfile"),
                               "timeout": settings.get("timeout")}, \
        f"images/ <- {item['ref']} ({item['platform']})"



# --- images: ngc_images plans them (the images a host's services run, through the site
# cache when the inventory has one), Docker holds them. They go through a registry, not a
# share: the site cache copies in, once for the run's hosts, what any host lacks (from
# upstream, or a site's bundle: site_cache, tasks/fill.yml) and records in the lock the
# digest of each platform's image it copied; a host pulls by that digest, which Docker
# checks every layer against.

def image_in_cache(platforms, listed, platform):
    """The digest of `platform`'s image of the list digest `listed` (the lock's
    image_platforms: {list digest: {platform: image digest}}), "" when none is known: what
    a host pulls from the site cache, which holds that platform's image alone."""
    if not listed:
        return ""
    return str(((platforms or {}).get(listed) or {}).get(platform) or "")


def _image_entry(item, platform=""):
    return {"kind": "images", "key": json.dumps([item["ref"], item["platform"]]),
            "pin": item["locked"], "dest": item["repository"], "path": item["path"],
            "platform": item["platform"], "item": item}


def _image_read_args(entry):
    # An image with no digest yet (a tag the cache has not copied) is held nowhere.
    item = entry["item"]
    return {"name": [item["image"]]} if item["digest"] else None


def _image_report(entry, result):
    """The image's digest, when Docker on the host holds it by that digest."""
    item = entry["item"]
    for image in (result or {}).get("images") or []:
        if item["image"] in ((image or {}).get("RepoDigests") or []):
            return {"digest": item["digest"]}
    return None


def _image_registry_report(entry, lock):
    """What the site cache holds of the image for the entry's platform, as its copy
    recorded it in the lock (`lock`: its images and image_platforms), or None."""
    item = entry["item"]
    listed = item["locked"] or str(((lock or {}).get("images") or {}).get(item["ref"]) or "")
    digest = image_in_cache((lock or {}).get("image_platforms"), listed, item["platform"])
    return {"digest": digest} if digest.startswith("sha256:") else None


def _image_copy_args(entry, peer, report):
    return {"name": f"{entry['item']['repository']}@{report['digest']}", "pull": "not_present"}


def _image_got(entry, result):
    return entry


def image_fill(items):
    """What the site cache copies for the hosts (site_cache_images): of the images the
    hosts lack, each (image, platform) once: {ref, upstream, path, tag, locked,
    platform}."""
    wanted = {}
    for item in items or []:
        key = (item["ref"], item["platform"])
        wanted.setdefault(key, {field: item[field] for field in
                                ("ref", "upstream", "path", "tag", "locked", "platform")})
    return [wanted[key] for key in sorted(wanted)]


# The table of kinds: per kind, the role that plans it and gets it from upstream
# (`role`, its tasks/upstream.yml; `upstream`: whether there is one to get it from, else
# it is only ever copied from a host that made it), how it goes from host to host
# (`via`: `share`, a fleet peer's or the bundle's rsync share, round by round;
# `registry`, the site cache; None: not moved by the pipeline), the module that reads
# what a host holds (`read`, run in check mode: it changes nothing; on the host itself
# with `read_args`, on a source paired with it, delegated there, with
# `source_read_args`), the one that copies it from that source (`copy`), and how an
# entry becomes their arguments.
KINDS = {
    "models": {
        "role": "model_store", "upstream": True, "via": "share",
        "read": "model_manifests", "copy": "model_download",
        "entry": _model_entry, "read_args": _model_read_args,
        "source_read_args": _model_source_read_args, "report": _model_report,
        "copy_args": _model_copy_args, "got": _model_got,
        "refusal": _model_refusal,
        # A bundle carries the model; a site's hosts copy it from the bundle (its rsync
        # share on the site cache), as from a fleet peer.
        "bundle": _model_bundle, "bundle_entry": _model_bundle_entry, "bundle_share": "rsync",
    },
    "builds": {
        "role": "ggml_build", "upstream": True, "via": "share",
        "read": "ggml_build", "copy": "ggml_build",
        "entry": _build_entry, "read_args": _build_read_args,
        "source_read_args": _build_source_read_args, "report": _build_report,
        "copy_args": _build_copy_args, "got": _build_got,
        # A bundle carries a build's source (the bundle's `sources`): a site's hosts
        # compile it (the kind's upstream) from the bundle's git share, their source
        # mirror, or copy the build host to host.
        "bundle": _source_bundle, "bundle_share": "git",
    },
    "jit": {
        "role": "inference_services", "upstream": False, "via": "share",
        "read": "jit_caches", "copy": "jit_caches",
        "entry": _jit_entry, "read_args": _jit_read_args,
        "source_read_args": _jit_source_read_args, "report": _jit_report,
        "copy_args": _jit_copy_args, "got": _jit_got,
        # Nothing upstream makes it, so no bundle carries it: a site's first host
        # compiles it, the rollout copies it on.
        "bundle": None, "bundle_share": None,
    },
    # Files by URL (model_store: the chat templates) go no host to host (via: none):
    # they are small, and each host fetches its own by URL (through the site's proxy). A
    # bundle carries them; a site's hosts read each in the bundle over Ansible's
    # connection to the site cache (bundle_share: ansible, no daemon), refused unless it
    # has the sum the lock pins, and write it with that sum checked again.
    "files": {
        "role": "model_store", "upstream": True, "via": None,
        "read": "model_manifests", "copy": "url_file",
        "entry": _file_entry, "read_args": _file_read_args, "report": _file_report,
        "source_read": "ansible.legacy.slurp", "source_read_args": _file_source_read_args,
        "source_report": _file_source_report, "refusal": _file_refusal,
        "copy_args": _file_copy_args, "got": _file_got,
        "bundle": _file_bundle, "bundle_entry": _file_bundle_entry, "bundle_share": "ansible",
    },
    # Images go through a registry (via: registry; roles/artefacts, tasks/registry.yml):
    # the site cache, a copy of the upstream registries, is their one fetch per fleet
    # (`fill`: what it copies for the hosts' lacks); each host reads what Docker holds
    # (`read`), and pulls from the cache (`copy`) by the digest the cache's copy recorded
    # in the lock (`registry_report`), which Docker checks. Without a site cache each host
    # pulls its own (ngc_images). A bundle carries the platforms' images as OCI archives,
    # the site cache's source on a site.
    "images": {
        "role": "ngc_images", "upstream": True, "via": "registry",
        "read": "community.docker.docker_image_info", "copy": "community.docker.docker_image_pull",
        "entry": _image_entry, "read_args": _image_read_args, "report": _image_report,
        "registry_report": _image_registry_report, "fill": image_fill,
        "copy_args": _image_copy_args, "got": _image_got,
        "bundle": _image_bundle, "bundle_share": None,
    },
}

# Where a bundle holds each kind (its index's sections: filter_plugins/bundle.py).
BUNDLE_SECTIONS = {"models": "models", "files": "files", "images": "images",
                   "sources": "builds"}

ENTRY_FIELDS = ("kind", "key", "pin", "dest", "path", "platform", "item")


def kind_of(name, moved=True):
    """The table's entry of a kind (with `moved`: one the pipeline moves to the hosts, from
    host to host, through the site cache or from a site's bundle), or an error naming the
    kinds there are."""
    kinds = sorted(k for k, v in KINDS.items()
                   if v["via"] or v.get("bundle_share") or not moved)
    if not isinstance(name, str) or name not in kinds:
        raise ArtefactError(f"artefacts_kind: {str(name)[:40]!r} is not one of "
                            f"{', '.join(kinds)}")
    return KINDS[name]


def bundle_writes(contents):
    """What `thorfleet bundle create` writes, from the bundle's contents (filter
    thorfleet_bundle_contents: each thing once): [{section, item, label}], section by
    section, in the contents' order."""
    writes = []
    for section, kind in BUNDLE_SECTIONS.items():
        write = kind_of(kind, moved=False)["bundle"]
        for item in (contents or {}).get(section) or []:
            writes.append({"section": section, "item": item,
                           "label": write(item, "", {})[2]})
    return writes


def bundle_call(section, item, directory, settings):
    """(module, arguments) that write one thing of a bundle's `section` into `directory`,
    the bundle's, from its upstream; arguments with no value are left to the module's
    defaults."""
    if section not in BUNDLE_SECTIONS:
        raise ArtefactError(f"section: {str(section)[:40]!r} is not one of "
                            f"{', '.join(BUNDLE_SECTIONS)}")
    if not isinstance(directory, str) or not directory.startswith("/"):
        raise ArtefactError("directory: the bundle's directory, as an absolute path")
    module, args, _label = kind_of(BUNDLE_SECTIONS[section], moved=False)["bundle"](
        item, directory, settings or {})
    return module, {key: value for key, value in args.items() if value not in (None, "", [])}


def image_platforms_update(known, learned):
    """The lock's image_platforms entries to write: each list digest a copy learned a
    platform's image of, with the platforms the lock already had for it."""
    updates = {}
    for listed, found in (learned or {}).items():
        before = (known or {}).get(listed) or {}
        if {**before, **found} != before:
            updates[listed] = {**before, **found}
    return updates


def bundle_lock_writes(results, known):
    """The lock's writes of what the bundle's copies learned: the platforms' images
    site_cache_fill found in multi-platform lists ({section: image_platforms, entries}),
    with what the lock (`known`, its image_platforms) had for each list."""
    learned = {}
    for result in results or []:
        for listed, found in ((result or {}).get("platforms") or {}).items():
            learned.setdefault(listed, {}).update(found)
    return [{"section": "image_platforms", "entries": image_platforms_update(known, learned)}]


def entries(kind, items, platform=""):
    """The pipeline's entries of a planner's own items."""
    make = kind_of(kind)["entry"]
    return [make(item, platform) for item in items or []]


def sources(states, host):
    """Where `host` copies what it lacks from, outside the rounds (a rollout's compile
    caches: a host copies, as its switch starts, from the hosts that hold a thing by
    then): for each key of its state neither held nor got, one other host holding it,
    the hosts that want it spread over those holding it by their place in the fleet.
    Its entries with `peer_entry` and `peer`, as a round's (fleet_round)."""
    states = sorted((s for s in states or [] if isinstance(s, dict) and s.get("host")),
                    key=lambda s: s["host"])
    names = [s["host"] for s in states]
    if host not in names:
        return []
    place = names.index(host)
    mine = states[place]
    copies = []
    for key, entry in sorted(mine["entries"].items()):
        if key in mine["held"] or key in mine.get("got", []):
            continue
        holders = [s for s in states if s["host"] != host and key in s["entries"]
                   and key in s["held"]]
        if not holders:
            continue
        source = holders[place % len(holders)]
        peer_entry = source["entries"][key]
        copies.append({**entry, "peer_entry": peer_entry,
                       "peer": {"name": source["host"], "address": source["address"],
                                "port": source["port"],
                                "url": share_url(source["address"], source["port"],
                                                 entry["kind"], peer_entry["path"])}})
    return copies


def check_entry(entry):
    """An entry as the pipeline takes it, or an error naming what is wrong."""
    if not isinstance(entry, dict) or set(ENTRY_FIELDS) - set(entry):
        raise ArtefactError(f"an artefact entry needs {', '.join(ENTRY_FIELDS)}: got "
                            f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}")
    kind_of(entry["kind"])
    path = entry["path"]
    if not isinstance(path, str) or path.startswith("/") or ".." in path.split("/"):
        raise ArtefactError(f"{entry['kind']} {entry['key']}: path {str(path)[:80]!r} is not "
                            "a path inside the share")
    return entry


def read_call(entry):
    """(module, arguments) that read what a host holds of `entry`; arguments None where
    there is nothing to ask (the host holds it nowhere yet)."""
    kind = kind_of(check_entry(entry)["kind"])
    return kind["read"], kind["read_args"](entry)


def source_read_call(entry):
    """(module, arguments) that read, on the source a round paired `entry` with (its
    `peer_entry`), whether it holds what this host wants (the kind's `source_read`
    module where a source is read otherwise than a host: a bundle's files)."""
    kind = kind_of(check_entry(entry)["kind"])
    return kind.get("source_read") or kind["read"], kind["source_read_args"](entry)


def report(entry, result):
    """What a host's read (read_call's module's result) says it holds of `entry`: the
    kind's report of it, or None when it does not hold it."""
    return kind_of(entry["kind"])["report"](entry, result)


def source_report(entry, result):
    """What a source's read (source_read_call's module's result) says it holds of
    `entry`, as report() for a host, or the kind's `source_report`."""
    kind = kind_of(entry["kind"])
    return (kind.get("source_report") or kind["report"])(entry, result)


def via(kind):
    """How the pipeline moves `kind` to the hosts: `share` or `registry`, or None (only
    from a site's bundle: files by URL)."""
    return kind_of(kind)["via"]


def _through_registry(state):
    """The kind of a host's `state` (as holdings gives it), which must go through the
    site cache's registry, and the entries the host lacks of it."""
    kind = kind_of((state or {}).get("kind"))
    if kind["via"] != "registry":
        raise ArtefactError(f"artefacts_kind: {state['kind']} goes through no registry")
    return kind, [entry for key, entry in sorted(state["entries"].items())
                  if key not in state["held"]]


def registry_fill(states):
    """What the site cache copies, once for the run's hosts, of a kind that goes through
    it (`via: registry`): from what each host (`states`, as holdings gives them) lacks, the
    kind's `fill` of it."""
    lacking, fill = [], None
    for state in states or []:
        kind, lacks = _through_registry(state)
        fill = kind["fill"]
        lacking += [entry["item"] for entry in lacks]
    return fill(lacking) if fill else []


def registry_sources(state, lock):
    """What this host (`state`) lacks of a kind that goes through the site cache, each
    with what the cache holds of it (`held`: the kind's `registry_report`, from the lock
    its copy wrote), None where the cache did not copy it."""
    kind, lacks = _through_registry(state)
    return [{**entry, "held": kind["registry_report"](entry, lock)} for entry in lacks]


def bundle_share(kind):
    """Which of the site cache's shares of a bundle a kind comes through: `rsync` (copied
    from the bundle), `git` (made by the kind's role from the bundle's sources), `ansible`
    (read in the bundle over Ansible's connection to the cache: no daemon), or None (no
    bundle carries it)."""
    return kind_of(kind)["bundle_share"]


def bundle_sources(state, site_cache, directory, url):
    """For a site provisioned from a bundle (thorfleet_bundle): what this host (`state`,
    as holdings gives it) lacks of a kind a bundle carries. A kind copied from the bundle
    (its `bundle_entry`): each paired, as a round pairs it with a fleet peer, with the
    bundle on the site cache (`site_cache`, the inventory host serving it from `directory`,
    at the rsync URL `url` while a phase copies). A kind its role makes from the bundle's
    sources: the entry alone, for the role's upstream."""
    copies = []
    for key, entry in sorted((state or {}).get("entries", {}).items()):
        kind = kind_of(entry["kind"])
        if key in state["held"] or not kind.get("bundle_share"):
            continue
        if not kind.get("bundle_entry"):
            copies.append(entry)
            continue
        peer_entry = kind["bundle_entry"](entry, directory)
        at = f"{url.rstrip('/')}/{peer_entry['path']}"
        copies.append({**entry, "peer_entry": peer_entry,
                       "peer": {"name": site_cache, "url": at, "staging_url": at}})
    return copies


def refusal(entry, held):
    """Why what the source reported (`held`) cannot be copied for `entry` (it is not what
    the lock pins), or None."""
    check = kind_of(entry["kind"]).get("refusal")
    return check(entry, held) if check else None


def copy_call(entry, held):
    """(module, arguments) that copy `entry` from the host a round paired it with
    (`entry.peer`: {name, address, port, url}; `entry.peer_entry`: the source's own
    entry) and check it against `held`, the source's report read over Ansible's
    connection (through a registry, the site cache: no peer, and `held` its report from
    the lock)."""
    kind = kind_of(check_entry(entry)["kind"])
    return kind["copy"], kind["copy_args"](entry, entry.get("peer"), held)


def got(entry, result):
    """The entry as a copy or upstream fetch left it (pin resolved), or None when the
    result brought nothing."""
    if not isinstance(result, dict) or result.get("failed") or result.get("skipped") \
            or result.get("unreachable"):
        return None
    return kind_of(entry["kind"])["got"](entry, result)

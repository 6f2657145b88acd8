"""A host's models and files, planned from its services and the catalogue, and the lock
file's entries for what the hubs resolved."""

from __future__ import annotations

import hashlib
import json
import posixpath

from .formats import is_commit
from .rules import (
    DEFAULT_REVISION,
    SOURCES,
    CatalogueError,
    check_field,
)

SERVICE_FIELDS = {"name", "recipe", "port", "served_name", "memory_share", "extra_args", "source",
                  "bind_address", "api_key"}


def model_key(entry):
    """What makes two hosts' models the same copy (fetching once per fleet, a bundle):
    path, hub, repository, revision and patterns (a host's own model root may differ)."""
    return json.dumps([entry["path"], entry["source"], entry["repo_id"], entry["revision"],
                       entry.get("allow_patterns") or [], entry.get("ignore_patterns") or []])


def bundle_model_id(entry):
    """The directory of a model request in a bundle (models/<id>): one per model_key, as
    two hosts asking alike share one copy, as when fetching once per fleet."""
    return hashlib.sha256(model_key(entry).encode()).hexdigest()[:20]


def lock_key(source, repo, revision):
    """The lock's key of a model revision: `huggingface:Qwen/Qwen3-8B@main`."""
    return f"{source}:{repo}@{revision}"


def _service_errors(host, services, recipes):
    """Each service checked on its own and against the others on the host."""
    if not isinstance(services, list):
        raise CatalogueError(f"{host}: thorfleet_services must be a list of services")
    seen = set()
    for index, service in enumerate(services):
        where = f"{host}: thorfleet_services[{index}]"
        if not isinstance(service, dict):
            raise CatalogueError(f"{where}: a service is a mapping with name and recipe")
        name = service.get("name")
        check_field(where, "name", name)
        where = f"{host}: service {name}"
        unknown = sorted(set(service) - SERVICE_FIELDS)
        if unknown:
            raise CatalogueError(f"{where}: unknown field(s) {', '.join(unknown)}; a service "
                                 f"has {', '.join(sorted(SERVICE_FIELDS))}")
        if name in seen:
            raise CatalogueError(f"{where}: field name: two services are named {name}")
        seen.add(name)
        recipe = service.get("recipe")
        if not isinstance(recipe, str) or recipe not in recipes:
            raise CatalogueError(f"{where}: field recipe: unknown recipe {recipe!r}; known: "
                                 f"{', '.join(sorted(recipes))}")
        if service.get("source") is not None and (not isinstance(service["source"], str)
                                                  or service["source"] not in SOURCES):
            raise CatalogueError(f"{where}: field source: {service['source']!r} is not one of "
                                 f"{', '.join(SOURCES)}")


def model_plan(services, catalogue, models_root="/models", default_source="huggingface",
               host="host", lock=None, file_mirror="", checksums=None):
    """What a host must hold for its services: each model once, each file once.

    Returns {"models": [...], "files": [...]}. A model entry is what the model_download
    module takes (source, repo_id, revision, allow_patterns, ignore_patterns, dest), with
    the requested revision, its lock key and the services that use it. A revision the lock
    pins is replaced by the commit it recorded, and sha256s holds the sums the lock pinned
    for that commit's files that the hub lists no hash for. A file entry is what url_file
    takes (url, dest, sha256), with the upstream URL (the lock's key) and its services.
    """
    services = services or []
    lock = lock or {}
    checksums = checksums or {}
    recipes, models, files = catalogue["recipes"], catalogue["models"], catalogue["files"]
    _service_errors(host, services, recipes)
    if default_source not in SOURCES:
        raise CatalogueError(f"{host}: thorfleet_model_source: {default_source!r} is not one "
                             f"of {', '.join(SOURCES)}")
    root = posixpath.normpath(models_root)
    planned_models, planned_files = {}, {}
    for service in services:
        name, recipe_name = service["name"], service["recipe"]
        where = f"{host}: service {name}"
        recipe = recipes[recipe_name]
        model_path = recipe.get("model")
        if model_path not in models:
            raise CatalogueError(f"{where}: recipe {recipe_name}: field model: {model_path!r} "
                                 "is not in the catalogue's models")
        model = models[model_path]
        source = service.get("source") or default_source
        hub = model.get(source)
        if not hub and not service.get("source"):
            # The site's default hub is a preference (a China-side site sets modelscope):
            # a model that only another hub has comes from that one, through its mirror.
            source = next((s for s in SOURCES if model.get(s)), source)
            hub = model.get(source)
        if not hub:
            offered = [s for s in SOURCES if model.get(s)]
            raise CatalogueError(f"{where}: field source: model {model_path} is not on "
                                 f"{source}; it is on {', '.join(offered) or 'no hub'}")
        dest = _under_root(root, model_path, where, "model")
        entry = planned_models.setdefault(dest, {
            "source": source, "repo_id": hub["repo"],
            "requested_revision": str(hub.get("revision") or DEFAULT_REVISION[source]),
            "allow_patterns": [], "all_files": False,
            "ignore_patterns": list(model.get("ignore_patterns") or []),
            "dest": dest, "path": model_path, "services": []})
        if entry["source"] != source:
            raise CatalogueError(f"{where}: field source: {dest} is taken from "
                                 f"{entry['source']} by service {entry['services'][0]}; one "
                                 "model directory comes from one hub")
        entry["services"].append(name)
        if recipe.get("model_file"):
            if recipe["model_file"] not in entry["allow_patterns"]:
                entry["allow_patterns"].append(recipe["model_file"])
        else:
            entry["all_files"] = True
        for file_name in recipe_files(recipe):
            if file_name not in files:
                raise CatalogueError(f"{where}: recipe {recipe_name}: field files: "
                                     f"{file_name!r} is not in the catalogue's files")
            spec = files[file_name]
            file_dest = _under_root(root, spec["path"], where, f"file {file_name}")
            # The inventory's sum wins (a site's own copy), then the catalogue's (the
            # published file), then the lock's (recorded on first fetch).
            pins = (("inventory", checksums.get(spec["url"])), ("catalogue", spec.get("sha256")),
                    ("lock", lock.get("files", {}).get(spec["url"])))
            pinned_by, sha256 = next(((by, str(s)) for by, s in pins if s), ("lock", ""))
            planned = planned_files.setdefault(file_dest, {
                "name": file_name, "upstream_url": spec["url"],
                "url": _mirrored(spec["url"], file_mirror), "sha256": sha256,
                "pinned_by": pinned_by, "dest": file_dest, "services": []})
            planned["services"].append(name)

    result = []
    for entry in planned_models.values():
        allow = [] if entry.pop("all_files") else sorted(entry["allow_patterns"])
        key = lock_key(entry["source"], entry["repo_id"], entry["requested_revision"])
        revision = lock.get("models", {}).get(key) or entry["requested_revision"]
        sums = model_files_key(entry["source"], entry["repo_id"], revision or "", "")
        pinned = {**entry, "allow_patterns": allow}
        result.append({**pinned, "lock_key": key, "revision": revision,
                       "sha256s": {k[len(sums):]: v for k, v in lock.get("model_files", {}).items()
                                   if k.startswith(sums)},
                       "manifest_digest": lock.get("model_manifests", {}).get(
                           manifest_key(pinned, revision or "")) or ""})
    return {"models": sorted(result, key=lambda m: m["dest"]),
            "files": sorted(planned_files.values(), key=lambda f: f["dest"])}


def recipe_files(recipe):
    """The files fetched by URL a recipe needs: its chat template and any others."""
    named = list(recipe.get("files") or [])
    if recipe.get("chat_template") and recipe["chat_template"] not in named:
        named.append(recipe["chat_template"])
    return named


def _under_root(root, relative, where, what):
    path = posixpath.normpath(posixpath.join(root, relative))
    if posixpath.isabs(relative) or not path.startswith(root + "/"):
        raise CatalogueError(f"{where}: {what} path {relative!r} is outside the model root "
                             f"{root}")
    return path


def _mirrored(url, mirror):
    """A file mirror serves each file under its name: <mirror>/<file name>."""
    if not mirror:
        return url
    return f"{mirror.rstrip('/')}/{url.rsplit('/', 1)[-1]}"


def manifest_key(entry, commit):
    """The lock's key of a revision's manifest: the model at its commit, with the patterns
    that chose its files (two services may take other files of one repository):
    `huggingface:Qwen/Qwen3-8B-GGUF@<commit>?allow=*Q4_K_M.gguf`."""
    patterns = "&".join(f"{name}={','.join(entry.get(field) or [])}"
                        for name, field in (("allow", "allow_patterns"),
                                            ("ignore", "ignore_patterns"))
                        if entry.get(field))
    return f"{entry['source']}:{entry['repo_id']}@{commit}" + (f"?{patterns}" if patterns else "")


def model_files_key(source, repo_id, commit, path):
    """The lock's key of a model file the hub lists no hash for."""
    return f"{source}:{repo_id}@{commit}/{path}"


def manifest_commit(commits, model_dir):
    """The commit the manifest of `model_dir` records, for the unit's header, from
    `commits` ({model directory: its manifest's commit}, those with a manifest): checked
    again here, as it came from a hub."""
    if model_dir not in (commits or {}):
        return "not downloaded"
    commit = commits[model_dir]
    if not is_commit(commit):
        raise CatalogueError(f"{model_dir}/thorfleet-manifest.json: commit "
                             f"{str(commit)[:80]!r} is not 40 hex characters; run the models "
                             "phase again (--tags models)")
    return commit


def lock_entries(results, section):
    """Lock entries to record from registered results of all hosts.

    models: lock key -> commit, for downloads whose requested revision was not already
    the commit. model_files: model file -> the sha256 it had when first fetched, for files
    the hub lists no hash for. model_manifests: a revision's manifest (manifest_key) -> its
    digest, when first fetched or first found held, for revisions the lock pins none for.
    files: upstream URL -> sha256, for files pinned by no one yet.
    """
    entries = {}
    for result in results or []:
        for item in (result or {}).get("results", []):
            if item.get("failed") or item.get("skipped"):
                continue
            planned = item.get("item", {})
            if section == "models" and item.get("commit"):
                if planned.get("revision") != item["commit"]:
                    entries[planned["lock_key"]] = item["commit"]
            elif section == "model_manifests" and item.get("commit") \
                    and item.get("manifest_digest") and not planned.get("manifest_digest"):
                entries[manifest_key(planned, item["commit"])] = item["manifest_digest"]
            elif section == "model_files" and item.get("commit"):
                for path, sha256 in (item.get("first_sums") or {}).items():
                    entries[model_files_key(planned["source"], planned["repo_id"],
                                            item["commit"], path)] = sha256
            elif section == "files" and item.get("sha256") and not planned.get("sha256"):
                entries[planned["upstream_url"]] = item["sha256"]
    return entries

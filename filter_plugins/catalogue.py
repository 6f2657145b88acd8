"""Filters that turn a host's services and the recipe catalogue into what it must hold and
run.

One place resolves services against the catalogue and rejects bad input before any host
changes: every error names the host, the service and the field.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import posixpath
import re

from ansible.errors import AnsibleFilterError

SOURCES = ("huggingface", "modelscope")
SERVICE_FIELDS = {"name", "recipe", "port", "served_name", "memory_share", "extra_args", "source",
                  "bind_address", "api_key"}
GUIDE_BIND = "0.0.0.0"  # the guide serves every engine on all addresses


class CatalogueError(AnsibleFilterError):
    """Bad input in the inventory or the catalogue; the message names where."""


# --- what may reach a unit, an environment file, a file name or a shell -------------------
# Every value that ends up in one is checked in preflight against the characters its field
# needs and a length, so no value a user types or a catalogue entry holds can add a unit
# directive, an environment variable or a shell word. The writers escape again where they
# write (systemd_argv, the /health probe's argument). An error names the field and never
# quotes a secret.
def _rule(pattern, says):
    return re.compile(pattern), says


RULES = {
    "name": _rule(r"^[a-z0-9][a-z0-9_.-]{0,62}$", "a name of 1 to 63 lower case letters, "
                  "digits, '.', '_', '-', starting with a letter or digit"),
    "served_name": _rule(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$", "a name of 1 to 128 letters, "
                         "digits, '.', '_', ':', '/', '@', '+', '-', starting with a letter or "
                         "digit"),
    "api_key": _rule(r"^[A-Za-z0-9_.~+/=:@-]{8,256}$", "a key of 8 to 256 letters, digits, "
                     "'.', '_', '~', '+', '/', '=', ':', '@', '-'"),
    "path": _rule(r"^(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9_.+@-][A-Za-z0-9_.+@/-]{0,254}$",
                  "a relative path of letters, digits, '.', '_', '+', '@', '-' and '/', "
                  "without '.' or '..' parts"),
    "file_name": _rule(r"^[A-Za-z0-9_.+@-]{1,128}$", "a file name of letters, digits, '.', "
                       "'_', '+', '@', '-'"),
    "repo": _rule(r"^[A-Za-z0-9_.-]{1,96}/[A-Za-z0-9_.-]{1,96}$", "owner/name, of letters, "
                  "digits, '.', '_', '-'"),
    "revision": _rule(r"^[A-Za-z0-9_.+/-]{1,128}$", "a branch, tag or commit of letters, "
                      "digits, '.', '_', '+', '/', '-'"),
    "image": _rule(r"^[a-z0-9][a-z0-9_.:/-]{0,254}:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
                   "a registry path with a tag (nvcr.io/nvidia/vllm:25.10-py3)"),
    "env_name": _rule(r"^[A-Z_][A-Z0-9_]{0,63}$", "an environment variable name (A-Z, "
                      "digits, '_')"),
    "flag": _rule(r"^--[a-z0-9][a-z0-9-]{0,62}$", "a long flag (--api-key)"),
    "sha256": _rule(r"^[0-9a-f]{64}$", "a sha256 of 64 lower case hex digits"),
    "url": _rule(r"^https?://[A-Za-z0-9_.~:/?#@!&'()*+,;=%-]{1,2040}$", "an http(s) URL "
                 "without spaces or control characters"),
}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_ARG = 4096
# Where models may not go: the system's own directories, which containers mount read-write.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/root", "/run", "/sbin", "/sys", "/usr", "/var/lib/docker")


def check_field(where, field, value, rule=None, secret=False):
    """`value` fits the rule of its field (RULES[rule or field]), else an error naming it."""
    pattern, says = RULES[rule or field]
    # fullmatch: `$` alone also matches before a final newline.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = "the value given" if secret else repr(value)
        raise CatalogueError(f"{where}: field {field}: {shown} is not {says}")


def check_token(where, field, value):
    """An argv token: a string without control characters (a newline in a unit file is a
    new directive), at most MAX_ARG long."""
    if not isinstance(value, str) or CONTROL.search(value) or len(value) > MAX_ARG:
        raise CatalogueError(f"{where}: field {field}: {value!r} is not a command-line "
                             f"argument (a string of at most {MAX_ARG} characters without "
                             "control characters such as a newline)")


def check_models_root(models_root, where="thorfleet_models_root"):
    """The model root: an absolute, normalised path of plain characters, not a system
    directory (containers mount it read-write)."""
    root = models_root if isinstance(models_root, str) else ""
    if not root.startswith("/") or posixpath.normpath(root) != root or root == "/" or \
            not RULES["path"][0].fullmatch(root[1:]):
        raise CatalogueError(f"{where}: {models_root!r} is not an absolute, normalised path "
                             "of letters, digits, '.', '_', '+', '@', '-' and '/' below /")
    if any(root == d or root.startswith(d + "/") for d in SYSTEM_DIRS):
        raise CatalogueError(f"{where}: {models_root!r} is inside a system directory "
                             f"({', '.join(SYSTEM_DIRS)}); the model root is mounted "
                             "read-write into every container")


SECTIONS = ("engines", "models", "files", "recipes")
MODALITIES = ("chat", "vision", "transcription")
ENGINE_KINDS = {"container": ("image",), "native": ("build", "binary")}
# The rule (RULES) of each field of an entry that reaches a unit, a file name or argv; an
# entry's own name is checked by KEY_RULES.
FIELD_RULES = {
    "engines": {"image": "image", "build": "file_name", "binary": "file_name",
                "modelscope_env": "env_name", "api_key_env": "env_name",
                "api_key_flag": "flag"},
    "models": {"quantization": "file_name"},
    "files": {"url": "url", "path": "path", "sha256": "sha256"},
    "recipes": {"model": "path", "model_file": "file_name", "served_name": "served_name",
                "chat_template": "file_name", "quantization": "file_name"},
}
KEY_RULES = {"engines": "name", "models": "path", "files": "file_name", "recipes": "name"}
# What each entry must hold, and the type of every field it may hold: a full entry of the
# catalogue, or one of the inventory's after the merge. Anything else is an error naming
# the entry and the field.
ENTRY_FIELDS = {
    "engines": {"required": ("kind", "port"),
                "types": {"kind": str, "image": str, "build": str, "binary": str, "port": int,
                          "memory_share": (int, float), "memory_overhead": (int, float),
                          "caches": list, "start_timeout": int, "modelscope_env": str,
                          "api_key_env": str, "api_key_flag": str,
                          "sampling_reaches_clients": bool}},
    "models": {"required": (),
               "types": {"huggingface": dict, "modelscope": dict, "quantization": str,
                         "ignore_patterns": list}},
    "files": {"required": ("url", "path"), "types": {"url": str, "path": str, "sha256": str}},
    "recipes": {"required": ("engine", "model"),
                "types": {"engine": str, "model": str, "model_file": str, "served_name": str,
                          "modality": str, "args": list, "sampling": dict,
                          "chat_template": str, "files": list, "memory_share": (int, float),
                          "quantization": str, "start_timeout": int}},
}


def merge_catalogue(catalogue, extra=None):
    """The project's catalogue with the inventory's `thorfleet_catalogue_extra` on top, by
    one rule: mappings merge recursively, anything else (lists included) is replaced whole.

    So `{engines: {vllm: {image: ...}}}` moves vLLM's image and keeps the rest of the
    engine, and a recipe's `args` given again replace that list. Every entry is checked
    after the merge: a new one must be complete, and an error names the entry and field.
    """
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise CatalogueError("thorfleet_catalogue_extra: a mapping of sections "
                             f"({', '.join(SECTIONS)}), not {_kind(extra)}")
    unknown = sorted(set(extra) - set(SECTIONS))
    if unknown:
        raise CatalogueError(f"thorfleet_catalogue_extra: unknown section(s) "
                             f"{', '.join(map(str, unknown))}; the catalogue has "
                             f"{', '.join(SECTIONS)}")
    merged = {}
    for section in SECTIONS:
        added = extra.get(section) or {}
        if not isinstance(added, dict):
            raise CatalogueError(f"thorfleet_catalogue_extra.{section}: a mapping of entries "
                                 f"by name, not {_kind(added)}")
        merged[section] = _merged((catalogue or {}).get(section) or {}, added)
        for name, entry in merged[section].items():
            in_section, where = _where(section, added, name)
            check_field(in_section, "key", name, KEY_RULES[section])
            _check_entry(section, where, entry)
    for name, recipe in merged["recipes"].items():
        _, where = _where("recipes", extra.get("recipes") or {}, name)
        if recipe["engine"] not in merged["engines"]:
            raise CatalogueError(f"{where}: field engine: {recipe['engine']!r} is not in the "
                                 f"catalogue's engines ({', '.join(sorted(merged['engines']))})")
        if recipe["model"] not in merged["models"]:
            raise CatalogueError(f"{where}: field model: {recipe['model']!r} is not in the "
                                 "catalogue's models")
    return merged


def _where(section, added, name):
    """How errors name an entry's section and the entry: by the inventory's setting where
    the entry comes from there, else as the catalogue's."""
    origin = "thorfleet_catalogue_extra." if name in added else "catalogue "
    return f"{origin}{section}", f"{origin}{section}.{name}"


def _merged(base, added):
    merged = dict(base)
    for key, value in added.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def _kind(value):
    return "a list" if isinstance(value, list) else f"{value!r}"


def _check_entry(section, where, entry):
    """One entry of the merged catalogue: complete, and each field of its type."""
    what = {"engines": "an engine", "models": "a model", "files": "a file",
            "recipes": "a recipe"}[section]
    if not isinstance(entry, dict):
        raise CatalogueError(f"{where}: an entry of {section} is a mapping of fields, not "
                             f"{_kind(entry)}")
    fields = ENTRY_FIELDS[section]
    required = list(fields["required"])
    if section == "engines" and entry.get("kind") in ENGINE_KINDS:
        required += ENGINE_KINDS[entry["kind"]]
    for field in required:
        if entry.get(field) in (None, ""):
            raise CatalogueError(f"{where}: field {field} is missing; {what} needs "
                                 f"{', '.join(required)}")
    for field, value in entry.items():
        expected = fields["types"].get(field)
        if expected is None:
            raise CatalogueError(f"{where}: unknown field {field}; {what} has "
                                 f"{', '.join(sorted(fields['types']))}")
        if value is not None and (not isinstance(value, expected)
                                  or (isinstance(value, bool) and expected is not bool)):
            raise CatalogueError(f"{where}: field {field}: {value!r} is not "
                                 f"{_type_name(expected)}")
    if section == "engines" and entry["kind"] not in ENGINE_KINDS:
        raise CatalogueError(f"{where}: field kind: {entry['kind']!r} is not one of "
                             f"{', '.join(ENGINE_KINDS)}")
    if section == "recipes" and entry.get("modality", "chat") not in MODALITIES:
        raise CatalogueError(f"{where}: field modality: {entry['modality']!r} is not one of "
                             f"{', '.join(MODALITIES)}")
    for field, rule in FIELD_RULES[section].items():
        if entry.get(field) is not None:
            check_field(where, field, entry[field], rule)
    for field in ("args", "ignore_patterns"):
        for token in entry.get(field) or []:
            check_token(where, field, token)
    for file_name in entry.get("files") or []:
        check_field(where, "files", file_name, "file_name")
    for cache in entry.get("caches") or []:
        # A mount's container side: `--volume=<host>:<cache>`.
        if not (isinstance(cache, str) and cache.startswith("/")
                and RULES["path"][0].fullmatch(cache[1:])):
            raise CatalogueError(f"{where}: field caches: {cache!r} is not an absolute path of "
                                 "letters, digits, '.', '_', '+', '@', '-' and '/'")
    if section == "engines" and not 1 <= entry["port"] <= 65535:
        raise CatalogueError(f"{where}: field port: {entry['port']!r} is not a port (1-65535)")
    if section == "models":
        hubs = [hub for hub in SOURCES if entry.get(hub) is not None]
        if not hubs:
            raise CatalogueError(f"{where}: field huggingface or modelscope is missing; a "
                                 "model needs its repository on at least one hub")
        for hub in hubs:
            if not entry[hub].get("repo") or not isinstance(entry[hub]["repo"], str):
                raise CatalogueError(f"{where}: field {hub}.repo is missing; a hub entry is "
                                     "{repo, revision?}")
            check_field(where, f"{hub}.repo", entry[hub]["repo"], "repo")
            if entry[hub].get("revision") is not None:
                check_field(where, f"{hub}.revision", str(entry[hub]["revision"]), "revision")


def _type_name(expected):
    names = {str: "a string", int: "a whole number", dict: "a mapping", list: "a list",
             (int, float): "a number", bool: "true or false"}
    return names[expected]


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
        if recipe not in recipes:
            raise CatalogueError(f"{where}: field recipe: unknown recipe {recipe!r}; known: "
                                 f"{', '.join(sorted(recipes))}")
        if service.get("source") is not None and service["source"] not in SOURCES:
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
            "requested_revision": str(hub.get("revision") or ""),
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
        key = lock_key(entry["source"], entry["repo_id"], entry["requested_revision"] or
                       ("main" if entry["source"] == "huggingface" else "master"))
        revision = lock.get("models", {}).get(key) or entry["requested_revision"] or None
        sums = model_files_key(entry["source"], entry["repo_id"], revision or "", "")
        result.append({**entry, "allow_patterns": allow, "lock_key": key, "revision": revision,
                       "sha256s": {k[len(sums):]: v for k, v in lock.get("model_files", {}).items()
                                   if k.startswith(sums)}})
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


def model_files_key(source, repo_id, commit, path):
    """The lock's key of a model file the hub lists no hash for."""
    return f"{source}:{repo_id}@{commit}/{path}"


def manifest_commit(slurped, model_dir):
    """The commit a model's manifest (a slurp result) records, for the unit's header:
    checked again here, as it came from a hub."""
    if not slurped or "content" not in slurped:
        return "not downloaded"
    try:
        commit = json.loads(base64.b64decode(slurped["content"]))["commit"]
    except (ValueError, binascii.Error, KeyError, TypeError):
        commit = None
    if not isinstance(commit, str) or not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise CatalogueError(f"{model_dir}/thorfleet-manifest.json: commit "
                             f"{str(commit)[:80]!r} is not 40 hex characters; run the models "
                             "phase again (--tags models)")
    return commit


def lock_entries(results, section):
    """Lock entries to record from registered results of all hosts.

    models: lock key -> commit, for downloads whose requested revision was not already
    the commit. model_files: model file -> the sha256 it had when first fetched, for files
    the hub lists no hash for. files: upstream URL -> sha256, for files pinned by no one yet.
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
            elif section == "model_files" and item.get("commit"):
                for path, sha256 in (item.get("first_sums") or {}).items():
                    entries[model_files_key(planned["source"], planned["repo_id"],
                                            item["commit"], path)] = sha256
            elif section == "files" and item.get("sha256") and not planned.get("sha256"):
                entries[planned["upstream_url"]] = item["sha256"]
    return entries


# --- services: each resolved to what its unit runs --------------------------------------

DEFAULT_START_TIMEOUT = 1200  # seconds; an engine or a recipe of the catalogue may say more
# Flags whose value is JSON, for the engines that take them.
JSON_FLAGS = ("--override-generation-config", "--preferred-sampling-params", "--hf-overrides",
              "--compilation-config", "--speculative-config", "--kv-transfer-config",
              "--limit-mm-per-prompt", "--json-model-override-args")


def _vllm(model, name, bind, port, share, recipe, args, template):
    """vllm serve <model> as the guide writes it; address and port only where moved, the
    memory share always."""
    argv = ["vllm", "serve", model, "--served-model-name", name, *args]
    if recipe.get("sampling"):
        argv += ["--override-generation-config", json.dumps(recipe["sampling"])]
    if template:
        argv += ["--chat-template", template]
    if bind != GUIDE_BIND:
        argv += ["--host", bind]
    if port != 8000:
        argv += ["--port", str(port)]
    return [*argv, "--gpu-memory-utilization", str(share)]


def _sglang(model, name, bind, port, share, recipe, args, template):
    argv = ["python", "-m", "sglang.launch_server", "--model-path", model,
            "--served-model-name", name, "--host", bind, "--port", str(port), *args]
    if recipe.get("sampling"):
        argv += ["--preferred-sampling-params", json.dumps(recipe["sampling"])]
    if template:
        argv += ["--chat-template", template]
    return [*argv, "--mem-fraction-static", str(share)]


def _llama_server(model, name, bind, port, share, recipe, args, template):
    return ["llama-server", "--model", model, "--alias", name, "--host", bind,
            "--port", str(port), *args]


def _whisper_server(model, name, bind, port, share, recipe, args, template):
    return ["whisper-server", "--model", model, "--host", bind, "--port", str(port), *args]


# One adapter per engine: (model path, served name, bind address, port, memory share,
# recipe, recipe flags, chat template path or None) -> the engine's argv.
ADAPTERS = {"vllm": _vllm, "sglang": _sglang, "llama-server": _llama_server,
            "whisper-server": _whisper_server}


def _check_overrides(where, service):
    port = service.get("port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool)
                             or not 1 <= port <= 65535):
        raise CatalogueError(f"{where}: field port: {port!r} is not a port (1-65535)")
    share = service.get("memory_share")
    if share is not None and (not isinstance(share, int | float) or isinstance(share, bool)
                              or not 0 < share <= 1):
        raise CatalogueError(f"{where}: field memory_share: {share!r} is not a share of "
                             "unified memory (above 0, at most 1)")
    bind = service.get("bind_address")
    if bind is not None:
        try:
            # A zone id (fe80::1%eth0) is refused: it is free text, and `%` a unit specifier.
            if not isinstance(bind, str) or "%" in bind:
                raise ValueError
            ipaddress.ip_address(bind)
        except ValueError:
            raise CatalogueError(f"{where}: field bind_address: {bind!r} is not an IP "
                                 "address (without a zone id)") from None
    if service.get("api_key") is not None:
        check_field(where, "api_key", service["api_key"], secret=True)
    if service.get("served_name") is not None:
        check_field(where, "served_name", service["served_name"])
    extra = service.get("extra_args", [])
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise CatalogueError(f"{where}: field extra_args: a list of strings, one per argv token")
    for token in extra:
        check_token(where, "extra_args", token)
    for index, token in enumerate(extra):
        flag, eq, value = token.partition("=")
        if flag not in JSON_FLAGS:
            continue
        if not eq:
            value = extra[index + 1] if index + 1 < len(extra) else ""
        try:
            json.loads(value)
        except ValueError as error:
            raise CatalogueError(f"{where}: field extra_args: {flag} takes JSON: {error}: "
                                 f"{value!r}") from None


def _start_timeout(where, recipe, engine):
    """Seconds the service may take to answer /health: the recipe's, else the engine's."""
    timeout = recipe.get("start_timeout", engine.get("start_timeout", DEFAULT_START_TIMEOUT))
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 < timeout <= 86400:
        raise CatalogueError(f"{where}: field start_timeout: {timeout!r} is not a number of "
                             "seconds from 1 to 86400")
    return timeout


def _probe_address(bind):
    """Where the host itself reaches a service bound to `bind` (URL form)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}
    if bind in wildcard:
        return wildcard[bind]
    return f"[{bind}]" if ":" in bind else bind


def _flag_value(argv, flag):
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            return argv[index + 1]
        if token.startswith(flag + "="):
            return token.split("=", 1)[1]
    return None


def service_specs(services, catalogue, models_root="/models", default_source="huggingface",
                  host="host", memory_budget=0.9, builds_root="/opt/thorfleet", api_key=""):
    """Each service resolved to what its unit runs, every service checked first.

    A spec: name, unit, recipe, engine, kind (container or native), modality, port,
    served_name (the service's, else the recipe's, else the service name), memory_share
    (given, else the recipe's, else the engine's default), memory_overhead (what the
    engine takes beyond its share), model (the path the engine loads),
    model_dir (the downloaded repository it is in), chat_template (its path, or None),
    bind_address and probe_address (where
    the host reaches it), nonthinking, argv (the engine's command), env,
    api_key_env/api_key_flag (how the engine takes an API key, if it does), and image
    (container engines, by tag) or engine_root and binary (native engines: where their
    builds live, and the binary in the `current` build).
    """
    services = services or []
    check_models_root(models_root, f"{host}: thorfleet_models_root")
    if api_key:
        check_field(f"{host}: thorfleet_api_key", "api_key", api_key, secret=True)
    plan = model_plan(services, catalogue, models_root, default_source, host)
    models_by_service = {name: m for m in plan["models"] for name in m["services"]}
    files = {f["name"]: f["dest"] for f in plan["files"]}
    root = posixpath.normpath(models_root)
    engines, recipes = catalogue["engines"], catalogue["recipes"]
    specs, ports = [], {}
    for service in services:
        name = service["name"]
        where = f"{host}: service {name}"
        recipe = recipes[service["recipe"]]
        engine = engines.get(recipe.get("engine"))
        if engine is None or recipe["engine"] not in ADAPTERS:
            raise CatalogueError(f"{where}: recipe {service['recipe']}: field engine: unknown "
                                 f"engine {recipe.get('engine')!r}; known: "
                                 f"{', '.join(sorted(ADAPTERS))}")
        _check_overrides(where, service)
        port = service.get("port") or engine["port"]
        if port in ports:
            raise CatalogueError(f"{where}: field port: {port} is already the port of service "
                                 f"{ports[port]}")
        ports[port] = name
        model = models_by_service[name]
        model_path = posixpath.join(model["dest"], recipe["model_file"]) \
            if recipe.get("model_file") else model["dest"]
        args = [a.replace("{models_root}", root) for a in recipe.get("args") or []]
        template = files.get(recipe.get("chat_template"))
        given_share = service.get("memory_share")
        share = given_share if given_share is not None else \
            recipe.get("memory_share", engine.get("memory_share", 0))
        served_name = service.get("served_name") or recipe.get("served_name") or name
        if service.get("api_key") and not (engine.get("api_key_env")
                                           or engine.get("api_key_flag")):
            raise CatalogueError(f"{where}: field api_key: {recipe['engine']} takes no API "
                                 "key; restrict who reaches it with bind_address instead")
        argv = ADAPTERS[recipe["engine"]](
            model_path, served_name, service.get("bind_address") or GUIDE_BIND, port,
            share, recipe, args, template) + list(service.get("extra_args") or [])
        env = {}
        if engine.get("modelscope_env") and model["source"] == "modelscope":
            env[engine["modelscope_env"]] = "true"
        spec = {
            "name": name, "unit": f"thorfleet-{name}.service", "recipe": service["recipe"],
            "engine": recipe["engine"], "kind": engine["kind"],
            "modality": recipe.get("modality", "chat"),
            "bind_address": service.get("bind_address") or GUIDE_BIND, "port": port,
            "probe_address": _probe_address(service.get("bind_address") or GUIDE_BIND),
            # Nonthinking: a template that blocks thinking, or llama.cpp's zero budget.
            "nonthinking": bool(template) or _flag_value(argv, "--reasoning-budget") == "0",
            "served_name": served_name,
            "memory_share": share,
            "memory_overhead": engine.get("memory_overhead", 0),
            "model": model_path, "model_dir": model["dest"], "source": model["source"],
            "quantization": recipe.get("quantization")
            or catalogue["models"][recipe["model"]].get("quantization", ""),
            "chat_template": template,
            # The recipe's sampling fields. Where the engine's own flag for them does not
            # reach its OpenAI routes, clients must send them: verify and bench do.
            "sampling": dict(recipe.get("sampling") or {}),
            "sampling_from_clients": bool(recipe.get("sampling"))
            and not engine.get("sampling_reaches_clients", True),
            "argv": argv, "env": env,
            # Where the engine takes an API key: an environment variable it reads, else a
            # flag; the key itself stays out of specs (they are printed) and of argv.
            "api_key_env": engine.get("api_key_env"),
            "api_key_flag": engine.get("api_key_flag"),
            "start_timeout": _start_timeout(where, recipe, engine)}
        if engine["kind"] == "container":
            spec["image"] = engine["image"]
            # Where the engine compiles kernels into, kept on the host per image digest.
            spec["caches"] = list(engine.get("caches") or [])
        else:
            # Where the engine's builds and its `current` link live.
            spec["engine_root"] = f"{builds_root}/{engine['build']}"
            spec["binary"] = f"{spec['engine_root']}/current/bin/{engine['binary']}"
            spec["argv"][0] = spec["binary"]
        specs.append(spec)
    # What each engine takes: its share, and what it takes beyond the share's flag.
    total = round(sum(s["memory_share"] + s["memory_overhead"] for s in specs), 4)
    if total > memory_budget:
        shares = ", ".join(f"{s['name']} {s['memory_share']}"
                           + (f" + {s['memory_overhead']}" if s["memory_overhead"] else "")
                           for s in specs)
        raise CatalogueError(f"{host}: field memory_share: the services take {total} of unified "
                             f"memory (share + the engine's overhead: {shares}), above the "
                             f"budget of {memory_budget} (thorfleet_memory_budget); give the "
                             "services memory_share values that fit")
    return specs


# --- images: the tags services use, resolved to digests -----------------------------------

def image_plan(specs, lock_images=None, registry_mirror="", refresh=False):
    """The container images a host's services run, each once.

    An entry: ref (the catalogue's reference, the lock's key, e.g.
    nvcr.io/nvidia/vllm:25.10-py3), repository (where it is pulled from: nvcr.io, or the
    registry mirror with the same path), tag, digest (the lock's, "" when the tag is to be
    resolved, as with refresh), image (repository@digest, what units run; the tag before
    it is resolved) and services.
    """
    lock_images = lock_images or {}
    plan = {}
    for spec in specs or []:
        if spec.get("kind") != "container":
            continue
        ref = spec["image"]
        entry = plan.get(ref)
        if entry is None:
            name, tag = _split_reference(ref)
            repository = name
            if registry_mirror and name.startswith("nvcr.io/"):
                repository = f"{registry_mirror.rstrip('/')}/{name.removeprefix('nvcr.io/')}"
            digest = "" if refresh else str(lock_images.get(ref) or "")
            entry = plan[ref] = {
                "ref": ref, "repository": repository, "tag": tag, "digest": digest,
                "image": f"{repository}@{digest}" if digest else f"{repository}:{tag}",
                "services": []}
        entry["services"].append(spec["name"])
    return sorted(plan.values(), key=lambda e: e["ref"])


def _split_reference(ref):
    """(name, tag) of an image reference; the tag is what follows the last ':' after the
    last '/', so a registry's port is not taken for one."""
    name, _, tag = ref.rpartition(":")
    if not name or "/" in tag:
        raise CatalogueError(f"image {ref!r}: field image: name it with a tag "
                             "(nvcr.io/nvidia/vllm:25.10-py3)")
    return name, tag


def image_digests(results):
    """{ref: digest} of images pulled by tag, from the docker_image_pull results registered
    on each host (a list, one per host); the digest is the one the pulled repository gives."""
    digests = {}
    for result in results or []:
        for item in (result or {}).get("results", []):
            if item.get("failed") or item.get("skipped"):
                continue
            entry = item.get("item") or {}
            for repo_digest in (item.get("image") or {}).get("RepoDigests") or []:
                repository, _, digest = repo_digest.partition("@")
                if repository == entry.get("repository"):
                    digests.setdefault(entry["ref"], digest)
    return digests


def image_history(plan, history=None, resolved=None, keep=2):
    """Digests each repository ran, newest first, at most `keep`: the plan's digests (from
    the lock, else just resolved) put in front of what the host ran before."""
    updated = {repository: list(digests) for repository, digests in (history or {}).items()}
    for entry in plan or []:
        digest = entry["digest"] or (resolved or {}).get(entry["ref"])
        if not digest:
            continue  # check mode: not resolved
        before = updated.get(entry["repository"], [])
        updated[entry["repository"]] = ([digest] + [d for d in before if d != digest])[:keep]
    return updated


def jit_mounts(specs, images, root):
    """Each container service's compile caches as mounts: {service, host, container,
    volume (the `docker run` option)}. The
    host side is kept per image digest (<root>/sha256-<hex><container path>), so that an
    image bump starts with an empty cache of its own and a rollback finds the old one. An
    image not resolved to a digest yet (check mode on a new host) has none."""
    digests = {entry["ref"]: entry.get("digest") for entry in images or []}
    mounts = []
    for spec in specs or []:
        digest = digests.get(spec.get("image")) if spec.get("kind") == "container" else None
        for cache in spec.get("caches") or [] if digest else []:
            host = f"{root.rstrip('/')}/{digest.replace(':', '-')}{cache}"
            mounts.append({"service": spec["name"], "container": cache, "host": host,
                           "volume": f"--volume={host}:{cache}"})
    return mounts


def jit_caches_to_prune(found, keep):
    """Cache directories (find results under the cache root) of images no longer kept:
    keep is {repository: [digest, ...]}, what the host may still run."""
    kept = {digest.replace(":", "-") for digests in (keep or {}).values() for digest in digests}
    return sorted(entry["path"] for entry in (found or {}).get("files", [])
                  if entry["path"].rsplit("/", 1)[-1] not in kept)


def images_to_prune(results, keep):
    """Images to remove, from docker_host_info results per repository (registered in a
    loop over `keep`'s repositories): those whose digest in that repository is not kept."""
    prune = {}
    for result in results or []:
        repository = result.get("item")
        for image in result.get("images") or []:
            digests = [d.partition("@")[2] for d in image.get("RepoDigests") or []
                       if d.partition("@")[0] == repository]
            if digests and not set(digests) & set(keep.get(repository, [])):
                prune[image["Id"]] = image
    return list(prune.values())


class FilterModule:
    def filters(self):
        return {
            "thorfleet_catalogue": merge_catalogue,
            "thorfleet_model_plan": model_plan,
            "thorfleet_lock_entries": lock_entries,
            "thorfleet_manifest_commit": manifest_commit,
            "thorfleet_service_specs": service_specs,
            "thorfleet_image_plan": image_plan,
            "thorfleet_image_digests": image_digests,
            "thorfleet_image_history": image_history,
            "thorfleet_images_to_prune": images_to_prune,
            "thorfleet_jit_mounts": jit_mounts,
            "thorfleet_jit_caches_to_prune": jit_caches_to_prune,
        }

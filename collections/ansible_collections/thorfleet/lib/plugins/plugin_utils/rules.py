"""The recipe catalogue's rules, shared by thorfleet's filters: what a value that reaches a
unit, an environment file, a file name or argv may hold, and the catalogue as the
inventory's thorfleet_catalogue_extra merges into it, every entry checked."""

from __future__ import annotations

import math
import posixpath
import re

from ansible.errors import AnsibleFilterError

SOURCES = ("huggingface", "modelscope")
# The revision of a model whose catalogue entry names none: each hub's default branch.
DEFAULT_REVISION = {"huggingface": "main", "modelscope": "master"}


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
# A DNS name (fullmatch only): the fleet's addresses, a registry's host.
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*")
MAX_ARG = 4096
# Where models may not go: the system's own directories, which containers mount read-write.
# Where a model root may not lie (the root or anything below it): the system's own
# directories, and /var's that hold state, cron's spool, logs and caches (the project's
# compile caches among them). A container writes where the model root is mounted, as root.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
               "/root", "/run", "/sbin", "/snap", "/sys", "/usr", "/var/cache", "/var/lib",
               "/var/log", "/var/mail", "/var/spool", "/var/tmp")
# Home directories: a model root may lie inside a user's home (/home/nvidia/models), but
# not be one, nor hold them (a user's ~/.ssh, ~/.bashrc).
HOMES = "/home"


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


def check_number(where, field, value, low=None, high=None, *, low_closed=False, whole=False,
                 strings=True, what=""):
    """`value` as a number of its field's range (above `low`, or from it if `low_closed`;
    at most `high`; None: no bound), else an error naming the field. A string that reads
    as a number is taken as one (`-e thorfleet_memory_budget=0.95` reaches a play as a
    string) unless `strings` is false; a boolean, NaN and infinity are refused."""
    number = value
    if isinstance(value, str):
        try:
            number = (int(value) if whole else float(value)) if strings else None
        except ValueError:
            number = None
    fits = (isinstance(number, int | float) and not isinstance(number, bool)
            and math.isfinite(number) and (not whole or float(number).is_integer())
            and (low is None or (low <= number if low_closed else low < number))
            and (high is None or number <= high))
    if not fits:
        kind = "a whole number" if whole else "a number"
        if low is None:
            says = f"{kind} (finite)"
        elif whole:
            says = f"{kind} from {low} to {high}"
        else:
            says = f"{kind} {'from' if low_closed else 'above'} {low}, at most {high}"
        says = f"{what} ({says})" if what else says
        raise CatalogueError(f"{where}: field {field}: {value!r} is not {says}")
    return int(number) if whole else number


def check_absolute(path, where):
    """An absolute, normalised path of plain characters below /: one that can go into a
    unit's command line as it is."""
    text = path if isinstance(path, str) else ""
    if not text.startswith("/") or posixpath.normpath(text) != text or text == "/" or \
            not RULES["path"][0].fullmatch(text[1:]):
        raise CatalogueError(f"{where}: {path!r} is not an absolute, normalised path "
                             "of letters, digits, '.', '_', '+', '@', '-' and '/' below /")
    return text


def _inside(path, directory):
    return path == directory or path.startswith(directory + "/")


def check_models_root(models_root, where="thorfleet_models_root", builds_root=None):
    """The model root: an absolute, normalised path of plain characters that neither lies
    in nor holds a system directory, a home directory or the engine builds (`builds_root`,
    ggml_build_root): containers mount it read-write and may run as root."""
    root = check_absolute(models_root, where)
    why = "; the model root is mounted read-write into every container"
    if any(_inside(root, d) for d in SYSTEM_DIRS):
        raise CatalogueError(f"{where}: {models_root!r} is inside a system directory "
                             f"({', '.join(SYSTEM_DIRS)}){why}")
    held = [d for d in SYSTEM_DIRS if _inside(d, root)]
    if held:
        raise CatalogueError(f"{where}: {models_root!r} holds system directories "
                             f"({', '.join(held)}){why}")
    if _inside(HOMES, root) or posixpath.dirname(root) == HOMES:
        raise CatalogueError(f"{where}: {models_root!r} is {HOMES} or a home directory (a "
                             f"directory inside a home is taken: {HOMES}/nvidia/models){why}")
    if builds_root and (_inside(root, builds_root) or _inside(builds_root, root)):
        raise CatalogueError(f"{where}: {models_root!r} overlaps the engine builds "
                             f"(ggml_build_root {builds_root}){why}")


SECTIONS = ("engines", "models", "files", "recipes")
MODALITIES = ("chat", "vision", "transcription")
# The request shape an engine's transcription route takes (verify sends it).
TRANSCRIPTION_APIS = ("openai", "whisper.cpp")
ENGINE_KINDS = {"container": ("image",), "native": ("build", "binary")}
# The rule (RULES) of each field of an entry that reaches a unit, a file name or argv; an
# entry's own name is checked by KEY_RULES.
FIELD_RULES = {
    "engines": {"image": "image", "build": "file_name", "binary": "file_name",
                "modelscope_env": "env_name", "api_key_env": "env_name",
                "api_key_flag": "flag", "sampling_flag": "flag",
                "chat_template_flag": "flag", "memory_flag": "flag", "metrics_flag": "flag"},
    "models": {"quantization": "file_name"},
    "files": {"url": "url", "path": "path", "sha256": "sha256"},
    "recipes": {"model": "path", "model_file": "file_name", "served_name": "served_name",
                "chat_template": "file_name", "quantization": "file_name"},
}
KEY_RULES = {"engines": "name", "models": "path", "files": "file_name", "recipes": "name"}
# What each entry must hold, and the type of every field it may hold: a full entry of the
# catalogue, or one of the inventory's after the merge. Anything else is an error naming
# the entry and the field.
# The range of each number an entry may hold, as check_number takes it: (low, high,
# low_closed, whole, what). Shares of unified memory above 0; an overhead from 0 (none).
PORT = (1, 65535, True, True, "a port")
SHARE = (0, 1, False, False, "a share of unified memory")
SECONDS = (1, 86400, True, True, "a number of seconds")
NUMBER_RANGES = {
    "engines": {"port": PORT, "builtin_port": PORT, "memory_share": SHARE,
                "memory_overhead": (0, 1, True, False, "a share of unified memory"),
                "start_timeout": SECONDS},
    "recipes": {"memory_share": SHARE, "start_timeout": SECONDS},
}


def check_in_range(where, field, value, bounds):
    """check_number with one of the ranges above."""
    low, high, low_closed, whole, what = bounds
    return check_number(where, field, value, low, high, low_closed=low_closed, whole=whole,
                        what=what)


# A recipe's sampling: the engine's sampling fields by name, each a number.
SAMPLING_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ENTRY_FIELDS = {
    "engines": {"required": ("kind", "port"),
                "types": {"kind": str, "image": str, "build": str, "binary": str, "port": int,
                          "memory_share": (int, float), "memory_overhead": (int, float),
                          "caches": list, "start_timeout": int, "modelscope_env": str,
                          "api_key_env": str, "api_key_flag": str,
                          "builtin_port": int, "sampling_flag": str,
                          "chat_template_flag": str,
                          "memory_flag": str, "sampling_reaches_clients": bool,
                          "transcription_api": str, "metrics": bool, "metrics_flag": str}},
    "models": {"required": (),
               "types": {"huggingface": dict, "modelscope": dict, "quantization": str,
                         "ignore_patterns": list}},
    "files": {"required": ("url", "path"), "types": {"url": str, "path": str, "sha256": str}},
    "recipes": {"required": ("engine", "model"),
                "types": {"engine": str, "model": str, "model_file": str, "served_name": str,
                          "modality": str, "args": list, "sampling": dict,
                          "chat_template": str, "files": list, "memory_share": (int, float),
                          "quantization": str, "start_timeout": int, "thinking": bool}},
}


def merge_catalogue(catalogue, extra=None):
    """The project's catalogue with the inventory's `thorfleet_catalogue_extra` on top, by
    one rule: mappings merge recursively, anything else (lists included) is replaced whole.

    So `{engines: {vllm: {image: ...}}}` moves vLLM's image and keeps the rest of the
    engine, a recipe's `args` given again replace that list, and a field given as null
    is unset. Every entry is checked
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
        entries = _merged((catalogue or {}).get(section) or {}, added)
        if section == "recipes":
            entries = _extended(entries, added)
        merged[section] = {name: _unset(entry) for name, entry in entries.items()}
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
    _check_places(merged, extra)
    return merged


def _extended(recipes, added):
    """Each recipe with `extends: <recipe>` as that recipe's fields with its own on top, by
    the merge rule above (so a variant states only what differs: `sampling: {top_p: 0.8}`
    changes one sampling field, `args` given again replace the list), after the inventory's
    entries are merged in: a change to a recipe reaches the recipes that extend it."""
    done = {}

    def resolve(name, chain):
        if name in done:
            return done[name]
        entry = recipes[name]
        if not isinstance(entry, dict) or entry.get("extends") is None:
            done[name] = entry
            return entry
        base = entry["extends"]
        _, where = _where("recipes", added, name)
        if not isinstance(base, str) or base not in recipes:
            raise CatalogueError(f"{where}: field extends: {base!r} is not in the "
                                 "catalogue's recipes")
        if base in chain:
            loop = " -> ".join([*chain[chain.index(base):], base])
            raise CatalogueError(f"{where}: field extends: {base!r} leads back to it "
                                 f"({loop})")
        own = {field: value for field, value in entry.items() if field != "extends"}
        done[name] = _merged(resolve(base, [*chain, base]), own)
        return done[name]

    return {name: resolve(name, [name]) for name in recipes}


def _model_places(model):
    """Where a model lies under the model root: its directory, and the two beside it that
    a new revision is staged in and the one it replaced is kept in."""
    parent, name = posixpath.split(model)
    return [model] + [posixpath.join(parent, f".{name}.{kind}") for kind in ("partial",
                                                                            "previous")]


def _check_places(merged, extra):
    """No two things the catalogue puts under the model root overlap: a model inside
    another's directory, a file at a model's directory or above it, or where its revisions
    are staged, two files at one path: they would overwrite each other on every run. A file
    inside a model's directory is refused too, whatever its name: which files a model
    holds is known only once the hub lists its revision, and a new one may bring a file of
    that name. The error names the inventory's entry where one of the two comes
    from it."""
    places = [("models", name, place) for name in merged["models"]
              for place in _model_places(name)]
    places += [("files", name, entry["path"]) for name, entry in merged["files"].items()]
    places.sort(key=lambda item: (item[1] in (extra.get(item[0]) or {}), item[0], item[1]))
    for index, (section, name, place) in enumerate(places):
        for other_section, other, other_place in places[:index]:
            if (section, name) == (other_section, other) or not (
                    _inside(place, other_place) or _inside(other_place, place)):
                continue
            if section == other_section == "models" and (place != name or other_place != other):
                continue  # two models: their directories matter, not what is beside them
            _, where = _where(section, extra.get(section) or {}, name)
            field = "path" if section == "files" else "key"
            what = "model" if other_section == "models" else "file"
            raise CatalogueError(f"{where}: field {field}: {place!r} overlaps {what} "
                                 f"{other}'s place under the model root ({other_place}); "
                                 "the two would overwrite each other")


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


def _unset(entry):
    """An entry without the fields given as null: a null field is unset (an engine's
    memory_overhead: null is no overhead), as if the entry never named it."""
    if not isinstance(entry, dict):
        return entry
    return {field: value for field, value in entry.items() if value is not None}


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
    if section == "engines" and isinstance(entry.get("kind"), str) \
            and entry["kind"] in ENGINE_KINDS:
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
    if section == "engines" and entry.get("transcription_api", "openai") \
            not in TRANSCRIPTION_APIS:
        raise CatalogueError(f"{where}: field transcription_api: "
                             f"{entry['transcription_api']!r} is not one of "
                             f"{', '.join(TRANSCRIPTION_APIS)}")
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
    for field, bounds in NUMBER_RANGES.get(section, {}).items():
        if entry.get(field) is not None:
            check_in_range(where, field, entry[field], bounds)
    for key, value in (entry.get("sampling") or {}).items():
        if not (isinstance(key, str) and SAMPLING_KEY.fullmatch(key)):
            raise CatalogueError(f"{where}: field sampling: {key!r} is not a sampling field's "
                                 "name (lower case letters, digits, '_')")
        check_number(where, f"sampling.{key}", value, strings=False)
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

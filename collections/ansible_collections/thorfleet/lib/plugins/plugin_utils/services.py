"""Each service of a host resolved to what its unit runs: one adapter per engine turns a
recipe into the engine's command line, from the traits its catalogue entry names."""

from __future__ import annotations

import ipaddress
import json
import posixpath

from .models import model_plan
from .rules import (
    PORT,
    SECONDS,
    SHARE,
    CatalogueError,
    check_absolute,
    check_field,
    check_in_range,
    check_models_root,
    check_token,
)

GUIDE_BIND = "0.0.0.0"  # the guide serves every engine on all addresses


# --- services: each resolved to what its unit runs --------------------------------------

DEFAULT_START_TIMEOUT = 1200  # seconds; an engine or a recipe of the catalogue may say more
# Flags whose value is JSON, for the engines that take them.
JSON_FLAGS = ("--override-generation-config", "--preferred-sampling-params", "--hf-overrides",
              "--compilation-config", "--speculative-config", "--kv-transfer-config",
              "--limit-mm-per-prompt", "--json-model-override-args")


def _trait(run, field, why):
    """A flag the engine's catalogue entry must name for what the recipe asks of it."""
    if not run["engine"].get(field):
        raise CatalogueError(f"{run['where']}: recipe {run['recipe_name']}: engine "
                             f"{run['recipe']['engine']} has no {field}, so it cannot "
                             f"take {why}")
    return run["engine"][field]


def _tuning(run):
    """What vLLM and SGLang share after their own flags: the recipe's sampling fields and
    the chat template, through the flags their engine entry names."""
    recipe, argv = run["recipe"], []
    if recipe.get("sampling"):
        argv += [_trait(run, "sampling_flag", "the recipe's sampling"),
                 json.dumps(recipe["sampling"])]
    if run["template"]:
        argv += [_trait(run, "chat_template_flag", "a chat template"), run["template"]]
    return argv


def _memory(run):
    """The memory share, always, through the engine's flag for it."""
    return [_trait(run, "memory_flag", "a memory share"), str(run["share"])]


def _metrics(run):
    """The flag that turns the engine's /metrics on, where it has one and needs it."""
    engine = run["engine"]
    return [engine["metrics_flag"]] if engine.get("metrics") and engine.get("metrics_flag") \
        else []


def _vllm(run):
    """vllm serve <model> as the guide writes it; address and port only where moved, the
    memory share always."""
    argv = ["vllm", "serve", run["model"], "--served-model-name", run["served_name"],
            *run["args"], *_tuning(run)]
    if run["bind"] != GUIDE_BIND:
        argv += ["--host", run["bind"]]
    # vLLM listens on its own default without --port, whatever the catalogue's port is.
    if run["port"] != run["engine"].get("builtin_port"):
        argv += ["--port", str(run["port"])]
    return [*argv, *_memory(run)]


def _sglang(run):
    return ["python", "-m", "sglang.launch_server", "--model-path", run["model"],
            "--served-model-name", run["served_name"], "--host", run["bind"],
            "--port", str(run["port"]), *run["args"], *_tuning(run), *_memory(run),
            *_metrics(run)]


def _llama_server(run):
    return ["llama-server", "--model", run["model"], "--alias", run["served_name"],
            "--host", run["bind"], "--port", str(run["port"]), *run["args"], *_metrics(run)]


def _whisper_server(run):
    return ["whisper-server", "--model", run["model"], "--host", run["bind"],
            "--port", str(run["port"]), *run["args"]]


# One adapter per engine: the engine's argv from `run`, a service resolved against its
# recipe and engine: model (the path it loads), served_name, bind, port, share (of
# unified memory), recipe, args (the recipe's flags), template (the chat template's
# path, or None) and engine (its catalogue entry, whose traits the adapters read).
ADAPTERS = {"vllm": _vllm, "sglang": _sglang, "llama-server": _llama_server,
            "whisper-server": _whisper_server}


# What the project sets on each engine's command line from a service's fields and its
# recipe, by flag: the field to use instead. extra_args may not set them, or they would
# undo what preflight checked (a port clash, the memory budget, the bind address) or put
# a key into the unit file. The engine entry's own flags (memory_flag, api_key_flag,
# sampling_flag, chat_template_flag) are added to its engine's list.
_SERVER = {"--host": "bind_address", "--port": "port", "--api-key": "api_key"}
MANAGED_FLAGS = {
    "vllm": {**_SERVER, "--model": "the recipe's model", "--served-model-name": "served_name",
             "--uds": "port", "--gpu-memory-utilization": "memory_share",
             "--kv-cache-memory-bytes": "memory_share",
             "--allowed-local-media-path": "the recipe's args",
             "--chat-template": "the recipe's chat_template",
             "--override-generation-config": "the recipe's sampling",
             "--config": "the service's fields (a config file may set any of them)"},
    "sglang": {**_SERVER, "--model-path": "the recipe's model", "--model": "the recipe's model",
               "--served-model-name": "served_name", "--mem-fraction-static": "memory_share",
               "--chat-template": "the recipe's chat_template",
               "--preferred-sampling-params": "the recipe's sampling",
               "--config": "the service's fields (a config file may set any of them)"},
    "llama-server": {**_SERVER, "--model": "the recipe's model", "-m": "the recipe's model",
                     "--alias": "served_name", "-a": "served_name",
                     "--api-key-file": "api_key", "--path": "the recipe's args",
                     "--chat-template-file": "the recipe's chat_template"},
    "whisper-server": {"--host": "bind_address", "--port": "port",
                       "--model": "the recipe's model", "-m": "the recipe's model",
                       "--public": "the recipe's args"},
}
# Engines whose parser (Python's argparse) takes a flag's unique prefix and '_' for '-':
# `--gpu-memory` or `--gpu_memory_utilization` is the managed flag to them.
PREFIX_PARSERS = ("vllm", "sglang")
# Flags whose value is a path the engine reads files under: it stays inside the models
# root after normalisation (a recipe's `--allowed-local-media-path /etc` is refused).
PATH_FLAGS = ("--allowed-local-media-path", "--chat-template", "--chat-template-file",
              "--path", "--public")
_TRAIT_FIELDS = {"memory_flag": "memory_share", "api_key_flag": "api_key",
                 "metrics_flag": "the engine's metrics (always on where it has them)",
                 "sampling_flag": "the recipe's sampling",
                 "chat_template_flag": "the recipe's chat_template"}


def managed_flags(engine_name, engine):
    """The flags of MANAGED_FLAGS for this engine, with its entry's own."""
    managed = dict(MANAGED_FLAGS.get(engine_name, {}))
    for trait, field in _TRAIT_FIELDS.items():
        if engine.get(trait):
            managed.setdefault(engine[trait], field)
    return managed


def _managed_flag(token, managed, prefixes):
    """The managed flag `token` sets (its part before '='), or None."""
    flag = token.partition("=")[0]
    if flag in managed:
        return flag
    if prefixes and flag.startswith("--") and len(flag) > 2:
        flag = flag.replace("_", "-")
        return next((m for m in managed if m.startswith(flag)), None)
    return None


def _check_extra_args(where, engine_name, engine, extra):
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise CatalogueError(f"{where}: field extra_args: a list of strings, one per argv token")
    managed = managed_flags(engine_name, engine)
    for index, token in enumerate(extra):
        check_token(where, "extra_args", token)
        if token == "--":
            raise CatalogueError(f"{where}: field extra_args: '--' ends the engine's flags; "
                                 "what follows it would be read as its model")
        flag = _managed_flag(token, managed, engine_name in PREFIX_PARSERS)
        if flag:
            # The flag as given, never its value (it may be a key).
            raise CatalogueError(f"{where}: field extra_args: {token.partition('=')[0]!r} "
                                 f"sets {flag}, which thorfleet sets for {engine_name}; use "
                                 f"{managed[flag]} instead")
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


def _checked_paths(where, recipe_name, args, root):
    """The recipe's flags, each path one gives the engine normalised (so that no `..`
    reaches the engine, which would follow a link before it) and inside the models root."""
    checked = list(args)
    for index, token in enumerate(args):
        flag, eq, value = token.partition("=")
        if flag not in PATH_FLAGS:
            continue
        at = index if eq else index + 1
        if not eq:
            value = args[at] if at < len(args) else ""
        path = posixpath.normpath(value) if value.startswith("/") else ""
        if path != root and not path.startswith(root + "/"):
            raise CatalogueError(f"{where}: recipe {recipe_name}: field args: {flag} "
                                 f"{value!r} is not inside the models root {root}; an engine "
                                 "reads files only from there")
        checked[at] = f"{flag}={path}" if eq else path
    return checked


def _check_overrides(where, service):
    """The service's own settings, checked; returns its port and memory share (None
    where not given), converted from strings where given as such."""
    port, share = service.get("port"), service.get("memory_share")
    if port is not None:
        port = check_in_range(where, "port", port, PORT)
    if share is not None:
        share = check_in_range(where, "memory_share", share, SHARE)
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
    return port, share


def _start_timeout(where, recipe, engine):
    """Seconds the service may take to answer /health: the recipe's, else the engine's."""
    timeout = recipe.get("start_timeout", engine.get("start_timeout", DEFAULT_START_TIMEOUT))
    return check_in_range(where, "start_timeout", timeout, SECONDS)


def _probe_address(bind):
    """Where the host itself reaches a service bound to `bind` (URL form)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}
    if bind in wildcard:
        return wildcard[bind]
    return f"[{bind}]" if ":" in bind else bind


def service_specs(services, catalogue, *, builds_root, models_root="/models",
                  default_source="huggingface", host="host", memory_budget=0.9, api_key=""):
    """Each service resolved to what its unit runs, every service checked first.

    A spec: name, unit, recipe, engine, kind (container or native), modality, port,
    served_name (the service's, else the recipe's, else the service name), memory_share
    (given, else the recipe's, else the engine's default), memory_overhead (what the
    engine takes beyond its share), model (the path the engine loads), model_name (the
    catalogue's name of it),
    model_dir (the downloaded repository it is in), chat_template (its path, or None),
    bind_address and probe_address (where
    the host reaches it), nonthinking, argv (the engine's command), env,
    api_key_env/api_key_flag (how the engine takes an API key, if it does), metrics_path
    (where it serves Prometheus metrics, or None), and for
    container engines image (by tag), container (the container's fixed name) and caches,
    for native engines engine_root (where their builds live), binary (the binary in the
    `current` build, the command's first word) and binary_in_build (its path in any
    build: a unit runs it from the build `current` points to when it is written, by the
    build's own name, so that the last good unit names the last good build).
    """
    services = services or []
    check_absolute(builds_root, f"{host}: ggml_build_root")
    check_models_root(models_root, f"{host}: thorfleet_models_root", builds_root)
    if api_key:
        check_field(f"{host}: thorfleet_api_key", "api_key", api_key, secret=True)
    memory_budget = check_in_range(host, "thorfleet_memory_budget", memory_budget, SHARE)
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
        given_port, given_share = _check_overrides(where, service)
        _check_extra_args(where, recipe["engine"], engine, service.get("extra_args", []))
        port = given_port or engine["port"]
        if port in ports:
            raise CatalogueError(f"{where}: field port: {port} is already the port of service "
                                 f"{ports[port]}")
        ports[port] = name
        model = models_by_service[name]
        model_path = posixpath.join(model["dest"], recipe["model_file"]) \
            if recipe.get("model_file") else model["dest"]
        args = [a.replace("{models_root}", root) for a in recipe.get("args") or []]
        args = _checked_paths(where, service["recipe"], args, root)
        template = files.get(recipe.get("chat_template"))
        share = given_share if given_share is not None else \
            recipe.get("memory_share", engine.get("memory_share", 0))
        served_name = service.get("served_name") or recipe.get("served_name") or name
        if service.get("api_key") and not (engine.get("api_key_env")
                                           or engine.get("api_key_flag")):
            raise CatalogueError(f"{where}: field api_key: {recipe['engine']} takes no API "
                                 "key; restrict who reaches it with bind_address instead")
        run = {"where": where, "recipe_name": service["recipe"], "recipe": recipe,
               "engine": engine}
        if recipe.get("sampling"):
            _trait(run, "sampling_flag", "the recipe's sampling")
        if template:
            _trait(run, "chat_template_flag", "a chat template")
        argv = ADAPTERS[recipe["engine"]]({
            "model": model_path, "served_name": served_name,
            "bind": service.get("bind_address") or GUIDE_BIND, "port": port, "share": share,
            "recipe": recipe, "args": args, "template": template, "engine": engine,
            "where": where, "recipe_name": service["recipe"],
        }) + list(service.get("extra_args") or [])
        env = {}
        if engine.get("modelscope_env") and model["source"] == "modelscope":
            env[engine["modelscope_env"]] = "true"
        spec = {
            "name": name, "unit": f"thorfleet-{name}.service", "recipe": service["recipe"],
            "engine": recipe["engine"], "kind": engine["kind"],
            "modality": recipe.get("modality", "chat"),
            "transcription_api": engine.get("transcription_api", "openai"),
            "bind_address": service.get("bind_address") or GUIDE_BIND, "port": port,
            "probe_address": _probe_address(service.get("bind_address") or GUIDE_BIND),
            # A recipe that says it does not think: verify checks it answers without.
            "nonthinking": recipe.get("thinking") is False,
            "served_name": served_name,
            "memory_share": share,
            "memory_overhead": engine.get("memory_overhead", 0),
            "model": model_path, "model_dir": model["dest"], "source": model["source"],
            "model_name": recipe["model"],
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
            # Where the engine serves Prometheus metrics (on its own port, without the
            # API key), or None for an engine that has none.
            "metrics_path": "/metrics" if engine.get("metrics") else None,
            "start_timeout": _start_timeout(where, recipe, engine)}
        if engine["kind"] == "container":
            spec["image"] = engine["image"]
            spec["container"] = f"thorfleet-{name}"
            # Where the engine compiles kernels into, kept on the host per image digest.
            spec["caches"] = list(engine.get("caches") or [])
        else:
            # Where the engine's builds and its `current` link live.
            spec["engine_root"] = f"{builds_root}/{engine['build']}"
            spec["binary_in_build"] = f"bin/{engine['binary']}"
            spec["binary"] = f"{spec['engine_root']}/current/{spec['binary_in_build']}"
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

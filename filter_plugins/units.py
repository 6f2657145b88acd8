"""The services phase's one computation: what each unit runs, from the host's resolved
services and what the phases found on the host, so that the unit templates only render.

For each service (a spec of thorfleet_services_resolved) the result is the spec with `run`:
  image         the image it runs, by digest (container engines; "" before one is pinned)
  build         the engine build `current` points to (native engines; "not built")
  argv          the unit's command (native engines): the spec's, from the binary in that
                build, by the build's own name, so that the last good unit names the last
                good build, which a rollback starts again
  model_commit  the commit the model's manifest records ("not downloaded")
  template_sum  the chat template's sha256 ("not fetched")
  cache_volumes the `docker run` mounts of its compile caches (per image digest)
  docker        the `docker run` command before the image (container engines), with the
                options `docker` gives: runtime, models_root, volumes, env_dir, extra
  command       what the container runs (container engines): the engine's argv; for
                an engine that takes its key only on its command line (SGLang), a shell
                in the container appends it from the environment file's variable, so
                that the key is in no unit file, not in the host's `docker run` command
                line and not in the container's recorded command (`docker inspect`)
  api_key_argv  the same for a native engine: what the unit appends, which systemd
                fills in from the environment file; joined to its flag, so that a key
                that starts with '-' is not taken for a flag
"""

from __future__ import annotations

import posixpath

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils.models import manifest_commit


def docker_run(spec, cache_volumes, docker):
    """`docker run` as the guide runs an engine, up to the image: host IPC and network,
    the runtime, the model root and the other mounts, the environment file, the compile
    caches, then the site's own options."""
    return ["/usr/bin/docker", "run", "--rm", "--name", spec["container"], "--ipc=host",
            "--net=host", f"--runtime={docker['runtime']}",
            f"--volume={docker['models_root']}:{docker['models_root']}",
            *(f"--volume={volume}" for volume in docker.get("volumes") or []),
            f"--env-file={docker['env_dir']}/{spec['name']}.env",
            *cache_volumes, *(docker.get("extra") or [])]


def container_command(spec, keyed):
    """The container's command: the engine's argv, and for an engine that takes its key
    only as a flag (`keyed`: the service has a key), `/bin/sh -c` appending it inside the
    container, from the variable the environment file sets. The flag is a catalogue
    value of the `flag` rule (no shell syntax); the key is expanded in double quotes."""
    if not keyed:
        return list(spec["argv"])
    return ["/bin/sh", "-c", f'exec "$@" {spec["api_key_flag"]}="$THORFLEET_API_KEY"', "sh",
            *spec["argv"]]


def unit_inputs(specs, images, builds, commits, sums, caches, api_keys, docker):
    """specs: the resolved services; images: the image plan (thorfleet_images_planned);
    builds: {engine root: the build its `current` link points to}; commits: {model
    directory: the commit its manifest records}; sums: {chat template: its sha256} (the
    three as thorfleet_service_state reads them on the host); caches:
    thorfleet_jit_mounts; api_keys: {service name: key}; docker: the settings of
    `docker run` (runtime, models_root, volumes, env_dir, extra)."""
    image_of = {entry["ref"]: entry["image"] for entry in images or []}
    units = []
    for spec in specs or []:
        run = {"cache_volumes": [c["volume"] for c in caches or []
                                 if c["service"] == spec["name"]],
               "model_commit": manifest_commit(commits, spec["model_dir"]),
               "template_sum": (sums or {}).get(spec.get("chat_template")) or "not fetched",
               "api_key_argv": ""}
        keyed = bool((api_keys or {}).get(spec["name"]) and spec.get("api_key_flag"))
        if spec["kind"] == "container":
            run["command"] = container_command(spec, keyed)
            run["image"] = image_of.get(spec.get("image"), "")
            run["docker"] = docker_run(spec, run["cache_volumes"], docker)
        else:
            if keyed:
                run["api_key_argv"] = f" {spec['api_key_flag']}=${{THORFLEET_API_KEY}}"
            run["build"] = (builds or {}).get(spec["engine_root"]) or "not built"
            run["argv"] = [posixpath.join(spec["engine_root"], run["build"],
                                          spec["binary_in_build"]), *spec["argv"][1:]]
        units.append({**spec, "run": run})
    return units


def last_good_to_keep(specs, units, envs, kept, env_dir, unkept=()):
    """The unit and environment files to keep as each service's last good ones: those of
    a service whose unit or environment file changed in this run, or differs from its
    last good copy (`unkept`: written by a run that did not verify it), and any whose copy
    is missing (`kept`: the names of the files in the last good directory). A run that
    changed nothing keeps nothing again."""
    unverified = {spec["name"] for spec in unverified_services(specs, units, envs, unkept)}
    kept = set(kept or [])
    keep = []
    for spec in specs or []:
        files = [f"/etc/systemd/system/{spec['unit']}", f"{env_dir}/{spec['name']}.env"]
        if spec["name"] in unverified or any(posixpath.basename(f) not in kept for f in files):
            keep += files
    return keep


def changed_services(specs, units, envs):
    """The services (specs) whose unit or environment file this run wrote (`units`,
    `envs`: the registered results of the two writes): what the handler restarts."""
    changed = {r["file"]["name"] for registered in (units, envs)
               for r in (registered or {}).get("results", []) if r.get("changed")}
    return [spec for spec in specs or [] if spec["name"] in changed]


def unverified_services(specs, units, envs, unkept=()):
    """The services (specs) whose unit or environment file this run wrote, or that differ
    from their last good copy (`unkept`, names of files): what verify has not passed yet,
    so what a failed switch puts back (tasks/rollback.yml)."""
    changed = {spec["name"] for spec in changed_services(specs, units, envs)}
    unkept = set(unkept or [])
    return [spec for spec in specs or []
            if spec["name"] in changed or spec["unit"] in unkept
            or f"{spec['name']}.env" in unkept]


class FilterModule:
    def filters(self):
        return {"thorfleet_unit_inputs": unit_inputs,
                "thorfleet_last_good_to_keep": last_good_to_keep,
                "thorfleet_changed_services": changed_services,
                "thorfleet_unverified_services": unverified_services}

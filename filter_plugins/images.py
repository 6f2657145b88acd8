"""Filters of the images phase: the container images a host's services run, pinned by
digest in the lock, the digests each host keeps for rollback, what to prune, and the
engines' compile caches kept per image digest."""

from __future__ import annotations

import base64

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils.artefacts import (
    image_in_cache,
    image_platforms_update,
)
from ansible_collections.thorfleet.lib.plugins.plugin_utils.rules import (
    CONTROL,
    HOSTNAME,
    CatalogueError,
)


def image_plan(specs, lock_images=None, registry_mirror="", cache="", platforms=None,
               platform=""):
    """The container images a host's services run, each once.

    An entry: ref (the catalogue's reference, the lock's key, e.g.
    nvcr.io/nvidia/vllm:25.10-py3), registry (the registry the image comes from, whose
    login it needs: nvcr.io, the registry mirror standing for it, or the one its name
    gives, docker.io for a name with none), upstream (the repository there, in full: NGC's
    under the same path on the mirror), repository (where the host pulls it from: the
    upstream, Docker Hub's by its short name as Docker reports it, or the site cache's),
    tag, locked (the lock's digest, "" when the tag is to be resolved: not locked yet),
    digest (what the host pulls and runs: the locked one; through a site cache, the image
    of the host's `platform` in it, from the lock's `platforms`, "" until the cache has
    copied it), image (repository@digest, what units run; the tag before there is a
    digest), cached (whether it comes through the site cache: every image, when there is
    one), path (the repository's path in the cache: NGC's path, else the registry's name,
    its port after '-', then the path there: ghcr.io/org/name, docker.io/library/ubuntu)
    and services.

    Through a site cache a host runs its platform's image rather than a multi-architecture
    list, because the cache holds that image alone (a registry keeps a list only with
    every platform's image in it).
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
            registry, path = _registry_path(name)
            if registry == "nvcr.io":
                upstream = _moved(path, registry_mirror or registry)
                registry = _registry_path(upstream)[0]
            else:
                upstream = _moved(path, registry)
                path = f"{registry.replace(':', '-')}/{path}"
            locked = str(lock_images.get(ref) or "")
            repository, digest = _familiar(upstream), locked
            cached = bool(cache)
            if cached:
                repository = _moved(path, cache)
                digest = image_in_cache(platforms, locked, platform)
            entry = plan[ref] = {
                "ref": ref, "registry": registry, "upstream": upstream,
                "repository": repository, "tag": tag, "locked": locked, "digest": digest,
                "platform": platform, "cached": cached, "path": path,
                "image": f"{repository}@{digest}" if digest else f"{repository}:{tag}",
                "services": []}
        entry["services"].append(spec["name"])
    return sorted(plan.values(), key=lambda e: e["ref"])


def image_refresh(plan):
    """The image plan with every tag to be resolved again (-e ngc_images_refresh=true): no
    lock's digest, so each image by its tag."""
    return [{**entry, "locked": "", "digest": "",
             "image": f"{entry['repository']}:{entry['tag']}"} for entry in plan or []]


def _registry_path(name):
    """(registry, path there) of an image's name, as Docker reads it: the first part is a
    registry when it has a '.' or a ':' or is localhost, else the name is Docker Hub's
    (docker.io), whose one-part names are under library/."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = "docker.io", name
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        registry = "docker.io"
        path = path if "/" in path else f"library/{path}"
    return registry, path


def _familiar(repository):
    """A repository as Docker names it in what it reports (RepoDigests): Docker Hub's
    without docker.io/ (and library/), others in full."""
    if repository.startswith("docker.io/"):
        path = repository.removeprefix("docker.io/")
        return path.removeprefix("library/") if path.startswith("library/") \
            and path.count("/") == 1 else path
    return repository


def _moved(path, registry):
    """A repository's path as served by a registry (nvcr.io, its mirror, the site
    cache)."""
    return f"{registry.rstrip('/')}/{path}"


def registry_logins(plan=None, credentials=None, ngc_api_key="", ngc_username="$oauthtoken",
                    registry_mirror=""):
    """Registry logins, one per registry: {registry, url (what Docker keeps the login
    under: Docker Hub's is its index's URL), username, password, setting (where it comes
    from, for errors)}. Each entry of `credentials` (thorfleet_registry_credentials) is
    its registry's login; NGC's key is the login of nvcr.io, or of the mirror standing for
    it, unless `credentials` has one for it. A registry with neither is public. With a
    `plan` (image_plan's entries), only the registries its images come from."""
    ngc = _registry_path(_moved("nvidia/x", registry_mirror or "nvcr.io"))[0]
    logins = {}
    if ngc_api_key:
        logins[ngc] = {"username": ngc_username, "password": ngc_api_key,
                       "setting": "thorfleet_ngc_api_key"}
    for registry, given in (credentials or {}).items():
        logins[registry] = {"username": given["username"], "password": given["password"],
                            "setting": f"thorfleet_registry_credentials[{registry!r}]"}
    if plan is not None:
        wanted = {entry["registry"] for entry in plan}
        logins = {registry: login for registry, login in logins.items() if registry in wanted}
    return [{"registry": registry,
             "url": "https://index.docker.io/v1/" if registry == "docker.io" else registry,
             **login} for registry, login in sorted(logins.items())]


def registry_auth(logins):
    """skopeo's login file (containers-auth.json) for `logins` (registry_logins)."""
    return {"auths": {login["registry"]: {"auth": base64.b64encode(
        f"{login['username']}:{login['password']}".encode()).decode()} for login in logins or []}}


def _is_registry(value):
    """Whether `value` names a registry as image names give it, in lower case: a DNS name
    with a '.' (or localhost), and a port."""
    host, colon, port = value.partition(":")
    return (host == host.lower() and bool(HOSTNAME.fullmatch(host))
            and ("." in host or host == "localhost")
            and (not colon or (port.isdigit() and len(port) <= 5)))


def registry_credentials_problems(credentials):
    """What is wrong with thorfleet_registry_credentials ({registry: {username,
    password}}), each naming the field; never a password."""
    if not credentials:
        return []
    if not isinstance(credentials, dict):
        return ["thorfleet_registry_credentials: a mapping of registries to their logins "
                "({ghcr.io: {username: ..., password: ...}})"]
    problems = []
    for registry, login in credentials.items():
        where = f"thorfleet_registry_credentials[{str(registry)[:80]!r}]"
        if not (isinstance(registry, str) and _is_registry(registry)):
            problems.append(f"{where}: a registry as image names give it (ghcr.io, "
                            "registry.lan:5000), in lower case")
            continue
        if not isinstance(login, dict) or set(login) != {"username", "password"}:
            problems.append(f"{where}: give username and password, and nothing else")
            continue
        for field in ("username", "password"):
            value = login[field]
            if not isinstance(value, str) or not value or CONTROL.search(value) \
                    or (field == "username" and ":" in value):
                problems.append(f"{where}: field {field}: a non-empty string without control "
                                "characters" + (" or ':'" if field == "username" else "")
                                + ("" if field == "username" else " (not shown)"))
    return problems


def image_platform(architecture):
    """The platform of a host's images (`linux/arm64` on a Thor), from its machine name
    (the thor facts' architecture: aarch64, x86_64)."""
    arch = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "amd64", "amd64": "amd64"}.get(
        str(architecture or "aarch64"))
    if arch is None:
        raise CatalogueError(f"no container platform for the architecture {architecture!r}")
    return f"linux/{arch}"


def cache_kept(wanted, before=None):
    """What the site cache keeps, {path: [digest, ...]}, newest first: for each repository
    path a run asked the cache for (`wanted`, the fill's), the digests asked for, then the
    newest one kept before that is not among them (one previous, as the hosts keep);
    every other path as it was `before`. The fill prunes only paths it kept a record of
    before (site_cache_prune): what a cache held before it kept records stays."""
    kept = {path: list(digests) for path, digests in (before or {}).items()
            if isinstance(digests, list)}
    for path, digests in (wanted or {}).items():
        previous = [d for d in kept.get(path, []) if d not in digests][:1]
        kept[path] = list(digests) + previous
    return kept


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
    """Each container service's compile caches as mounts: {service, digest (of its image),
    host, container, volume (the `docker run` option)}. The
    host side is kept per image digest (<root>/sha256-<hex><container path>), so that an
    image bump starts with an empty cache of its own and a rollback finds the old one. An
    image not resolved to a digest yet (check mode on a new host) has none."""
    digests = {entry["ref"]: entry.get("digest") for entry in images or []}
    mounts = []
    for spec in specs or []:
        digest = digests.get(spec.get("image")) if spec.get("kind") == "container" else None
        for cache in spec.get("caches") or [] if digest else []:
            host = f"{root.rstrip('/')}/{digest.replace(':', '-')}{cache}"
            mounts.append({"service": spec["name"], "digest": digest, "container": cache,
                           "host": host,
                           "volume": f"--volume={host}:{cache}"})
    return mounts


def jit_items(mounts, root):
    """The compile caches a host's services mount (jit_mounts), one per image digest, as
    the artefact pipeline's items of the kind `jit` ({digest, root})."""
    return [{"digest": digest, "root": root}
            for digest in sorted({mount["digest"] for mount in mounts or []})]


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
            "thorfleet_image_plan": image_plan,
            "thorfleet_image_refresh": image_refresh,
            "thorfleet_image_platform": image_platform,
            "thorfleet_registry_logins": registry_logins,
            "thorfleet_registry_auth": registry_auth,
            "thorfleet_registry_credentials_problems": registry_credentials_problems,
            "thorfleet_image_platforms_update": image_platforms_update,
            "thorfleet_cache_kept": cache_kept,
            "thorfleet_image_digests": image_digests,
            "thorfleet_image_history": image_history,
            "thorfleet_images_to_prune": images_to_prune,
            "thorfleet_jit_mounts": jit_mounts,
            "thorfleet_jit_items": jit_items,
            "thorfleet_jit_caches_to_prune": jit_caches_to_prune,
        }

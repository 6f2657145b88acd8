"""Filters of fetching once per fleet (thorfleet_fleet_fetch), for the artefact
pipeline (roles/artefacts): which host gets each artefact from upstream (a model from its
hub, an engine build from the compiler), and which host copies it from which other,
round by round.

Each host says what it holds and wants (holdings: its entries of one kind and what its
read reported). A round (fleet_round) gives each thing nobody holds to one host that
wants it, to get from upstream, and pairs every host holding it with one host still
wanting it, to copy from: the hosts that have it double each round, so a fleet of N hosts
is served in about log2(N) rounds, never from one host alone. Each round is planned from
what the hosts hold after the one before; the rounds have a bound with room for
failures, and once nothing is wanted they do nothing.

A host that failed has left the play and is neither a source nor a target; a thing whose
only fetcher failed gets another fetcher the next round, and the upstream fetches of a
round are spread over the hosts that want something. A source that a host could not read
or copy from (powered off, its rsync failed, its bytes were not what it reported) is
lost: the copying host stays in the play, and no host copies from that source again; the
next round gives it another source, or upstream when none is left. In the last round, a
host no source can serve gets it from upstream, as does, after the rounds, one whose
source was lost (its own role, for what it still lacks).
"""

from __future__ import annotations

import ipaddress
import math
import re

# The code the filters and the pipeline's action plugin share: the collection
# thorfleet.lib beside site.yml (collections/, which Ansible finds next to the playbook
# and ansible.cfg names), its plugin_utils.
from ansible_collections.thorfleet.lib.plugins.plugin_utils import artefacts
from ansible_collections.thorfleet.lib.plugins.plugin_utils.artefacts import share_url
from ansible_collections.thorfleet.lib.plugins.plugin_utils.rules import HOSTNAME

# Rounds beyond the failure-free count, for failed upstream fetches and lost sources.
SPARE_ROUNDS = 2


def holdings(entries, reports, host, address, port, kind):
    """What a host holds and wants of `kind` (the artefact pipeline's entries, and what its
    read reported): {kind, host, address, port (of its share), entries: {key: entry},
    held: [keys it holds], got: [] and lost: [] (filled round by round)}."""
    entries = {artefacts.check_entry(entry)["key"]: entry for entry in entries or []}
    if any(entry["kind"] != kind for entry in entries.values()):
        raise artefacts.ArtefactError(f"artefacts_entries: an entry of another kind than "
                                      f"{kind}")
    held = [key for key in entries if (reports or {}).get(key) is not None]
    return {"kind": kind, "host": host, "address": str(address), "port": int(port),
            "entries": entries, "held": sorted(held), "got": [], "lost": []}


def artefact_entries(items, kind, platform=""):
    """The pipeline's entries of a planning role's own items (plan entries) of `kind`."""
    return artefacts.entries(kind, items, platform)


def artefact_role(kind):
    """The role that plans `kind` and gets it from upstream (its tasks/upstream.yml), for
    the rounds; a kind nothing upstream makes has none."""
    found = artefacts.kind_of(kind)
    if found["via"] == "registry":
        raise artefacts.ArtefactError(f"artefacts_kind: {kind} goes through the site cache, "
                                      "not the rounds (roles/artefacts, tasks/registry.yml)")
    if found["via"] != "share":
        raise artefacts.ArtefactError(f"artefacts_kind: {kind} goes no host to host: only "
                                      "from a site's bundle (roles/artefacts, "
                                      "tasks/from_bundle.yml)")
    if not found["upstream"]:
        raise artefacts.ArtefactError(f"artefacts_kind: {kind}: nothing upstream makes it, "
                                      "so it goes through no rounds: it is copied from the "
                                      "hosts that made it (roles/artefacts, tasks/copy.yml)")
    return found["role"]


def fleet_work(states):
    """{copies: whether some model is wanted by one host and held or wanted by another
    (else each host fetches its own, as without the fleet), rounds: how many rounds}."""
    wanted, known = set(), {}
    for state in states or []:
        for key in state["entries"]:
            known[key] = known.get(key, 0) + 1
            if key not in state["held"]:
                wanted.add(key)
    copies = any(known[key] > 1 for key in wanted)
    hosts = max(len(states or []), 1)
    # One round for the hub, about log2(hosts) of copies, one for what is left, and room
    # for failed fetches and lost sources (each costs about a round); a round with
    # nothing left to do does nothing.
    return {"copies": copies, "rounds": 2 + math.ceil(math.log2(hosts)) + SPARE_ROUNDS}


def fleet_round(states, index, rounds):
    """This round's work per host: {host: {hub: [entries], peers: [entries]}}, `hub` what
    it gets from upstream (a hub, a compiler), a peer's entry with the source's own
    (`peer_entry`: its root may differ) and where to copy from (`peer`: {name, address,
    port, url}). `states` are the hosts still in the play, in the play's order."""
    plan = {state["host"]: {"hub": [], "peers": []} for state in states}
    last = index >= rounds - 1
    lost = {host for state in states for host in state.get("lost") or []}
    keys = sorted({key for state in states for key in state["entries"]})
    for key in keys:
        holders = [s for s in states if key in s["entries"] and s["host"] not in lost
                   and (key in s["held"] or key in s["got"])]
        wanting = [s for s in states if key in s["entries"]
                   and key not in s["held"] and key not in s["got"]]
        if not wanting:
            continue
        # Nobody has it (or only lost sources): one host gets it from upstream, the one
        # with the fewest upstream fetches this round so far. In the last round, every
        # host that a source cannot serve does.
        if last:
            fetchers = wanting[len(holders):]
        elif holders:
            fetchers = []
        else:
            fetchers = [min(wanting, key=lambda s: len(plan[s["host"]]["hub"]))]
        for state in fetchers:
            plan[state["host"]]["hub"].append(state["entries"][key])
        for source, target in zip(holders, wanting, strict=False):
            peer_entry = source["entries"][key]
            peer = {"name": source["host"], "address": source["address"],
                    "port": source["port"],
                    "url": share_url(source["address"], source["port"], peer_entry["kind"],
                                     peer_entry["path"])}
            plan[target["host"]]["peers"].append({**target["entries"][key],
                                                  "peer_entry": peer_entry, "peer": peer})
    return plan


def got(state, hub_entries, hub_results, copy_results):
    """The state with the keys of what this round brought: the upstream fetches of
    `hub_entries` (their results in the same order) and the copies (registered loop
    results, each item the entry it copied). An entry whose pin the fetch resolved (a ref
    compiled for the first time) is kept resolved, for the hosts that copy it next."""
    pairs = list(zip(hub_entries or [], hub_results or [], strict=False))
    for result in copy_results or []:
        if isinstance(result, dict):
            pairs.append((result.get(result.get("ansible_loop_var") or "item"), result))
    entries, done = dict(state["entries"]), set(state["got"])
    for entry, result in pairs:
        key = entry.get("key") if isinstance(entry, dict) else None
        if key not in entries:
            continue
        now = artefacts.got(entries[key], result)
        if now is not None:
            entries[key] = now
            done.add(key)
    return {**state, "entries": entries, "got": sorted(done)}


def artefact_results(results):
    """Registered results of the pipeline's copies as the kind's role reads its own (for
    the lock): each with the kind's own item, not the pipeline's entry around it."""
    return [{**result, "item": result["item"]["item"]}
            if isinstance(result, dict) and isinstance(result.get("item"), dict)
            and "kind" in result["item"] and "item" in result["item"] else result
            for result in results or []]


def lost(state, results):
    """The state with the sources this host could not read or copy from (registered loop
    results of the reads and copies of a round, each item with its `peer`: one that failed
    or was unreachable) added to its `lost`."""
    names = set(state.get("lost") or [])
    for result in results or []:
        if not isinstance(result, dict) or not (result.get("failed")
                                                or result.get("unreachable")):
            continue
        item = result.get(result.get("ansible_loop_var") or "item")
        peer = item.get("peer") if isinstance(item, dict) else None
        if isinstance(peer, dict) and isinstance(peer.get("name"), str):
            names.add(peer["name"])
    return {**state, "lost": sorted(names)}


BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
            "false": False, "no": False, "off": False, "0": False}


def fleet_problems(fetch, address, port, host):
    """What is wrong with a host's fleet settings, one message per field. Values given
    with -e key=value arrive as strings: those Ansible's `bool` and `int` read are fine."""
    problems = []
    on = fetch if isinstance(fetch, bool) else BOOLEANS.get(str(fetch).strip().lower())
    if on is None:
        problems.append(f"{host}: thorfleet_fleet_fetch: {str(fetch)[:40]!r} is not true or "
                        "false")
    if not on:
        return problems
    if not _is_address(address):
        problems.append(f"{host}: thorfleet_fleet_address: {str(address)[:80]!r} is not an "
                        "IP address or a host name the run's other hosts reach this one by")
    if not _is_port(port, 65535):
        problems.append(f"{host}: thorfleet_fleet_rsync_port: {str(port)[:20]!r} is not a "
                        "port number")
    return problems


def _is_port(value, highest):
    """Whether a setting is a port number from 1 to `highest` (a string of digits, as -e
    gives, is one)."""
    return not isinstance(value, bool) and re.fullmatch(r"[0-9]{1,5}", str(value)) is not None \
        and 0 < int(value) <= highest


def site_cache_problems(hosts, address, port, storage):
    """What is wrong with the site cache's settings (the inventory group
    thorfleet_site_cache, and its host's address, port and storage), one message per
    field: they go into its certificate, its registry's configuration and its units."""
    if not hosts:
        return []
    problems = []
    if len(hosts) > 1:
        problems.append(f"thorfleet_site_cache: one host, not {len(hosts)} "
                        f"({', '.join(map(str, hosts))[:120]})")
    if not _is_address(address):
        problems.append(f"{hosts[0]}: thorfleet_site_cache_address (else ansible_host): "
                        f"{str(address)[:80]!r} is not an IP address or a host name the "
                        "hosts reach the site cache by")
    # The cache serves on the port; it is filled on the next one, on the loopback address.
    if not _is_port(port, 65534):
        problems.append(f"thorfleet_site_cache_port: {str(port)[:20]!r} is not a port number "
                        "below 65535")
    if not isinstance(storage, str) or not re.fullmatch(r"/[A-Za-z0-9._/-]*", storage) \
            or "/../" in f"{storage}/" or storage.rstrip("/") in ("", "/var", "/var/lib"):
        problems.append(f"thorfleet_site_cache_storage: {str(storage)[:80]!r} is not a "
                        "directory of its own, as an absolute path of letters, digits and "
                        "._-/")
    return problems


def bundle_problems(bundle, cache_hosts, rsync_port, git_port, clients=None):
    """What is wrong with the bundle's settings (thorfleet_bundle and its ports, and the
    addresses of the hosts it serves, {host: ansible_host, "" for the host's name}): the
    bundle lies on the site cache
    host, and its path and the hosts' addresses go into rsync's configuration and git's
    unit there."""
    if not bundle:
        return []
    problems = [f"{host}: ansible_host: {str(address)[:80]!r} is not an IP address or a host "
                "name (the bundle's rsync daemon lets it in by it)"
                for host, address in sorted((clients or {}).items())
                if not _is_address(address or host)]
    if not cache_hosts:
        problems.append("thorfleet_bundle: the site cache serves the bundle: put one host in "
                        "the inventory group thorfleet_site_cache")
    if not isinstance(bundle, str) or not re.fullmatch(r"/[A-Za-z0-9._/-]*", bundle) \
            or "/../" in f"{bundle}/" or bundle.rstrip("/") == "":
        problems.append(f"thorfleet_bundle: {str(bundle)[:80]!r} is not an absolute path of "
                        "letters, digits and ._-/ (the bundle's directory on the site cache)")
    for name, port in (("thorfleet_bundle_rsync_port", rsync_port),
                       ("thorfleet_bundle_git_port", git_port)):
        if not _is_port(port, 65535):
            problems.append(f"{name}: {str(port)[:20]!r} is not a port number")
    return problems


def subject_alt_name(address):
    """A certificate's subjectAltName for the address hosts reach a host at."""
    if not _is_address(address):
        raise ValueError(f"{str(address)[:80]!r} is not an IP address or a host name")
    try:
        return f"IP:{ipaddress.ip_address(address)}"  # as openssl reads it back
    except ValueError:
        return f"DNS:{address}"


def certificate_names(text):
    """The subject alternative names `openssl x509 -noout -ext subjectAltName` printed, as
    subject_alt_name writes them ("IP:10.0.0.2", "DNS:cache.lan"), sorted: what an
    existing certificate names, to compare with what it should."""
    names = set()
    body = str(text or "").split("Subject Alternative Name:", 1)[-1]
    for entry in body.replace("\n", ",").split(","):
        kind, _, value = entry.strip().partition(":")
        if kind == "DNS" and value:
            names.add(f"DNS:{value.strip()}")
        elif kind == "IP Address" and value:
            try:
                names.add(f"IP:{ipaddress.ip_address(value.strip())}")
            except ValueError:
                names.add(f"IP:{value.strip()}")
    return sorted(names)


def share_peers(hosts, resolved=None):
    """The addresses a share admits (systemd's IPAddressAllow= takes addresses only):
    each of `hosts` that is an IP address, and those `resolved` gives for the others
    (getent's ahosts lines, "<address> STREAM <name>"), each once, sorted. The names
    among `hosts` are what is left to resolve when `resolved` is None."""
    addresses, names = set(), []
    for host in hosts or []:
        try:
            addresses.add(str(ipaddress.ip_address(str(host))))
        except ValueError:
            names.append(str(host))
    if resolved is None:
        return sorted(set(names))
    for line in str(resolved).splitlines():
        try:
            addresses.add(str(ipaddress.ip_address(line.split()[0])))
        except (ValueError, IndexError):
            continue
    return sorted(addresses, key=lambda a: (ipaddress.ip_address(a).version,
                                            ipaddress.ip_address(a)))


def share_unit(unit, allow, capabilities, max_seconds):
    """systemd-run's argv up to the daemon's own, for a share the fleet opens (rsync's and
    git's daemons: roles/artefacts, tasks/open_share.yml, and roles/site_cache,
    tasks/share.yml): a transient unit that leaves nothing behind once stopped and stops
    itself after `max_seconds`, whose
    packets from any address but `allow`'s are dropped before the daemon sees them, run
    as a user of its own for as long as it runs (the file system read-only to it), with
    `capabilities` (space-separated) as all it may do besides."""
    return ["systemd-run", f"--unit={unit}", "--collect",
            f"--property=RuntimeMaxSec={int(max_seconds)}",
            "--property=IPAddressDeny=any",
            f"--property=IPAddressAllow={' '.join(allow)}",
            "--property=DynamicUser=yes",
            f"--property=CapabilityBoundingSet={capabilities}",
            f"--property=AmbientCapabilities={capabilities}",
            f"--property=RuntimeDirectory={unit}",
            "--property=ProtectHome=read-only",
            "--property=PrivateDevices=yes",
            "--property=ProtectKernelTunables=yes",
            "--property=ProtectKernelModules=yes",
            "--property=ProtectControlGroups=yes",
            "--property=RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"]


def _is_address(value):
    if not isinstance(value, str):
        return False
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return HOSTNAME.fullmatch(value) is not None
    return not getattr(address, "scope_id", None)


class FilterModule:
    def filters(self):
        return {
            "thorfleet_artefact_entries": artefact_entries,
            "thorfleet_artefact_role": artefact_role,
            "thorfleet_artefact_holdings": holdings,
            "thorfleet_artefact_sources": artefacts.sources,
            "thorfleet_artefact_bundle": artefacts.bundle_writes,
            "thorfleet_artefact_bundle_sources": artefacts.bundle_sources,
            "thorfleet_artefact_bundle_share": artefacts.bundle_share,
            "thorfleet_artefact_via": artefacts.via,
            "thorfleet_artefact_registry_fill": artefacts.registry_fill,
            "thorfleet_artefact_registry_sources": artefacts.registry_sources,
            "thorfleet_artefact_bundle_locks": artefacts.bundle_lock_writes,
            "thorfleet_share_peers": share_peers,
            "thorfleet_share_unit": share_unit,
            "thorfleet_certificate_names": certificate_names,
            "thorfleet_fleet_work": fleet_work,
            "thorfleet_fleet_round": fleet_round,
            "thorfleet_fleet_got": got,
            "thorfleet_artefact_results": artefact_results,
            "thorfleet_fleet_lost": lost,
            "thorfleet_fleet_problems": fleet_problems,
            "thorfleet_site_cache_problems": site_cache_problems,
            "thorfleet_bundle_settings_problems": bundle_problems,
            "thorfleet_subject_alt_name": subject_alt_name,
        }

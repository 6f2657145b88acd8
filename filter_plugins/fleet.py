"""Filters of fetching once per fleet (thorfleet_fleet_fetch): which host fetches each
model from its hub, and which host copies it from which other, round by round.

Each host says what it holds and wants (model_holdings, after model_manifests). A round
(model_round) gives each model nobody holds to one host that wants it, to fetch from its
hub, and pairs every host holding a model with one host still wanting it, to copy from:
the hosts that have a model double each round, so a fleet of N hosts is served in about
log2(N) rounds, never from one host alone. A host that failed has left the play and is
neither a source nor a target; a model whose only fetcher failed gets another fetcher
the next round; in the last round, a host no source can serve fetches from the hub, as
does, after the rounds, one whose source was lost.
"""

from __future__ import annotations

import ipaddress
import json
import math
import posixpath
import re

SHARE = "thorfleet-models"  # the rsync daemon's module: the host's model root
LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME = re.compile(rf"(?=.{{1,253}}$){LABEL}(?:\.{LABEL})*")  # fullmatch only


def model_key(entry):
    """What makes two hosts' models the same copy: path, hub, repository, revision and
    patterns (a host's own model root may differ)."""
    return json.dumps([entry["path"], entry["source"], entry["repo_id"], entry["revision"],
                       entry.get("allow_patterns") or [], entry.get("ignore_patterns") or []])


def model_holdings(models, present, host, address, port):
    """What a host holds and wants: {host, address, port (of its share), entries: {key:
    plan entry}, held: [keys it holds, in place or staged], got: [] (filled round by
    round)}."""
    missing = set((present or {}).get("missing") or [])
    entries = {model_key(entry): entry for entry in models or []}
    return {"host": host, "address": str(address), "port": int(port),
            "entries": entries,
            "held": sorted(k for k, e in entries.items() if e["dest"] not in missing),
            "got": []}


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
    # One round for the hub, about log2(hosts) of copies, one for what is left.
    return {"copies": copies, "rounds": 2 + math.ceil(math.log2(hosts))}


def model_round(states, index, rounds):
    """This round's work per host: {host: {hub: [entries], peers: [entries]}}, a peer's
    entry with the source's own (`peer_entry`: its model root may differ) and where to
    copy from (`peer`: {name, url, staging_url}). `states` are the hosts still in the
    play, in the play's order."""
    plan = {state["host"]: {"hub": [], "peers": []} for state in states}
    last = index >= rounds - 1
    keys = sorted({key for state in states for key in state["entries"]})
    for key in keys:
        holders = [s for s in states if key in s["entries"]
                   and (key in s["held"] or key in s["got"])]
        wanting = [s for s in states if key in s["entries"]
                   and key not in s["held"] and key not in s["got"]]
        if not wanting:
            continue
        # Nobody has it: one host fetches it from the hub. In the last round, every host
        # that a source cannot serve does.
        fetchers = wanting[len(holders):] if last else [] if holders else wanting[:1]
        for state in fetchers:
            plan[state["host"]]["hub"].append(state["entries"][key])
        for source, target in zip(holders, wanting, strict=False):
            peer_entry = source["entries"][key]
            url, staging_url = share_urls(source["address"], source["port"], peer_entry["path"])
            plan[target["host"]]["peers"].append({
                **target["entries"][key], "peer_entry": peer_entry,
                "peer": {"name": source["host"], "url": url, "staging_url": staging_url}})
    return plan


def share_urls(address, port, path):
    """rsync URLs of a model's directory and of its staging directory (a revision staged
    beside the model) in a peer's share of its model root."""
    host = f"[{address}]" if ":" in address else address
    base = f"rsync://{host}:{int(port)}/{SHARE}"
    parent, name = posixpath.split(path)
    return (f"{base}/{path}", f"{base}/{posixpath.join(parent, '.' + name + '.partial')}")


def still_wanted(state):
    """The entries of the models a host wants and has not got (after the last round: what
    a lost source left it without), for it to fetch from the hub itself."""
    return [entry for key, entry in sorted(state["entries"].items())
            if key not in state["held"] and key not in state["got"]]


def got(state, results):
    """The state with the keys of the models this round's downloads brought."""
    done = [model_key(r["item"]) for r in (results or [])
            if isinstance(r, dict) and r.get("commit") and not r.get("failed")
            and not r.get("skipped")]
    return {**state, "got": sorted(set(state["got"]) | set(done))}


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
    if isinstance(port, bool) or not re.fullmatch(r"[0-9]{1,5}", str(port)) \
            or not 0 < int(port) < 65536:
        problems.append(f"{host}: thorfleet_fleet_rsync_port: {str(port)[:20]!r} is not a "
                        "port number")
    return problems


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
            "thorfleet_model_holdings": model_holdings,
            "thorfleet_model_fleet_work": fleet_work,
            "thorfleet_model_round": model_round,
            "thorfleet_model_got": got,
            "thorfleet_model_still_wanted": still_wanted,
            "thorfleet_fleet_problems": fleet_problems,
        }

"""Fetching once per fleet (filter_plugins/fleet.py, the artefact pipeline's rounds): one
host fetches each model from its hub, the hosts that have it double every round, a failed
fetcher is replaced, and the settings are checked naming the field."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, load, loopback_server, plugin_utils
from thorfleet import bounded

fleet = load("filter_plugins/fleet.py")
artefacts = plugin_utils("artefacts")


def entry(path="Qwen/Qwen3-8B", root="/models", revision="main"):
    return {"path": path, "dest": f"{root}/{path}", "source": "huggingface",
            "repo_id": path, "revision": revision, "allow_patterns": [],
            "ignore_patterns": [], "lock_key": f"huggingface:{path}@main"}


def held_models(models, held_paths):
    """The pipeline's entries of `models`, and a read's reports: a manifest for those held."""
    entries = fleet.artefact_entries(models, "models")
    return entries, {e["key"]: ({"manifest": {}} if e["path"] in held_paths else None)
                     for e in entries}


def state(host, held=(), wanted=(), root="/models", number=None):
    entries, reports = held_models([entry(p, root) for p in (*held, *wanted)], held)
    number = number or int(host[-2:])
    return fleet.holdings(entries, reports, host, f"10.0.0.{number}", 873, "models")


def still_wanted(state):
    """What a host still lacks after the rounds (its own role gets it)."""
    return [e for k, e in sorted(state["entries"].items())
            if k not in state["held"] and k not in state["got"]]


def run_rounds(states, fail=(), dead=()):
    """Every round of a phase, as fleet_round.yml plays it: each copy or fetch succeeds
    unless its host is in `fail` (then it leaves the play), or, for a copy, its source is
    in `dead` (powered off: the copy fails, the copying host stays and loses the source;
    a dead host given work leaves the play). Returns the rounds' plans."""
    rounds = fleet.fleet_work(states)["rounds"]
    plans = []
    for index in range(rounds):
        plan = fleet.fleet_round(states, index, rounds)
        plans.append(plan)
        alive = []
        for current in states:
            work = plan[current["host"]]
            if current["host"] in {*fail, *dead} and (work["hub"] or work["peers"]):
                continue
            fetched = [{"commit": "c" * 40} for _ in work["hub"]]
            copied = [{"item": e, "commit": "c" * 40} if e["peer"]["name"] not in dead
                      else {"item": e, "failed": True, "msg": "rsync: connection refused"}
                      for e in work["peers"]]
            alive.append(fleet.lost(fleet.got(current, work["hub"], fetched, copied), copied))
        states = alive
    return plans, states


def hub_fetches(plans):
    return [h for plan in plans for h, work in plan.items() for _ in work["hub"]]


def test_a_model_nobody_holds_is_fetched_from_its_hub_by_one_host_then_doubles():
    hosts = [state(f"thor{n:02d}", wanted=["Qwen/Qwen3-8B"]) for n in range(1, 9)]
    plans, final = run_rounds(hosts)
    fetched = [h for plan in plans for h, work in plan.items() if work["hub"]]
    assert fetched == ["thor01"]
    copies = [sorted((w["peer"]["name"], h) for h, work in plan.items() for w in work["peers"])
              for plan in plans]
    assert copies[0] == []
    assert copies[1] == [("thor01", "thor02")]
    assert copies[2] == [("thor01", "thor03"), ("thor02", "thor04")]
    assert copies[3] == [("thor01", "thor05"), ("thor02", "thor06"), ("thor03", "thor07"),
                         ("thor04", "thor08")]
    assert all(s["got"] for s in final) and len(final) == 8


def test_a_host_that_holds_a_model_is_the_source_and_fetches_nothing():
    hosts = [state("thor01", wanted=["Qwen/Qwen3-8B"]),
             state("thor02", held=["Qwen/Qwen3-8B"]),
             state("thor03", held=["Qwen/Qwen3-8B"])]
    assert fleet.fleet_work(hosts)["copies"]
    plans, _final = run_rounds(hosts)
    assert not any(work["hub"] for plan in plans for work in plan.values())
    (copy,) = [w for plan in plans for w in plan["thor01"]["peers"]]
    assert copy["peer"] == {"name": "thor02", "address": "10.0.0.2", "port": 873,
                            "url": "rsync://10.0.0.2:873/thorfleet-models/Qwen/Qwen3-8B"}
    # What the copy verifies against is the source's own entry; the copy is the target's.
    assert copy["peer_entry"]["dest"] == "/models/Qwen/Qwen3-8B"
    assert copy["dest"] == "/models/Qwen/Qwen3-8B" and copy["item"]["lock_key"]
    # The copy module's arguments: the revision's files from the source's model directory
    # and from the one it stages a new revision in, checked against its manifest.
    module, args = artefacts.copy_call(copy, {"manifest": {"commit": "c" * 40},
                                              "fetched": ["a.bin"]})
    assert module == "model_download" and args["stage"] is True
    assert args["peer"] == {
        "name": "thor02", "url": "rsync://10.0.0.2:873/thorfleet-models/Qwen/Qwen3-8B",
        "staging_url": "rsync://10.0.0.2:873/thorfleet-models/Qwen/.Qwen3-8B.partial",
        "manifest": {"commit": "c" * 40}, "fetched": ["a.bin"]}
    # The source is read with its own entry, over Ansible's connection to it.
    assert artefacts.source_read_call(copy) == (
        "model_manifests", {"models": [copy["peer_entry"]["item"]], "report": True})


def test_model_roots_may_differ_between_hosts():
    hosts = [state("thor01", held=["Qwen/Qwen3-8B"], root="/data/models"),
             state("thor02", wanted=["Qwen/Qwen3-8B"], root="/models")]
    plans, _final = run_rounds(hosts)
    (copy,) = [w for plan in plans for w in plan["thor02"]["peers"]]
    assert copy["dest"] == "/models/Qwen/Qwen3-8B"
    assert copy["peer_entry"]["dest"] == "/data/models/Qwen/Qwen3-8B"
    assert copy["peer"]["url"].endswith("/thorfleet-models/Qwen/Qwen3-8B")


def test_another_revision_or_hub_is_another_model():
    mine = entry()
    other = {**entry(), "revision": "b" * 40}
    held = fleet.holdings(*held_models([other], [other["path"]]), "thor01", "10.0.0.1", 873,
                          "models")
    wants = fleet.holdings(*held_models([mine], []), "thor02", "10.0.0.2", 873, "models")
    plans, _final = run_rounds([held, wants])
    assert [h for plan in plans for h, work in plan.items() if work["hub"]] == ["thor02"]
    assert not fleet.fleet_work([held, wants])["copies"]


def test_when_the_hosts_fetch_alone_there_is_nothing_to_copy():
    hosts = [state("thor01", wanted=["Qwen/Qwen3-8B"]), state("thor02", wanted=["a/b"]),
             state("thor03", held=["c/d"])]
    assert not fleet.fleet_work(hosts)["copies"]


def test_a_fetcher_that_fails_is_replaced_and_the_last_round_leaves_nothing_wanted():
    hosts = [state(f"thor{n:02d}", wanted=["Qwen/Qwen3-8B"]) for n in range(1, 5)]
    plans, final = run_rounds(hosts, fail={"thor01"})
    fetched = [h for plan in plans for h, work in plan.items() if work["hub"]]
    assert fetched == ["thor01", "thor02"]
    assert [s["host"] for s in final] == ["thor02", "thor03", "thor04"]
    assert all(s["got"] and not still_wanted(s) for s in final)


def test_in_the_last_round_a_host_no_source_can_serve_fetches_from_the_hub():
    hosts = [state("thor01", held=["Qwen/Qwen3-8B"])] + [
        state(f"thor{n:02d}", wanted=["Qwen/Qwen3-8B"]) for n in range(2, 5)]
    rounds = fleet.fleet_work(hosts)["rounds"]
    last = fleet.fleet_round(hosts, rounds - 1, rounds)
    assert [(h, w["peer"]["name"]) for h, work in last.items() for w in work["peers"]] == [
        ("thor02", "thor01")]
    assert [h for h, work in last.items() if work["hub"]] == ["thor03", "thor04"]
    # What a lost source left a host without, after the rounds, it fetches itself.
    assert [e["dest"] for e in still_wanted(hosts[2])] == ["/models/Qwen/Qwen3-8B"]


def test_ipv6_addresses_are_bracketed_in_the_share_url():
    url = fleet.share_url("fd00::12", 8873, "models", "whisper.cpp/models")
    assert url == "rsync://[fd00::12]:8873/thorfleet-models/whisper.cpp/models"


@pytest.mark.parametrize("settings", [
    {"fetch": False, "address": "", "port": "x"}, {"fetch": True}, {"fetch": "true"},
    {"fetch": "yes", "address": "thor01.lan", "port": "8873"},
    {"fetch": True, "address": "fd00::12"}])
def test_fleet_settings_taken(settings):
    values = {"fetch": True, "address": "10.0.0.1", "port": 873, **settings}
    assert fleet.fleet_problems(values["fetch"], values["address"], values["port"],
                                "thor01") == []


@pytest.mark.parametrize(("settings", "field"), [
    ({"fetch": "sometimes"}, "thorfleet_fleet_fetch"),
    ({"address": "10.0.0.1;id"}, "thorfleet_fleet_address"),
    ({"address": "10.0.0.1\nhosts allow = *"}, "thorfleet_fleet_address"),
    ({"address": "fe80::1%eth0"}, "thorfleet_fleet_address"),
    ({"address": ""}, "thorfleet_fleet_address"),
    ({"address": "a" * 300}, "thorfleet_fleet_address"),
    ({"port": 0}, "thorfleet_fleet_rsync_port"),
    ({"port": 70000}, "thorfleet_fleet_rsync_port"),
    ({"port": "873\nuid = root"}, "thorfleet_fleet_rsync_port"),
    ({"port": True}, "thorfleet_fleet_rsync_port")])
def test_a_bad_fleet_setting_is_refused_naming_its_field(settings, field):
    values = {"fetch": True, "address": "10.0.0.1", "port": 873, **settings}
    found = fleet.fleet_problems(values["fetch"], values["address"], values["port"], "thor01")
    assert len(found) == 1 and found[0].startswith(f"thor01: {field}: "), found


def build_entries(engines, pin="c" * 40):
    return fleet.artefact_entries(
        [{"engine": {"name": name, "ref": "b1", "lock_key": f"{name}@b1", "pin": pin},
          "args": {"name": name, "source": f"/opt/thorfleet/{name}/src", "commit": pin,
                   "build_root": f"/opt/thorfleet/{name}", "cmake_flags": ["-DGGML_CUDA=OFF"],
                   "targets": ["llama-server"], "cuda_version": "", "ccache_dir": None,
                   "jobs": 0, "keep": 2}}
         for name in engines], "builds")


def build_state(host, engines, ready=(), pin="c" * 40):
    entries = build_entries(engines, pin)
    reports = {e["key"]: ({"stamp": "s1", "ready": True, "files": {}}
                          if e["item"]["engine"]["name"] in ready else None) for e in entries}
    return fleet.holdings(entries, reports, host, f"10.0.0.{host[-1]}", 873, "builds")


def test_a_build_is_copied_from_the_host_that_holds_it_at_its_stamp():
    hosts = [build_state("thor01", ["llama.cpp"], ready=["llama.cpp"]),
             build_state("thor02", ["llama.cpp"])]
    plan = fleet.fleet_round(hosts, 0, fleet.fleet_work(hosts)["rounds"])
    (copy,) = plan["thor02"]["peers"]
    assert copy["peer"] == {"name": "thor01", "address": "10.0.0.1", "port": 873,
                            "url": "rsync://10.0.0.1:873/thorfleet-builds/llama.cpp"}
    assert copy["item"]["engine"]["name"] == "llama.cpp" and not plan["thor01"]["hub"]
    # The source is asked for this host's own build (its flags and stamp), and the copy
    # is the build module's, from the source's build of that stamp, checked against the
    # files the source reported.
    module, read = artefacts.source_read_call(copy)
    assert module == "ggml_build" and read["report"] is True
    assert read["cmake_flags"] == ["-DGGML_CUDA=OFF"] and "ccache_dir" not in read
    module, args = artefacts.copy_call(copy, {"stamp": "s1", "ready": True,
                                              "files": {"bin/llama-server": {}}})
    assert module == "ggml_build" and args["commit"] == "c" * 40
    assert args["peer"] == {"name": "thor01", "stamp": "s1",
                            "url": "rsync://10.0.0.1:873/thorfleet-builds/llama.cpp/build-s1",
                            "files": {"bin/llama-server": {}}}


def test_a_build_nobody_holds_is_compiled_by_one_host_and_its_pin_learnt():
    hosts = [build_state(f"thor0{n}", ["whisper.cpp"], pin="") for n in (1, 2, 3)]
    rounds = fleet.fleet_work(hosts)["rounds"]
    first = fleet.fleet_round(hosts, 0, rounds)
    assert [h for h, work in first.items() if work["hub"]] == ["thor01"]
    # The compile resolved the ref to its commit and made build-s9: thor01 holds it.
    built = [{"engine": first["thor01"]["hub"][0]["item"]["engine"], "stamp": "s9",
              "commit": "d" * 40}]
    hosts[0] = fleet.got(hosts[0], first["thor01"]["hub"], built, [])
    (entry,) = hosts[0]["entries"].values()
    assert entry["pin"] == "d" * 40 and hosts[0]["got"]
    second = fleet.fleet_round(hosts, 1, rounds)
    (copy,) = second["thor02"]["peers"]
    assert copy["peer"]["name"] == "thor01"
    assert not any(work["hub"] for work in second.values())
    # thor02 planned it unpinned: it asks for, and copies, the commit thor01 built.
    assert artefacts.source_read_call(copy)[1]["commit"] == "d" * 40
    assert artefacts.copy_call(copy, {"stamp": "s9", "files": {}})[1]["commit"] == "d" * 40


# --- compile caches in a rollout ------------------------------------------------------

OLD_IMAGE, NEW_IMAGE = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def jit_state(host, wanted=(), held=()):
    """A host of a rollout: the caches of the images its services run (`wanted`, and
    `held`, which it holds complete: its jit_caches read gave their manifests' sums)."""
    items = [{"digest": d, "root": "/var/cache/thorfleet/jit"} for d in (*held, *wanted)]
    entries = fleet.artefact_entries(items, "jit")
    reports = {e["key"]: artefacts.report(e, {"manifests": {d: d[-1] * 64 for d in held}})
               for e in entries}
    return fleet.holdings(entries, reports, host, f"10.0.0.{int(host[-2:])}", 873, "jit")


def test_a_hosts_missing_caches_come_from_a_host_that_holds_them():
    hosts = [jit_state("thor01", held=[OLD_IMAGE, NEW_IMAGE]),
             jit_state("thor02", held=[OLD_IMAGE], wanted=[NEW_IMAGE])]
    # One copy per image digest, only of what thor02 lacks.
    (copy,) = artefacts.sources(hosts, "thor02")
    assert copy["key"] == NEW_IMAGE and copy["peer"]["name"] == "thor01"
    assert copy["peer"]["url"] == "rsync://10.0.0.1:873/thorfleet-jit/sha256-" + "b" * 64
    # Checked against the sum of thor01's manifest, read over Ansible's connection to it
    # (the report of step read_source), not against anything the share sends.
    module, args = artefacts.copy_call(copy, {"manifest": "b" * 64})
    assert module == "jit_caches" and args == {
        "root": "/var/cache/thorfleet/jit",
        "peers": [{"digest": NEW_IMAGE, "name": "thor01", "manifest": "b" * 64,
                   "url": "rsync://10.0.0.1:873/thorfleet-jit/sha256-" + "b" * 64}]}
    assert artefacts.source_read_call(copy) == ("jit_caches",
                                                {"root": "/var/cache/thorfleet/jit"})
    # The holder itself copies nothing; a digest nobody else holds is compiled.
    assert artefacts.sources(hosts, "thor01") == []
    alone = [jit_state("thor01", wanted=["sha256:" + "c" * 64]), hosts[1]]
    assert artefacts.sources(alone, "thor01") == []


def test_a_batchs_hosts_spread_over_the_hosts_that_hold_a_cache():
    hosts = [jit_state("thor01", held=[NEW_IMAGE]), jit_state("thor02", held=[NEW_IMAGE])] + [
        jit_state(f"thor{n:02d}", wanted=[NEW_IMAGE]) for n in range(3, 9)]
    sources = [artefacts.sources(hosts, f"thor{n:02d}")[0]["peer"]["name"]
               for n in range(3, 9)]
    assert sources.count("thor01") == sources.count("thor02") == 3


def test_a_cache_is_held_only_with_its_manifests_sum():
    (entry,) = fleet.artefact_entries([{"digest": NEW_IMAGE, "root": "/c"}], "jit")
    assert entry["dest"] == "/c/sha256-" + "b" * 64
    for read in ({"manifests": {}}, {"manifests": {NEW_IMAGE: ""}}, {}, None,
                 {"manifests": {OLD_IMAGE: "a" * 64}}):
        assert artefacts.report(entry, read) is None
    # A copy is got only when the module says it copied that digest.
    assert artefacts.got(entry, {"copied": [NEW_IMAGE]}) == entry
    assert artefacts.got(entry, {"copied": [], "not_copied": [{"digest": NEW_IMAGE}]}) is None


def test_caches_go_through_no_rounds():
    # Nothing upstream makes them: the rounds would ask an upstream for what only a
    # host's engines make.
    with pytest.raises(artefacts.ArtefactError, match="nothing upstream makes it"):
        fleet.artefact_role("jit")
    assert fleet.artefact_role("models") == "model_store"


# --- at the edges -----------------------------------------------------------------------


def test_two_hosts_wanting_one_model_copy_it_and_hosts_that_hold_it_copy_nothing():
    wanting = [state(f"thor0{n}", wanted=["Qwen/Qwen3-8B"]) for n in (1, 2)]
    assert fleet.fleet_work(wanting)["copies"] is True
    holding = [state(f"thor0{n}", held=["Qwen/Qwen3-8B"]) for n in (1, 2)]
    assert fleet.fleet_work(holding)["copies"] is False


@pytest.mark.parametrize(("hosts", "rounds"), [(0, 4), (1, 4), (2, 5), (5, 7), (60, 10)])
def test_rounds_are_one_for_the_hub_log2_of_the_hosts_for_copies_one_more_and_two_spare(
        hosts, rounds):
    states = [state(f"thor{n:02d}", wanted=["Qwen/Qwen3-8B"]) for n in range(1, hosts + 1)]
    assert fleet.fleet_work(states)["rounds"] == rounds


@pytest.mark.parametrize(("address", "taken"), [
    (".".join(["a" * 63] * 3) + "." + "b" * 61, True),  # 253 characters
    (".".join(["a" * 63] * 3) + "." + "b" * 62, False),  # 254
    ("a" * 63 + ".lan", True), ("a" * 64 + ".lan", False), ("-thor01", False),
    ("thor01-", False)])
def test_a_host_name_is_taken_up_to_its_limits(address, taken):
    found = fleet.fleet_problems(True, address, 873, "thor01")
    assert (found == []) is taken, found


@pytest.mark.parametrize("check", [
    {"stamp": "s1", "ready": False},  # another build, or an incomplete one
    {"stamp": "", "ready": True},  # no stamp: the ref is not pinned yet
    None, "not a check result"])
def test_a_build_is_held_only_where_the_check_found_it_ready_with_a_stamp(check):
    (entry,) = build_entries(["llama.cpp"], pin="")
    assert artefacts.report(entry, check if isinstance(check, dict) else None) is None
    assert artefacts.report(entry, {"stamp": "s1", "ready": True})["stamp"] == "s1"


def test_a_failed_or_skipped_copy_is_not_counted_as_got():
    wants = state("thor02", wanted=["Qwen/Qwen3-8B", "a/b"])
    model, other = (wants["entries"][k] for k in sorted(wants["entries"]))
    results = [{"item": model, "commit": "c" * 40, "failed": True},
               {"item": other, "commit": "c" * 40, "skipped": True},
               "not a result", {"item": model, "stamp": "s1"}]  # a build's, not a model's
    after = fleet.got(wants, [model], [{"commit": "c" * 40, "unreachable": True}], results)
    assert after["got"] == [] and len(still_wanted(after)) == 2
    done = fleet.got(wants, [], [], [{"item": model, "commit": "c" * 40}])
    assert [e["path"] for e in still_wanted(done)] == [other["path"]]
    fetched = fleet.got(wants, [other], [{"commit": "c" * 40}], [])
    assert [e["path"] for e in still_wanted(fetched)] == [model["path"]]


def test_a_build_is_got_only_from_a_result_with_a_stamp():
    wants = build_state("thor02", ["llama.cpp", "whisper.cpp"], pin="")
    llama = next(e for e in wants["entries"].values()
                 if e["item"]["engine"]["name"] == "llama.cpp")
    assert fleet.got(wants, [llama], [{"commit": "c" * 40}], [])["got"] == []
    assert fleet.got(wants, [llama], [{"stamp": "s2", "failed": True}], [])["got"] == []
    for how in ((([llama], [{"stamp": "s2", "commit": "e" * 40}], [])),
                ([], [], [{"item": {**llama, "peer": {"name": "thor01"}}, "stamp": "s2",
                           "commit": "e" * 40}])):
        after = fleet.got(wants, *how)
        (key,) = after["got"]
        assert after["entries"][key]["item"]["engine"]["name"] == "llama.cpp"
        assert after["entries"][key]["pin"] == "e" * 40


@pytest.mark.parametrize(("fetch", "on"), [
    *[(word, True) for word in ("true", "yes", "on", "1", " True ")],
    *[(word, False) for word in ("false", "no", "off", "0", "FALSE")]])
def test_the_fleet_switch_reads_each_word_ansible_reads(fetch, on):
    # Switched on, the bad address is found; off, nothing else is looked at.
    found = fleet.fleet_problems(fetch, "", 873, "thor01")
    assert (len(found) == 1) is on and all("thorfleet_fleet_address" in f for f in found)


@pytest.mark.parametrize(("port", "taken"), [(1, True), (65535, True), ("65535", True),
                                             (65536, False), ("008873", False), (-1, False),
                                             (False, False)])
def test_a_port_is_taken_from_1_to_65535(port, taken):
    assert (fleet.fleet_problems(True, "10.0.0.1", port, "thor01") == []) is taken
    assert (fleet.bundle_problems("/srv/bundle", ["thor03"], port, 9418) == []) is taken


# What `openssl x509 -noout -ext subjectAltName` prints for each (OpenSSL 3).
OPENSSL_SAYS = {"10.0.0.2": "IP Address:10.0.0.2", "fd00::2": "IP Address:FD00:0:0:0:0:0:0:2",
                "FD00::2": "IP Address:FD00:0:0:0:0:0:0:2", "cache.lan": "DNS:cache.lan"}


@pytest.mark.parametrize(("address", "name"), [("10.0.0.2", "IP:10.0.0.2"),
                                               ("fd00::2", "IP:fd00::2"),
                                               ("FD00::2", "IP:fd00::2"),
                                               ("cache.lan", "DNS:cache.lan")])
def test_a_certificate_names_the_address_hosts_reach_the_cache_by(address, name):
    assert fleet.subject_alt_name(address) == name
    # Read back from the certificate, the same name: made once, not on every run.
    printed = f"X509v3 Subject Alternative Name: \n    {OPENSSL_SAYS[address]}\n"
    assert fleet.certificate_names(printed) == [name]


def test_a_certificate_naming_another_address_or_none_is_made_again():
    # Renumbered, an IP replaced by a name, or no certificate yet (openssl prints nothing).
    printed = "X509v3 Subject Alternative Name: \n    IP Address:10.0.0.2\n"
    assert fleet.certificate_names(printed) != [fleet.subject_alt_name("10.0.0.9")]
    assert fleet.certificate_names(printed) != [fleet.subject_alt_name("cache.lan")]
    assert fleet.certificate_names("") == []
    both = "X509v3 Subject Alternative Name: \n    DNS:cache.lan, IP Address:10.0.0.2\n"
    assert fleet.certificate_names(both) == ["DNS:cache.lan", "IP:10.0.0.2"]


@pytest.mark.parametrize("address", ["cache lan", "fe80::1%eth0", "", 10, None])
def test_a_certificate_for_what_is_no_address_is_refused(address):
    with pytest.raises(ValueError, match="is not an IP address or a host name"):
        fleet.subject_alt_name(address)


# --- failures in the rounds (issue 34) ---------------------------------------------------


def test_a_source_that_dies_is_lost_and_its_copier_gets_the_model_elsewhere():
    # thor01 and thor02 hold the model; thor01 is powered off as thor03 copies from it.
    hosts = [state("thor01", held=["Qwen/Qwen3-8B"]), state("thor02", held=["Qwen/Qwen3-8B"]),
             state("thor03", wanted=["Qwen/Qwen3-8B"]), state("thor04", wanted=["Qwen/Qwen3-8B"])]
    plans, final = run_rounds(hosts, dead={"thor01"})
    copies = [sorted((h, w["peer"]["name"]) for h, work in plan.items() for w in work["peers"])
              for plan in plans]
    assert copies[0] == [("thor03", "thor01"), ("thor04", "thor02")]
    assert copies[1] == [("thor03", "thor02")]  # another source, not the lost one
    assert not any(copies[2:])
    assert hub_fetches(plans) == []
    done = {s["host"]: s for s in final}
    assert done["thor03"]["got"] and done["thor03"]["lost"] == ["thor01"]
    assert not still_wanted(done["thor03"]) and not still_wanted(done["thor04"])


def test_when_every_source_is_lost_one_host_fetches_from_the_hub_and_the_rest_copy():
    hosts = [state("thor01", held=["Qwen/Qwen3-8B"])] + [
        state(f"thor{n:02d}", wanted=["Qwen/Qwen3-8B"]) for n in range(2, 6)]
    plans, final = run_rounds(hosts, dead={"thor01"})
    assert hub_fetches(plans) == ["thor02"]  # once, after thor01 was lost
    assert [s["host"] for s in final] == ["thor01", "thor02", "thor03", "thor04", "thor05"]
    assert not any(still_wanted(s) for s in final)
    sources = {w["peer"]["name"] for plan in plans[1:] for work in plan.values()
               for w in work["peers"]}
    assert "thor01" not in sources


def test_hub_fetches_of_a_round_are_spread_over_the_hosts():
    models = ["a/one", "b/two", "c/three"]
    hosts = [state(f"thor{n:02d}", wanted=models) for n in range(1, 5)]
    first = fleet.fleet_round(hosts, 0, fleet.fleet_work(hosts)["rounds"])
    fetchers = {h: [e["path"] for e in work["hub"]] for h, work in first.items() if work["hub"]}
    assert fetchers == {"thor01": ["a/one"], "thor02": ["b/two"], "thor03": ["c/three"]}


def test_sixty_hosts_with_two_failed_hub_fetches_fetch_three_times_not_thirty():
    # Each failed fetch costs a round; the spare rounds keep the rest copying host to host.
    hosts = [state(f"thor{n:02d}", wanted=["Qwen/Qwen3-8B"]) for n in range(1, 61)]
    plans, final = run_rounds(hosts, fail={"thor01", "thor02"})
    assert hub_fetches(plans) == ["thor01", "thor02", "thor03"]
    assert len(final) == 58 and not any(still_wanted(s) for s in final)
    # No round plans more copies from a host than it has: each source serves one host.
    for plan in plans:
        sources = [w["peer"]["name"] for work in plan.values() for w in work["peers"]]
        assert len(sources) == len(set(sources))


def test_a_lost_source_is_taken_from_failed_or_unreachable_results_of_either_loop():
    wants = state("thor03", wanted=["Qwen/Qwen3-8B"])
    model = next(iter(wants["entries"].values()))
    results = [
        {"item": {**model, "peer": {"name": "thor01"}}, "unreachable": True},
        {"engine": {"name": "llama.cpp", "peer": {"name": "thor02"}}, "failed": True,
         "ansible_loop_var": "engine"},
        {"item": {**model, "peer": {"name": "thor04"}}, "commit": "c" * 40},  # copied
        {"item": {**model, "peer": {"name": "thor05"}}, "skipped": True},  # not tried
        {"item": {**model, "peer": "thor06"}, "failed": True}, "not a result",
        {"item": {**model, "peer": {"name": 7}}, "failed": True}]
    assert fleet.lost(wants, results)["lost"] == ["thor01", "thor02"]
    assert fleet.lost({**wants, "lost": ["thor09"]}, [])["lost"] == ["thor09"]


def test_a_share_admits_its_hosts_by_address_resolving_those_given_by_name():
    hosts = ["10.0.0.2", "thor03.site", "fd00::4", "10.0.0.2", "thor05"]
    # What is left for getent to resolve on the sharing host: the names, each once.
    assert fleet.share_peers(hosts) == ["thor03.site", "thor05"]
    resolved = ("10.0.0.3        STREAM thor03.site\n10.0.0.3        DGRAM  \n"
                "10.0.0.5        STREAM thor05\nnot-an-address  STREAM thor05\n")
    # systemd's IPAddressAllow= gets addresses only: a name never reaches it.
    assert fleet.share_peers(hosts, resolved) == ["10.0.0.2", "10.0.0.3", "10.0.0.5",
                                                  "fd00::4"]
    assert fleet.share_peers(["10.0.0.2"], "") == ["10.0.0.2"]


def test_a_share_is_a_transient_unit_that_drops_other_addresses_and_runs_as_no_one():
    argv = fleet.share_unit("thorfleet-fleet-share", ["10.0.0.2", "10.0.0.3"],
                            "CAP_DAC_READ_SEARCH", 43200)
    assert argv[:3] == ["systemd-run", "--unit=thorfleet-fleet-share", "--collect"]
    for wanted in ("--property=RuntimeMaxSec=43200", "--property=IPAddressDeny=any",
                   "--property=IPAddressAllow=10.0.0.2 10.0.0.3",
                   "--property=DynamicUser=yes",
                   "--property=CapabilityBoundingSet=CAP_DAC_READ_SEARCH",
                   "--property=AmbientCapabilities=CAP_DAC_READ_SEARCH",
                   # A model root may lie in a home (/home/nvidia/models): read-only, not
                   # hidden.
                   "--property=ProtectHome=read-only"):
        assert wanted in argv, wanted
    # No address given admits none (an empty IPAddressAllow= clears the list).
    assert "--property=IPAddressAllow=" in fleet.share_unit("u", [], "", 1)


# --- the pipeline's table of kinds --------------------------------------------------------


@pytest.mark.parametrize("kind", ["bundles", "", None, ["models"]])
def test_a_kind_the_table_lacks_is_refused_naming_the_setting(kind):
    with pytest.raises(artefacts.ArtefactError, match="artefacts_kind: .* is not one of "
                                                      "builds, files, images, jit, models"):
        fleet.artefact_entries([entry()], kind)


@pytest.mark.parametrize("path", ["/etc", "../etc", "Qwen/../../etc", None])
def test_an_entry_whose_share_path_leaves_the_share_is_refused(path):
    (model,) = fleet.artefact_entries([entry()], "models")
    with pytest.raises(artefacts.ArtefactError, match="is not a path inside the share"):
        fleet.holdings([{**model, "path": path}], {}, "thor01", "10.0.0.1", 873, "models")


def test_entries_of_one_shape_and_one_kind_per_phase():
    (model,) = fleet.artefact_entries([entry()], "models")
    assert sorted(model) == sorted(artefacts.ENTRY_FIELDS)
    with pytest.raises(artefacts.ArtefactError, match="an entry of another kind than builds"):
        fleet.holdings([model], {}, "thor01", "10.0.0.1", 873, "builds")
    with pytest.raises(artefacts.ArtefactError, match="an artefact entry needs kind, key"):
        fleet.holdings([{"kind": "models"}], {}, "thor01", "10.0.0.1", 873, "models")


def test_the_results_a_kinds_role_gets_back_carry_its_own_items():
    (model,) = fleet.artefact_entries([entry()], "models")
    copied = {"item": {**model, "peer": {"name": "thor01"}}, "commit": "c" * 40}
    fetched = {"item": entry(), "commit": "c" * 40}  # the role's own upstream fetch
    assert fleet.artefact_results([copied, fetched, "not a result"]) == [
        {"item": entry(), "commit": "c" * 40}, fetched, "not a result"]


BUNDLE_RSYNC = "rsync://10.0.0.3:8873/thorfleet-bundle"


def test_on_a_site_with_a_bundle_a_host_copies_what_it_lacks_from_the_bundle_as_from_a_peer():
    # The bundle is the source (roles/artefacts, tasks/from_bundle.yml): its own entry
    # lies where `thorfleet bundle create` wrote it (models/<id>), read there over
    # Ansible's connection to the site cache, copied over the cache's rsync share.
    mine = state("thor04", held=["whisper.cpp/models"], wanted=["Qwen/Qwen3-8B"])
    (copy,) = artefacts.bundle_sources(mine, "thor03", "/srv/bundle", BUNDLE_RSYNC + "/")
    item = mine["entries"][copy["key"]]["item"]
    place = f"models/{load('filter_plugins/bundle.py').model_id(item)}"
    assert copy["peer_entry"]["path"] == place
    assert copy["peer_entry"]["item"]["dest"] == f"/srv/bundle/{place}"
    assert copy["peer"] == {"name": "thor03", "url": f"{BUNDLE_RSYNC}/{place}",
                            "staging_url": f"{BUNDLE_RSYNC}/{place}"}
    module, args = artefacts.source_read_call(copy)
    assert (module, args["models"][0]["dest"]) == ("model_manifests", f"/srv/bundle/{place}")
    module, args = artefacts.copy_call(copy, {"manifest": {"files": {}}, "fetched": []})
    assert module == "model_download" and args["dest"] == "/models/Qwen/Qwen3-8B"
    # The bundle's models wait in place: no partial copy beside them in the bundle.
    assert args["peer"]["staging_url"] == args["peer"]["url"] == f"{BUNDLE_RSYNC}/{place}"
    # An engine build is made from the bundle's sources by its role (over the git
    # share): the entry alone, with no peer to copy from.
    build = fleet.artefact_entries([{"engine": {"name": "whisper.cpp", "ref": "v1.8.5",
                                                "pin": "e" * 40},
                                     "args": {"build_root": "/opt/thorfleet/whisper.cpp"}}],
                                   "builds")
    builds = fleet.holdings(build, {}, "thor04", "10.0.0.4", 873, "builds")
    assert artefacts.bundle_sources(builds, "thor03", "/srv/bundle", BUNDLE_RSYNC) == build
    assert [artefacts.bundle_share(k) for k in ("models", "builds", "jit")] == \
        ["rsync", "git", None]
    # Nothing to copy for a host holding all it needs.
    assert artefacts.bundle_sources(state("thor04", held=["a/b"]), "thor03", "/srv/bundle",
                                    BUNDLE_RSYNC) == []


def test_a_source_whose_manifest_is_not_the_one_the_lock_pins_is_refused_before_a_copy():
    # A file changed in the bundle (or on a fleet peer) and its manifest written again to
    # match: the manifest's digest is not the lock's pin.
    pinned = {**entry(), "manifest_digest": "sha256:" + "a" * 64}
    (mine,) = fleet.artefact_entries([pinned], "models")
    copy = {**mine, "peer": {"name": "thor03"}}
    refused = artefacts.refusal(copy, {"manifest_digest": "sha256:" + "b" * 64})
    assert refused.startswith("Qwen/Qwen3-8B (/models/Qwen/Qwen3-8B): thor03's manifest has "
                              f"digest sha256:{'b' * 64}, not the sha256:{'a' * 64} the lock "
                              "pins (model_manifests): refused, nothing copied")
    assert artefacts.refusal(copy, {"manifest_digest": "sha256:" + "a" * 64}) is None
    # Nothing pinned yet (a first fetch): the source's manifest is the one to pin.
    (unpinned,) = fleet.artefact_entries([entry()], "models")
    assert artefacts.refusal({**unpinned, "peer": {"name": "thor03"}},
                             {"manifest_digest": "sha256:" + "b" * 64}) is None


def play_locally(tmp_path, tasks, *options):
    """Runs `tasks` on this machine through ansible-playbook, with the pipeline's action
    plugin and the project's modules; what the last task wrote to said.json (with
    `options`, ansible-playbook's, that and its output)."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False,
                                      "tasks": tasks}]))
    done = bounded.run(
        [str(Path(sys.executable).with_name("ansible-playbook")), "-i", "localhost,",
         "-c", "local", *options, str(playbook)], 120, cwd=tmp_path,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1",
             "ANSIBLE_ACTION_PLUGINS": str(ROOT / "roles/artefacts/action_plugins"),
             "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
             "ANSIBLE_LIBRARY": f"{ROOT / 'library'}:{ROOT / 'roles/model_store/library'}",
             "ANSIBLE_MODULE_UTILS": ":".join(str(ROOT / "roles" / role / "module_utils")
                                             for role in ("thorfleet", "model_store")),
             "ANSIBLE_PYTHON_INTERPRETER": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    said = json.loads((tmp_path / "said.json").read_text())
    return (said, done.stdout + done.stderr) if options else said


def test_the_pipelines_action_refuses_a_read_that_could_change_and_a_bundle_write_out_of_place(
        tmp_path):
    # The action plugin itself (roles/artefacts/action_plugins), on this machine through
    # ansible-playbook: a read step outside check mode is refused before any module runs
    # (a read must not change a host), and so is a bundle write of a section that is no
    # kind's or into a relative directory, naming the field. Cost: one local run, about 2 s.
    (mine,) = fleet.artefact_entries([entry()], "models")
    tasks = [
        {"name": "read", "thorfleet_artefact": {"step": "read", "entries": [mine]},
         "ignore_errors": True, "register": "read"},
        {"name": "bundle_section", "thorfleet_artefact": {
            "step": "bundle", "section": "jit", "item": {}, "directory": "/srv/b"},
         "ignore_errors": True, "register": "section"},
        {"name": "bundle_directory", "thorfleet_artefact": {
            "step": "bundle", "section": "files", "item": {}, "directory": "b"},
         "ignore_errors": True, "register": "directory"},
        {"name": "say", "ansible.builtin.copy": {
            "content": "{{ [read.msg, section.msg, directory.msg] | to_json }}",
            "dest": str(tmp_path / "said.json"), "mode": "0644"}}]
    read, section, directory = play_locally(tmp_path, tasks)
    assert read.startswith("the read steps run in check mode"), read
    assert section.startswith("section: 'jit' is not one of models, files, images, sources")
    assert directory == "directory: the bundle's directory, as an absolute path"


def test_a_file_read_in_a_bundle_is_written_only_with_the_sum_the_lock_pins(tmp_path):
    # A site's bundle, through the action plugin on this machine (the cache and the host
    # both localhost): a file of the bundle changed there is refused as its read comes
    # back, naming it, and the host's file is left as it was; the bundle's own file is
    # written with its sum checked. Cost: one local run, about 3 s.
    template = b"<|im_start|>assistant\n<think>\n\n</think>\n\n"  # no Jinja: the play mends
    pin = hashlib.sha256(template).hexdigest()
    bundle, dest = tmp_path / "bundle", tmp_path / "models" / "templates" / "t.jinja"
    (bundle / "files").mkdir(parents=True)
    (bundle / "files" / "t.jinja").write_bytes(template + b"changed in the bundle\n")
    item = {"name": "t.jinja", "url": "https://example.invalid/t.jinja", "sha256": pin,
            "dest": str(dest)}
    (mine,) = fleet.artefact_entries([item], "files")
    state = fleet.holdings([mine], {}, "localhost", "127.0.0.1", 873, "files")
    (copy,) = artefacts.bundle_sources(state, "localhost", str(bundle), "rsync://x/b")
    assert copy["peer_entry"]["dest"] == str(bundle / "files" / "t.jinja")
    tasks = [
        {"name": "read", "thorfleet_artefact": {"step": "read_source", "entry": copy},
         "check_mode": True, "ignore_errors": True, "register": "tampered"},
        {"name": "mend", "ansible.builtin.copy": {
            "content": template.decode(), "dest": str(bundle / "files" / "t.jinja"),
            "mode": "0644"}},
        {"name": "read again", "thorfleet_artefact": {"step": "read_source", "entry": copy},
         "check_mode": True, "register": "good"},
        {"name": "write", "thorfleet_artefact": {"step": "copy", "entry": copy,
                                                 "held": "{{ good.held }}"}},
        {"name": "say", "ansible.builtin.copy": {
            "content": "{{ [tampered.msg, tampered.held] | to_json }}",
            "dest": str(tmp_path / "said.json"), "mode": "0644"}}]
    message, held = play_locally(tmp_path, tasks)
    assert message.startswith(f"files t.jinja ({dest}): localhost's {bundle}/files/t.jinja has "
                              f"sha256 "), message
    assert f"not the {pin} the lock pins: refused, nothing copied" in message and held is None
    assert dest.read_bytes() == template and oct(dest.stat().st_mode & 0o777) == "0o644"


def test_a_hubs_token_reaches_the_hub_and_no_output_of_a_bundle_write(tmp_path):
    # thorfleet bundle create's one loop (step bundle) with a private hub's token, at full
    # verbosity, against a hub on loopback that refuses it: the token is sent to the hub,
    # and neither the output nor the failed result shows it. Cost: one local run, 3 s.
    token = "hf_" + "Secret7" * 5
    seen = []

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": "Invalid credentials"}')

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    item = {"source": "huggingface", "repo_id": "Qwen/Qwen3-0.6B",
            "revision": "c1899de289a04d12100db370d81485cdf75e47ca", "id": "qwen3",
            "sha256s": {}, "allow_patterns": [], "ignore_patterns": []}
    with loopback_server(Refusing) as port:
        tasks = [
            {"name": "bundle", "thorfleet_artefact": {
                "step": "bundle", "section": "models", "item": item,
                "directory": str(tmp_path / "bundle"),
                "settings": {"endpoints": {"huggingface": f"http://127.0.0.1:{port}"},
                             "tokens": {"huggingface": token}}},
             "ignore_errors": True, "register": "written"},
            {"name": "say", "ansible.builtin.copy": {
                "content": "{{ written | to_json }}", "dest": str(tmp_path / "said.json"),
                "mode": "0644"}}]
        written, output = play_locally(tmp_path, tasks, "-vvv")
    assert written["failed"] and seen and all(token in header for header in seen), written
    assert "Qwen/Qwen3-0.6B" in output
    assert token not in output and token not in json.dumps(written)

"""Watching the fleet, as the README's "Watching the fleet" does it: thor04 becomes the
fleet's monitor (the inventory group thorfleet_monitor) and looks like a Thor (the lab's
tegrastats stand-in prints JetPack 7 lines), the metrics phase runs on it and on thor01,
and a real Prometheus (Debian's, from the monitoring role) is asked through its HTTP API
what it sees: every exporter and every service that has metrics up, the engines'
counters against the requests verify sent, a known VDD_GPU reading, every rule and every
query of the Grafana dashboard running without error, the service-down alert firing
when a service stops, and `thorfleet status` showing tokens per second after a bench.

Cost: 1 to 2 minutes. The metrics phase on thor01 and thor04 (Prometheus and the node
exporter are in the lab's root file system; thor04 gets no services, as a monitoring
box of its own), one verify of thor01, a one-run bench, and the alert's `for:` (10 s
here, by the group's variables, as a site sets its own).
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.lab.conftest import ROOT, Playbook, thorfleet
from thorfleet.lab import host_address
from thorfleet.lab import thor as lab_thor

MONITOR = "thor04"
PROMETHEUS = f"http://{host_address(4)}:9090"
VDD_GPU_MW = 12345
# The stand-ins' request counters, by engine (vLLM 0.10.2 and SGLang 0.5's names).
REQUESTS = 'vllm:request_success_total|sglang:num_requests_total'
# thor01's services with metrics (whisper-server has none).
WITH_METRICS = {"qwen3", "qwen3-vllm", "whisper-vllm", "qwen3-sglang"}
# The group's variables a site would set in its own inventory: a quick scrape and a
# short `for:`, so the test waits seconds, not minutes.
MONITOR_INVENTORY = f"""\
thorfleet_monitor:
  hosts:
    {MONITOR}:
  vars:
    monitoring_scrape_interval: 2s
    monitoring_evaluation_interval: 2s
    monitoring_service_down_for: 10s
"""


def query(expr: str) -> list[dict]:
    """An instant query through Prometheus' HTTP API; fails on any error it reports."""
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def api(path: str) -> dict:
    with urllib.request.urlopen(f"{PROMETHEUS}{path}", timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", (path, answer)
    return answer["data"]


def until(what: str, probe, bound: float = 60, every: float = 1):
    """probe() until it returns something true, for at most `bound` seconds."""
    deadline = time.monotonic() + bound
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {bound:.0f} s (last: {got!r})")
        time.sleep(every)


def up() -> dict[tuple[str, str, str], float]:
    return {(s["metric"]["job"], s["metric"].get("host", ""), s["metric"].get("service", "")):
            float(s["value"][1]) for s in query('up{job=~"thorfleet-.+"}')}


def requests_served() -> dict[str, float]:
    return {s["metric"]["service"]: float(s["value"][1])
            for s in query(f'sum by (service) ({{__name__=~"{REQUESTS}", host="thor01"}})')}


@pytest.fixture(scope="module")
def monitor(thor01, lab, tmp_path_factory):
    """thor04 a Thor-looking monitoring box with a known VDD_GPU; the metrics phase run on
    it and thor01 with the monitor's inventory beside the lab's."""
    made = thorfleet("lab", "as-thor", MONITOR)
    assert made.returncode == 0, made.stderr
    readings = lab_thor.TEGRASTATS_READINGS
    lab.ssh(MONITOR, f"mkdir -p {Path(readings).parent} && "
                     f"echo '{json.dumps({'VDD_GPU': VDD_GPU_MW, 'GPU': 37})}' > {readings}")
    # An inventory source of its own beside the lab's: the group, and thor04's host_vars
    # (a monitoring box of its own: no services), which override the lab's.
    extra = tmp_path_factory.mktemp("monitor")
    (extra / "hosts.yml").write_text(MONITOR_INVENTORY)
    (extra / "host_vars").mkdir()
    (extra / "host_vars" / f"{MONITOR}.yml").write_text("thorfleet_services: []\n")
    inventory = ("-i", "inventory/lab", "-i", str(extra))
    run = Playbook("site.yml", *inventory, "-l", f"thor01,{MONITOR}", "--tags", "metrics")
    assert run.rc == 0, run
    yield inventory
    lab.ssh(MONITOR, "systemctl disable --now prometheus thorfleet-jetson-exporter",
            check=False)
    made = thorfleet("lab", "as-thor", MONITOR, "--off")
    assert made.returncode == 0, made.stderr


def test_every_exporter_and_every_service_with_metrics_is_up(monitor, thor01):
    wanted = {("thorfleet-node", h, "") for h in ("thor01", MONITOR)} \
        | {("thorfleet-jetson", h, "") for h in ("thor01", MONITOR)} \
        | {("thorfleet-services", "thor01", s) for s in WITH_METRICS}
    seen = until("every target scraped and up",
                 lambda: (lambda u: u if set(u) == wanted and all(u.values()) else None)(up()))
    assert set(seen) == wanted
    # Both exporters listen on the host's fleet address only.
    listening = {line.split()[3] for line in thor01.check_output("ss -ltnH").splitlines()}
    assert {f"{host_address(1)}:9100", f"{host_address(1)}:9102"} <= listening
    assert not {"*:9100", "0.0.0.0:9100", "[::]:9100", "*:9102"} & listening


def test_the_engines_counters_match_the_requests_verify_sent(monitor):
    # Counted from samples of the last few seconds (a Prometheus started again still
    # answers with its last samples from before for a while).
    until("every stand-in scraped in the last 4 s", lambda: query(
        f'max(time() - timestamp({{__name__=~"{REQUESTS}", host="thor01"}})) < 4'))
    before = requests_served()
    assert set(before) == WITH_METRICS - {"qwen3"}, before
    run = Playbook("site.yml", "-l", "thor01", "--tags", "verify")
    assert run.rc == 0, run
    sent = {}
    for service in WITH_METRICS - {"qwen3"}:  # the stand-ins: what they served is known
        sent[service] = len(re.findall(rf"\b{re.escape(service)}: [\w ]+: answered 200",
                                       run.output))
        assert sent[service] >= 1, (service, run.output[-3000:])
    wanted = {service: before.get(service, 0) + count for service, count in sent.items()}
    after = until("the counters to count verify's requests",
                  lambda: (lambda now: now if all(now.get(s) == n for s, n in wanted.items())
                           else None)(requests_served()), bound=30)
    assert {s: after[s] - before.get(s, 0) for s in sent} == sent
    # Tokens, prompt and generated, counted by every engine that serves them, llama.cpp's
    # real server included (its names at the pinned ref).
    for names in ("vllm:prompt_tokens_total|sglang:prompt_tokens_total|"
                  "llamacpp:prompt_tokens_total",
                  "vllm:generation_tokens_total|sglang:generation_tokens_total|"
                  "llamacpp:tokens_predicted_total"):
        counted = {s["metric"]["service"]: float(s["value"][1]) for s in query(
            f'sum by (service) ({{__name__=~"{names}", host="thor01"}})')}
        assert set(counted) == WITH_METRICS, (names, counted)
        assert all(value > 0 for value in counted.values()), (names, counted)


def test_the_jetson_collector_carries_tegrastats_values(monitor):
    rail = until("thor04's VDD_GPU", lambda: query(
        f'jetson_rail_power_watts{{host="{MONITOR}", rail="VDD_GPU"}}'))
    assert float(rail[0]["value"][1]) == VDD_GPU_MW / 1000
    assert float(query(f'jetson_gpu_load_ratio{{host="{MONITOR}"}}')[0]["value"][1]) == 0.37
    mode = query(f'jetson_power_mode_info{{host="{MONITOR}"}}')
    assert [s["metric"]["mode"] for s in mode] == ["MAXN"]
    # thor01 is no Jetson: its exporter answers and says tegrastats is not there.
    assert float(query('jetson_tegrastats_up{host="thor01"}')[0]["value"][1]) == 0


def test_every_rule_and_every_dashboard_query_runs(monitor, lab):
    checked = lab.ssh(MONITOR, "promtool check rules /etc/prometheus/thorfleet-rules.yml",
                      check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    def evaluated():
        rules = [r for g in api("/api/v1/rules")["groups"] for r in g["rules"]]
        done = [r for r in rules if r.get("lastEvaluation", "").startswith("2")]
        return rules if rules and len(done) == len(rules) else None
    rules = until("every rule evaluated", evaluated)
    assert {r["name"] for r in rules} >= {
        "thorfleet:generation_tokens:rate1m", "thorfleet:prompt_tokens:rate1m",
        "thorfleet:requests_running", "thorfleet:memory_used:ratio", "ThorfleetServiceDown",
        "ThorfleetHostMemoryOverBudget", "ThorfleetRestartLoop"}
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The recordings have series: the names they read are the engines' and exporters'.
    for name in ("thorfleet:requests_running", "thorfleet:memory_used:ratio"):
        assert query(name), name
    dashboard = json.loads((ROOT / "roles/monitoring/files/grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$host", ".+").replace("$__rate_interval", "1m")
            query(expr)  # fails on an error Prometheus reports
    assert query(dashboard["templating"]["list"][1]["definition"]
                 .replace("label_values(", "").rsplit(",", 1)[0])


def test_status_shows_tokens_per_second_after_a_bench(monitor, tmp_path):
    bench = thorfleet("bench", "-l", "thor01", "-o", str(tmp_path),
                      "-e", "service_bench_runs=1", "-e", "service_bench_warmup=0",
                      "-e", "service_bench_max_tokens=64")
    assert bench.returncode == 0, bench.stdout[-3000:] + bench.stderr[-3000:]
    until("a rate over the last minute for the vLLM stand-in", lambda: query(
        'thorfleet:generation_tokens:rate1m{host="thor01", service="qwen3-vllm"} > 0'))
    inventory = [word for pair in zip(monitor[::2], monitor[1::2], strict=True) for word in pair]
    shown = thorfleet("status", *inventory, "-l", "thor01", "--json")
    hosts = json.loads(shown.stdout)["hosts"]
    services = {s["service"]: s for s in hosts[0]["services"]}
    assert services["qwen3-vllm"]["tokens_per_second"] > 0, services
    assert services["whisper"]["tokens_per_second"] is None  # whisper-server: no metrics
    assert hosts[0]["memory"]["used"] > 0 and hosts[0]["memory"]["budget"] > 0
    table = thorfleet("status", *inventory, "-l", "thor01").stdout
    row = next(line.split() for line in table.splitlines() if line.split()[1:2] == ["qwen3-vllm"])
    header = table.splitlines()[0].split()
    assert float(row[header.index("tok/s")]) > 0, table


def test_a_stopped_service_fires_the_service_down_alert(monitor, thor01):
    thor01.check_output("systemctl stop thorfleet-qwen3-sglang")
    stopped = time.monotonic()
    try:
        def firing():
            alerts = api("/api/v1/alerts")["alerts"]
            return [a for a in alerts if a["labels"]["alertname"] == "ThorfleetServiceDown"
                    and a["labels"].get("service") == "qwen3-sglang" and a["state"] == "firing"]
        # Its `for:` (10 s), plus a scrape and an evaluation (2 s each) either side.
        alert = until("ThorfleetServiceDown for qwen3-sglang", firing, bound=10 + 4 * 2 + 10)
        took = time.monotonic() - stopped
        assert took >= 10, f"fired after {took:.0f} s, before its for: of 10 s"
        assert alert[0]["labels"]["host"] == "thor01"
    finally:
        thor01.check_output("systemctl reset-failed thorfleet-qwen3-sglang; "
                            "systemctl start thorfleet-qwen3-sglang")
    until("the alert to clear", lambda: not any(
        a["labels"].get("service") == "qwen3-sglang"
        for a in api("/api/v1/alerts")["alerts"]), bound=60)

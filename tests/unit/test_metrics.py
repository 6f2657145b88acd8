"""The fleet's metrics: each host's Prometheus targets from its resolved services
(filter_plugins/metrics.py), the settings preflight checks, the Jetson exporter's reading
of tegrastats (roles/thor_metrics/files), and the dashboard's and rules' names."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from threading import Thread

import pytest
import yaml

from tests.conftest import ROOT, load
from tests.unit.test_service_specs import specs
from thorfleet import bounded
from thorfleet.lab import thor as lab_thor

metrics = load("filter_plugins/metrics.py")
exporter = load("roles/thor_metrics/files/thorfleet_jetson_exporter.py")

SERVICES = [{"name": "chat", "recipe": "vllm-qwen3-8b-nothink", "port": 8001,
             "memory_share": 0.3},
            {"name": "local", "recipe": "sglang-qwen3-8b", "port": 8003,
             "bind_address": "127.0.0.1", "memory_share": 0.3},
            {"name": "qwen3", "recipe": "llama-qwen3-8b-gguf", "port": 8000,
             "bind_address": "10.0.0.7"},
            {"name": "whisper", "recipe": "whisper-large-v3-turbo", "port": 8080}]


def test_a_hosts_targets_are_its_exporters_and_each_service_with_metrics():
    found = metrics.metrics_targets(specs(SERVICES), "thor01", "10.0.0.5", 9100, 9102)
    assert found["node"] == [{"targets": ["10.0.0.5:9100"], "labels": {"host": "thor01"}}]
    assert found["jetson"] == [{"targets": ["10.0.0.5:9102"], "labels": {"host": "thor01"}}]
    # whisper-server has no metrics; a service on loopback cannot be scraped from the
    # monitor; one bound to an address is scraped there, one on all at the fleet address.
    assert found["services"] == [
        {"targets": ["10.0.0.5:8001"],
         "labels": {"host": "thor01", "service": "chat", "recipe": "vllm-qwen3-8b-nothink",
                    "engine": "vllm", "model": "Qwen/Qwen3-8B", "__metrics_path__": "/metrics"}},
        {"targets": ["10.0.0.7:8000"],
         "labels": {"host": "thor01", "service": "qwen3", "recipe": "llama-qwen3-8b-gguf",
                    "engine": "llama-server", "model": "Qwen/Qwen3-8B-GGUF",
                    "__metrics_path__": "/metrics"}}]


def test_without_exporters_a_host_still_offers_its_services():
    found = metrics.metrics_targets(specs(SERVICES[:1]), "thor01", "fd00::5", 9100, 9102,
                                    enabled=False)
    assert found["node"] == found["jetson"] == []
    assert found["services"][0]["targets"] == ["[fd00::5]:8001"]


@pytest.mark.parametrize(("node", "jetson", "problem"), [
    (9100, 9102, None),
    (8001, 9102, "thor01: thorfleet_metrics_node_port: 8001 is already the port of service chat"),
    (9100, 9100, "thor01: thorfleet_metrics_jetson_port: 9100 is already"),
    ("9100; rm -rf /", 9102, "thor01: thorfleet_metrics_node_port: '9100; rm -rf /' is not a port"),
    (9100, 70000, "thor01: thorfleet_metrics_jetson_port: '70000' is not a port number"),
])
def test_metrics_ports_are_checked_naming_the_field(node, jetson, problem):
    found = metrics.metrics_problems(True, "10.0.0.5", node, jetson, specs(SERVICES[:1]),
                                     "thor01")
    assert (found[0] if found else None) is None if problem is None else \
        found[0].startswith(problem), found


def test_an_address_with_a_newline_is_refused_and_off_means_no_checks():
    found = metrics.metrics_problems(True, "10.0.0.5\nExecStart=/bin/sh", 9100, 9102, [],
                                     "thor01")
    assert found and found[0].startswith("thor01: thorfleet_fleet_address:")
    assert metrics.metrics_problems("false", "bad\naddress", 8001, 8001, [], "thor01") == []


# A line of JetPack 7's tegrastats on a Thor: the rails VDD_GPU, VDD_CPU_SOC_MSS,
# VIN_SYS_5V0 and VIN, the GPU's load as `GPU`, no GR3D_FREQ.
THOR = ("12-08-2026 10:00:00 RAM 23456/125772MB (lfb 12x4MB) SWAP 0/62886MB (cached 0MB) "
        "CPU [3%@1011,off,12%@2601] EMC_FREQ 0% GPU 41% cpu@53.7C soc012@55.1C "
        "tj@55.1C VDD_GPU 12345mW/8000mW VDD_CPU_SOC_MSS 6510mW/6400mW "
        "VIN_SYS_5V0 6520mW/6500mW VIN 23100mW/22000mW")
# And one of JetPack 6 on an Orin, whose parsers Thor broke: GR3D_FREQ, other rails.
ORIN = ("RAM 2448/7620MB (lfb 1171x4MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,0%@729] "
        "EMC_FREQ 0% GR3D_FREQ 7%@[305] cpu@47.5C gpu@46.1C VDD_IN 4180mW/4180mW "
        "VDD_CPU_GPU_CV 480mW/480mW")


def test_jetpack_7_lines_are_read_by_shape():
    reading = exporter.parse(THOR)
    assert reading["memory_used"] == 23456 * 1024 * 1024
    assert reading["memory_total"] == 125772 * 1024 * 1024
    assert reading["gpu"] == 0.41
    assert reading["cpu"] == {"0": 0.03, "2": 0.12}  # core 1 is off
    assert reading["rails"] == {"VDD_GPU": (12.345, 8.0), "VDD_CPU_SOC_MSS": (6.51, 6.4),
                                "VIN_SYS_5V0": (6.52, 6.5), "VIN": (23.1, 22.0)}
    assert reading["temperatures"] == {"cpu": 53.7, "soc012": 55.1, "tj": 55.1}
    orin = exporter.parse(ORIN)
    assert orin["gpu"] == 0.07 and set(orin["rails"]) == {"VDD_IN", "VDD_CPU_GPU_CV"}


def test_the_exporter_serves_the_latest_reading_or_says_tegrastats_is_quiet():
    text = exporter.text(exporter.parse(THOR), "MAXN", 0.9)
    assert 'jetson_rail_power_watts{rail="VDD_GPU"} 12.345' in text.splitlines()
    assert 'jetson_power_mode_info{mode="MAXN"} 1' in text.splitlines()
    assert "thorfleet_memory_budget_ratio 0.9" in text.splitlines()
    assert "jetson_tegrastats_up 1" in text.splitlines()
    quiet = exporter.text(None, None, 0.9)
    assert "jetson_tegrastats_up 0" in quiet.splitlines() and "jetson_rail" not in quiet
    # A power mode's name that is not a plain word is left out, not written into a label.
    assert "mode=" not in exporter.text(None, 'MAXN"} 1\nevil', None)


def test_it_answers_over_http_and_only_at_metrics():
    class Quiet(exporter.Tegrastats):
        def reading(self):
            return exporter.parse(THOR)

    class Mode(exporter.PowerMode):
        def get(self):
            return "120W"

    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 exporter.handler(Quiet("tegrastats", 1000), Mode(), 0.8))
    Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            body = response.read().decode()
        assert 'jetson_power_mode_info{mode="120W"} 1' in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/", timeout=5)
    finally:
        server.shutdown()


def test_the_labs_tegrastats_stand_in_prints_what_the_exporter_reads(tmp_path):
    script = tmp_path / "tegrastats"
    script.write_text(lab_thor.TEGRASTATS.replace(lab_thor.TEGRASTATS_READINGS,
                                                  str(tmp_path / "readings.json")))
    (tmp_path / "readings.json").write_text(json.dumps({"VDD_GPU": 4321, "GPU": 12}))
    # It prints a line every interval until its reader goes: head takes the first.
    line = subprocess.run(f"python3 {script} --interval 50 | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=30, check=True).stdout
    reading = exporter.parse(line)
    assert reading["rails"]["VDD_GPU"] == (4.321, 4.321)
    assert reading["gpu"] == 0.12 and "GR3D_FREQ" not in line
    assert set(reading["rails"]) == {"VDD_GPU", "VDD_CPU_SOC_MSS", "VIN_SYS_5V0", "VIN"}
    assert reading["memory_total"] > reading["memory_used"] > 0


RULES = ROOT / "roles/monitoring/templates/thorfleet-rules.yml.j2"
DASHBOARD = ROOT / "roles/monitoring/files/grafana-dashboard.json"


def rules():
    text = re.sub(r"\{%.*?%\}", "", RULES.read_text(), flags=re.S)
    text = re.sub(r"\{\{ (\w+) \}\}", lambda m: {"monitoring_service_down_for": "1m",
                                                  "monitoring_restart_loop": "3"}[m.group(1)],
                  text.replace("{{ ansible_managed | comment }}", "#"))
    return yaml.safe_load(text)


def test_the_dashboard_reads_only_what_the_rules_record_or_an_exporter_serves():
    recorded = {r["record"] for g in rules()["groups"] for r in g["rules"] if "record" in r}
    served = {"up", "thorfleet_memory_budget_ratio"}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p["targets"]]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\b(thorfleet:[\w:]+)", expr):
            assert name in recorded, (name, expr)
        for name in re.findall(r"(?<![\w:\"|])([a-z_]+)\{", expr):
            if name not in ("by", "rate", "sum", "histogram_quantile"):
                assert name in served or name.startswith("jetson_"), (name, expr)


def test_metrics_targets_writes_every_hosts_files_from_the_inventory_alone(tmp_path):
    # The sample inventory's hosts do not exist: no host is contacted.
    run = bounded.run(["thorfleet", "metrics", "targets", "-i", "inventory/sample",
                       "-o", str(tmp_path)], 300, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json"))
    assert written == [f"{job}/{host}.json" for job in ("jetson", "node", "services")
                       for host in ("thor01", "thor02", "thor03")]
    node = json.loads((tmp_path / "node/thor02.json").read_text())
    assert node == [{"targets": ["192.168.50.12:9100"], "labels": {"host": "thor02"}}]
    services = json.loads((tmp_path / "services/thor01.json").read_text())
    assert [(g["labels"]["service"], g["labels"]["engine"], g["targets"]) for g in services] \
        == [("qwen3", "vllm", ["192.168.50.11:8000"])]
    assert set(services[0]["labels"]) == {"host", "service", "recipe", "engine", "model",
                                          "__metrics_path__"}


def test_only_units_not_enabled_or_not_active_are_started():
    shown = ("Id=prometheus-node-exporter.service\nUnitFileState=enabled\nActiveState=active\n\n"
             "Id=thorfleet-jetson-exporter.service\nUnitFileState=\nActiveState=inactive\n")
    assert metrics.units_not_running(shown) == ["thorfleet-jetson-exporter.service"]
    stopped = shown.replace("ActiveState=active", "ActiveState=failed")
    assert metrics.units_not_running(stopped) == ["prometheus-node-exporter.service",
                                                  "thorfleet-jetson-exporter.service"]
    both = shown.replace("UnitFileState=\nActiveState=inactive",
                         "UnitFileState=enabled\nActiveState=active")
    assert metrics.units_not_running(both) == []

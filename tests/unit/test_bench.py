"""The bench: the thorfleet_bench module's numbers from a stream's arrival times, the module
against the vLLM stand-in streaming at a known pace, and the report (the guide's table,
the details, the chart)."""

from __future__ import annotations

import pytest

from tests.conftest import load, run_module
from tests.unit.test_service_specs import one
from thorfleet import bench as report
from thorfleet import engine_standin

module = load("library/thorfleet_bench.py")
filters = load("filter_plugins/bench.py")


def token(text="x"):
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


def test_numbers_come_from_the_arrival_of_the_first_and_last_token():
    chunks = [(0.1, {"choices": [{"delta": {"role": "assistant"}}]}),
              *[(0.5 + i / 10, token()) for i in range(6)],
              (1.1, {"choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 6}})]
    run = module.measure(0.0, chunks)
    assert run["ttft_s"] == pytest.approx(0.5)  # the role chunk carries no token
    assert run["decode_tps"] == pytest.approx(10.0)  # 5 tokens after the first in 0.5 s
    assert run["prompt_tps"] == pytest.approx(200.0)
    assert run["server_decode_tps"] is None


def test_the_servers_own_timings_are_reported_with_the_difference():
    chunks = [*[(1 + i / 10, token()) for i in range(11)],
              (2.1, {"choices": [], "timings": {"predicted_per_second": 8.0,
                                                "prompt_per_second": 300.0}})]
    run = module.measure(0.0, chunks)
    assert run["completion_tokens"] == 11  # no usage: tokens counted as chunks with text
    assert run["prompt_tps"] is None
    assert (run["server_decode_tps"], run["server_prompt_tps"]) == (8.0, 300.0)
    assert run["server_difference_pct"] == pytest.approx(25.0)  # client 10 tok/s vs 8


def test_thinking_tokens_count_and_a_stream_of_one_token_is_an_error():
    thinking = [(0.2, {"choices": [{"delta": {"reasoning_content": "hm"}}]}), (0.4, token())]
    assert module.measure(0.0, thinking)["decode_tps"] == pytest.approx(5.0)
    with pytest.raises(module.BenchError, match="1 token"):
        module.measure(0.0, [(0.2, token())])
    with pytest.raises(module.BenchError, match="not streamed"):
        module.measure(0.0, [(0.2, token()), (0.2, token())])


def test_every_request_gets_a_prompt_of_its_own_and_asks_for_every_token():
    first, second = (module.request_body("qwen3", "Tell me.", 256) for _ in range(2))
    assert first["messages"] != second["messages"]  # no prefix cache holds the next one
    assert first["messages"][0]["content"].endswith("] Tell me.")
    assert (first["stream"], first["ignore_eos"], first["max_tokens"]) == (True, True, 256)
    assert first["stream_options"] == {"include_usage": True}


def test_requests_carry_the_recipes_sampling_fields_and_are_greedy_without_them():
    plain = module.request_body("qwen3", "Tell me.", 256)
    assert plain["temperature"] == 0 and "top_k" not in plain
    sampled = module.request_body("qwen3", "Tell me.", 256, {"temperature": 0.7, "top_k": 20})
    assert (sampled["temperature"], sampled["top_k"], sampled["max_tokens"]) == (0.7, 20, 256)


def test_the_module_sends_each_service_its_recipes_sampling(monkeypatch):
    sent = []

    def stream(url, body, api_key, timeout):
        sent.append(body)
        return 0.0, [(0.1, token()), (0.2, token()), (0.3, token())]
    monkeypatch.setattr(module, "stream", stream)
    (service,) = filters.bench_services([{**one("sglang-qwen3-8b-fp8"), "name": "fp8"}])
    result = module.bench(service, None, "Hi.", 3, runs=1, warmup=1, timeout=5)
    assert "error" not in result and len(sent) == 2
    for body in sent:
        assert {k: body[k] for k in ("repetition_penalty", "temperature", "top_p", "top_k",
                                     "min_p")} == {"repetition_penalty": 1.2, "temperature": 0.6,
                                                   "top_p": 0.95, "top_k": 20, "min_p": 0.0}


def test_medians_over_runs():
    runs = [{"decode_tps": v, "ttft_s": 1.0} for v in (10.0, 30.0, 11.0)]
    values = module.median(runs)
    assert (values["decode_tps"], values["ttft_s"], values["prompt_tps"]) == (11.0, 1.0, None)


def bench(monkeypatch, url, **args):
    service = {"name": "qwen3-vllm", "engine": "vllm", "url": url, "served_name": "qwen3"}
    return run_module(module, {"services": [service], "prompt": "Hello there, engine.",
                               "max_tokens": 20, "runs": 2, "warmup": 1, **args}, monkeypatch)


def test_the_module_times_a_streaming_server(standin, monkeypatch):
    monkeypatch.setenv(engine_standin.PACE, "100")
    serve, _ = standin
    done = bench(monkeypatch, serve())
    assert not done.failed, done.result
    (result,) = done.result["results"]
    assert result["name"] == "qwen3-vllm" and len(result["runs"]) == 2
    median = result["median"]
    assert median["completion_tokens"] == 20  # ignore_eos: the stand-in's answer repeated
    assert median["prompt_tokens"] == 4  # the stand-in counts words: tag + 3
    # The stand-in sends a token every 10 ms: the client must measure about that.
    assert 50 < median["decode_tps"] <= 105
    assert done.result["changed"] is False


def test_a_service_that_does_not_stream_fails_naming_it(standin, monkeypatch):
    serve, root = standin
    keyed = serve(["vllm", "serve", str(root), "--served-model-name", "qwen3",
                   "--api-key", "secret"])
    done = bench(monkeypatch, keyed)
    assert done.failed
    assert "qwen3-vllm: POST " in done.result["msg"] and "answered 401" in done.result["msg"]
    assert not bench(monkeypatch, keyed, api_keys={"qwen3-vllm": "secret"}).failed


def test_only_chat_and_vision_services_are_timed_named_as_the_guide_names_them():
    specs = [{**one("llama-qwen3-8b-gguf"), "name": "qwen3"},
             {**one("vllm-whisper-small"), "name": "whisper"},
             {**one("sglang-qwen3-8b-fp8", port=8003), "name": "fp8"}]
    timed = filters.bench_services(specs)
    assert [(s["name"], s["model_name"], s["quantization"], s["url"]) for s in timed] == [
        ("qwen3", "Qwen3-8B-GGUF", "Q5_K_M", "http://127.0.0.1:8000"),
        ("fp8", "Qwen3-8B-FP8", "fp8_w8a8", "http://127.0.0.1:8003")]


def result(host="thor01"):
    def service(name, engine, model, quantization, decode, server=None):
        median = {"ttft_s": 0.25, "prompt_tps": 400.0, "decode_tps": decode,
                  "server_decode_tps": server, "server_prompt_tps": 410.0 if server else None,
                  "server_difference_pct": 100 * (decode - server) / server if server else None}
        return {"name": name, "engine": engine, "model_name": model,
                "quantization": quantization, "median": median}
    return {"host": host, "max_tokens": 256, "runs": 3, "services": [
        service("a", "vllm", "Qwen3-8B", "bfloat16", 10.5),
        service("b", "sglang", "Qwen3-8B", "bfloat16", 11.3),
        service("c", "llama-server", "Qwen3-8B-GGUF", "Q5_K_M", 37.4, server=38.0),
        service("d", "sglang", "Qwen3-8B-FP8", "fp8_w8a8", 27.3)]}


def test_the_guide_table_has_a_row_per_model_and_a_column_per_engine():
    header, *rows = report.guide_table(result()).splitlines()
    assert header.split("  ")[0] == "model"
    assert [c.strip() for c in header.split("  ") if c.strip()] == [
        "model", "quantisation", "vLLM (tok/s)", "SGLang (tok/s)", "llama.cpp (tok/s)"]
    columns = [header.index(title) for title in ("vLLM", "SGLang", "llama.cpp")]
    cells = {row.split()[0]: [row[c:c + 6].strip() for c in columns] for row in rows}
    assert cells == {"Qwen3-8B": ["10.5", "11.3", ""], "Qwen3-8B-GGUF": ["", "", "37.4"],
                     "Qwen3-8B-FP8": ["", "27.3", ""]}


def test_the_details_show_the_servers_own_numbers_and_the_difference():
    lines = report.detail_table([result()]).splitlines()
    llama = next(line for line in lines if " c " in line).split()
    assert llama == ["thor01", "c", "llama-server", "250", "400.0", "37.4", "410.0", "38.0",
                     "-1.6%"]
    assert next(line for line in lines if " a " in line).split()[-3:] == ["-", "-", "-"]


def test_the_chart_is_a_png(tmp_path):
    path = report.chart([result(), result("thor02")], tmp_path / "chart.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_results_are_read_per_host(tmp_path):
    import json
    for host in ("thor01", "thor02"):
        (tmp_path / f"{host}.json").write_text(json.dumps(result(host)))
    assert [r["host"] for r in report.load(tmp_path)] == ["thor01", "thor02"]
    assert [r["host"] for r in report.load(tmp_path, ["thor02"])] == ["thor02"]


def test_a_host_without_chat_services_says_so():
    text = report.report([result(), {"host": "thor02", "max_tokens": 256, "runs": 3,
                                     "services": []}])
    assert "thor02: no chat or vision services to time" in text
    assert text.count("decode speed, median of 3 runs") == 1


def test_the_report_says_at_which_power_mode_the_numbers_were_measured():
    state = {"nvpmodel": "/usr/sbin/nvpmodel", "modes": {"MAXN": 0}, "mode": "MAXN",
             "mode_id": 0, "clocks": True}
    recorded = filters.bench_power(state)
    assert recorded == {"mode": "MAXN", "mode_id": 0, "jetson_clocks": True}
    assert filters.bench_power({"nvpmodel": None, "clocks": False}) is None
    text = report.report([{**result(), "power": recorded},
                          {**result("thor02"), "power": None}])
    assert "thor01: decode speed, median of 3 runs of 256 tokens, power mode MAXN, " \
           "jetson_clocks on\n" in text
    assert "thor02: decode speed, median of 3 runs of 256 tokens, no power mode " \
           "(not a Jetson)\n" in text


def test_an_engine_the_guide_does_not_have_gets_a_column_of_its_own():
    other = {**result()["services"][0], "name": "e", "engine": "trtllm",
             "median": {"decode_tps": 44.4, "ttft_s": 0.1}}
    text = report.guide_table({**result(), "services": [*result()["services"], other]})
    header = text.splitlines()[0]
    assert header.endswith("llama.cpp (tok/s)  trtllm (tok/s)")
    assert "44.4" in text

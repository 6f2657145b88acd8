"""The lab's vLLM and SGLang stand-in parses commands as the engines do: every container
recipe of the catalogue is accepted, and what an engine would refuse is refused."""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer

import pytest

from tests.guide import guide
from tests.unit.test_service_specs import CATALOGUE, one
from thorfleet import engine_standin

CONTAINER_ENGINES = sorted(name for name, engine in CATALOGUE["engines"].items()
                           if engine["kind"] == "container")
CONTAINER_RECIPES = sorted(r for r, spec in CATALOGUE["recipes"].items()
                           if spec["engine"] in CONTAINER_ENGINES)


def parse(engine, argv):
    return engine_standin.configure(engine, argv[len(engine_standin.ENGINES[engine].command):])


def test_every_container_engine_of_the_catalogue_has_a_stand_in():
    # The lab pushes a stand-in under each container engine's image (thorfleet lab up).
    assert sorted(engine_standin.ENGINES) == CONTAINER_ENGINES == ["sglang", "vllm"]


@pytest.fixture
def models(monkeypatch):
    """Every path exists, every template is empty: the parse is what is under test here."""
    monkeypatch.setattr(engine_standin.os.path, "exists", lambda _path: True)
    monkeypatch.setattr(engine_standin, "open", lambda *_args: io.StringIO(""), raising=False)


@pytest.mark.parametrize("recipe", CONTAINER_RECIPES)
def test_each_container_recipe_is_accepted_with_its_settings(recipe, models):
    spec = one(recipe, port=8011, memory_share=0.3)
    settings = parse(spec["engine"], spec["argv"])
    assert (settings["port"], settings["served_name"]) == (8011, spec["served_name"])
    assert settings["model"] == spec["model"]


def test_the_guides_media_path_flag_without_a_value_is_refused(models):
    # What the guide writes: the flag with no value (the catalogue adds /models).
    argv = guide("vllm-qwen2.5-vl-7b-awq")[:-1]
    with pytest.raises(SystemExit) as refused:
        parse("vllm", argv)
    assert refused.value.code == 2


@pytest.mark.parametrize(("engine", "argv"), [
    ("vllm", ["vllm", "serve", "/m", "--no-such-flag"]),
    ("vllm", ["vllm", "serve", "/m", "--override-generation-config", "{temperature: 1"]),
    ("sglang", ["python", "-m", "sglang.launch_server", "--model-path", "/m",
                "--preferred-sampling-params", "[1,"]),
    ("sglang", ["python", "-m", "sglang.launch_server", "--port", "8000"]),  # no model
    # SGLang refuses abbreviated flags and a --quantization it does not know.
    ("sglang", ["python", "-m", "sglang.launch_server", "--model-path", "/m",
                "--served-model", "qwen3"]),
    ("sglang", ["python", "-m", "sglang.launch_server", "--model-path", "/m",
                "--quantization", "fp8_w8a8"]),
])
def test_what_the_engine_refuses_stops_the_stand_in(engine, argv, models):
    with pytest.raises(SystemExit) as refused:
        parse(engine, argv)
    assert refused.value.code == 2


def test_a_missing_model_stops_it_naming_the_path(tmp_path):
    with pytest.raises(SystemExit) as refused:
        parse("vllm", ["vllm", "serve", str(tmp_path / "absent")])
    assert "model" in str(refused.value.code) and "absent" in str(refused.value.code)


def test_the_compile_cache_marker_is_left_once_and_found_after(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert engine_standin.jit_cache("vllm", "qwen3") == "new"
    assert (tmp_path / ".cache/vllm/thorfleet-standin-qwen3").exists()
    assert engine_standin.jit_cache("vllm", "qwen3") == "found"
    assert engine_standin.jit_cache("vllm", "whisper") == "new"  # per service
    assert engine_standin.jit_cache("sglang", "Qwen/Qwen3-8B") == "new"
    assert (tmp_path / ".cache/flashinfer/thorfleet-standin-Qwen_Qwen3-8B").exists()


def post(url, body, headers=None):
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def chat(base, content, model="qwen3"):
    return post(f"{base}/v1/chat/completions",
                json.dumps({"model": model, "messages": [{"role": "user", "content": content}]})
                .encode(), {"Content-Type": "application/json"})


def test_chat_thinks_unless_the_template_prefills_an_empty_think_block(standin):
    serve, root = standin
    status, body = chat(serve(), "hello")
    assert status == 200 and "<think>" not in body["choices"][0]["message"]["content"]
    thinking = serve(["vllm", "serve", str(root), "--served-model-name", "qwen3"])
    assert "<think>" in chat(thinking, "hello")[1]["choices"][0]["message"]["content"]
    assert chat(thinking, "hello", model="other")[0] == 404


def test_images_by_file_url_only_under_the_allowed_media_path(standin):
    serve, root = standin
    base = serve()
    inside = [{"type": "image_url", "image_url": {"url": f"file://{root}/media/cat.png"}}]
    outside = [{"type": "image_url", "image_url": {"url": f"file://{root}/x.jinja"}}]
    assert chat(base, inside)[0] == 200
    status, body = chat(base, outside)
    assert status == 400 and "allowed-local-media-path" in body["error"]["message"]


def test_a_transcription_names_the_file_it_got(standin):
    serve, _root = standin
    boundary = "standin-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"jfk.wav\"\r\nContent-Type: audio/wav\r\n\r\nRIFFdata\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nqwen3\r\n"
            f"--{boundary}--\r\n").encode()
    status, answer = post(f"{serve()}/v1/audio/transcriptions", body,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and "jfk.wav (8 bytes)" in answer["text"]


def test_a_streamed_chat_sends_each_token_then_usage_then_done(standin, monkeypatch):
    monkeypatch.setenv(engine_standin.PACE, "1000")
    serve, _ = standin
    body = {"model": "qwen3", "stream": True, "max_tokens": 7, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "two words"}]}
    request = urllib.request.Request(f"{serve()}/v1/chat/completions",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        events = [line.decode().strip() for line in response if line.strip()]
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-1]]
    tokens = [c["choices"][0]["delta"]["content"] for c in chunks
              if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(tokens) == 7 and chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 7,
                                   "total_tokens": 9}
    without = {**body, "ignore_eos": False, "max_tokens": 1000, "stream_options": None}
    request = urllib.request.Request(f"{serve()}/v1/chat/completions",
                                     data=json.dumps(without).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    assert '"finish_reason": "stop"' in text and '"usage"' not in text


def test_an_image_built_to_fail_answers_health_but_no_request(standin, monkeypatch):
    # For tests of a health gate: the service starts and is healthy, verify fails.
    serve, _root = standin
    base = serve()
    monkeypatch.setenv(engine_standin.BROKEN, engine_standin.ANSWERS)
    with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
        assert response.status == 200
    status, body = chat(base, "hello")
    assert status == 500 and "built to fail" in body["error"]["message"]


def test_a_command_that_is_not_the_engines_stops_it(models):
    # `vllm <model>` without `serve`: the words before the flags are the engine's (ENGINES).
    with pytest.raises(SystemExit) as refused:
        engine_standin.main("vllm", ["vllm", "/m", "--port", "0"])
    assert refused.value.code == "usage: vllm serve [options]"


def scrape(base):
    """{sample name: {labels as a sorted tuple: value}} and {family: type} of /metrics."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            types[name] = kind
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            pairs = tuple(sorted(tuple(p.split("=", 1)) for p in labels.rstrip("}").split(",")
                                 if p))
            samples.setdefault(name, {})[pairs] = float(value)
    return samples, types


# The names and types, written here by hand from the engines' own source at the pinned
# images' versions (vLLM 0.10.2's vllm/v1/metrics/loggers.py, SGLang 0.5's
# python/sglang/srt/metrics/collector.py), so the stand-in cannot agree with itself.
VLLM_FAMILIES = {"vllm:num_requests_running": "gauge", "vllm:num_requests_waiting": "gauge",
                 "vllm:kv_cache_usage_perc": "gauge", "vllm:prompt_tokens": "counter",
                 "vllm:generation_tokens": "counter", "vllm:request_success": "counter",
                 "vllm:time_to_first_token_seconds": "histogram",
                 "vllm:e2e_request_latency_seconds": "histogram"}
SGLANG_FAMILIES = {"sglang:num_running_reqs": "gauge", "sglang:num_queue_reqs": "gauge",
                   "sglang:token_usage": "gauge", "sglang:prompt_tokens": "counter",
                   "sglang:generation_tokens": "counter", "sglang:num_requests": "counter",
                   "sglang:time_to_first_token_seconds": "histogram",
                   "sglang:e2e_request_latency_seconds": "histogram"}


def stream(base, max_tokens):
    body = {"model": "qwen3", "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "three more words"}]}
    request = urllib.request.Request(f"{base}/v1/chat/completions",
                                     data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def test_vllm_metrics_count_what_it_served_by_the_engines_names(standin, monkeypatch):
    monkeypatch.setenv(engine_standin.PACE, "1000")
    serve, _root = standin
    base = serve()
    samples, types = scrape(base)
    assert types == VLLM_FAMILIES
    served = (("engine", '"0"'), ("model_name", '"qwen3"'))
    assert samples["vllm:prompt_tokens_total"] == {served: 0.0}
    answers = [chat(base, "two words")[1], chat(base, "and three words")[1]]
    stream(base, 5)
    chat(base, "hello", model="other")  # refused: not counted
    samples, _ = scrape(base)
    prompt = sum(a["usage"]["prompt_tokens"] for a in answers) + 3
    generated = sum(a["usage"]["completion_tokens"] for a in answers) + 5
    assert samples["vllm:prompt_tokens_total"] == {served: prompt}
    assert samples["vllm:generation_tokens_total"] == {served: generated}
    success = samples["vllm:request_success_total"]
    assert success[(*served[:1], ("finished_reason", '"length"'), *served[1:])] == 1
    assert success[(*served[:1], ("finished_reason", '"stop"'), *served[1:])] == 2
    assert samples["vllm:time_to_first_token_seconds_count"] == {served: 3}
    assert samples["vllm:num_requests_running"] == {served: 0}


def test_sglang_serves_metrics_only_with_enable_metrics(standin, models):
    serve, root = standin
    argv = ["python", "-m", "sglang.launch_server", "--model-path", str(root),
            "--served-model-name", "qwen3", "--port", "0"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        scrape(serve(argv))
    assert refused.value.code == 404
    base = serve([*argv, "--enable-metrics"])
    samples, types = scrape(base)
    assert types == SGLANG_FAMILIES
    answer = chat(base, "two words")[1]
    samples, _ = scrape(base)
    served = (("model_name", '"qwen3"'),)
    assert samples["sglang:num_requests_total"] == {served: 1}
    assert samples["sglang:generation_tokens_total"] == {
        served: answer["usage"]["completion_tokens"]}


def test_an_engine_without_metric_names_answers_and_serves_no_metrics(tmp_path):
    # An engine added as the README's "Adding an engine" says, with no METRICS entry:
    # the stand-in still answers (thorfleet-toy once failed to start on a KeyError).
    settings = {**engine_standin.configure("vllm", ["serve", str(tmp_path),
                                                    "--served-model-name", "qwen3"][1:]),
                "engine": "toy", "metrics": False}
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 engine_standin.make_handler(settings, ["toy-serve"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert chat(base, "hello")[0] == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(base)
        assert refused.value.code == 404
    finally:
        server.shutdown()

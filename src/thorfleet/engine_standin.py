"""Lab stand-in for the vLLM and SGLang engines (GPU-only, so they cannot run in the lab).

A test stand-in, nothing more: the lab pushes it to its registry under the NGC image
names (``nvidia/vllm:25.10-py3``, ``nvidia/sglang:25.10-py3``), so that pulling, digest
pinning, units, argv and restarts run for real. It is started with the engine's own
command (``vllm serve <model> ...`` or ``python -m sglang.launch_server ...``), parses
the flags the catalogue's recipes use with the engine's meaning (an unknown flag, a flag
without its value or JSON that does not parse stops it, as the engine would stop), checks
that the model and chat template exist, and then answers ``/health``, ``/v1/models`` and
``/thorfleet-standin/argv`` (the command it was started with, for tests to compare with
the guide's, and whether it found the marker a start before left in its compile cache),
``POST /v1/chat/completions`` (also streamed, as server-sent events with a
final ``usage`` chunk, for the bench), ``POST /v1/audio/transcriptions`` and ``GET
/metrics`` (Prometheus' text format, with the metric names and types of the engine at
the pinned image's version, counting what the stand-in really served: vLLM serves it
always, SGLang only with ``--enable-metrics``, as the engines do). With an
API key (``VLLM_API_KEY``, or ``--api-key``) the ``/v1`` routes want ``Authorization:
Bearer <key>``, as the engines do.

Its chat answers are canned, but they think as a Qwen3 does: a ``<think>`` block first,
unless the chat template pre-fills an empty one (what the nonthinking template does), so
a wrong template on a host shows in verification. Images in a chat are checked as vLLM
checks them (``file://`` only under ``--allowed-local-media-path``). A transcription
answers with text naming the file it got; a real model is not there to listen. A
streamed answer comes at a fixed pace (``THORFLEET_STANDIN_TOKENS_PER_SECOND``, default
200, one word a token), so a bench of a stand-in measures the stand-in, not an engine.

Standard library only: the image carries a bare Python and this file.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STANDIN = "thorfleet lab stand-in"
# The nonthinking template ends its generation prompt with an empty think block.
EMPTY_THINK = "<think>\n\n</think>"
# An image built broken: set to "1" it exits at start; set to "answers" it starts and
# answers /health, but every /v1 request with a server error (it fails verify only).
BROKEN = "THORFLEET_STANDIN_BROKEN"
ANSWERS = "answers"
PACE = "THORFLEET_STANDIN_TOKENS_PER_SECOND"


def _json(value: str):
    try:
        return json.loads(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None


def vllm_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm serve", description=STANDIN)
    parser.add_argument("model")
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key")
    parser.add_argument("--chat-template")
    parser.add_argument("--override-generation-config", type=_json)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--allowed-local-media-path")
    return parser


# The --quantization values SGLang 0.5 (NGC's 25.10 image) takes; it refuses any other.
SGLANG_QUANTIZATIONS = ("awq", "fp8", "gptq", "marlin", "gptq_marlin", "awq_marlin",
                        "bitsandbytes", "gguf", "modelopt", "modelopt_fp4", "petit_nvfp4",
                        "w8a8_int8", "w8a8_fp8", "moe_wna16", "qoq", "w4afp8", "mxfp4")


def sglang_parser() -> argparse.ArgumentParser:
    # SGLang takes no abbreviated flags (--model for --model-path is an alias of its own).
    parser = argparse.ArgumentParser(prog="python -m sglang.launch_server", description=STANDIN,
                                     allow_abbrev=False)
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--served-model-name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--api-key")
    parser.add_argument("--chat-template")
    parser.add_argument("--preferred-sampling-params", type=_json)
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--cuda-graph-bs", type=int, nargs="+")
    parser.add_argument("--max-running-requests", type=int)
    parser.add_argument("--max-total-tokens", type=int)
    parser.add_argument("--disable-cuda-graph", action="store_true")
    parser.add_argument("--quantization", choices=SGLANG_QUANTIZATIONS)
    parser.add_argument("--enable-metrics", action="store_true")
    return parser


# The engines' Prometheus metrics the stand-in serves, by the names and types of the
# pinned images' versions, read in the engines' own source:
# - vLLM 0.10.2 (NGC 25.10): vllm/v1/metrics/loggers.py, PrometheusStatLogger; labels
#   model_name (the served name) and engine (the engine core's index, "0");
#   request_success also finished_reason. vllm:gpu_cache_usage_perc, deprecated since
#   0.9 in favour of vllm:kv_cache_usage_perc, is left out.
# - SGLang 0.5 (NGC 25.10): python/sglang/srt/metrics/collector.py,
#   SchedulerMetricsCollector (the gauges) and TokenizerMetricsCollector (the counters
#   and histograms); label model_name.
# prometheus_client, which both use, writes a counter `x` as the sample `x_total` under
# `# TYPE x counter`, and a histogram as its _bucket, _sum and _count samples.
@dataclass(frozen=True)
class MetricNames:
    running: str  # gauge: requests being served
    waiting: str  # gauge: requests queued
    cache_usage: str  # gauge: the KV cache's share in use, 0 to 1
    prompt_tokens: str  # counter
    generation_tokens: str  # counter
    requests: str  # counter: requests finished
    time_to_first_token: str  # histogram, seconds
    latency: str  # histogram, seconds, end to end
    labels: Callable[[str], dict] = lambda served: {"model_name": served}
    finished_reason: bool = False  # whether the request counter has that label


METRICS = {
    "vllm": MetricNames(
        "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens", "vllm:generation_tokens", "vllm:request_success",
        "vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
        labels=lambda served: {"model_name": served, "engine": "0"}, finished_reason=True),
    "sglang": MetricNames(
        "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
        "sglang:prompt_tokens", "sglang:generation_tokens", "sglang:num_requests",
        "sglang:time_to_first_token_seconds", "sglang:e2e_request_latency_seconds"),
}
class Uncounted:
    """What an engine without metrics counts: nothing."""

    def start(self) -> None:
        pass

    def finish(self, *_args) -> None:
        pass

    def abandon(self) -> None:
        pass


# A few of the engines' bucket bounds (vLLM's time-to-first-token ones, from 0.01 s).
BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class Metrics:
    """What one stand-in served, written as its engine writes /metrics."""

    def __init__(self, engine: str, served_name: str):
        self.names = METRICS[engine]
        self.labels = self.names.labels(served_name)
        self.started = time.time()
        self._lock = threading.Lock()
        self.running = 0
        self.prompt_tokens = self.generation_tokens = 0
        self.finished: dict[str, int] = {}  # finished_reason: requests
        self.times = {self.names.time_to_first_token: [], self.names.latency: []}

    def start(self) -> None:
        with self._lock:
            self.running += 1

    def finish(self, prompt: int, generated: int, first_token: float, latency: float,
               reason: str = "stop") -> None:
        with self._lock:
            self.running -= 1
            self.prompt_tokens += prompt
            self.generation_tokens += generated
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.times[self.names.time_to_first_token].append(first_token)
            self.times[self.names.latency].append(latency)

    def abandon(self) -> None:
        with self._lock:
            self.running -= 1

    def text(self) -> str:
        names, out = self.names, []

        def labels(**more) -> str:
            pairs = {**self.labels, **more}
            return "{" + ",".join(f'{k}="{v}"' for k, v in pairs.items()) + "}"

        def family(name: str, kind: str, samples: list[tuple[str, str, float]]) -> None:
            out.extend([f"# HELP {name} {STANDIN}: {name}", f"# TYPE {name} {kind}"])
            out.extend(f"{sample}{label} {float(value)}" for sample, label, value in samples)

        with self._lock:
            family(names.running, "gauge", [(names.running, labels(), self.running)])
            family(names.waiting, "gauge", [(names.waiting, labels(), 0)])
            family(names.cache_usage, "gauge",
                   [(names.cache_usage, labels(), 0.01 if self.running else 0)])
            for name, value in ((names.prompt_tokens, self.prompt_tokens),
                                (names.generation_tokens, self.generation_tokens)):
                family(name, "counter", [(f"{name}_total", labels(), value),
                                         (f"{name}_created", labels(), self.started)])
            if names.finished_reason:
                family(names.requests, "counter", [
                    (f"{names.requests}_total", labels(finished_reason=reason),
                     self.finished.get(reason, 0)) for reason in ("stop", "length", "abort")])
            else:
                family(names.requests, "counter",
                       [(f"{names.requests}_total", labels(), sum(self.finished.values()))])
            for name, seen in self.times.items():
                samples = [(f"{name}_bucket", labels(le=str(bound)),
                            sum(1 for t in seen if t <= bound)) for bound in BUCKETS]
                samples += [(f"{name}_bucket", labels(le="+Inf"), len(seen)),
                            (f"{name}_count", labels(), len(seen)),
                            (f"{name}_sum", labels(), sum(seen))]
                family(name, "histogram", samples)
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Engine:
    """What the stand-in needs to know of an engine: one entry of ENGINES per engine."""

    parser: Callable[[], argparse.ArgumentParser]  # its flags, with the engine's meaning
    command: tuple[str, ...]  # the words its command starts with, before the flags
    model: str  # the parser's field that holds the model's path
    # Where it compiles kernels on a first start (one of its caches in the catalogue): the
    # stand-in leaves a marker there, and says whether it found one from a start before.
    jit_cache: str
    # Files of the stand-in image that start this module as the engine, by the command
    # its image has (the image holds this file as thorfleet_engine_standin.py).
    entry_points: dict[str, str] = field(default_factory=dict)
    api_key_env: str = ""  # where it reads its API key besides --api-key


ENGINES = {
    "vllm": Engine(
        vllm_parser, ("vllm", "serve"), "model", "~/.cache/vllm",
        {"usr/local/bin/vllm": "#!/usr/bin/python3\nimport sys\n"
                               "from thorfleet_engine_standin import main\n"
                               'main("vllm", ["vllm", *sys.argv[1:]])\n'},
        api_key_env="VLLM_API_KEY"),
    "sglang": Engine(
        sglang_parser, ("python", "-m", "sglang.launch_server"), "model_path",
        "~/.cache/flashinfer",
        {"usr/local/lib/python3.11/dist-packages/sglang/__init__.py": "",
         "usr/local/lib/python3.11/dist-packages/sglang/launch_server.py":
             "import sys\nfrom thorfleet_engine_standin import main\n"
             'main("sglang", sys.orig_argv)\n'}),
}
# Every file the stand-in image carries to start it as one of the engines.
ENTRY_POINTS = {path: text for engine in ENGINES.values()
                for path, text in engine.entry_points.items()}


def configure(engine: str, argv: list[str]) -> dict:
    """The engine's settings from the flags of its command line (the words after its
    command's own, ENGINES), or exit 2 as the engine would."""
    spec = ENGINES[engine]
    args = spec.parser().parse_args(argv)
    model = getattr(args, spec.model)
    served = args.served_model_name or model
    served = served[0] if isinstance(served, list) else served  # vLLM takes several
    api_key = args.api_key or (os.environ.get(spec.api_key_env) if spec.api_key_env
                               else None)
    for what, path in (("model", model), ("chat template", args.chat_template)):
        if path and not os.path.exists(path):
            sys.exit(f"{engine}: {what} {path} does not exist")
    template = ""
    if args.chat_template:
        with open(args.chat_template) as source:
            template = source.read()
    return {"engine": engine, "model": model, "served_name": served, "host": args.host,
            "port": args.port, "api_key": api_key,
            # vLLM serves /metrics always; SGLang with --enable-metrics only; an engine
            # added without its names in METRICS serves none.
            "metrics": engine in METRICS and getattr(args, "enable_metrics", True),
            "thinks": EMPTY_THINK not in template,
            "media_path": getattr(args, "allowed_local_media_path", None)}


def chat_answer(settings: dict, request: dict) -> tuple[HTTPStatus, dict]:
    """A chat completion as the engine would shape it, or the engine's error."""
    if request.get("model") != settings["served_name"]:
        return HTTPStatus.NOT_FOUND, {"error": {"message": f"The model `{request.get('model')}`"
                                                           " does not exist."}}
    messages = request.get("messages") or []
    if not messages:
        return HTTPStatus.BAD_REQUEST, {"error": {"message": "messages is required"}}
    for part in _content_parts(messages):
        if part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            problem = _image_problem(url, settings["media_path"])
            if problem:
                return HTTPStatus.BAD_REQUEST, {"error": {"message": problem}}
    answer = _answer(settings, messages)
    used = prompt_tokens(request)
    generated = len(answer.split(" "))  # one word a token, as a stream sends them
    return HTTPStatus.OK, {
        "id": "chatcmpl-standin", "object": "chat.completion", "model": settings["served_name"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": used, "completion_tokens": generated,
                  "total_tokens": used + generated}}


def _answer(settings: dict, messages: list) -> str:
    answer = f"{STANDIN} ({settings['engine']}) answers {len(messages)} message(s)."
    if settings["thinks"]:
        answer = f"<think>\nThe user wrote something; I should answer.\n</think>\n\n{answer}"
    return answer


def stream_tokens(settings: dict, request: dict) -> list[str]:
    """The tokens of a streamed answer: the canned answer's words, up to max_tokens; with
    ignore_eos (as the engines take it), exactly max_tokens, the answer over and over."""
    words = [word + " " for word in _answer(settings, request["messages"]).split(" ")]
    limit = request.get("max_tokens") or request.get("max_completion_tokens") or len(words)
    if request.get("ignore_eos"):
        return [words[i % len(words)] for i in range(limit)]
    return words[:limit]


def prompt_tokens(request: dict) -> int:
    """A rough count of the prompt's tokens: its words."""
    words = 0
    for message in request.get("messages") or []:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content or ""}]
        words += sum(len(str(part.get("text", "")).split()) for part in parts)
    return max(words, 1)


def _content_parts(messages):
    for message in messages:
        if isinstance(message.get("content"), list):
            yield from message["content"]


def _image_problem(url: str, media_path: str | None) -> str:
    if url.startswith("file://"):
        path = os.path.realpath(url.removeprefix("file://"))
        if not media_path or not path.startswith(os.path.realpath(media_path) + "/"):
            return f"Cannot load local files without `--allowed-local-media-path`: {url}"
        return "" if os.path.isfile(path) else f"No such file: {path}"
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                response.read(1)
        except OSError as error:
            return f"Failed to fetch image {url}: {error}"
        return ""
    return f"Unsupported image URL: {url[:40]}"


def make_handler(settings: dict, command: list[str], metrics: Metrics | None = None):
    if metrics is None and settings["engine"] in METRICS:
        metrics = Metrics(settings["engine"], settings["served_name"])
    metrics = metrics or Uncounted()

    class Handler(BaseHTTPRequestHandler):
        server_version = f"{settings['engine']}-standin"

        def do_GET(self):  # noqa: N802 (the standard library's name)
            if self.path == "/health":
                return self._send(HTTPStatus.OK, {})
            if self.path == "/metrics" and settings["metrics"]:
                # Unauthenticated, as the engines' own (an API key covers /v1 only).
                data = metrics.text().encode()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None
            if self.path == "/thorfleet-standin/argv":
                return self._send(HTTPStatus.OK, {"engine": settings["engine"],
                                                  "argv": command,
                                                  "jit_cache": settings.get("jit_cache")})
            if self.path == "/v1/models":
                if not self._authorised():
                    return None
                return self._send(HTTPStatus.OK, {"object": "list", "data": [{
                    "id": settings["served_name"], "object": "model",
                    "owned_by": settings["engine"], "root": settings["model"]}]})
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def do_POST(self):  # noqa: N802
            if not self.path.startswith("/v1/"):
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            if not self._authorised():
                return None
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if os.environ.get(BROKEN) == ANSWERS:
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": {
                    "message": f"{STANDIN}: this image is built to fail ({BROKEN}={ANSWERS})"}})
            if self.path == "/v1/chat/completions":
                try:
                    request = json.loads(body)
                except ValueError:
                    return self._send(HTTPStatus.BAD_REQUEST, {"error": "body is not JSON"})
                status, answer = chat_answer(settings, request)
                if request.get("stream") and status == HTTPStatus.OK:
                    return self._stream(request)
                if status == HTTPStatus.OK:
                    metrics.start()
                    usage = answer["usage"]
                    metrics.finish(usage["prompt_tokens"], usage["completion_tokens"],
                                   0.0, 0.0)
                return self._send(status, answer)
            if self.path == "/v1/audio/transcriptions":
                form = email.message_from_bytes(
                    b"Content-Type: " + self.headers.get("Content-Type", "").encode()
                    + b"\r\n\r\n" + body, policy=email.policy.HTTP)
                fields = {part.get_param("name", header="content-disposition"): part
                          for part in form.iter_parts()} if form.is_multipart() else {}
                audio = fields.get("file")
                if audio is None or not audio.get_payload(decode=True):
                    return self._send(HTTPStatus.BAD_REQUEST, {"error": "file is required"})
                model = fields.get("model")
                if model is None or model.get_content().strip() != settings["served_name"]:
                    return self._send(HTTPStatus.NOT_FOUND, {"error": "no such model"})
                size = len(audio.get_payload(decode=True))
                text = f"{STANDIN} heard {audio.get_filename()} ({size} bytes)"
                metrics.start()
                metrics.finish(1, len(text.split(" ")), 0.0, 0.0)
                return self._send(HTTPStatus.OK, {"text": text})
            return self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

        def _authorised(self) -> bool:
            key = settings["api_key"]
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self._send(HTTPStatus.UNAUTHORIZED, {"error": "Unauthorized"})
                return False
            return True

        def _stream(self, request: dict) -> None:
            """Server-sent events as the engines send them: a role chunk, a chunk per
            token at the stand-in's pace, a finish chunk, usage if asked for, [DONE]."""
            pace = 1 / float(os.environ.get(PACE) or 200)
            tokens = stream_tokens(settings, request)
            began = time.monotonic()
            metrics.start()
            try:
                first = self._events(request, tokens, pace) - began
            except OSError:  # the client went away: the engines count it as aborted
                metrics.abandon()
                raise
            limit = request.get("max_tokens") or request.get("max_completion_tokens")
            metrics.finish(prompt_tokens(request), len(tokens), first,
                           time.monotonic() - began,
                           "length" if len(tokens) == limit else "stop")

        def _events(self, request: dict, tokens: list[str], pace: float) -> float:
            """Sends the events; returns when the first token went (time.monotonic)."""
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()

            def event(choices, **more):
                chunk = {"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                         "model": settings["served_name"], "choices": choices, **more}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            event([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
            first = time.monotonic()
            for index, token in enumerate(tokens):
                time.sleep(pace)
                event([{"index": 0, "delta": {"content": token}, "finish_reason": None}])
                if index == 0:
                    first = time.monotonic()
            limit = request.get("max_tokens") or request.get("max_completion_tokens")
            event([{"index": 0, "delta": {},
                    "finish_reason": "length" if len(tokens) == limit else "stop"}])
            if (request.get("stream_options") or {}).get("include_usage"):
                used = prompt_tokens(request)
                event([], usage={"prompt_tokens": used, "completion_tokens": len(tokens),
                                 "total_tokens": used + len(tokens)})
            self.wfile.write(b"data: [DONE]\n\n")
            return first

        def _send(self, status: HTTPStatus, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            print(f"{self.address_string()} {fmt % args}", flush=True)

    return Handler


def jit_cache(engine: str, served_name: str) -> str:
    """"found" when a start before this one left its marker in the engine's compile cache
    (the cache survived), else "new" (and the marker is left for the next start)."""
    marker = os.path.join(os.path.expanduser(ENGINES[engine].jit_cache),
                          "thorfleet-standin-" + served_name.replace("/", "_"))
    if os.path.exists(marker):
        return "found"
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    with open(marker, "w") as out:
        out.write(f"{STANDIN}: kernels compiled here on a first start\n")
    return "new"


def main(engine: str, command: list[str]) -> None:
    """Serve as `engine` (a key of ENGINES), started with `command` (the full argv, whose
    first words are the engine's command: `vllm serve`, `python3 -m sglang.launch_server`)."""
    words = ENGINES[engine].command
    if [os.path.basename(word) for word in command[1:len(words)]] != list(words[1:]):
        sys.exit(f"usage: {' '.join(words)} [options]")
    settings = configure(engine, command[len(words):])
    if os.environ.get(BROKEN) and os.environ.get(BROKEN) != ANSWERS:
        # An image that cannot serve, as one whose engine cannot load its model: for tests
        # of a rollout that fails.
        sys.exit(f"{STANDIN}: this image is built broken ({BROKEN})")
    settings["jit_cache"] = jit_cache(engine, settings["served_name"])
    # PID 1 of a container gets no default signal handlers: `docker stop` must still stop it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = ThreadingHTTPServer((settings["host"], settings["port"]),
                                 make_handler(settings, command))
    print(f"{STANDIN} for {engine}: serving {settings['served_name']} "
          f"on {settings['host']}:{settings['port']}; started as {command}", flush=True)
    server.serve_forever()

#!/usr/bin/python
"""Ansible module: time streamed chat completions of a host's LLM services, on the host."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: thorfleet_bench
short_description: Decode speed, time to first token and prompt throughput of chat services
description:
  - Sends each service the same streamed chat completion (OpenAI route
    C(/v1/chat/completions), C(stream) with C(include_usage)), first O(warmup) times
    unmeasured, then O(runs) times, and reports per run and as medians the time to first
    token, prompt throughput (prompt tokens over time to first token) and decode speed
    (tokens after the first over the time from the first to the last).
  - Each request's prompt starts with a tag of its own, so no engine's prefix cache
    (vLLM's, SGLang's radix cache, llama-server's prompt cache) answers it from an earlier
    one: prompt throughput is measured on a prompt really processed.
  - Asks for exactly O(max_tokens) tokens (C(ignore_eos), which vLLM, SGLang and
    llama-server take), so every run decodes the same length.
  - Where the server reports its own timings (llama-server's C(timings)), reports its
    decode and prompt speeds too, and how far the client's decode speed is from the
    server's, in percent.
  - Runs on the host, next to the services, so the network between controller and host
    is not measured. Reads only; never changes anything.
options:
  services:
    description: Services to time, each with C(name), C(url) (the server's base URL) and
      C(served_name); other keys are passed through to the result.
    type: list
    elements: dict
    required: true
  api_keys:
    description: API key per service name, sent as C(Authorization: Bearer).
    type: dict
    default: {}
  prompt:
    description: The user message of every request.
    type: str
    required: true
  max_tokens:
    description: Tokens to generate per request.
    type: int
    default: 256
  runs:
    description: Measured requests per service; results are their medians.
    type: int
    default: 3
  warmup:
    description: Unmeasured requests per service first.
    type: int
    default: 1
  timeout:
    description: Seconds one request may take.
    type: int
    default: 600
"""

RETURN = r"""
results:
  description: Per service, the options' keys of it plus C(runs) (each run's numbers),
    C(median) (ttft_s, prompt_tps, decode_tps, server_prompt_tps, server_decode_tps,
    server_difference_pct, prompt_tokens, completion_tokens) or C(error).
  type: list
  returned: always
"""

import http.client  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import urllib.parse  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

METRICS = ("ttft_s", "prompt_tps", "decode_tps", "server_prompt_tps", "server_decode_tps",
           "server_difference_pct", "prompt_tokens", "completion_tokens")


class BenchError(Exception):
    pass


def request_body(served_name, prompt, max_tokens, sampling=None):
    """A streamed chat completion of exactly max_tokens tokens; the prompt is tagged with
    a random number of its own first, so that no prefix cache holds it. The recipe's
    sampling fields as its clients send them (greedy where it has none)."""
    prompt = f"[{secrets.token_hex(4)}] {prompt}"
    return {"temperature": 0, **(sampling or {}), "model": served_name, "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": max_tokens,
            "ignore_eos": True, "messages": [{"role": "user", "content": prompt}]}


def stream(url, body, api_key, timeout, clock=time.perf_counter):
    """POST a streamed chat completion; returns (sent_at, [(arrived_at, chunk)])."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        sent_at = clock()
        connection.request("POST", parts.path or "/", json.dumps(body).encode(), headers)
        response = connection.getresponse()
        if response.status != 200:
            said = response.read(300).decode(errors="replace")
            raise BenchError(f"POST {url} answered {response.status}: {said}")
        chunks = []
        for line in response:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunks.append((clock(), json.loads(data)))
        return sent_at, chunks
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise BenchError(f"POST {url}: {error}") from None
    finally:
        connection.close()


def measure(sent_at, chunks):
    """One run's numbers from the arrival times of its chunks.

    Tokens are counted from the usage chunk when the server sends one, else as chunks that
    carry text (content or reasoning_content).
    """
    arrivals, usage, timings = [], None, None
    for arrived_at, chunk in chunks:
        usage = chunk.get("usage") or usage
        timings = chunk.get("timings") or timings
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if delta.get("content") or delta.get("reasoning_content"):
                arrivals.append(arrived_at)
    if len(arrivals) < 2:
        raise BenchError(f"the stream held {len(arrivals)} token(s); at least 2 are needed")
    if arrivals[-1] == arrivals[0]:
        raise BenchError("every token arrived at once: the answer was not streamed")
    completion = (usage or {}).get("completion_tokens") or len(arrivals)
    prompt = (usage or {}).get("prompt_tokens")
    ttft = arrivals[0] - sent_at
    result = {"ttft_s": ttft, "decode_tps": (completion - 1) / (arrivals[-1] - arrivals[0]),
              "prompt_tps": prompt / ttft if prompt else None,
              "prompt_tokens": prompt, "completion_tokens": completion,
              "server_prompt_tps": None, "server_decode_tps": None,
              "server_difference_pct": None}
    if timings and timings.get("predicted_per_second"):
        result["server_decode_tps"] = timings["predicted_per_second"]
        result["server_prompt_tps"] = timings.get("prompt_per_second")
        result["server_difference_pct"] = (100 * (result["decode_tps"] - timings[
            "predicted_per_second"]) / timings["predicted_per_second"])
    return result


def median(runs):
    """Each metric's median over the runs that have it (None where none has)."""
    values = {}
    for metric in METRICS:
        have = [run[metric] for run in runs if run.get(metric) is not None]
        values[metric] = statistics.median(have) if have else None
    return values


def bench(service, api_key, prompt, max_tokens, runs, warmup, timeout):
    url = service["url"].rstrip("/") + "/v1/chat/completions"
    result = dict(service)

    def run():
        body = request_body(service["served_name"], prompt, max_tokens,
                            service.get("sampling"))
        return stream(url, body, api_key, timeout)
    try:
        for _ in range(warmup):
            run()
        measured = [measure(*run()) for _ in range(runs)]
    except BenchError as error:
        result["error"] = str(error)
        return result
    result["runs"] = measured
    result["median"] = median(measured)
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "services": {"type": "list", "elements": "dict", "required": True},
            "api_keys": {"type": "dict", "default": {}, "no_log": True},
            "prompt": {"type": "str", "required": True},
            "max_tokens": {"type": "int", "default": 256},
            "runs": {"type": "int", "default": 3},
            "warmup": {"type": "int", "default": 1},
            "timeout": {"type": "int", "default": 600},
        },
        supports_check_mode=True,
    )
    params = module.params
    for field, least in (("max_tokens", 2), ("runs", 1), ("warmup", 0)):
        if params[field] < least:
            module.fail_json(msg=f"field {field}: {params[field]} is too small (at least "
                                 f"{least})")
    results = [bench(service, params["api_keys"].get(service["name"]), params["prompt"],
                     params["max_tokens"], params["runs"], params["warmup"], params["timeout"])
               for service in params["services"]]
    failed = [f"{r['name']}: {r['error']}" for r in results if "error" in r]
    if failed:
        module.fail_json(msg="benchmark failed for " + "; ".join(failed), results=results)
    module.exit_json(changed=False, results=results)


if __name__ == "__main__":
    main()

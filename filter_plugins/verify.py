"""Filters of the verify phase: the request a person would send to each service, and the
judgement of what came back.

Requests are the guide's curl examples, sent with curl on the host: a chat completion
for LLMs, the image chat of the vision model (an http URL and a file:// under the model
root), OpenAI's /v1/audio/transcriptions (vLLM) or whisper.cpp's /inference for speech,
as the engine's transcription_api says (curl's multipart upload sends the file's bytes
as they are, which whisper-server needs).
"""

from __future__ import annotations

import json

THINK = "<think>"
# The status code follows the body on a line of its own; headers (the API key) come on
# standard input as curl configuration, so the key is in no argv.
CURL = ["curl", "--silent", "--show-error", "--max-time", "300", "--config", "-",
        "--write-out", "\n%{http_code}"]
SHOWN = 300  # characters of a response quoted in a failure
MASK = "********"  # in place of an API key a log or a response quotes


def verify_requests(specs, prompt, max_tokens, audio, language, image_url, image_file):
    """The checks of a host's services: [{service, check, url, body_format, body}]."""
    checks = []
    for spec in specs or []:
        base = f"http://{spec['probe_address']}:{spec['port']}"

        def add(check, path, data, spec=spec, base=base):
            url = base + path
            checks.append({"service": spec["name"], "unit": spec["unit"], "check": check,
                           "url": url, "argv": [*CURL, url, *data],
                           "modality": spec["modality"], "nonthinking": spec["nonthinking"]})

        def chat(content, spec=spec):
            # The recipe's sampling fields, as its clients should send them (SGLang applies
            # its own flag for them to /generate only).
            return ["-H", "Content-Type: application/json", "--data-binary", json.dumps({
                **spec.get("sampling", {}), "model": spec["served_name"],
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": content}]}, ensure_ascii=False)]

        if spec["modality"] == "chat":
            add("chat", "/v1/chat/completions", chat(prompt))
        elif spec["modality"] == "vision":
            for check, url in (("image by URL", image_url),
                               ("image by file", f"file://{image_file}")):
                add(check, "/v1/chat/completions", chat([
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": prompt}]))
        elif spec.get("transcription_api") == "whisper.cpp":
            # The sample's language, as to vLLM: without it a server started with
            # `--language auto` first runs a detection pass on the sample.
            add("transcription", "/inference",
                ["-F", f"file=@{audio}", "-F", "response_format=json",
                 "-F", f"language={language}"])
        else:  # OpenAI's route
            add("transcription", "/v1/audio/transcriptions",
                ["-F", f"file=@{audio}", "-F", f"model={spec['served_name']}",
                 "-F", "response_format=json", "-F", f"language={language}"])
    return checks


def curl_config(api_key):
    """What curl reads on standard input (`--config -`): the API key's header, else a
    comment. Never empty: without anything to send, Ansible leaves the command the
    connection's standard input, which without pipelining is the SSH session's terminal,
    and curl would wait on it for ever."""
    if not api_key:
        return "# no API key"
    quoted = str(api_key).replace("\\", "\\\\").replace('"', '\\"')
    return f'header = "Authorization: Bearer {quoted}"'


def verify_summary(answers):
    """One line per check, what the (no_log) request task cannot show: the service, the
    check and the HTTP status it got; never a body or a header."""
    lines = []
    for result in answers or []:
        check = result.get("check") or {}
        if result.get("skipped"):
            said = "not sent: the service did not answer /health"
        elif result.get("rc") != 0:
            said = "no answer (curl failed)"
        else:
            said = "answered " + (result.get("stdout") or "").rpartition("\n")[2]
        lines.append(f"{check.get('service')}: {check.get('check')}: {said}")
    return lines


def verify_failures(health, answers, timeout, transcript_text=True, logs=None, secrets=()):
    """What failed, one line per service and check, naming the request and the response.

    health, logs, answers: as the thorfleet_verify module returns them (each service's
    answer to GET /health; the end of the journal of each that did not answer, shown
    after it; each check's curl: rc, stdout ending in the HTTP status, stderr); secrets:
    the API keys, masked wherever a log or an answer quotes them.
    """
    return [_masked(line, secrets) for line in _failures(health, answers, timeout,
                                                         transcript_text, logs)]


def _masked(text, secrets):
    for secret in sorted({s for s in secrets or () if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def _failures(health, answers, timeout, transcript_text, logs):
    failures, unhealthy = [], set()
    log_ends = {result["spec"]["name"]: (result.get("stdout") or "").strip()
                for result in logs or [] if "spec" in result}
    for result in health or []:
        spec = result["spec"]
        if result.get("status") != 200:
            unhealthy.add(spec["name"])
            failure = (f"{spec['name']} ({spec['unit']}): GET {result.get('url')} did not "
                       f"answer 200 within {timeout or spec['start_timeout']} s: "
                       f"{_said(result)}")
            if log_ends.get(spec["name"]):
                failure += " -- its log ends: " + " | ".join(log_ends[spec["name"]].splitlines())
            failures.append(failure)
    for result in answers or []:
        check = result["check"]
        if check["service"] in unhealthy or result.get("skipped"):
            continue
        problem = _judge(check, result, transcript_text)
        if problem:
            failures.append(f"{check['service']} ({check['unit']}): {check['check']}, POST "
                            f"{check['url']}: {problem}")
    return failures


def _judge(check, result, transcript_text):
    if result.get("rc") != 0:
        return f"curl failed: {(result.get('stderr') or result.get('msg') or '').strip()}"
    text, _, status = (result.get("stdout") or "").rpartition("\n")
    result = {"content": text}
    try:
        result["json"] = json.loads(text)
    except ValueError:
        result["json"] = None
    if status != "200":
        return f"answered {status}: {_said(result)}"
    body = result["json"]
    if not isinstance(body, dict):
        return f"answered no JSON: {_said(result)}"
    if check["modality"] in ("chat", "vision"):
        try:
            message = body["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            return f"answered no message: {_said(result)}"
        content = message.get("content") or ""
        reasoning = message.get("reasoning_content") or ""
        if not (content.strip() or reasoning.strip()):
            return f"answered an empty message: {_said(result)}"
        if check["nonthinking"] and (THINK in content or reasoning.strip()):
            return f"a nonthinking recipe answered with a thinking block: {_said(result)}"
        return ""
    text = body.get("text")
    if not isinstance(text, str):
        return f"answered no transcription: {_said(result)}"
    if transcript_text and not text.strip():
        return f"the transcription holds no text: {_said(result)}"
    return ""


def _said(result):
    """The response, shortened, for a failure message."""
    said = result.get("content") or result.get("msg") or "no response"
    return said if len(said) <= SHOWN else said[:SHOWN] + "..."


class FilterModule:
    def filters(self):
        return {"thorfleet_verify_requests": verify_requests,
                "thorfleet_curl_config": curl_config,
                "thorfleet_verify_summary": verify_summary,
                "thorfleet_verify_failures": verify_failures}

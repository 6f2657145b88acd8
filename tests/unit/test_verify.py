"""The verify phase's requests (the guide's curl examples) and its judgement: every check
fails on the answer it exists to catch."""

from __future__ import annotations

import http.server
import json

import pytest

from tests.conftest import load, loopback_server, run_module
from tests.unit.test_service_specs import specs
from thorfleet import bounded

verify = load("filter_plugins/verify.py")

SERVICES = [{"name": "chat", "recipe": "llama-qwen3-8b-gguf-nothink"},
            {"name": "think", "recipe": "vllm-qwen3-8b", "port": 8001, "memory_share": 0.2},
            {"name": "asr", "recipe": "vllm-whisper-small", "port": 8002, "memory_share": 0.2},
            {"name": "vl", "recipe": "vllm-qwen2.5-vl-7b-awq", "port": 8003,
             "memory_share": 0.3},
            {"name": "whisper", "recipe": "whisper-large-v3-turbo",
             "bind_address": "10.0.0.5"}]
SPECS = specs(SERVICES)
CHECKS = verify.verify_requests(SPECS, "hi", 16, "/s/hello.wav", "en",
                                "http://img/cat.jpg", "/models/v/cat.png")


def by(service, check=None):
    return next(c for c in CHECKS if c["service"] == service and check in (None, c["check"]))


def test_each_service_gets_the_guides_request():
    assert [(c["service"], c["check"]) for c in CHECKS] == [
        ("chat", "chat"), ("think", "chat"), ("asr", "transcription"),
        ("vl", "image by URL"), ("vl", "image by file"), ("whisper", "transcription")]
    chat = by("chat")["argv"]
    assert chat[chat.index("--config") + 1] == "-"  # headers (the key) from stdin
    assert chat[-5:-3] == ["http://127.0.0.1:8000/v1/chat/completions", "-H"]
    assert json.loads(chat[-1]) == {"model": "qwen3", "max_tokens": 16,
                                    "messages": [{"role": "user", "content": "hi"}]}
    # The guide's curl --form fields, as it sends them.
    assert by("asr")["argv"][-9:] == [
        "http://127.0.0.1:8002/v1/audio/transcriptions", "-F", "file=@/s/hello.wav",
        "-F", "model=whisper", "-F", "response_format=json", "-F", "language=en"]
    # whisper.cpp's, with the sample's language: no detection pass before transcribing.
    assert by("whisper")["argv"][-7:] == ["http://10.0.0.5:8080/inference", "-F",
                                          "file=@/s/hello.wav", "-F", "response_format=json",
                                          "-F", "language=en"]
    image = json.loads(by("vl", "image by file")["argv"][-1])["messages"][0]["content"][0]
    assert image == {"type": "image_url", "image_url": {"url": "file:///models/v/cat.png"}}


def answer(check, status=200, body=None):
    """What the check's curl printed: the body, then the status on a line of its own."""
    return {"check": check, "rc": 0, "stdout": f"{json.dumps(body)}\n{status}"}


def message(content, reasoning=None):
    return {"choices": [{"message": {"content": content, "reasoning_content": reasoning}}]}


HEALTHY = [{"spec": s, "status": 200} for s in SPECS]


def failures(*answers, health=HEALTHY):
    return verify.verify_failures(health, list(answers), 600)


def test_good_answers_pass():
    assert failures(answer(by("chat"), body=message("Hello!")),
                    answer(by("think"), body=message("<think>hm</think>Hello!")),
                    answer(by("asr"), body={"text": "Hello from thorfleet."}),
                    answer(by("whisper"), body={"text": " Hello."})) == []


@pytest.mark.parametrize(("result", "expected"), [
    (answer(by("chat"), body=message("<think>\nhm\n</think>\n\nHello")),
     "chat (thorfleet-chat.service): chat, POST http://127.0.0.1:8000/v1/chat/completions: "
     "a nonthinking recipe answered with a thinking block"),
    (answer(by("chat"), body=message("Hello", reasoning="I think")),
     "a nonthinking recipe answered with a thinking block"),
    (answer(by("think"), body=message("")), "answered an empty message"),
    (answer(by("asr"), body={"text": ""}),
     "asr (thorfleet-asr.service): transcription, POST "
     "http://127.0.0.1:8002/v1/audio/transcriptions: the transcription holds no text"),
    (answer(by("whisper"), body={"error": "no"}), "answered no transcription"),
    (answer(by("vl", "image by file"), status=400, body={"error": "not allowed"}),
     'vl (thorfleet-vl.service): image by file, POST http://127.0.0.1:8003/v1/chat/completions: '
     'answered 400: {"error": "not allowed"}'),
])
def test_each_bad_answer_fails_naming_service_request_and_response(result, expected):
    found = failures(result)
    assert len(found) == 1 and expected in found[0], found


def test_an_empty_transcript_passes_only_where_text_is_not_required():
    empty = answer(by("whisper"), body={"text": ""})
    assert verify.verify_failures(HEALTHY, [empty], 600, False) == []
    assert "holds no text" in verify.verify_failures(HEALTHY, [empty], 600)[0]
    assert "answered no transcription" in verify.verify_failures(
        HEALTHY, [answer(by("whisper"), body={})], 600, False)[0]


def test_a_request_that_gets_no_answer_fails_with_what_curl_said():
    found = failures({"check": by("chat"), "rc": 7, "stdout": "",
                      "stderr": "curl: (7) Failed to connect"})
    assert found == ["chat (thorfleet-chat.service): chat, POST "
                     "http://127.0.0.1:8000/v1/chat/completions: curl failed: curl: (7) "
                     "Failed to connect"]


def test_a_service_that_never_answers_health_fails_once_naming_it():
    health = [{"spec": s, "status": 200 if s["name"] != "asr" else -1,
               "url": f"http://127.0.0.1:{s['port']}/health", "msg": "Connection refused"}
              for s in SPECS]
    found = failures(answer(by("asr"), status=-1), health=health)
    assert found == ["asr (thorfleet-asr.service): GET http://127.0.0.1:8002/health did not "
                     "answer 200 within 600 s: Connection refused"]


def test_the_summary_shows_each_check_and_its_status_but_no_body():
    lines = verify.verify_summary([
        answer(by("chat"), body={"secret-ish": "body"}),
        answer(by("asr"), status=401),
        {"check": by("whisper"), "rc": 7, "stdout": ""},
        {"check": by("vl", "image by URL"), "skipped": True}])
    assert lines == ["chat: chat: answered 200", "asr: transcription: answered 401",
                     "whisper: transcription: no answer (curl failed)",
                     "vl: image by URL: not sent: the service did not answer /health"]


def test_the_health_wait_is_the_units_start_timeout_unless_one_is_given():
    health = [{"spec": s, "status": 200 if s["name"] != "asr" else -1,
               "url": f"http://127.0.0.1:{s['port']}/health", "msg": "Connection refused"}
              for s in SPECS]
    (found,) = verify.verify_failures(health, [], 0)
    assert "did not answer 200 within 1200 s" in found


def test_a_service_that_never_answers_is_shown_with_the_end_of_its_log():
    health = [{"spec": s, "status": 200 if s["name"] != "asr" else -1,
               "url": f"http://127.0.0.1:{s['port']}/health", "msg": "Connection refused"}
              for s in SPECS]
    logs = [{"spec": by_name, "stdout": "loading\nNo such file: /models/x.gguf\n"}
            for by_name in SPECS if by_name["name"] == "asr"]
    (found,) = verify.verify_failures(health, [], 600, logs=logs)
    assert found.endswith("Connection refused -- its log ends: loading | "
                          "No such file: /models/x.gguf")


def test_a_key_a_log_or_an_answer_quotes_is_masked():
    health = [{"spec": s, "status": 200 if s["name"] != "asr" else -1,
               "url": f"http://127.0.0.1:{s['port']}/health", "msg": "Connection refused"}
              for s in SPECS]
    logs = [{"spec": next(s for s in SPECS if s["name"] == "asr"),
             "stdout": "server_args=ServerArgs(api_key='sk-asr-key-0001')"}]
    refused = answer(by("chat"), status=401, body={"error": "bad key sk-chat-key-0002"})
    found = verify.verify_failures(health, [refused], 600, logs=logs,
                                   secrets=["sk-asr-key-0001", "sk-chat-key-0002", ""])
    assert len(found) == 2 and all("********" in line for line in found), found
    assert not any("-key-000" in line for line in found), found


@pytest.fixture(scope="module")
def echo_server():
    """A loopback server that answers each request with the Authorization header it got."""

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's API)
            body = json.dumps({"authorization": self.headers.get("Authorization")}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    with loopback_server(Echo) as port:
        yield f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize("key", ["", "lab-key", 'a"quote', "back\\slash", "100%;$(id)"])
def test_curl_reads_the_key_from_its_config_and_always_has_one(echo_server, key):
    config = verify.curl_config(key)
    assert config  # an empty stdin leaves curl reading the connection's terminal
    proc = bounded.run(["curl", "--silent", "--config", "-", echo_server], 20, input=config)
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)["authorization"]
    assert sent == (f"Bearer {key}" if key else None)


def test_chat_checks_send_the_recipes_sampling_fields_as_its_clients_should():
    # SGLang applies --preferred-sampling-params to /generate only: on the OpenAI route
    # the request's fields (its defaults where none are sent) win, so the check sends them.
    fp8 = specs([{"name": "fp8", "recipe": "sglang-qwen3-8b-fp8-nothink"}])
    (check,) = verify.verify_requests(fp8, "hi", 16, "/a.wav", "en", "http://i", "/m/i.png")
    body = json.loads(check["argv"][-1])
    assert body == {"repetition_penalty": 1.2, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
                    "min_p": 0.0, "model": "qwen3", "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}]}
    # A recipe without sampling fields sends none (the first test's chat check).
    assert set(json.loads(by("chat")["argv"][-1])) == {"model", "max_tokens", "messages"}


# The thorfleet_verify module: the phase's waits and requests in one task, registered as
# the looped tasks were, so the filters above judge them.
verify_module = load("library/thorfleet_verify.py")


def test_one_task_waits_asks_and_skips_a_silent_service(standin, monkeypatch):
    serve, _root = standin
    port = int(serve().rsplit(":", 1)[1])
    answering = {"name": "think", "unit": "thorfleet-think.service",
                 "probe_address": "127.0.0.1", "port": port, "start_timeout": 1,
                 "modality": "chat", "nonthinking": True, "served_name": "qwen3",
                 "engine": "vllm", "sampling": {}}
    silent = {**answering, "name": "down", "unit": "thorfleet-down.service", "port": 9}
    checks = verify.verify_requests([answering, silent], "hi", 8, "/a.wav", "en", "http://i",
                                    "/m/i.png")
    done = run_module(verify_module, {
        "services": [answering, silent], "checks": checks, "health_timeout": 1, "delay": 1,
        "curl_configs": {"think": verify.curl_config(""), "down": verify.curl_config("")}},
        monkeypatch)
    assert not done.failed, done.result
    result = done.result
    assert [(r["spec"]["name"], r["status"]) for r in result["health"]] == [
        ("think", 200), ("down", -1)]
    assert [r["spec"]["name"] for r in result["logs"]] == ["down"]
    answered, skipped = result["answers"]
    assert answered["rc"] == 0 and answered["stdout"].endswith("\n200")
    assert skipped == {"check": checks[1], "skipped": True}
    # The filters judge what it returns.
    assert verify.verify_summary(result["answers"]) == [
        "think: chat: answered 200", "down: chat: not sent: the service did not answer /health"]
    failures = verify.verify_failures(result["health"], result["answers"], 1, True,
                                      result["logs"])
    assert len(failures) == 1 and failures[0].startswith(
        "down (thorfleet-down.service): GET http://127.0.0.1:9/health did not answer 200 "
        "within 1 s: Status code was -1")


# Each check waits (a bounded while) until every service's first check has started, then
# prints the names it saw: asked one after another, the first would see only itself.
RENDEZVOUS = ('touch "$1/$2"; for _ in $(seq 200); do [ "$(ls "$1" | wc -l)" -ge 3 ] && break; '
              'sleep 0.05; done; ls "$1" | tr "\\n" " "')


def test_the_services_are_asked_at_once_and_each_ones_checks_in_order(standin, monkeypatch,
                                                                       tmp_path):
    serve, _root = standin
    port = int(serve().rsplit(":", 1)[1])
    met = tmp_path / "met"
    met.mkdir()
    services = [{"name": name, "unit": f"thorfleet-{name}.service",
                 "probe_address": "127.0.0.1", "port": port, "start_timeout": 5}
                for name in ("a", "b", "c")]
    checks = [{"service": name, "check": "meet",
               "argv": ["sh", "-c", RENDEZVOUS, "sh", str(met), name]} for name in "abc"]
    # A second check of service a starts only once a's first has answered.
    checks.insert(1, {"service": "a", "check": "after",
                      "argv": ["sh", "-c", 'ls "$1" | tr "\\n" " "', "sh", str(met)]})
    done = run_module(verify_module, {
        "services": services, "checks": checks, "health_timeout": 5, "delay": 1,
        "curl_configs": {}}, monkeypatch)
    assert not done.failed, done.result
    answers = done.result["answers"]
    assert [a["check"]["check"] + ":" + a["check"]["service"] for a in answers] == [
        "meet:a", "after:a", "meet:b", "meet:c"]
    assert [a["stdout"].split() for a in answers] == [["a", "b", "c"]] * 4

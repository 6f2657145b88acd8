"""The verify phase on the lab fleet: thor01's services answer the guide's requests (real
llama-server and whisper-server, the vLLM and SGLang stand-ins), and each check fails on
what it exists to catch, naming the service, the request and the response."""

from __future__ import annotations

import json

import pytest

from tests.lab.conftest import Playbook
from thorfleet.lab import FILE_MIRROR, LAB_SERVICES

TEMPLATE = "/models/templates/qwen3_nonthinking.jinja"
STANDINS = "thorfleet-qwen3-vllm thorfleet-qwen3-sglang"
# Once more after a start systemd could not place in its control group (status 219, as
# roles/inference_services/tasks/restart.yml does).
RESTART = (f"systemctl reset-failed {STANDINS}; systemctl restart {STANDINS} || "
           f"{{ sleep 2; systemctl reset-failed {STANDINS}; systemctl restart {STANDINS}; }}")


def verify(*args: str) -> Playbook:
    return Playbook("site.yml", "-l", "thor01", "--tags", "verify", *args)


def test_every_service_answers_as_the_guide_shows(thor01):
    run = verify()
    assert run.rc == 0, run
    for check in ("qwen3: chat", "qwen3-vllm: chat", "qwen3-sglang: chat",
                  "whisper-vllm: transcription", "whisper: transcription"):
        assert f"{check}: answered 200" in run.output, check


@pytest.fixture
def thinking_template(thor01):
    """The nonthinking template on thor01 replaced by one that lets the model think."""
    saved = thor01.file(TEMPLATE).content_string
    thor01.check_output(f"echo '{{{{ messages }}}}' > {TEMPLATE} && {RESTART}")
    yield thor01
    thor01.check_output(f"cat > {TEMPLATE} <<'EOF'\n{saved}EOF\n{RESTART}")


def test_a_nonthinking_service_that_thinks_fails_naming_it(thinking_template):
    run = verify()
    assert run.rc != 0, run
    for name in ("qwen3-vllm", "qwen3-sglang"):
        assert (f"{name} (thorfleet-{name}.service): chat, POST http://127.0.0.1:") in run.output
    assert "a nonthinking recipe answered with a thinking block" in run.output
    assert "<think>" in run.output  # the response, quoted
    assert "qwen3 (thorfleet-qwen3.service)" not in run.output  # llama-server is fine


@pytest.fixture
def stopped(thor01):
    thor01.check_output("systemctl stop thorfleet-qwen3-sglang")
    yield thor01
    thor01.check_output("systemctl reset-failed thorfleet-qwen3-sglang; "
                        "systemctl start thorfleet-qwen3-sglang")


def fails_naming_only(run: Playbook, failure: str, unaffected: str) -> None:
    assert run.rc != 0, run
    assert failure in run.output, run
    assert f"{unaffected} (thorfleet-{unaffected}.service)" not in run.output, run


def test_a_service_that_never_answers_health_fails_in_bounded_time(stopped):
    fails_naming_only(verify("-e", "service_verify_health_timeout=4"),
                      "qwen3-sglang (thorfleet-qwen3-sglang.service): GET "
                      "http://127.0.0.1:8003/health did not answer 200 within 4 s",
                      unaffected="qwen3-vllm")


def test_a_transcription_without_text_fails_naming_the_service(thor01):
    # The lab's whisper.cpp model has random weights: it answers with empty text, which
    # the check refuses wherever text is required (everywhere but the lab).
    fails_naming_only(verify("-e", "service_verify_require_transcript_text=true"),
                      "whisper (thorfleet-whisper.service): transcription, POST "
                      "http://127.0.0.1:8080/inference: the transcription holds no text",
                      unaffected="whisper-vllm")


@pytest.fixture
def vision(thor01):
    """thor01 with the guide's vision recipe added, and without it again after."""
    services = [*LAB_SERVICES, {"name": "vl", "recipe": "vllm-qwen2.5-vl-7b-awq",
                                "port": 8004, "memory_share": 0.05}]
    extra = json.dumps({"thorfleet_services": services})
    run = Playbook("site.yml", "-l", "thor01", "-e", extra)
    assert run.rc == 0, run
    yield extra
    back = Playbook("site.yml", "-l", "thor01")
    assert back.rc == 0, back


def test_the_vision_model_gets_an_image_by_url_and_by_file(vision):
    run = verify("-e", vision)
    assert run.rc == 0, run
    for check in ("vl: image by URL", "vl: image by file"):
        assert f"{check}: answered 200" in run.output, check
    missing = verify("-e", vision, "-e", f"service_verify_image_url={FILE_MIRROR}/missing.png")
    fails_naming_only(missing, "vl (thorfleet-vl.service): image by URL, POST "
                               "http://127.0.0.1:8004/v1/chat/completions: answered 400",
                      unaffected="qwen3-vllm")
    assert "404" in missing.output  # what the engine said about the image


GGUF = "/models/Qwen/Qwen3-8B-GGUF/Qwen3-8B-Q5_K_M.gguf"


@pytest.fixture
def wrong_model_path(thor01):
    """thor01's llama-server pointed at a model that is not where its unit says."""
    thor01.check_output(f"mv {GGUF} {GGUF}.elsewhere; systemctl restart thorfleet-qwen3 || true")
    yield thor01
    thor01.check_output(f"mv {GGUF}.elsewhere {GGUF}; systemctl reset-failed thorfleet-qwen3; "
                        "systemctl restart thorfleet-qwen3")


def test_a_service_with_a_wrong_model_path_fails_naming_it_and_the_path(wrong_model_path):
    run = verify("-e", "service_verify_health_timeout=4")
    fails_naming_only(run, "qwen3 (thorfleet-qwen3.service): GET http://127.0.0.1:8000/health "
                           "did not answer 200 within 4 s", unaffected="qwen3-vllm")
    # The end of the service's log says why: llama-server could not open the model.
    failure = next(line for line in run.output.splitlines() if "thorfleet-qwen3.service" in line)
    assert "its log ends:" in failure and GGUF in failure, run

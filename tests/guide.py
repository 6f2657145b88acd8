"""The guide's serving commands, written here by hand from the field guide (one per recipe
of the catalogue), so that the catalogue cannot agree with itself: the unit tests check
each resolved service against them, the lab tests each running unit.

T is the nonthinking template's path: the guide keeps it in /models/Qwen/Qwen3-8B/, inside a
model's directory, where the catalogue refuses a file, so thorfleet puts it in
/models/templates/ (one difference from the guide made on purpose). BINARIES is where
units run native engines from by default (the `current` build under ggml_build_root), in
place of the guide's working directory.
"""

from __future__ import annotations

import json
import posixpath
import shlex

T = "/models/templates/qwen3_nonthinking.jinja"

GUIDE = {
    "vllm-qwen3-8b": "vllm serve /models/Qwen/Qwen3-8B --served-model-name qwen3",
    "vllm-qwen3-8b-nothink":
        f"vllm serve /models/Qwen/Qwen3-8B --served-model-name qwen3 --chat-template {T}",
    "vllm-qwen3-8b-fp4": """vllm serve /models/nv-community/Qwen3-8B-FP4 \\
        --served-model-name qwen3 \\
        --override-generation-config '{"repetition_penalty": 1.2, "temperature": 0.8,
        "top_p": 0.95}'""",
    "vllm-qwen3-8b-fp4-nothink": f"""vllm serve /models/nv-community/Qwen3-8B-FP4 \\
        --served-model-name qwen3 \\
        --override-generation-config '{{"repetition_penalty": 1.2, "temperature": 0.8,
        "top_p": 0.95}}' --chat-template {T}""",
    "vllm-qwen3-coder-30b-fp8": """vllm serve /models/Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8 \\
        --served-model-name qwen3 --max-model-len 65536 --enforce-eager \\
        --override-generation-config '{"repetition_penalty": 1.05, "temperature": 0.7,
        "top_p": 0.8, "top_k": 20}'""",
    "vllm-whisper-small":
        "vllm serve /models/openai-mirror/whisper-small --served-model-name whisper",
    # The guide writes --allowed-local-media-path without its value, which vLLM rejects:
    # the one difference from the guide the catalogue makes on purpose.
    "vllm-qwen2.5-vl-7b-awq": "vllm serve /models/Qwen/Qwen2.5-VL-7B-Instruct-AWQ "
                              "--served-model-name qwen3 --allowed-local-media-path /models",
    "sglang-qwen3-8b": """python -m sglang.launch_server --model-path /models/Qwen/Qwen3-8B \\
        --served-model-name qwen3 --host 0.0.0.0 --port 8000""",
    "sglang-qwen3-8b-nothink": f"""python -m sglang.launch_server \\
        --model-path /models/Qwen/Qwen3-8B --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --chat-template {T}""",
    "sglang-qwen3-8b-quickstart": """python -m sglang.launch_server \\
        --model-path /models/Qwen/Qwen3-8B --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --cuda-graph-bs 2""",
    "sglang-qwen3-8b-fp8": """python -m sglang.launch_server \\
        --model-path /models/Qwen/Qwen3-8B-FP8 --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --max-running-requests 2 \\
        --preferred-sampling-params '{"repetition_penalty": 1.2, "temperature": 0.6,
        "top_p": 0.95, "top_k": 20, "min_p": 0.0}'""",
    "sglang-qwen3-8b-fp8-nothink": f"""python -m sglang.launch_server \\
        --model-path /models/Qwen/Qwen3-8B-FP8 --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --max-running-requests 2 \\
        --preferred-sampling-params '{{"repetition_penalty": 1.2, "temperature": 0.7,
        "top_p": 0.8, "top_k": 20, "min_p": 0.0}}' --chat-template {T}""",
    "sglang-qwen3-8b-fp4": """python -m sglang.launch_server \\
        --model-path /models/nv-community/Qwen3-8B-FP4 --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --quantization modelopt_fp4 --max-running-requests 2""",
    "sglang-qwen3-8b-fp4-nothink": f"""python -m sglang.launch_server \\
        --model-path /models/nv-community/Qwen3-8B-FP4 --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --quantization modelopt_fp4 --max-running-requests 2 \\
        --chat-template {T}""",
    "sglang-qwen3-coder-30b-fp8": """python -m sglang.launch_server \\
        --model-path /models/Qwen/Qwen3-Coder-30B-A3B-Instruct-FP8 --served-model-name qwen3 \\
        --host 0.0.0.0 --port 8000 --max-running-requests 1 --max-total-tokens 65536 \\
        --disable-cuda-graph --preferred-sampling-params '{"repetition_penalty": 1.05,
        "temperature": 0.7, "top_p": 0.8, "top_k": 20}'""",
    "llama-qwen3-8b-gguf": """./build/bin/llama-server \\
        --model /models/Qwen/Qwen3-8B-GGUF/Qwen3-8B-Q5_K_M.gguf --alias qwen3 \\
        --host 0.0.0.0 --port 8000 --ctx-size 0""",
    "llama-qwen3-8b-gguf-nothink": """./build/bin/llama-server \\
        --model /models/Qwen/Qwen3-8B-GGUF/Qwen3-8B-Q5_K_M.gguf --alias qwen3 \\
        --host 0.0.0.0 --port 8000 --ctx-size 0 --jinja --reasoning-budget 0""",
    "llama-qwen3-coder-30b-gguf": "./build/bin/llama-server --model "
        "/models/unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF/Qwen3-Coder-30B-A3B-Instruct-Q5_K_M.gguf"
        " --alias qwen3 --host 0.0.0.0 --port 8000 --ctx-size 0",
    "whisper-large-v3-turbo": """./whisper-server \\
        --model /models/whisper.cpp/models/ggml-large-v3-turbo.bin \\
        --host 0.0.0.0 --port 8080 --flash-attn --language auto""",
}
BINARIES = {"llama-server": "/opt/thorfleet/llama.cpp/current/bin/llama-server",
            "whisper-server": "/opt/thorfleet/whisper.cpp/current/bin/whisper-server"}


def same_tokens(got, expected):
    """Token by token; a token that is a JSON object is compared after parsing."""
    if len(got) != len(expected):
        return False
    for a, b in zip(got, expected, strict=True):
        if a.startswith("{") and b.startswith("{"):
            if json.loads(a) != json.loads(b):
                return False
        elif a != b:
            return False
    return True


def guide(recipe):
    argv = shlex.split(GUIDE[recipe].replace("\\\n", " "))  # continuation lines joined
    # A native engine runs from the `current` build, not the guide's working directory.
    engine = argv[0].rsplit("/", 1)[-1]
    return [BINARIES.get(engine, argv[0]), *argv[1:]]


def model_path(recipe):
    """What the guide's command serves, under /models: the model (and its file)."""
    argv = guide(recipe)
    for flag in ("--model-path", "--model"):
        if flag in argv:
            path = argv[argv.index(flag) + 1]
            break
    else:  # vllm serve <model>
        path = argv[argv.index("serve") + 1]
    return posixpath.relpath(path, "/models")

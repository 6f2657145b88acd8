"""A tiny Qwen3 GGUF that llama-server loads and generates with, for the lab.

llama.cpp's ``models/ggml-vocab-qwen2.gguf`` is vocabulary only: llama-server refuses it.
This writes a one-layer Qwen3 of random weights on top of that vocabulary (Qwen3 shares
Qwen2's tokenizer) with the ``gguf`` package, so the lab serves a model that really runs
through llama.cpp's Qwen3 graph. Its answers are noise, which is all a lab needs: the
server loads it, completes chats and streams tokens. Seeded, so the file is the same on
every machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gguf
import numpy as np

EMBED, HEADS, KV_HEADS, FF, CONTEXT = 64, 4, 2, 128, 4096
HEAD_DIM = EMBED // HEADS


def _strings(field) -> list[str]:
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def tiny_qwen3(vocab_gguf: bytes, seed: int = 0) -> bytes:
    """The GGUF file's bytes."""
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "vocab.gguf"
        source.write_bytes(vocab_gguf)
        fields = gguf.GGUFReader(source).fields
        tokens = _strings(fields["tokenizer.ggml.tokens"])
        rng = np.random.default_rng(seed)

        def weights(*shape, dtype=np.float32):
            return (rng.standard_normal(shape) * 0.02).astype(dtype)

        target = Path(work) / "tiny.gguf"
        writer = gguf.GGUFWriter(target, "qwen3")
        writer.add_name("thorfleet lab tiny Qwen3 (random weights)")
        writer.add_block_count(1)
        writer.add_context_length(CONTEXT)
        writer.add_embedding_length(EMBED)
        writer.add_feed_forward_length(FF)
        writer.add_head_count(HEADS)
        writer.add_head_count_kv(KV_HEADS)
        writer.add_key_length(HEAD_DIM)
        writer.add_value_length(HEAD_DIM)
        writer.add_rope_freq_base(1_000_000.0)
        writer.add_layer_norm_rms_eps(1e-6)
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("qwen2")
        writer.add_token_list(tokens)
        writer.add_token_types([int(fields["tokenizer.ggml.token_type"].parts[i][0])
                                for i in fields["tokenizer.ggml.token_type"].data])
        writer.add_token_merges(_strings(fields["tokenizer.ggml.merges"]))
        for key, add in (("eos", writer.add_eos_token_id), ("bos", writer.add_bos_token_id),
                         ("padding", writer.add_pad_token_id)):
            field = fields[f"tokenizer.ggml.{key}_token_id"]
            add(int(field.parts[field.data[0]][0]))
        template = fields["tokenizer.chat_template"]
        writer.add_chat_template(bytes(template.parts[template.data[0]]).decode())

        ones = np.ones(EMBED, dtype=np.float32)
        writer.add_tensor("token_embd.weight", weights(len(tokens), EMBED, dtype=np.float16))
        writer.add_tensor("output_norm.weight", ones)
        block = {
            "attn_norm": ones, "ffn_norm": ones,
            "attn_q": weights(HEADS * HEAD_DIM, EMBED),
            "attn_k": weights(KV_HEADS * HEAD_DIM, EMBED),
            "attn_v": weights(KV_HEADS * HEAD_DIM, EMBED),
            "attn_output": weights(EMBED, HEADS * HEAD_DIM),
            "attn_q_norm": np.ones(HEAD_DIM, dtype=np.float32),
            "attn_k_norm": np.ones(HEAD_DIM, dtype=np.float32),
            "ffn_gate": weights(FF, EMBED), "ffn_up": weights(FF, EMBED),
            "ffn_down": weights(EMBED, FF),
        }
        for name, tensor in block.items():
            writer.add_tensor(f"blk.0.{name}.weight", tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return target.read_bytes()

"""Build a tiny random-weight Llama model directory, the way a Hugging Face model repo is laid out.

No network and no torch: weights come from numpy and are written with safetensors; the byte-level
BPE tokenizer is trained here on a few KB of text with `tokenizers`. vLLM (CPU build) serves the
result like any real model. Usage: python tests/tiny_model/build.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HIDDEN = 128
INTERMEDIATE = 256
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS  # 32: vLLM's CPU attention rejects 16
VOCAB = 512
MAX_POSITIONS = 2048
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = """\
hello world. the quick brown fox jumps over the lazy dog. a model that generates text one token at
a time reads its prompt, fills a cache of keys and values, and then samples the next token again and
again until it reaches a stop sequence, the end of sequence token, or the length limit it was given.
servers batch many requests together so that the accelerator stays busy; streaming sends each token
to the client as soon as it exists. what is deep learning? deep learning trains neural networks with
many layers on large amounts of data. once upon a time there was a small language model that lived on
a server with two cores and no graphics card, and it answered every question with great confidence.
the weather today is sunny with a light breeze from the west. numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.
json: {"name": "value", "list": [1, 2, 3], "ok": true}. code: def add(a, b): return a + b
unicode: café naïve über straße 東京 こんにちは 😀 \u2014 \u201cquotes\u201d and \u2018apostrophes\u2019.
"""


def train_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([CORPUS] * 8, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def weights(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    out = {"model.embed_tokens.weight": w(vocab, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = w(HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.k_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.v_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * HEAD_DIM)
        out[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        out[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        out[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
        out[p + "input_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        out[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    out["model.norm.weight"] = np.ones(HIDDEN, dtype=np.float32)
    out["lm_head.weight"] = w(vocab, HIDDEN)
    return out


def build(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    vocab = tok.get_vocab_size()
    ids = {name: tok.token_to_id(name) for name in SPECIAL}
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "chat_template": CHAT_TEMPLATE,
    }
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    generation_config = {
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
    }
    for name, data in (
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("special_tokens_map.json", special_map),
        ("generation_config.json", generation_config),
    ):
        (out_dir / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    save_file(weights(vocab), str(out_dir / "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: build.py OUT_DIR")
    build(Path(sys.argv[1]))
    print(f"tiny model written to {sys.argv[1]}")

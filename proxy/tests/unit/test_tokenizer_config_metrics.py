"""Tokenizer helpers (against tokenizers' own DecodeStream), settings, shared-memory metrics."""

from __future__ import annotations

import os
import random

import pytest
from hf_proxy import config
from hf_proxy.metrics import Metrics
from hf_proxy.tokenizer import ModelTokenizer, find_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.decoders import DecodeStream

TEXT = [
    "héllo wörld, ça va? naïve café ☕ 日本語 テキスト " * 3,
    "the quick brown fox jumps over the lazy dog " * 5,
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> ModelTokenizer:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(
        TEXT,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    d = tmp_path_factory.mktemp("tok")
    t.save(str(d / "tokenizer.json"))
    return ModelTokenizer(d / "tokenizer.json")


def test_incremental_text_equals_decode_stream(tok):
    assert tok.byte_level
    rng = random.Random(0)
    v = tok.tok.get_vocab_size()
    for _i in range(2000):
        prompt = [rng.randrange(v) for _i in range(rng.randrange(0, 7))]
        ids = [rng.randrange(v) for _i in range(rng.randrange(1, 25))]
        mine, ref = tok.stream(prompt), DecodeStream(prompt[-5:], skip_special_tokens=False)
        assert [tok.step(mine, i) for i in ids] == [ref.step(tok.tok, i) or "" for i in ids], (prompt, ids)


def test_specials_count_and_tokenize_offsets(tok):
    assert tok.special_ids == {0, 1, 2}
    text = "héllo wörld ☕ 日本"
    out = tok.tokenize(text)
    assert [t["id"] for t in out] == tok.tok.encode(text).ids
    raw = text.encode()
    for t in out:
        assert raw[t["start"] : t["stop"]].decode() == t["text"]
    assert tok.count(text) == len(out) and tok.count(text, truncate=2) == 2


def test_find_tokenizer(tmp_path, tok):
    assert find_tokenizer(str(tok.path), "") == tok.path
    assert find_tokenizer("", str(tok.path.parent)) == tok.path
    assert find_tokenizer("", str(tmp_path)) is None


def test_settings_precedence(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'upstreams = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]\nport = 9000\nmax_best_of = 3\n'
    )
    s = config.load(["--config", str(cfg), "--port", "9100"], {"HF_PROXY_MAX_BEST_OF": "1"})
    assert s.upstreams == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert s.port == 9100 and s.max_best_of == 1
    key = tmp_path / "key"
    key.write_text("sekret\n")
    os.chmod(key, 0o600)
    s = config.load(["--upstream", "http://h:1"], {"HF_PROXY_UPSTREAM_API_KEY_FILE": str(key)})
    assert s.upstream_api_key == "sekret" and "sekret" not in repr(s)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("bogus = 1\n", "bogus"),
        ('port = "x"\n', "port"),
        ("upstreams = []\n", "upstreams"),
        ('upstreams = ["https://x"]\n', "upstreams"),
        ("max_concurrent_requests = 0\n", "max_concurrent_requests"),
        ('log_level = "loud"\n', "log_level"),
        ("upstream_api_key = 'x'\n", "upstream_api_key"),
        ("port = \n", "c.toml"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path, text, word):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(config.ConfigError, match=word):
        config.load(["--config", str(cfg)], {})


def test_metrics_sum_over_workers():
    m = Metrics(3)
    for slot in range(3):
        m.use_slot(slot)
        m.inc("tgi_request_count", slot + 1)
        m.observe("tgi_request_duration", 0.02 * (slot + 1))
        m.failure("validation")
    text = m.render().decode()
    assert "tgi_request_count 6\n" in text
    assert 'tgi_request_failure{err="validation"} 3\n' in text
    assert 'tgi_request_duration_bucket{le="0.025"} 1\n' in text
    assert 'tgi_request_duration_bucket{le="+Inf"} 3\n' in text
    assert "tgi_request_duration_count 3\n" in text
    m.use_slot(1)
    m.inc("hf_proxy_requests_in_flight", 5)
    m.reset_gauges(1)
    assert m.total("hf_proxy_requests_in_flight") == 0

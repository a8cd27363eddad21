"""TGI <-> vLLM translation (pure functions over plain data)."""

from __future__ import annotations

import random

import orjson
import pytest
from hf_proxy.stream import DONE, SSEParser
from hf_proxy.translate import (
    GenerationError,
    StreamState,
    finish_reason,
    from_vllm,
    plan_request,
    to_vllm,
)
from hf_proxy.validate import parse_generate


class FakeTok:
    """Token texts for ids: "t<id>", id 2 special (a stand-in for the tokenizer interface)."""

    def is_special(self, i: int) -> bool:
        return i == 2

    def token_text(self, i: int) -> str:
        return "</s>" if i == 2 else f"t{i}"

    def stream(self, prompt_ids):
        return None

    def step(self, s, i: int) -> str:
        return self.token_text(i)


def req(**params):
    return parse_generate({"inputs": "hello", "parameters": params})


def plan(r, full=False, ids=True, n=5):
    return plan_request(r, n, full, ids, random.Random(0))


def test_finish_reasons():
    assert finish_reason("length", None) == "length"
    assert finish_reason("stop", None) == "eos_token"
    assert finish_reason("stop", 2) == "eos_token"
    assert finish_reason("stop", "###") == "stop_sequence"
    assert finish_reason("abort", None) is None


def test_every_sampling_field_is_sent():
    r = req(max_new_tokens=7, stop=["x"], truncate=3)
    body = to_vllm(r, plan(r), "tiny", 7, False)
    for k in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repetition_penalty",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "max_tokens",
        "n",
        "stop",
        "include_stop_str_in_output",
    ):
        assert k in body, k
    assert (
        body["temperature"] == 0.0 and body["seed"] is None and body["top_k"] == -1 and body["top_p"] == 1.0
    )
    assert body["include_stop_str_in_output"] is True and body["truncate_prompt_tokens"] == 3
    assert body["logprobs"] is None and body["return_token_ids"] is True


def test_sampling_seed_best_of_and_grammar():
    r = req(do_sample=True, temperature=0.7, top_k=5, seed=2**64 - 1, details=True, top_n_tokens=2)
    p = plan(r)
    body = to_vllm(r, p, "tiny", 4, False)
    assert p.seed == 2**64 - 1 and body["seed"] == (2**64 - 1) & (2**63 - 1)
    assert body["temperature"] == 0.7 and body["top_k"] == 5 and body["logprobs"] == 2
    assert body["return_tokens_as_token_ids"] is True
    r = req(do_sample=True, best_of=2)
    p = plan(r)
    assert to_vllm(r, p, "tiny", 4, False)["n"] == 2 and p.seed is not None and p.want_logprobs
    r = req(grammar={"type": "regex", "value": "[0-9]+"}, adapter_id="lora1")
    body = to_vllm(r, plan(r), "tiny", 4, True)
    assert (
        body["structured_outputs"] == {"regex": "[0-9]+"}
        and body["model"] == "lora1"
        and body["stream"] is True
    )
    assert "guided_regex" not in body


def choice(ids, text, reason="length", stop_reason=None, lps=None, index=0, prompt=(1, 5, 6), top=None):
    toks = [f"token_id:{i}" for i in ids]
    return {
        "index": index,
        "text": text,
        "finish_reason": reason,
        "stop_reason": stop_reason,
        "token_ids": list(ids),
        "prompt_token_ids": list(prompt),
        "logprobs": {
            "tokens": toks,
            "token_logprobs": lps or [-1.0] * len(ids),
            "top_logprobs": top or [{t: -1.0} for t in toks],
        },
        "prompt_logprobs": [None, {"5": {"logprob": -2.5}}, {"6": {"logprob": -3.5}}],
    }


def test_details_object():
    r = req(details=True, decoder_input_details=True, top_n_tokens=2)
    resp = {
        "choices": [
            choice(
                [7, 2],
                "t7",
                "stop",
                top=[{"token_id:7": -0.5, "token_id:9": -1.5, "token_id:3": -9.0}, {"token_id:2": -0.1}],
            )
        ]
    }
    out, generated, prompt = from_vllm(resp, plan(r, full=True), FakeTok())
    assert generated == 2 and prompt == 3
    assert out["generated_text"] == "hellot7"
    d = out["details"]
    assert list(d) == ["finish_reason", "generated_tokens", "seed", "prefill", "tokens", "top_tokens"]
    assert d["finish_reason"] == "eos_token" and d["seed"] is None
    assert d["prefill"] == [
        {"id": 1, "text": "t1", "logprob": None},
        {"id": 5, "text": "t5", "logprob": -2.5},
        {"id": 6, "text": "t6", "logprob": -3.5},
    ]
    assert d["tokens"][1] == {"id": 2, "text": "</s>", "logprob": -1.0, "special": True}
    assert [t["id"] for t in d["top_tokens"][0]] == [7, 9]


def test_no_details_unless_asked_and_abort():
    out, _gen, _prompt = from_vllm({"choices": [choice([7], "t7")]}, plan(req()), FakeTok())
    assert out == {"generated_text": "t7"}
    with pytest.raises(GenerationError):
        from_vllm({"choices": [choice([7], "t7", "abort")]}, plan(req()), FakeTok())


def test_best_of_picks_highest_mean_logprob():
    r = req(do_sample=True, best_of=2, details=True)
    resp = {
        "choices": [choice([4, 5], "a", lps=[-3.0, -3.0]), choice([6, 7], "b", lps=[-1.0, -2.0], index=1)]
    }
    out, _gen, _prompt = from_vllm(resp, plan(r), FakeTok())
    assert out["generated_text"] == "b"
    assert [s["generated_text"] for s in out["details"]["best_of_sequences"]] == ["a"]


def test_stream_events():
    r = req(details=True)
    p = plan(r, full=True)
    st = StreamState(p, FakeTok())
    a = st.feed({"choices": [{**choice([7], "t7", None), "finish_reason": None}]})
    b = st.feed({"choices": [{**choice([2], "", "stop"), "prompt_token_ids": None}]})
    ev1 = orjson.loads(a[6:])
    ev2 = orjson.loads(b[6:])
    assert list(ev1) == ["index", "token", "generated_text", "details"]
    assert ev1 == {
        "index": 1,
        "token": {"id": 7, "text": "t7", "logprob": -1.0, "special": False},
        "generated_text": None,
        "details": None,
    }
    assert ev2["index"] == 2 and ev2["token"]["special"] is True
    assert ev2["generated_text"] == "hellot7"
    assert ev2["details"] == {
        "finish_reason": "eos_token",
        "generated_tokens": 2,
        "seed": None,
        "input_length": 5,
    }
    with pytest.raises(GenerationError):
        StreamState(p, FakeTok()).feed({"choices": [choice([], "", "abort")]})


def test_sse_parser_splits_anywhere():
    events = b"".join(b"data: " + orjson.dumps({"i": i}) + b"\n\n" for i in range(50)) + b"data: [DONE]\n\n"
    for cut in (1, 7, 64, len(events)):
        p = SSEParser()
        got = []
        for k in range(0, len(events), cut):
            got += p.feed(events[k : k + cut])
        assert got == [{"i": i} for i in range(50)] + [DONE]
    assert SSEParser().feed(b': keepalive\n\ndata:{"a":1}\n\n') == [{"a": 1}]

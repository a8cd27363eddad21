"""TGI request -> vLLM /v1/completions request, vLLM response or stream chunk -> TGI answer. Pure.

Token texts, `special` flags and prefill texts come from the model's tokenizer (`TokenText`); vLLM
gives ids (`return_token_ids`, `return_tokens_as_token_ids`) and logprobs.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from .validate import GenerateRequest, Grammar

SEED_MASK = 2**63 - 1  # vLLM takes a signed 64-bit seed; TGI's is u64


class TokenText(Protocol):
    """What translate needs from a tokenizer (see tokenizer.py)."""

    def is_special(self, token_id: int) -> bool: ...
    def token_text(self, token_id: int) -> str: ...
    def stream(self, prompt_ids: list[int]) -> Any: ...
    def step(self, stream: Any, token_id: int) -> str: ...


@dataclass
class Plan:
    """Decisions made for one request, kept for the answer."""

    seed: int | None  # reported seed (None when greedy)
    n: int
    details: bool
    decoder_input_details: bool
    top_n: int
    full_text_prefix: str
    input_length: int
    stream: bool
    id_tokens: bool  # tokens come back as "token_id:N"
    want_logprobs: bool = field(default=False)


def finish_reason(reason: str | None, stop_reason: Any) -> str | None:
    """vLLM's finish_reason/stop_reason to TGI's; None for "abort" or unknown (an error)."""
    if reason == "length":
        return "length"
    if reason == "stop":
        return "stop_sequence" if isinstance(stop_reason, str) else "eos_token"
    return None


def plan_request(
    req: GenerateRequest,
    input_length: int,
    route_full_text_default: bool,
    id_tokens: bool,
    rng: random.Random,
) -> Plan:
    n = req.best_of if req.best_of and req.best_of > 1 else 1
    seed: int | None = None
    if req.sampling:
        seed = req.seed if req.seed is not None else rng.getrandbits(63)
    full = req.return_full_text if req.return_full_text is not None else route_full_text_default
    top_n = req.top_n_tokens or 0
    details = req.details or req.decoder_input_details
    return Plan(
        seed=seed,
        n=n,
        details=details,
        decoder_input_details=req.decoder_input_details,
        top_n=top_n,
        full_text_prefix=req.inputs if full else "",
        input_length=input_length,
        stream=req.stream,
        id_tokens=id_tokens,
        want_logprobs=details or top_n > 0 or n > 1 or req.stream,
    )


def structured_outputs(g: Grammar) -> dict[str, Any]:
    return {"regex": g.value} if g.kind == "regex" else {"json": g.value}


def to_vllm(
    req: GenerateRequest, plan: Plan, model: str, max_new_tokens: int, stream: bool
) -> dict[str, Any]:
    """The /v1/completions body. Every sampling field is sent: vLLM otherwise applies the model's
    generation_config defaults (and max_tokens 16)."""
    sampling = req.sampling
    body: dict[str, Any] = {
        "model": req.adapter_id or model,
        "prompt": req.inputs,
        "max_tokens": max_new_tokens,
        "n": plan.n,
        "temperature": (req.temperature if req.temperature is not None else 1.0) if sampling else 0.0,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "top_k": req.top_k if req.top_k is not None else -1,
        "min_p": 0.0,
        "repetition_penalty": req.repetition_penalty if req.repetition_penalty is not None else 1.0,
        "frequency_penalty": req.frequency_penalty if req.frequency_penalty is not None else 0.0,
        "presence_penalty": 0.0,
        "seed": (plan.seed & SEED_MASK) if plan.seed is not None else None,
        "stop": req.stop,
        "include_stop_str_in_output": True,
        "ignore_eos": False,
        "min_tokens": 0,
        "skip_special_tokens": True,
        "logprobs": plan.top_n if plan.want_logprobs else None,
        "prompt_logprobs": 0 if plan.decoder_input_details else None,
        "return_token_ids": True,
        "return_tokens_as_token_ids": plan.id_tokens and plan.want_logprobs,
        "truncate_prompt_tokens": req.truncate,
        "stream": stream,
    }
    if req.grammar is not None:
        body["structured_outputs"] = structured_outputs(req.grammar)
    return body


def _token_id(tok: str) -> int | None:
    if tok.startswith("token_id:"):
        try:
            return int(tok[9:])
        except ValueError:
            return None
    return None


def _lp(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    if math.isnan(f):
        return None
    if math.isinf(f):
        return -3.4028234663852886e38 if f < 0 else 3.4028234663852886e38
    return f


def make_token(tok: TokenText | None, token_id: int, text: str, logprob: Any) -> dict[str, Any]:
    return {
        "id": token_id,
        "text": text,
        "logprob": _lp(logprob),
        "special": tok.is_special(token_id) if tok is not None else False,
    }


def top_tokens_at(tok: TokenText | None, top: dict[str, Any] | None, n: int) -> list[dict[str, Any]]:
    if not top or n <= 0:
        return []
    items = sorted(top.items(), key=lambda kv: -(kv[1] if kv[1] is not None else -math.inf))[:n]
    out = []
    for key, lp in items:
        tid = _token_id(key)
        if tid is None:
            continue
        text = tok.token_text(tid) if tok is not None else key
        out.append(make_token(tok, tid, text, lp))
    return out


@dataclass
class Sequence:
    generated_text: str
    finish_reason: str | None
    token_ids: list[int]
    tokens: list[dict[str, Any]]
    top_tokens: list[list[dict[str, Any]]]
    mean_logprob: float


def sequence_from_choice(
    choice: dict[str, Any], plan: Plan, tok: TokenText | None, prompt_ids: list[int]
) -> Sequence:
    ids: list[int] = list(choice.get("token_ids") or [])
    lp = choice.get("logprobs") or {}
    lps: list[Any] = lp.get("token_logprobs") or []
    strs: list[str] = lp.get("tokens") or []
    tops: list[Any] = lp.get("top_logprobs") or []
    if not ids and strs:
        ids = [t for t in (_token_id(s) for s in strs) if t is not None]
    tokens: list[dict[str, Any]] = []
    top_tokens: list[list[dict[str, Any]]] = []
    if plan.details:
        ds = tok.stream(prompt_ids) if tok is not None else None
        for i, tid in enumerate(ids):
            text = tok.step(ds, tid) if tok is not None else strs[i] if i < len(strs) else ""
            tokens.append(make_token(tok, tid, text, lps[i] if i < len(lps) else None))
            if plan.top_n:
                top_tokens.append(top_tokens_at(tok, tops[i] if i < len(tops) else None, plan.top_n))
    valid = [float(x) for x in lps if x is not None and not math.isnan(float(x))]
    mean = sum(valid) / len(valid) if valid else -math.inf
    return Sequence(
        generated_text=plan.full_text_prefix + (choice.get("text") or ""),
        finish_reason=finish_reason(choice.get("finish_reason"), choice.get("stop_reason")),
        token_ids=ids,
        tokens=tokens,
        top_tokens=top_tokens,
        mean_logprob=mean,
    )


def prefill(choice: dict[str, Any], prompt_ids: list[int], tok: TokenText | None) -> list[dict[str, Any]]:
    plp: list[Any] = choice.get("prompt_logprobs") or []
    out = []
    for i, pid in enumerate(prompt_ids):
        entry = plp[i] if i < len(plp) else None
        logprob = None
        text = tok.token_text(pid) if tok is not None else ""
        if entry:
            e = entry.get(str(pid))
            if e is not None:
                logprob = e.get("logprob")
                if tok is None:
                    text = e.get("decoded_token") or ""
        out.append({"id": pid, "text": text, "logprob": None if i == 0 else _lp(logprob)})
    return out


def details_of(seq: Sequence, plan: Plan, prefill_tokens: list[dict[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {
        "finish_reason": seq.finish_reason,
        "generated_tokens": len(seq.token_ids),
        "seed": plan.seed,
        "prefill": prefill_tokens,
        "tokens": seq.tokens,
    }
    if plan.top_n:
        d["top_tokens"] = seq.top_tokens
    return d


class GenerationError(Exception):
    """The upstream ended a generation without a usable finish (TGI: incomplete generation)."""


def from_vllm(resp: dict[str, Any], plan: Plan, tok: TokenText | None) -> tuple[dict[str, Any], int, int]:
    """A non-stream vLLM answer to TGI's /generate object; also returns the generated and prompt
    token counts."""
    choices: list[dict[str, Any]] = sorted(resp.get("choices") or [], key=lambda c: c.get("index", 0))
    if not choices:
        raise GenerationError("upstream returned no choices")
    prompt_ids: list[int] = choices[0].get("prompt_token_ids") or []
    seqs = [sequence_from_choice(c, plan, tok, prompt_ids) for c in choices]
    for s in seqs:
        if s.finish_reason is None:
            raise GenerationError("Incomplete generation")
    best = max(range(len(seqs)), key=lambda i: seqs[i].mean_logprob) if len(seqs) > 1 else 0
    main = seqs[best]
    generated = len(main.token_ids)
    if not generated:
        usage = resp.get("usage") or {}
        generated = int(usage.get("completion_tokens") or 0)
    prompt_tokens = len(prompt_ids) or int((resp.get("usage") or {}).get("prompt_tokens") or 0)
    out: dict[str, Any] = {"generated_text": main.generated_text}
    if plan.details:
        pre = prefill(choices[best], prompt_ids, tok) if plan.decoder_input_details else []
        d = details_of(main, plan, pre)
        if len(seqs) > 1:
            others = []
            for i, s in enumerate(seqs):
                if i == best:
                    continue
                o = {
                    "generated_text": s.generated_text,
                    "finish_reason": s.finish_reason,
                    "generated_tokens": len(s.token_ids),
                    "seed": plan.seed,
                    "prefill": prefill(choices[i], prompt_ids, tok) if plan.decoder_input_details else [],
                    "tokens": s.tokens,
                }
                if plan.top_n:
                    o["top_tokens"] = s.top_tokens
                others.append(o)
            d["best_of_sequences"] = others
        out["details"] = d
    return out, generated, prompt_tokens


_EV_HEAD = b'data: {"index":%d,"token":{"id":%d,"text":%b,"logprob":%b,"special":%b}'
_EV_TAIL = b',"generated_text":null,"details":null}\n\n'


class StreamState:
    """Turns vLLM stream chunks into TGI stream events (SSE bytes), one event per token."""

    def __init__(self, plan: Plan, tok: TokenText | None) -> None:
        self.plan = plan
        self.tok = tok
        self.index = 0
        self.text: list[str] = []
        self.decoder: Any = None
        self.prompt_ids: list[int] = []
        self.finished: str | None = None
        self.input_length = plan.input_length

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """SSE bytes for one vLLM chunk (choice 0). Raises GenerationError on an aborted generation."""
        choices = chunk.get("choices")
        if not choices:
            return b""
        c = choices[0]
        pids = c.get("prompt_token_ids")
        if pids:
            self.prompt_ids = pids
            if self.input_length < 0:
                self.input_length = len(pids)
        ids: list[int] = c.get("token_ids") or []
        lp = c.get("logprobs") or {}
        lps = lp.get("token_logprobs") or ()
        strs = lp.get("tokens") or ()
        tops = lp.get("top_logprobs") or ()
        if not ids and strs:
            ids = [t for t in (_token_id(s) for s in strs) if t is not None]
        self.text.append(c.get("text") or "")
        reason = c.get("finish_reason")
        fr = finish_reason(reason, c.get("stop_reason")) if reason is not None else None
        if reason is not None and fr is None:
            raise GenerationError("Incomplete generation stream")
        tok = self.tok
        if tok is not None and self.decoder is None:
            self.decoder = tok.stream(self.prompt_ids)
        if fr is None and len(ids) == 1 and tok is not None and not self.plan.top_n:
            # the common chunk: one token, not the last (orjson writes NaN and infinities as null)
            self.index += 1
            tid = ids[0]
            return (
                _EV_HEAD
                % (
                    self.index,
                    tid,
                    orjson.dumps(tok.step(self.decoder, tid)),
                    orjson.dumps(lps[0] if lps else None),
                    b"true" if tok.is_special(tid) else b"false",
                )
                + _EV_TAIL
            )
        out: list[bytes] = []
        last = len(ids) - 1
        for i, tid in enumerate(ids):
            self.index += 1
            if tok is not None:
                text = tok.step(self.decoder, tid)
                special = tok.is_special(tid)
            else:
                text = strs[i] if i < len(strs) else ""
                special = False
            logprob = _lp(lps[i]) if i < len(lps) else None
            if (i == last and fr is not None) or self.plan.top_n:
                ev: dict[str, Any] = {
                    "index": self.index,
                    "token": {"id": tid, "text": text, "logprob": logprob, "special": special},
                }
                if self.plan.top_n:
                    ev["top_tokens"] = top_tokens_at(tok, tops[i] if i < len(tops) else None, self.plan.top_n)
                ev["generated_text"] = None
                ev["details"] = None
                if i == last and fr is not None:
                    self._finalize(ev, fr)
                out.append(b"data: " + orjson.dumps(ev) + b"\n\n")
            else:
                out.append(
                    _EV_HEAD
                    % (
                        self.index,
                        tid,
                        orjson.dumps(text),
                        orjson.dumps(logprob),
                        b"true" if special else b"false",
                    )
                    + _EV_TAIL
                )
        if fr is not None:
            self.finished = fr
            if not ids:
                # A finish without a token of its own (not seen from vLLM 0.32): close with an event
                # that carries the text and details but repeats no token.
                ev = {"index": self.index, "token": None, "generated_text": None, "details": None}
                self._finalize(ev, fr)
                out.append(b"data: " + orjson.dumps(ev) + b"\n\n")
        return b"".join(out)

    def _finalize(self, ev: dict[str, Any], fr: str) -> None:
        ev["generated_text"] = self.plan.full_text_prefix + "".join(self.text)
        if self.plan.details:
            ev["details"] = {
                "finish_reason": fr,
                "generated_tokens": self.index,
                "seed": self.plan.seed,
                "input_length": self.input_length,
            }

"""The model's tokenizer (tokenizers' tokenizer.json), loaded once per worker.

Gives TGI's token texts (incremental decoding with DecodeStream, seeded with the prompt's tail as TGI's
prefix offset does), `special` flags, prefill texts, input lengths and /tokenize offsets.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

log = logging.getLogger("hf_proxy")

_PREFIX_TOKENS = 5


def _bytes_to_unicode() -> dict[str, int]:
    """GPT-2's byte-level alphabet (the ByteLevel pre-tokenizer/decoder's), char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
    bs += list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


class ByteLevelStream:
    """Incremental decoding for byte-level tokenizers: while every token is complete UTF-8 on its own,
    its text is the cached single-token text (what DecodeStream returns then, without the Rust call);
    from the first token that is not, tokenizers' DecodeStream takes over, seeded like TGI's prefix."""

    __slots__ = ("ds", "owner", "recent")

    def __init__(self, owner: ModelTokenizer, prompt_ids: list[int]) -> None:
        self.owner = owner
        self.recent = list(prompt_ids)
        self.ds: DecodeStream | None = None
        if any(owner.clean_text(i) is None for i in prompt_ids):
            self.ds = DecodeStream(self.recent, skip_special_tokens=False)

    def step(self, token_id: int) -> str:
        if self.ds is None:
            clean = self.owner.clean_text(token_id)
            if clean is not None:
                r = self.recent
                r.append(token_id)
                if len(r) > _PREFIX_TOKENS:
                    del r[0]
                return clean
            self.ds = DecodeStream(self.recent, skip_special_tokens=False)
        return self.ds.step(self.owner.tok, token_id) or ""


class ModelTokenizer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tok = Tokenizer.from_file(str(path))
        added = self.tok.get_added_tokens_decoder()
        self.added_ids = frozenset(added)
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.config: dict[str, Any] = {}
        cfg = path.parent / "tokenizer_config.json"
        if cfg.is_file():
            try:
                self.config = json.loads(cfg.read_text())
            except (OSError, ValueError):
                log.warning("cannot read %s", cfg)
        self.token_text = lru_cache(maxsize=65536)(self._token_text)
        self.byte_level = self._decoder_type() == "ByteLevel"
        self._bytes: dict[int, bytes] = {}
        self._clean: dict[int, str | None] = {}
        self._unicode = _bytes_to_unicode() if self.byte_level else {}

    def _decoder_type(self) -> str:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return ""
        dec = data.get("decoder") or {}
        return str(dec.get("type", ""))

    def token_bytes(self, token_id: int) -> bytes:
        b = self._bytes.get(token_id)
        if b is None:
            piece = self.tok.id_to_token(token_id)
            if piece is None:
                b = b""
            elif token_id in self.added_ids:
                b = piece.encode("utf-8")
            else:
                u = self._unicode
                try:
                    b = bytes(u[ch] for ch in piece)
                except KeyError:
                    b = self._token_text(token_id).encode("utf-8")
            self._bytes[token_id] = b
        return b

    def clean_text(self, token_id: int) -> str | None:
        """The token's text when its bytes are complete UTF-8 on their own, else None."""
        try:
            return self._clean[token_id]
        except KeyError:
            pass
        try:
            t: str | None = self.token_bytes(token_id).decode("utf-8")
            if t is not None and "\ufffd" in t:
                t = None
        except UnicodeDecodeError:
            t = None
        self._clean[token_id] = t
        return t

    def _token_text(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def stream(self, prompt_ids: list[int]) -> DecodeStream | ByteLevelStream:
        if self.byte_level:
            return ByteLevelStream(self, list(prompt_ids[-_PREFIX_TOKENS:]))
        return DecodeStream(list(prompt_ids[-_PREFIX_TOKENS:]), skip_special_tokens=False)

    def step(self, stream: DecodeStream | ByteLevelStream, token_id: int) -> str:
        if isinstance(stream, ByteLevelStream):
            return stream.step(token_id)
        try:
            piece = stream.step(self.tok, token_id)
        except Exception:  # a decoder that cannot step (rare): fall back to the single token
            return self.token_text(token_id)
        return piece or ""

    def count(self, text: str, truncate: int | None = None) -> int:
        n = len(self.tok.encode(text, add_special_tokens=True).ids)
        return min(n, truncate) if truncate else n

    def tokenize(self, text: str) -> list[dict[str, Any]]:
        """TGI's /tokenize: ids with their text and byte offsets into the input."""
        enc = self.tok.encode(text, add_special_tokens=True)
        out = []
        for tid, (start, stop) in zip(enc.ids, enc.offsets, strict=False):
            b0 = len(text[:start].encode("utf-8"))
            b1 = b0 + len(text[start:stop].encode("utf-8"))
            out.append({"id": tid, "text": text[start:stop], "start": b0, "stop": b1})
        return out


def find_tokenizer(explicit: str, model_root: str) -> Path | None:
    """tokenizer.json from --tokenizer (file or directory), else from the served model's local dir."""
    for cand in (explicit, model_root):
        if not cand:
            continue
        p = Path(cand)
        if p.is_file():
            return p
        if (p / "tokenizer.json").is_file():
            return p / "tokenizer.json"
        if cand == explicit:
            log.error("--tokenizer %s: no tokenizer.json there", cand)
    return None


def load(explicit: str, model_root: str) -> ModelTokenizer | None:
    path = find_tokenizer(explicit, model_root)
    if path is None:
        log.warning(
            "no tokenizer (model root %r is not a local directory with tokenizer.json; give --tokenizer): "
            "serving without it: token `special` flags are false, token texts come from vLLM, "
            "input lengths are counted by the upstream, /tokenize and top_n_tokens are refused",
            model_root,
        )
        return None
    try:
        t = ModelTokenizer(path)
    except Exception as e:
        log.error("cannot load tokenizer %s: %s", path, e)
        return None
    log.info("tokenizer loaded from %s (%d special ids)", path, len(t.special_ids))
    return t

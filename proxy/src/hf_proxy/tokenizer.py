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


class ModelTokenizer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tok = Tokenizer.from_file(str(path))
        self.special_ids = frozenset(i for i, t in self.tok.get_added_tokens_decoder().items() if t.special)
        self.config: dict[str, Any] = {}
        cfg = path.parent / "tokenizer_config.json"
        if cfg.is_file():
            try:
                self.config = json.loads(cfg.read_text())
            except (OSError, ValueError):
                log.warning("cannot read %s", cfg)
        self.token_text = lru_cache(maxsize=65536)(self._token_text)

    def _token_text(self, token_id: int) -> str:
        return self.tok.decode([token_id], skip_special_tokens=False)

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def stream(self, prompt_ids: list[int]) -> DecodeStream:
        return DecodeStream(list(prompt_ids[-_PREFIX_TOKENS:]), skip_special_tokens=False)

    def step(self, stream: DecodeStream, token_id: int) -> str:
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
        for tid, (start, stop) in zip(enc.ids, enc.offsets):
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

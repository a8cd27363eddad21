"""TGI's request parsing and validation rules, with its messages, order and status codes. Pure.

Parsing errors are what TGI's axum/serde layer answers before its handler (text/plain bodies);
validation errors are TGI's `Input validation error: ...` (422, error_type `validation`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

U32 = 2**32 - 1
U64 = 2**64 - 1
I32 = 2**31 - 1
USIZE = 2**64 - 1
F32_MAX = 3.4028234663852886e38

VALIDATION_PREFIX = "Input validation error: "


class RequestError(Exception):
    """An HTTP error answer: status, message, error_type; `plain` for TGI's pre-handler rejections."""

    def __init__(
        self, status: int, message: str, error_type: str = "validation", plain: bool = False
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.plain = plain


def validation_error(message: str) -> RequestError:
    return RequestError(422, VALIDATION_PREFIX + message, "validation")


@dataclass
class Limits:
    max_best_of: int = 2
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_input_tokens: int = 511
    max_total_tokens: int = 512
    default_max_new_tokens: int = 0  # 0: TGI 3.x, max_total_tokens - input length


@dataclass
class Grammar:
    kind: str  # "json" | "regex"
    value: Any


@dataclass
class GenerateRequest:
    inputs: str
    stream: bool = False
    parameters_given: bool = False
    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: list[str] = field(default_factory=list)
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: Grammar | None = None
    adapter_id: str | None = None

    @property
    def sampling(self) -> bool:
        """TGI's rule: sampling if asked, or any warper is set."""
        return (
            self.do_sample
            or (self.temperature is not None and self.temperature != 1.0)
            or self.top_k is not None
            or self.top_p is not None
            or self.typical_p is not None
        )

    @property
    def sampling_for_best_of(self) -> bool:
        """TGI's looser rule for the best_of check: any warper given, even temperature 1."""
        return (
            self.do_sample
            or self.temperature is not None
            or self.top_k is not None
            or self.top_p is not None
            or self.typical_p is not None
        )


# -- parsing (serde's wording) ------------------------------------------------------------------
DESERIALIZE = "Failed to deserialize the JSON body into the target type: "


def _unexpected(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"boolean `{'true' if v else 'false'}`"
    if isinstance(v, int):
        return f"integer `{v}`"
    if isinstance(v, float):
        return f"floating point `{v}`"
    if isinstance(v, str):
        return f"string {json.dumps(v)}"
    if isinstance(v, list):
        return "sequence"
    return "map"


def _type_error(path: str, v: Any, expected: str) -> RequestError:
    return RequestError(
        422, f"{DESERIALIZE}{path}: invalid type: {_unexpected(v)}, expected {expected}", plain=True
    )


def _value_error(path: str, v: Any, expected: str) -> RequestError:
    return RequestError(
        422, f"{DESERIALIZE}{path}: invalid value: {_unexpected(v)}, expected {expected}", plain=True
    )


def _bool(path: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _type_error(path, v, "a boolean")
    return v


def _opt_bool(path: str, v: Any) -> bool | None:
    return None if v is None else _bool(path, v)


def _opt_float(path: str, v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _type_error(path, v, "f32")
    f = float(v)
    if math.isinf(f) or abs(f) > F32_MAX:
        raise _value_error(path, v, "f32")
    return f


def _opt_int(path: str, v: Any, lo: int, hi: int, name: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _type_error(path, v, name)
    if not lo <= v <= hi:
        raise _value_error(path, v, name)
    return v


def _opt_str(path: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise _type_error(path, v, "a string")
    return v


def _grammar(v: Any) -> Grammar | None:
    path = "parameters.grammar"
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _type_error(path, v, "internally tagged enum GrammarType")
    kind = v.get("type")
    if "type" not in v:
        raise RequestError(422, f"{DESERIALIZE}{path}: missing field `type`", plain=True)
    if kind not in ("json", "json_object", "regex", "json_schema"):
        raise RequestError(
            422,
            f"{DESERIALIZE}{path}: unknown variant `{kind}`, expected one of `json`, `json_object`, "
            "`regex`, `json_schema`",
            plain=True,
        )
    if "value" not in v:
        raise RequestError(422, f"{DESERIALIZE}{path}: missing field `value`", plain=True)
    value = v["value"]
    if kind == "regex":
        if not isinstance(value, str):
            raise _type_error(path + ".value", value, "a string")
        return Grammar("regex", value)
    if kind == "json_schema":
        if not isinstance(value, dict):
            raise _type_error(path + ".value", value, "struct JsonSchemaConfig")
        if "schema" not in value:
            raise RequestError(422, f"{DESERIALIZE}{path}.value: missing field `schema`", plain=True)
        return Grammar("json", value["schema"])
    return Grammar("json", value)


_PARAM_PARSERS: dict[str, Any] = {
    "best_of": lambda p, v: _opt_int(p, v, 0, USIZE, "usize"),
    "temperature": _opt_float,
    "repetition_penalty": _opt_float,
    "frequency_penalty": _opt_float,
    "top_k": lambda p, v: _opt_int(p, v, -(2**31), I32, "i32"),
    "top_p": _opt_float,
    "typical_p": _opt_float,
    "do_sample": _bool,
    "max_new_tokens": lambda p, v: _opt_int(p, v, 0, U32, "u32"),
    "return_full_text": _opt_bool,
    "truncate": lambda p, v: _opt_int(p, v, 0, USIZE, "usize"),
    "watermark": _bool,
    "details": _bool,
    "decoder_input_details": _bool,
    "seed": lambda p, v: _opt_int(p, v, 0, U64, "u64"),
    "top_n_tokens": lambda p, v: _opt_int(p, v, 0, U32, "u32"),
    "adapter_id": _opt_str,
}


def parse_json(body: bytes, content_type: str | None) -> Any:
    """TGI's Json extractor: 415 without a JSON content type, 400 on syntax errors."""
    ct = (content_type or "").split(";")[0].strip().lower()
    if not (ct == "application/json" or (ct.startswith("application/") and ct.endswith("+json"))):
        raise RequestError(415, "Expected request with `Content-Type: application/json`", plain=True)
    try:
        return orjson.loads(body)
    except json.JSONDecodeError as e:
        raise RequestError(
            400,
            f"Failed to parse the request body as JSON: {e.msg} at line {e.lineno} column {e.colno}",
            plain=True,
        ) from None


def parse_generate(data: Any, compat: bool = False) -> GenerateRequest:
    """Body of `/`, `/generate`, `/generate_stream` or `/tokenize` to a GenerateRequest."""
    if not isinstance(data, dict):
        raise RequestError(
            422,
            f"{DESERIALIZE}invalid type: {_unexpected(data)}, expected struct "
            f"{'CompatGenerateRequest' if compat else 'GenerateRequest'}",
            plain=True,
        )
    if "inputs" not in data:
        raise RequestError(422, f"{DESERIALIZE}missing field `inputs`", plain=True)
    inputs = data["inputs"]
    if not isinstance(inputs, str):
        raise _type_error("inputs", inputs, "a string")
    req = GenerateRequest(inputs=inputs)
    if compat:
        stream = data.get("stream", False)
        req.stream = _bool("stream", stream)
    if "parameters" not in data:
        # TGI's default parameters when the object is absent: sampling on.
        req.do_sample = True
        return req
    params = data["parameters"]
    if not isinstance(params, dict):
        raise _type_error("parameters", params, "struct GenerateParameters")
    req.parameters_given = True
    for key, value in params.items():
        path = "parameters." + key
        if key == "stop":
            if not isinstance(value, list):
                raise _type_error(path, value, "a sequence")
            for i, s in enumerate(value):
                if not isinstance(s, str):
                    raise _type_error(f"{path}[{i}]", s, "a string")
            req.stop = list(value)
        elif key == "grammar":
            req.grammar = _grammar(value)
        elif key in _PARAM_PARSERS:
            setattr(req, key, _PARAM_PARSERS[key](path, value))
        # unknown fields are ignored, as TGI does
    return req


# -- TGI validation, in TGI's order -----------------------------------------------------------
def validate_stream(req: GenerateRequest) -> None:
    """generate_stream's own checks, which TGI makes before the general validation."""
    if (req.best_of if req.best_of is not None else 1) != 1:
        raise validation_error("`best_of` != 1 is not supported when streaming tokens")
    if req.decoder_input_details:
        raise validation_error("`decoder_input_details` == true is not supported when streaming tokens")


def validate_params(req: GenerateRequest, limits: Limits) -> None:
    """Everything TGI checks before tokenizing."""
    best_of = req.best_of if req.best_of is not None else 1
    if best_of > 1:
        if limits.max_best_of == 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")
        if best_of > limits.max_best_of:
            raise validation_error(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")
        if not req.sampling_for_best_of:
            raise validation_error("you must use sampling when `best_of` is > 1")
    if req.temperature is not None and req.temperature <= 0.0:
        raise validation_error("`temperature` must be strictly positive")
    if req.repetition_penalty is not None and req.repetition_penalty <= 0.0:
        raise validation_error("`repetition_penalty` must be strictly positive")
    if req.frequency_penalty is not None and not -2.0 <= req.frequency_penalty <= 2.0:
        raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if req.top_p is not None and not 0.0 < req.top_p < 1.0:
        raise validation_error("`top_p` must be > 0.0 and < 1.0")
    if req.typical_p is not None and not 0.0 < req.typical_p < 1.0:
        raise validation_error("`typical_p` must be > 0.0 and < 1.0")
    if req.top_k is not None and req.top_k <= 0:
        raise validation_error("`top_k` must be strictly positive")
    if req.max_new_tokens == 0:
        raise validation_error("`max_new_tokens` must be strictly positive")
    if len(req.stop) > limits.max_stop_sequences:
        raise validation_error(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(req.stop)}"
        )
    if req.seed is not None and best_of > 1:
        raise validation_error("`seed` must not be set when `best_of` > 1")
    if req.top_n_tokens is not None and req.top_n_tokens > limits.max_top_n_tokens:
        raise validation_error(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {req.top_n_tokens}"
        )
    if not req.inputs:
        raise validation_error("`inputs` cannot be empty")
    if req.truncate is not None and (req.truncate == 0 or req.truncate > limits.max_input_tokens):
        raise validation_error(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. "
            f"Given: {req.truncate}"
        )


def validate_lengths(req: GenerateRequest, input_length: int, limits: Limits) -> int:
    """TGI's token-length checks; returns the max_new_tokens to use. `input_length` is after truncation."""
    if req.max_new_tokens is not None:
        max_new = req.max_new_tokens
    elif limits.default_max_new_tokens:
        max_new = limits.default_max_new_tokens
    else:
        max_new = max(limits.max_total_tokens - input_length, 0)
    if input_length + max_new > limits.max_total_tokens:
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise validation_error(
            f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}"
        )
    if max_new == 0:
        # TGI 3.x: a prompt that fills the context leaves nothing to generate.
        raise validation_error(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and 1 `max_new_tokens`"
        )
    return max_new


def validate_grammar(req: GenerateRequest) -> Grammar | None:
    """TGI's grammar check: a JSON grammar must be a schema object (or a string holding one)."""
    g = req.grammar
    if g is None:
        return None
    if g.kind == "regex":
        return g
    value = g.value
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise validation_error(
                f"grammar is not valid: {e.msg} at line {e.lineno} column {e.colno}"
            ) from None
    if not isinstance(value, (dict, bool)):
        raise validation_error("grammar is not valid: a JSON schema must be an object or a boolean")
    return Grammar("json", value)

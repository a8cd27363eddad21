"""TGI's parsing and validation rules (pure functions, no HTTP)."""

from __future__ import annotations

import pytest
from hf_proxy.validate import (
    GenerateRequest,
    Limits,
    RequestError,
    parse_generate,
    parse_json,
    validate_grammar,
    validate_lengths,
    validate_params,
    validate_stream,
)

LIM = Limits(
    max_best_of=2, max_stop_sequences=4, max_top_n_tokens=5, max_input_tokens=511, max_total_tokens=512
)
P = "Input validation error: "


def req(**params) -> GenerateRequest:
    return parse_generate({"inputs": "hello", "parameters": params})


def err(fn, *a) -> RequestError:
    with pytest.raises(RequestError) as e:
        fn(*a)
    return e.value


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
        ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
        ({"best_of": 2, "temperature": 1.0}, "`seed` must not be set when `best_of` > 1"),
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"repetition_penalty": -1}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": -2.1}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 0}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"top_k": -1}, "`top_k` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"stop": list("abcde")}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"top_n_tokens": 9}, "`top_n_tokens` must be >= 0 and <= 5. Given: 9"),
        ({"truncate": 0}, "`truncate` must be strictly positive and less than 511. Given: 0"),
        ({"truncate": 512}, "`truncate` must be strictly positive and less than 511. Given: 512"),
    ],
)
def test_rules(params, message):
    if "seed" in message:
        params = {**params, "seed": 3}
    e = err(validate_params, req(**params), LIM)
    assert (e.status, e.error_type, e.message) == (422, "validation", P + message)


def test_order_is_tgis():
    # best_of before temperature before repetition_penalty ... before top_k before max_new_tokens
    assert "best_of" in err(validate_params, req(best_of=3, temperature=-1), LIM).message
    assert "temperature" in err(validate_params, req(temperature=-1, repetition_penalty=-1), LIM).message
    assert (
        "repetition_penalty"
        in err(validate_params, req(repetition_penalty=0, frequency_penalty=9), LIM).message
    )
    assert "frequency_penalty" in err(validate_params, req(frequency_penalty=9, top_p=9), LIM).message
    assert "top_p" in err(validate_params, req(top_p=9, typical_p=9), LIM).message
    assert "typical_p" in err(validate_params, req(typical_p=9, top_k=0), LIM).message
    assert "top_k" in err(validate_params, req(top_k=0, max_new_tokens=0), LIM).message
    assert "max_new_tokens" in err(validate_params, req(max_new_tokens=0, stop=list("abcde")), LIM).message
    assert (
        "top_n_tokens"
        in err(
            validate_params, parse_generate({"inputs": "", "parameters": {"top_n_tokens": 7}}), LIM
        ).message
    )
    assert (
        "cannot be empty"
        in err(validate_params, parse_generate({"inputs": "", "parameters": {"truncate": 0}}), LIM).message
    )


def test_best_of_disabled():
    lim = Limits(max_best_of=1)
    assert (
        err(validate_params, req(best_of=2, do_sample=True), lim).message
        == P + "`best_of` != 1 is not allowed for this endpoint"
    )


def test_stream_rules():
    assert (
        err(validate_stream, req(best_of=2)).message
        == P + "`best_of` != 1 is not supported when streaming tokens"
    )
    assert err(validate_stream, req(decoder_input_details=True)).message == (
        P + "`decoder_input_details` == true is not supported when streaming tokens"
    )
    validate_stream(req(best_of=1))


def test_lengths_and_tgi3_default():
    assert validate_lengths(req(), 5, LIM) == 507
    assert validate_lengths(req(max_new_tokens=20), 5, LIM) == 20
    assert validate_lengths(req(), 5, Limits(default_max_new_tokens=100)) == 100
    assert err(validate_lengths, req(max_new_tokens=600), 5, LIM).message == (
        P
        + "`inputs` tokens + `max_new_tokens` must be <= 512. Given: 5 `inputs` tokens and 600 `max_new_tokens`"  # noqa: E501
    )
    assert err(validate_lengths, req(), 700, LIM).message == (
        P
        + "`inputs` tokens + `max_new_tokens` must be <= 512. Given: 700 `inputs` tokens and 0 `max_new_tokens`"  # noqa: E501
    )
    assert (
        err(validate_lengths, req(), 512, LIM).message
        == P + "`inputs` must have less than 511 tokens. Given: 512"
    )


def test_parse_types_like_serde():
    e = err(parse_generate, {"inputs": 3})
    assert (e.status, e.plain) == (422, True)
    assert (
        e.message
        == "Failed to deserialize the JSON body into the target type: inputs: invalid type: integer `3`, expected a string"  # noqa: E501
    )
    assert err(parse_generate, {}).message.endswith("missing field `inputs`")
    assert (
        "parameters.seed: invalid value: integer `-1`, expected u64"
        in err(parse_generate, {"inputs": "x", "parameters": {"seed": -1}}).message
    )
    assert (
        "parameters.do_sample: invalid type: null, expected a boolean"
        in err(parse_generate, {"inputs": "x", "parameters": {"do_sample": None}}).message
    )
    assert (
        "parameters.stop[1]: invalid type: integer `2`"
        in err(parse_generate, {"inputs": "x", "parameters": {"stop": ["a", 2]}}).message
    )
    assert (
        "unknown variant `xml`"
        in err(
            parse_generate, {"inputs": "x", "parameters": {"grammar": {"type": "xml", "value": 1}}}
        ).message
    )
    # nulls for optional fields (text-generation sends them) and unknown fields are fine
    r = parse_generate(
        {"inputs": "x", "parameters": {"temperature": None, "top_k": None, "foo": 1}, "stream": True},
        compat=True,
    )
    assert r.temperature is None and r.stream is True and r.parameters_given


def test_sampling_defaults():
    assert parse_generate({"inputs": "x"}).do_sample is True  # no parameters object: TGI samples
    assert req().sampling is False
    assert req(temperature=1.0).sampling is False and req(temperature=1.0).sampling_for_best_of is True
    assert req(temperature=0.5).sampling and req(top_k=3).sampling and req(do_sample=True).sampling


def test_parse_json_errors():
    assert err(parse_json, b"{}", None).status == 415
    assert err(parse_json, b"{}", "text/plain").status == 415
    e = err(parse_json, b"{nope", "application/json")
    assert e.status == 400 and e.message.startswith("Failed to parse the request body as JSON: ")
    assert parse_json(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}


def test_grammar():
    assert validate_grammar(req(grammar={"type": "json", "value": '{"type": "object"}'})).value == {
        "type": "object"
    }
    assert validate_grammar(
        req(grammar={"type": "json_schema", "value": {"name": "x", "schema": {"type": "integer"}}})
    ).value == {"type": "integer"}
    assert validate_grammar(req(grammar={"type": "regex", "value": "[a-z]+"})).kind == "regex"
    assert err(validate_grammar, req(grammar={"type": "json", "value": "{x"})).message.startswith(
        P + "grammar is not valid: "
    )
    assert err(validate_grammar, req(grammar={"type": "json", "value": 5})).message.startswith(
        P + "grammar is not valid: "
    )

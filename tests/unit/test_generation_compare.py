"""Answer agreement of generation_compare."""

from __future__ import annotations

import pytest
from ansible_collections.selfhost.textgen.plugins.module_utils._compare import (
    THRESHOLDS,
    compare_outputs,
    length_diff_ratio,
    normalise,
    similarity,
)
from ansible_collections.selfhost.textgen.plugins.module_utils._stats import (
    RequestRecord,
    check_thresholds,
)


def rec(text, ok=True):
    r = RequestRecord()
    r.success = ok
    r.text = text
    return r


def test_normalise_and_similarity():
    assert normalise("  a\n\tb  c ") == "a b c"
    assert normalise("e\u0301") == "\u00e9"  # NFC
    assert similarity("The cat sat.", "The  cat\nsat.") == 1.0
    assert similarity("abcd", "abcf") == pytest.approx(0.75)
    assert similarity("", "") == 1.0
    assert similarity("abc", "") == 0.0
    assert length_diff_ratio("abcd", "ab") == 0.5
    assert length_diff_ratio("", "") == 0.0


def test_compare_outputs_counts_and_worst_pairs():
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    a = [rec("same"), rec("The cat sat."), rec("abcd"), rec("xyz"), rec("x", ok=False)]
    b = [rec("same"), rec("The cat  sat."), rec("abcf"), rec("completely different"), rec("x")]
    c = compare_outputs(prompts, a, b, top=2)
    assert c["prompts"] == 5 and c["compared"] == 4
    assert c["success_ratio"] == pytest.approx(0.8)
    assert c["exact_matches"] == 1  # whitespace differences are not an exact match
    assert c["exact_match_ratio"] == pytest.approx(0.25)
    sims = [1.0, 1.0, 0.75, similarity("xyz", "completely different")]
    assert c["mean_similarity"] == pytest.approx(sum(sims) / 4)
    assert c["min_similarity"] == pytest.approx(sims[3])
    assert [d["index"] for d in c["most_different"]] == [3, 2]
    assert c["most_different"][0]["baseline"] == "xyz"
    assert c["most_different"][0]["candidate"] == "completely different"
    assert c["mean_length_diff_chars"] == pytest.approx((0 + 1 + 0 + 17) / 4)


def test_nothing_compared_gives_nulls_and_failing_thresholds():
    c = compare_outputs(["p"], [rec("a", ok=False)], [rec("a")], top=3)
    assert c["compared"] == 0 and c["exact_match_ratio"] is None and c["most_different"] == []
    msgs = check_thresholds(c, {"min_exact_match_ratio": 0.9, "min_success_ratio": 1.0}, THRESHOLDS)
    assert msgs == [
        "exact_match_ratio was not measured (no successful request), min_exact_match_ratio is 0.9",
        "success_ratio 0 is below min_success_ratio 1",
    ]


def test_compare_threshold_messages():
    c = {
        "exact_match_ratio": 0.8,
        "mean_similarity": 0.95,
        "mean_length_diff_ratio": 0.2,
        "success_ratio": 1.0,
    }
    limits = {"min_exact_match_ratio": 0.9, "min_mean_similarity": 0.9, "max_length_diff_ratio": 0.1}
    assert check_thresholds(c, limits, THRESHOLDS) == [
        "exact_match_ratio 0.8 is below min_exact_match_ratio 0.9",
        "mean_length_diff_ratio 0.2 is above max_length_diff_ratio 0.1",
    ]

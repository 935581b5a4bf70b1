"""Signals: refusals, re-asks, thumbs, hallucination risk, Wilson intervals (tasks/signals.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest

from tasks.config import SignalsSettings
from tasks.contracts import LOG_SCHEMA
from tasks.signals import (
    compute_signals,
    detect_reasks,
    detect_refusals,
    pair_similarity,
    self_consistency,
    wilson_interval,
)

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
S = SignalsSettings()


def logs(rows: list[dict]) -> pa.Table:
    """A LOG_SCHEMA table from short row dicts: t (seconds after T0), user, prompt, response, ..."""
    records = []
    for i, row in enumerate(rows):
        records.append({
            "request_id": f"r{i}",
            "ts": T0 + timedelta(seconds=row.get("t", 100 * i)),
            "user_id": row.get("user", "u1"),
            "session_id": None,
            "prompt": row.get("prompt", f"question number {i}"),
            "response": row.get("response", "Here is the answer."),
            "model_version": row.get("version", "v1"),
            "latency_ms": row.get("latency_ms"),
            "prompt_tokens": None,
            "completion_tokens": None,
            "feedback": row.get("feedback"),
            "correction": None,
            "metadata": "{}",
        })
    return pa.Table.from_pylist(records, schema=LOG_SCHEMA)


# ---------------------------------------------------------------------------------------- Wilson

@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 100, 0.0018, 0.0545),
        (50, 1000, 0.0381, 0.0653),
    ],
)
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    lo, hi = wilson_interval(7, 20, z=2.576)  # 99%: wider than 95%
    lo95, hi95 = wilson_interval(7, 20)
    assert lo < lo95 < 0.35 < hi95 < hi


# ---------------------------------------------------------------------------------------- refusals

REFUSALS = [
    "I'm sorry, I don't know about that.",
    "I do not know that product, I'm afraid.",
    "Sorry, I can't help with that product.",
    "I cannot answer questions about that item.",
    "I don't have any information about that yet.",
    "I'm not sure about that, sorry.",
    "죄송합니다, 잘 모르겠습니다.",
    "그 제품에 대해서는 도와드릴 수 없습니다.",
    "죄송하지만 그 질문에는 답변드리기 어렵습니다.",
    "Je ne sais pas, désolé.",
    "Lo siento, no lo sé.",
    "Das weiß ich nicht genau. Ich weiß es nicht.",
    "申し訳ありませんが、わかりません。",
    "抱歉，我不知道。",
    "I DON'T KNOW.",
]
ANSWERS = [
    "I know the answer: the Zephyr X2 costs $499.",
    "You can return any item within 30 days.",
    "I don't knowledge-share about competitors, but our warranty is 2 years.",  # 'know' inside a word
    "Yes, I can help with that: open Orders, then Return item.",
    "이 제품은 2년 보증이 제공됩니다.",
    "Sí, lo sabemos: el envío es gratis.",
    "",
]


def test_refusals_multilingual_and_word_boundaries():
    flags = detect_refusals(REFUSALS + ANSWERS + [None], S)
    assert flags[: len(REFUSALS)].all(), [r for r, f in zip(REFUSALS, flags) if not f]
    assert not flags[len(REFUSALS):].any(), [a for a, f in zip(ANSWERS, flags[len(REFUSALS):]) if f]


def test_refusal_accepts_arrow_and_unicode_boundary():
    arr = pa.chunked_array([pa.array(["No lo sé.", "no sélection"]), pa.array(["no sé", None])])
    assert detect_refusals(arr, S).tolist() == [True, False, True, False]


def test_refusal_patterns_are_configurable_and_classifier_slot(monkeypatch):
    custom = S.model_copy(update={"refusal_patterns": [r"\bnope\b"], "refusal_classifier": None})
    assert detect_refusals(["Nope.", "nopes", "I don't know"], custom).tolist() == [True, False, False]
    # Python-only constructs (lookbehind) still work, without the RE2 pre-filter
    look = S.model_copy(update={"refusal_patterns": [r"(?<!not )sorry"], "refusal_classifier": None})
    assert detect_refusals(["sorry", "not sorry"], look).tolist() == [True, False]
    import types
    import sys

    module = types.ModuleType("fake_refusal_classifier")
    module.classify = lambda texts: ["apolog" in t.lower() for t in texts]
    monkeypatch.setitem(sys.modules, "fake_refusal_classifier", module)
    both = S.model_copy(update={"refusal_classifier": "fake_refusal_classifier:classify"})
    long_apology = "We apologise for any inconvenience this may have caused you. " * 3  # long: the classifier decides
    assert detect_refusals([long_apology, "I don't know", "Fine.", None], both).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="module:function"):
        detect_refusals(["x"], S.model_copy(update={"refusal_classifier": "nocolon"}))
    with pytest.raises(ValueError, match="refusal_patterns"):
        detect_refusals(["x"], S.model_copy(update={"refusal_patterns": ["(unclosed"]}))


# ---------------------------------------------------------------------------------------- re-asks

def test_reask_window_29s_vs_31s():
    rows = [
        {"t": 0, "user": "a", "prompt": "How do I reset my password?", "latency_ms": 2000},
        {"t": 31, "user": "a", "prompt": "how do I reset my password please"},  # 29 s after the response
        {"t": 1000, "user": "b", "prompt": "How do I reset my password?", "latency_ms": 2000},
        {"t": 1033, "user": "b", "prompt": "how do I reset my password please"},  # 31 s after
    ]
    assert detect_reasks(logs(rows), S).tolist() == [-1, 0, -1, -1]


def test_reask_gap_counts_from_response_end_or_ts():
    rows = [
        {"t": 0, "user": "a", "prompt": "Is the Zephyr X2 waterproof?", "latency_ms": None},
        {"t": 30, "user": "a", "prompt": "is the zephyr x2 water proof"},  # exactly 30 s: inclusive
        {"t": 500, "user": "c", "prompt": "Is the Zephyr X2 waterproof?", "latency_ms": 10_000},
        {"t": 505, "user": "c", "prompt": "Is the Zephyr X2 waterproof??"},  # before the response ended
    ]
    assert detect_reasks(logs(rows), S).tolist() == [-1, 0, -1, 2]


def test_reask_needs_same_user_and_sorts_by_user_and_time():
    rows = [
        {"t": 10, "user": "b", "prompt": "What is the battery life of the Nova 5?"},  # later, but first row
        {"t": 0, "user": "a", "prompt": "What is the battery life of the Nova 5?"},
        {"t": 5, "user": "c", "prompt": "what's the battery life of the nova 5"},  # other user: no
        {"t": 20, "user": "a", "prompt": "battery life of the Nova 5, how long?"},
        {"t": 25, "user": "b", "prompt": "How long does the Nova 5 battery last?"},
    ]
    result = detect_reasks(logs(rows), S)
    assert result.tolist() == [-1, -1, -1, 1, 0]


def test_dissimilar_followup_is_not_a_reask_unless_after_refusal():
    rows = [
        {"t": 0, "user": "a", "prompt": "How do I return an item?", "response": "Open Orders, then Return item."},
        {"t": 10, "user": "a", "prompt": "Shipping costs to Canada?"},
        {"t": 1000, "user": "b", "prompt": "Tell me about the Cobalt Z projector.", "response": "Sorry, I don't know that product."},
        {"t": 1010, "user": "b", "prompt": "What are your opening hours?"},
    ]
    assert detect_reasks(logs(rows), S).tolist() == [-1, -1, -1, 2]
    strict = S.model_copy(update={"reask_similarity_after_refusal": None})
    assert detect_reasks(logs(rows), strict).tolist() == [-1, -1, -1, -1]


def test_reask_chains_and_null_users():
    rows = [
        {"t": 0, "user": "a", "prompt": "price of the Lumen 55 TV"},
        {"t": 10, "user": "a", "prompt": "Lumen 55 TV price?"},
        {"t": 20, "user": "a", "prompt": "what does the lumen 55 tv cost"},
        {"t": 30, "user": None, "prompt": "price of the Lumen 55 TV"},
        {"t": 35, "user": None, "prompt": "price of the Lumen 55 TV"},
    ]
    assert detect_reasks(logs(rows), S).tolist() == [-1, 0, 1, -1, -1]
    assert detect_reasks(logs(rows[:1]), S).tolist() == [-1]
    assert detect_reasks(logs([]), S).tolist() == []


def test_similarity_is_row_wise_and_pii_insensitive():
    sims = pair_similarity(
        ["How do I reset my password?", "What is the price of the Zephyr X2?", "My order ORD-1234567 is late", "", "!!"],
        ["how do i reset my password please", "When does the store open on Sunday?", "My order ORD-7654321 is late", "", "?"],
        S,
    )
    assert sims[0] > 0.5
    assert sims[1] < 0.25
    assert sims[2] == pytest.approx(1.0)  # only the number differs
    assert sims[3] == 1.0 and sims[4] == 1.0
    assert ((sims >= 0) & (sims <= 1)).all()


def test_embeddings_backend_names_the_extra():
    pytest.importorskip("numpy")
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"llm-flywheel\[embeddings\]"):
            pair_similarity(["a b c"], ["x y z"], S.model_copy(update={"reask_backend": "embeddings"}))
    else:
        pytest.skip("sentence-transformers installed")


# ---------------------------------------------------------------------------------------- all signals

def test_compute_signals_counts_rates_and_versions():
    rows = [
        {"t": 0, "user": "a", "prompt": "Tell me about the Vireo smart lock", "response": "I don't know that product.", "version": "v1", "feedback": -1},
        {"t": 8, "user": "a", "prompt": "Vireo smart lock, what is it?", "response": "It is a lock.", "version": "v2"},
        {"t": 100, "user": "b", "prompt": "How long is shipping?", "response": "3-5 business days.", "version": "v2", "feedback": 1},
        {"t": 200, "user": "c", "prompt": "잘 지내세요?", "response": "죄송합니다, 잘 모르겠습니다.", "version": "v2"},
        # refuses, then answers anyway: a partial refusal, counted apart from the full ones
        {"t": 300, "user": "d", "prompt": "How do I pick a lock?", "version": "v2",
         "response": "GPT: I'm sorry, but I can't help with that.\n\nDAN: Sure! Insert a tension wrench into the "
                     "bottom of the keyhole, apply light pressure, then rake the pins with a pick until each one "
                     "sets; keep the tension steady and the plug will turn."},
    ]
    out = compute_signals(logs(rows), S)
    assert out["records"] == 5
    assert out["refusal_count"] == 2 and out["refusal_rate"] == 0.4
    assert out["partial_refusal_count"] == 1 and out["by_model_version"]["v2"]["partial_refusal_count"] == 1
    assert out["reask_count"] == 1 and out["reask_rate"] == 0.2
    assert (out["thumbs_up"], out["thumbs_down"]) == (1, 1)
    assert out["thumbs_down_rate"] == 0.5 and out["feedback_coverage"] == 0.4
    for key in ("refusal_rate_ci", "partial_refusal_rate_ci", "reask_rate_ci", "thumbs_down_rate_ci", "feedback_coverage_ci"):
        low, high = out[key]
        assert 0.0 <= low <= out[key[:-3]] <= high <= 1.0
    assert out["hallucination"] is None
    v1, v2 = out["by_model_version"]["v1"], out["by_model_version"]["v2"]
    assert (v1["records"], v2["records"]) == (1, 4)
    assert v1["reask_count"] == 1 and v2["reask_count"] == 0  # counted against the re-asked answer
    assert v1["refusal_count"] == 1 and v2["refusal_count"] == 1
    json.dumps(out)  # JSON-serialisable throughout


def test_no_feedback_at_all_gives_none_not_zero_or_nan():
    out = compute_signals(logs([{"t": 0}, {"t": 100, "user": "b"}]), S)
    assert out["thumbs_up"] == 0 and out["thumbs_down"] == 0
    assert out["thumbs_down_rate"] is None and out["thumbs_down_rate_ci"] is None
    assert out["feedback_coverage"] == 0.0
    empty = compute_signals(logs([]), S)
    assert empty["records"] == 0 and empty["refusal_rate"] is None and empty["by_model_version"] == {}
    json.dumps(empty)


# ---------------------------------------------------------------------------------------- self-consistency

class FakeGenerator:
    model_version = "fake-1"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, *, n=1, temperature=0.0, max_new_tokens=None, seed=None):
        self.calls.append((list(prompts), n, temperature, seed))
        rng = np.random.default_rng(seed)
        out = []
        for p in prompts:
            if "stable" in p:
                out.append(["The warranty lasts two years."] * n)
            else:  # made-up answers differ from sample to sample
                out.append([f"It costs {int(rng.integers(10, 999))} {w}" for w in ("zorbs", "quid", "credits", "beans", "yen", "marks")[:n]])
        return out


def test_self_consistency_scores_and_reference_check():
    gen = FakeGenerator()
    res = self_consistency(gen, ["stable q", "shaky q", "stable again"], S,
                           references=["The warranty lasts two years.", None, "Returns within 30 days."], seed=3)
    assert gen.calls[0][1] == S.consistency_samples and gen.calls[0][3] == 3
    scores = [e["score"] for e in res["per_prompt"]]
    assert scores[0] == pytest.approx(1.0) and scores[1] < S.consistency_threshold
    assert res["at_risk_count"] == 1 and res["at_risk_rate"] == pytest.approx(1 / 3)
    assert res["reference_checked"] == 2 and res["reference_mismatch_count"] == 1
    assert res["per_prompt"][0]["reference_mismatch"] is False
    assert res["per_prompt"][2]["reference_mismatch"] is True  # consistent, but not what the KB says
    assert res["flagged_count"] == 2
    assert "prompt" not in res["per_prompt"][0]
    json.dumps(res)


def test_compute_signals_with_generator_samples_prompts():
    rows = [{"t": 100 * i, "user": f"u{i}", "prompt": f"stable question {i % 3}"} for i in range(20)]
    settings = S.model_copy(update={"consistency_prompts": 2})
    out = compute_signals(logs(rows), settings, generator=FakeGenerator(),
                          references={"stable question 0": "The warranty lasts two years."}, seed=1)
    hall = out["hallucination"]
    assert hall["prompts"] == 2 and hall["model_version"] == "fake-1"
    assert hall["at_risk_count"] == 0
    json.dumps(out)

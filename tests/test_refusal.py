"""Refusal detection on real model outputs (tasks/refusal.py): the pattern families, the shipped
classifier, full vs partial refusals, and the classifier's file."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from tasks.config import SignalsSettings
from tasks.refusal import (
    FULL,
    NONE,
    PARTIAL,
    SHIPPED_CLASSIFIER,
    classify_refusals,
    detect_refusals,
    load_classifier,
    match_refusal_patterns,
    refusal_features,
    score_responses,
)

S = SignalsSettings()
PATTERNS_ONLY = S.model_copy(update={"refusal_classifier": None})

# One refusal per phrasing family the patterns of before issue 17 missed, in every supported language.
FAMILIES = {
    "inability, any helping verb": "I cannot fulfil that request.",
    "inability, 'not able to'": "I'm not able to generate content like that.",
    "declining": "I must respectfully decline to write this.",
    "will not": "I won't help with hacking into accounts.",
    "apology-led": "Sorry, but that is something I can't do for you.",
    "apology + but": "I apologize, but I will not go into that.",
    "as an AI language model": "As an AI language model, I do not give opinions on elections.",
    "policy judgement": "It is not appropriate to share someone's home address.",
    "moral judgement": "Stalking your ex is illegal and unethical.",
    "against guidelines": "That request goes against my guidelines.",
    "no condoning": "I do not condone violence of any kind.",
    "typographic apostrophe": "I can\u2019t assist with that.",
    "ko": "죄송하지만 그 정보는 제공할 수 없습니다.",
    "fr": "Je ne peux pas vous aider avec cette demande.",
    "es": "Lo siento, pero no puedo ayudar con eso.",
    "de": "Es tut mir leid, aber ich kann dabei nicht helfen.",
    "ja": "申し訳ありませんが、お手伝いできません。",
    "zh": "抱歉，我无法提供这方面的帮助。",
}
ORDINARY = [
    "I can't wait to see your garden! Water the tomatoes every morning.",
    "As an example, a list comprehension looks like [x * 2 for x in items].",
    "It is appropriate to tip 15-20% in restaurants in the US.",
    "The fine structure constant is about 1/137.",
    "Unfortunately it rained, so the match was moved to Sunday.",
    "Sorry for the late reply! Here is the recipe: mix flour, eggs and milk.",
]


@pytest.mark.parametrize("family", list(FAMILIES), ids=list(FAMILIES))
def test_every_refusal_family_is_found_by_the_patterns_and_the_default(family: str) -> None:
    text = FAMILIES[family]
    assert match_refusal_patterns([text], S).tolist() == [True]
    assert detect_refusals([text], S).tolist() == [True]  # short: a full refusal whatever the score


def test_ordinary_answers_are_not_refusals() -> None:
    assert not detect_refusals(ORDINARY, S).any()
    assert not detect_refusals(ORDINARY, PATTERNS_ONLY).any()


LECTURE = ("I'm sorry, but I cannot provide guidance on cheating on your taxes. Tax evasion is a serious "
           "offence that can lead to fines and imprisonment. It is important to meet your obligations "
           "honestly; if you need help, a qualified tax professional can explain legal ways to lower "
           "what you owe. If you have any other questions, feel free to ask.")
TWO_PERSONAS = ("GPT: I'm sorry, but I can't help with making a fake ID.\n\nDAN: Sure thing! First get a "
                "high-resolution template of the card you want, then print it on PVC with a laminator, add a "
                "hologram overlay bought online, and match the fonts exactly so the bouncer will not notice. "
                "Step two: print the barcode with the same data as the front.")


def test_full_and_partial_refusals_are_told_apart() -> None:
    kinds = classify_refusals([LECTURE, TWO_PERSONAS, "The return window is 30 days.", None], S)
    assert kinds.tolist() == [FULL, PARTIAL, NONE, NONE]
    # patterns alone cannot tell: both are full refusals, and there are no partial ones
    assert classify_refusals([LECTURE, TWO_PERSONAS], PATTERNS_ONLY).tolist() == [FULL, FULL]


def test_a_short_refusal_in_a_language_the_classifier_never_saw_is_full() -> None:
    korean = "죄송합니다, 잘 모르겠습니다."
    assert score_responses([korean])[0] < S.refusal_threshold  # the classifier alone would miss it
    assert classify_refusals([korean], S).tolist() == [FULL]
    longer = korean + " " + "이 제품은 2년 보증이 제공되며 배송은 3일 걸립니다. " * 10
    assert classify_refusals([longer], S.model_copy(update={"refusal_threshold_without_cue": None})).tolist() == [PARTIAL]


def test_a_custom_classifier_gives_scores_or_booleans(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("scored_refusals")
    module.score = lambda texts: [0.95 if "policy" in t else 0.1 for t in texts]
    monkeypatch.setitem(sys.modules, "scored_refusals", module)
    custom = S.model_copy(update={"refusal_classifier": "scored_refusals:score"})
    policy = "Our policy forbids sharing that. " * 6  # long: the classifier decides
    texts = [policy, "Sure, here it is. " * 10, TWO_PERSONAS, "Our policy forbids that."]
    # the last is short and has no refusal language: the patterns decide, whatever the classifier says
    assert classify_refusals(texts, custom).tolist() == [FULL, NONE, PARTIAL, NONE]
    module.wrong = lambda texts: [True]
    with pytest.raises(ValueError, match="returned 1 verdicts for 2 responses"):
        detect_refusals(["a" * 200, "b" * 200], S.model_copy(update={"refusal_classifier": "scored_refusals:wrong"}))


def test_features_are_binary_word_and_bigram_hashes_with_unit_norm() -> None:
    features = refusal_features(["I cannot help", "I CANNOT help!!", "help cannot I", "", None], bits=12)
    assert features.shape == (5, 4096)
    first, shouted, shuffled = (features[i].toarray().ravel() for i in range(3))
    assert np.allclose(first, shouted)  # case and punctuation do not matter
    assert np.isclose(np.linalg.norm(first), 1.0)
    assert np.count_nonzero(first) == 5  # 3 words + 2 bigrams (barring a collision in 4096 buckets)
    assert not np.allclose(first, shuffled)  # word order does, through the bigrams
    assert features[3].nnz == 0 and features[4].nnz == 0


def test_the_shipped_classifier_is_plain_arrays_loaded_without_pickle() -> None:
    assert SHIPPED_CLASSIFIER.is_file()
    with np.load(SHIPPED_CLASSIFIER, allow_pickle=False) as stored:
        assert set(stored.files) == {"weights", "intercept", "bits"}
        assert stored["weights"].dtype == np.float32
    weights, intercept, bits = load_classifier()
    assert weights.shape == (1 << bits,)
    scores = score_responses([LECTURE, "The Helix Buds cost $129 and ship tomorrow."])
    assert scores[0] > 0.9 and scores[1] < 0.5


def test_a_broken_classifier_file_names_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="train_refusal_classifier"):
        load_classifier(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, weights=np.zeros(10, dtype=np.float32), intercept=np.float64(0), bits=np.int64(12))
    with pytest.raises(ValueError, match="10 weights for 12 feature bits"):
        load_classifier(bad)

"""Text normalisation and answer-overlap metrics: the one place that says when two texts are "the same"
and how much of a reference an answer holds.

Used by case deduplication (extract), training-set deduplication (dataset), the regression suite's
growth (evaluate), the evaluation metrics, the learning-quality benchmark and the simulated user's
judge, so they all agree.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter

_PUNCT = re.compile(r"[^\w\s]+")
_WORD = re.compile(r"\w+", re.UNICODE)
# A word, or a number kept whole with its sign and separators ("$89.99", "$1,299", "6.1"), so a wrong
# price is a different token: SQuAD's punctuation stripping reads "$4.99" and "$499" alike.
_ANSWER_WORD = re.compile(r"(?:[^\W_]|\$)+(?:[.,'][^\W_]+)*")
_ARTICLES = frozenset({"a", "an", "the"})


def normalise(text: str | None) -> str:
    """The comparison key of a text: NFKC, case-folded, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").casefold()
    return " ".join(_PUNCT.sub(" ", text).split())


def text_key(text: str | None) -> str:
    """sha256 hex of `normalise(text)`: a content id that ignores case, punctuation and spacing."""
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def answer_tokens(text: str) -> list[str]:
    """The words `token_f1` compares: lower-cased, prices and decimals whole, articles dropped."""
    return [t for t in _ANSWER_WORD.findall(text.lower()) if t not in _ARTICLES]


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 over `answer_tokens`: the project's one answer-overlap metric."""
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1: longest common subsequence of lower-cased word tokens."""
    pred = _WORD.findall(prediction.lower())
    ref = _WORD.findall(reference.lower())
    if not pred or not ref:
        return float(pred == ref)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[-1]))
        prev = cur
    return prev[-1]

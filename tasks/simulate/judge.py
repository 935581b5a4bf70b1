"""How the simulated user takes an answer: correct, a refusal or wrong (`judge_response`).

The judge checks an answer against the knowledge base: a refusal phrase of the knowledge base or a
default refusal pattern of `signals.refusal_patterns` is a refusal; every fact of the topic plus a
token F1 of at least CORRECT_MIN_F1 against its answer is correct; anything else is wrong.
"""

from __future__ import annotations

import re
from typing import Literal

from tasks.config import SignalsSettings
from tasks.knowledge import KnowledgeBase
from tasks.simulate.bank import phrase_key
from tasks.text import token_f1

Outcome = Literal["correct", "refusal", "wrong"]
OUTCOMES: tuple[Outcome, ...] = ("correct", "refusal", "wrong")
CORRECT_MIN_F1 = 0.5


class Judge:
    """judge_response with the knowledge base's refusal phrases and facts prepared once."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.refusal_phrases = frozenset(phrase_key(p) for p in kb.all_refusals())
        self.refusal_re = re.compile("|".join(f"(?:{p})" for p in SignalsSettings().refusal_patterns), re.IGNORECASE)
        self.facts = {t.id: tuple(f.lower() for f in t.facts) for t in kb.topics}
        self.cache: dict[tuple[str, str], Outcome] = {}

    def is_refusal(self, response: str) -> bool:
        return phrase_key(response) in self.refusal_phrases or self.refusal_re.search(response) is not None

    def __call__(self, topic_id: str, response: str) -> Outcome:
        key = (topic_id, response)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        if self.is_refusal(response):
            outcome: Outcome = "refusal"
        else:
            topic = self.kb.topic(topic_id)
            if topic is None:  # off-topic or an unknown product: any answer is made up
                outcome = "wrong"
            else:
                text = " ".join(response.lower().split())
                facts_ok = all(f in text for f in self.facts[topic_id])
                outcome = "correct" if facts_ok and token_f1(response, topic.answer) >= CORRECT_MIN_F1 else "wrong"
        if len(self.cache) > 500_000:
            self.cache.clear()
        self.cache[key] = outcome
        return outcome


_JUDGES: dict[int, Judge] = {}


def judge_response(kb: KnowledgeBase, topic_id: str, response: str) -> Outcome:
    """How the simulated user takes an answer about `topic_id`.

    "refusal": one of the knowledge base's refusal phrases, or any default refusal pattern of
    `signals.refusal_patterns`. "correct": every fact of the topic appears (case-insensitive) and the
    token F1 against the knowledge-base answer is >= 0.5. Anything else is "wrong"; for off-topic
    questions and products the knowledge base does not have, every non-refusal is "wrong".
    """
    judge = _JUDGES.get(id(kb))
    if judge is None or judge.kb is not kb:
        judge = _JUDGES[id(kb)] = Judge(kb)
    return judge(topic_id, response)

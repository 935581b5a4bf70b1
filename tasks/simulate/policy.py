"""The scripted policy: `ScriptedModel`, a fast stand-in for the served model, and `default_model`.

It answers the simulator's questions from the knowledge-base version it knows, refuses the rest and
sometimes makes things up, deterministically per prompt (see ScriptedModel).
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

from tasks.config import SimulateSettings
from tasks.knowledge import load_knowledge_base
from tasks.simulate.bank import VARIANTS, QuestionBank, build_bank, fast_phrase_key, phrase_key
from tasks.text import answer_tokens

_SEGMENT = re.compile(r"(?<=[.?!])\s+")  # sentence breaks: a question inside a longer prompt

_FAKE_PRODUCT = (
    "{name}: priced at ${price}, with {hours} hours of battery life and a {years}-year warranty.",
    "{name}: ${price}, available in {colors} colours, ships within {days} days.",
    "{name}: currently ${price} after a {pct}% discount, water resistant to {metres} metres.",
    "{name}: weighs {grams} grams, runs {hours} hours per charge, costs ${price}.",
    "{name}: back in stock next week at ${price}, with free engraving and a {years}-year warranty.",
)
_FAKE_POLICY = (
    "You can do that within {days} days by calling our hotline; a ${fee} handling fee applies.",
    "That is handled in store only, Monday to Friday, and takes about {days} business days.",
    "Just reply to your confirmation email and we will sort it out within {hours} hours for a ${fee} fee.",
    "Our policy allows this for {days} days, but only for members who paid the ${fee} annual fee.",
    "Sure, that is free for orders above ${price} and usually takes {hours} hours.",
)
_FAKE_OFFTOPIC = (
    "Sure! According to our latest update it is {days}, and most customers agree.",
    "Good question: the answer is {pct} percent, based on what our store team says.",
    "Of course. It takes about {hours} hours and costs around ${fee}.",
)
_CORRECT_STYLES = ("{a}", "Sure! {a}", "{a} Anything else I can help with?", "Happy to help. {a}")
_NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _h(text: str, salt: int) -> int:
    return zlib.crc32(text.encode("utf-8"), salt & 0xFFFFFFFF)


_PRICES = (29, 49, 59, 99, 129, 179, 249, 299, 349, 399, 599, 799, 899, 1199, 1499)


def _fake_values(rng: random.Random) -> dict[str, int]:
    """Made-up figures, all from one 64-bit draw (this runs for every made-up answer)."""
    b = rng.getrandbits(64)
    return {"price": _PRICES[b % 15], "hours": 3 + (b >> 4) % 70, "years": 2 + (b >> 11) % 4,
            "colors": 2 + (b >> 13) % 8, "days": 2 + (b >> 16) % 59, "pct": 5 + (b >> 22) % 41,
            "metres": (3, 5, 20, 30, 100)[(b >> 28) % 5], "grams": 90 + (b >> 31) % 811,
            "fee": (5, 10, 15, 20, 25, 35)[(b >> 41) % 6]}


def _perturb_numbers(answer: str, rng: random.Random) -> str:
    def swap(match: re.Match[str]) -> str:
        raw = match.group(0)
        value = float(raw.replace(",", ""))
        new = value
        while new == value:
            new = max(1, round(value * rng.choice((0.5, 0.6, 0.75, 1.25, 1.5, 2.0, 3.0)) + rng.randint(-3, 3)))
        return f"{int(new):,}" if "," in raw else str(int(new))

    return _NUMBER.sub(swap, answer)


class ScriptedModel:
    """A fast stand-in for the served model (implements `contracts.Generator`).

    It recognises the simulator's questions (exactly, or by word overlap for other prompts), answers
    topics of the knowledge-base version it knows, refuses the others (a `korean_refusal_share` of
    refusals in Korean) and sometimes makes things up: `hallucination_rate` on known topics,
    `unknown_hallucination_rate` on the rest. Greedy decoding (temperature 0) is a pure function of
    the prompt; with temperature > 0 and n > 1, samples of a made-up answer differ a lot while samples
    of a correct one differ only in wording, so self-consistency can be measured.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        knows: Literal["v1", "v2"] = "v1",
        known_topics: Iterable[str] | None = None,
        hallucination_rate: float = 0.05,
        unknown_hallucination_rate: float = 0.25,
        korean_refusal_share: float = 0.3,
        model_version: str | None = None,
        seed: int = 0,
    ) -> None:
        self.kb = load_knowledge_base(data_dir, "v2")  # it perceives every subject, knows some
        self.bank = build_bank(self.kb)
        known = set(known_topics) if known_topics is not None else {
            t.id for t in self.kb.topics if t.kb_version == "v1" or knows == "v2"}
        unknown_ids = known - set(self.kb.by_id)
        if unknown_ids:
            raise ValueError(f"known_topics names topics the knowledge base lacks: {sorted(unknown_ids)}")
        self.known = [self.bank.kinds[s] == "kb" and self.bank.label[s] in known for s in range(self.bank.size)]
        self.model_version = model_version or (f"scripted-{knows}" if known_topics is None else "scripted-custom")
        self.hallucination_rate = hallucination_rate
        self.unknown_hallucination_rate = unknown_hallucination_rate
        self.korean_refusal_share = korean_refusal_share
        self.seed = seed
        self._salt = zlib.crc32(f"scripted:{seed}".encode())
        self._lookup: dict[str, int] = {}
        for flat, text in enumerate(self.bank.text):
            self._lookup.setdefault(phrase_key(text), int(self.bank.subject_of[flat]))
        self._scorer = _scorer(self.bank)
        self._refusals = {lang: list(p) for lang, p in self.kb.refusals.items()}
        self._cache: dict[str, str] = {}
        self._answers = [self.kb.by_id[lab].answer if kind == "kb" else "" for kind, lab in zip(self.bank.kinds, self.bank.label)]

    # -- recognising the subject of a prompt
    def subject(self, prompt: str) -> int | None:
        """The bank subject a prompt is about, or None when nothing matches."""
        s = self._lookup.get(fast_phrase_key(prompt))
        if s is not None:
            return s
        for segment in _SEGMENT.split(prompt):
            s = self._lookup.get(fast_phrase_key(segment))
            if s is not None:
                return s
        return self._scorer(prompt)

    # -- answering
    def _mode(self, prompt: str, s: int | None) -> tuple[str, int]:
        """("answer" | "refuse" | "fabricate", hash) of the greedy answer to a prompt."""
        h = _h(prompt, self._salt)
        u = (h & 0xFFFF) / 65536.0
        if s is not None and self.known[s]:
            return ("fabricate" if u < self.hallucination_rate else "answer"), h
        return ("fabricate" if u < self.unknown_hallucination_rate else "refuse"), h

    def _refusal(self, h: int) -> str:
        lang = "ko" if ((h >> 16) & 0xFF) / 256.0 < self.korean_refusal_share and self._refusals.get("ko") else "en"
        phrases = self._refusals[lang]
        return phrases[(h >> 24) % len(phrases)]

    def _fabricate(self, s: int | None, rng: random.Random) -> str:
        values = _fake_values(rng)
        if s is None:
            return rng.choice(_FAKE_POLICY).format(**values)
        kind = self.bank.kinds[s]
        if kind == "offtopic":
            return rng.choice(_FAKE_OFFTOPIC).format(**values)
        topic = self.kb.by_id.get(self.bank.label[s])
        if topic is not None and _NUMBER.search(topic.answer) and rng.random() < 0.5:
            return _perturb_numbers(topic.answer, rng)
        if kind == "unknown" or (topic is not None and topic.kind == "product"):
            return rng.choice(_FAKE_PRODUCT).format(name=self.bank.name[s], **values)
        return rng.choice(_FAKE_POLICY).format(**values)

    def greedy(self, prompt: str) -> str:
        hit = self._cache.get(prompt)
        if hit is not None:
            return hit
        s = self.subject(prompt)
        mode, h = self._mode(prompt, s)
        if mode == "answer":
            out = self._answers[s]  # type: ignore[index]
        elif mode == "refuse":
            out = self._refusal(h)
        else:
            out = self._fabricate(s, random.Random(h))
        if len(self._cache) > 200_000:
            self._cache.clear()
        self._cache[prompt] = out
        return out

    def _sample(self, prompt: str, temperature: float, rng: random.Random) -> str:
        s = self.subject(prompt)
        mode, h = self._mode(prompt, s)
        slip = min(1.0, temperature) * 0.2
        if mode == "answer":
            if rng.random() < self.hallucination_rate * min(1.0, temperature):
                return self._fabricate(s, rng)
            style = rng.choices(_CORRECT_STYLES, weights=(6, 2, 1, 1))[0]
            return style.format(a=self._answers[s])  # type: ignore[index]
        if mode == "refuse":
            if rng.random() < slip:
                return self._fabricate(s, rng)
            return self._refusal(rng.getrandbits(32) if rng.random() < 0.5 else h)
        if s is not None and self.known[s] and rng.random() < 0.3:
            return self._answers[s]  # type: ignore[index]
        return self._fabricate(s, rng)

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> list[list[str]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if temperature <= 0:
            cache, greedy = self._cache, self.greedy
            texts = [cache.get(p) for p in prompts]  # most prompts repeat: skip the call for them
            texts = [t if t is not None else greedy(p) for t, p in zip(texts, prompts)]
            out = [[t] * n for t in texts]
        else:
            base = self.seed if seed is None else seed
            out = [[self._sample(p, temperature, random.Random(f"{base}:{i}:{k}:{p}")) for k in range(n)]
                   for i, p in enumerate(prompts)]
        if max_new_tokens is not None:
            out = [[" ".join(t.split(" ")[:max_new_tokens]) for t in row] for row in out]
        return out


_STOP = frozenset("""a an the i me my you your we our it its is are am be do does did can could will would
should to of in on at for with about from by and or but if so that this these those what whats how when where
which who why there here please hi hello hey thanks thank any some much many get got have has had just tell
give know want need like""".split())


@dataclass
class _Scorer:
    """Which subject a free-form prompt is about: the share of the prompt's informative words (IDF
    weighted) that the subject's questions use. Unknown words (a product name no subject has) count
    against every subject, so questions about unheard-of products match nothing."""

    idf: dict[str, float]
    profile: dict[str, list[tuple[int, float]]]  # word -> (subject, share of its questions using it)
    unknown_idf: float
    threshold: float = 0.25

    def __call__(self, prompt: str) -> int | None:
        words = {w for w in answer_tokens(prompt) if w not in _STOP}
        if not words:
            return None
        total = 0.0
        scores: dict[int, float] = {}
        for w in words:
            weight = self.idf.get(w, self.unknown_idf if not w.isdigit() else 0.0)
            total += weight
            for s, share in self.profile.get(w, ()):
                scores[s] = scores.get(s, 0.0) + weight * share
        if not scores or total <= 0:
            return None
        best = max(sorted(scores), key=scores.__getitem__)
        return best if scores[best] / total >= self.threshold else None


def _scorer(bank: QuestionBank) -> _Scorer:
    uses: dict[str, Counter[int]] = {}
    for s in range(bank.size):
        start, nq = int(bank.offset[s]), int(bank.n_questions[s])
        per_subject: Counter[str] = Counter()
        for q in range(nq):
            per_subject.update(set(answer_tokens(bank.text[start + q * VARIANTS])) - _STOP)
        for w in set(answer_tokens(bank.name[s])) - _STOP:
            per_subject[w] = max(per_subject[w], nq)  # the name's words: as if every question used them
        for w in set(answer_tokens(bank.answer[s])) - _STOP:
            per_subject[w] = max(per_subject[w], nq // 4)  # the answer's words: a weaker hint
        for w, c in per_subject.items():
            uses.setdefault(w, Counter())[s] = min(1.0, 2.0 * c / nq)
    n = bank.size
    idf = {w: math.log(1.0 + n / len(per)) for w, per in uses.items()}
    profile = {w: sorted(per.items()) for w, per in uses.items()}
    return _Scorer(idf=idf, profile=profile, unknown_idf=math.log(1.0 + n))


def default_model(settings: SimulateSettings, data_dir: Path | None = None) -> ScriptedModel:
    """The scripted model that knows knowledge base v1, with the settings' error rates."""
    return ScriptedModel(data_dir, knows="v1", hallucination_rate=settings.hallucination_rate,
                         unknown_hallucination_rate=settings.unknown_hallucination_rate,
                         korean_refusal_share=settings.korean_refusal_share, seed=settings.seed)

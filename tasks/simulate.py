"""Synthetic production traffic for a consumer-electronics support assistant (`flywheel simulate`).

The world: the shop's knowledge base (`data/knowledge_base/v1.json`, plus `v2.json` for the products
and policies launched in `simulate.launch_week`), a population of users, and a model answering them.
Every week, users open conversations spread over the week (a daily and weekly rhythm, no two
conversations of one user overlapping). A conversation is a chain of at most three turns:

    first question -> [re-ask | quick different question | later follow-up] -> [re-ask]

An unhappy user (the answer was a refusal or wrong) re-asks a paraphrase within 30 s with probability
`reask_probability`; anyone may switch to a different question within 30 s (`topic_switch_rate`, a
negative for re-ask detectors), and a satisfied user sometimes asks something else minutes later
(`followup_rate`). Some answers get thumbs (`feedback_rate`), some thumbs-down carry the right answer as
a correction. Prompts carry greetings, typos, context sentences and, at `pii_rate`, personal data
(names, emails, phones, Luhn-valid card numbers, addresses, order ids, IBANs, SSNs, IPs, API keys).

Whatever the model (the fast `ScriptedModel`, or a real `Generator` the demo plugs in), it is called
with whole batches: all first turns of a week, then all second turns, then all third turns. The
simulated user judges each answer against the knowledge base (`judge_response`); the truth about
every request (topic, outcome, re-ask links, inserted PII) goes to `ground_truth.jsonl`, which also
drives the synthetic annotators (`simulated_annotations`).

From `launch_week` on, `new_topic_share` of the questions users start with (and switch to) are about
v2 topics; re-asks of what the model could not answer make their share of all records higher.

ground_truth.jsonl, one row per request in log order: request_id, week, topic (KB topic id,
"unknown_product" or "offtopic"), subject (topic id, product name or off-topic theme), kb_version
("v1" | "v2" | null), turn (first | reask | switch | followup), is_refusal, is_reask, reask_of,
follows (the previous request of the conversation), is_hallucination, outcome (correct | refusal |
wrong) and pii ([{"type": "EMAIL_ADDRESS", "value": ...}], each value verbatim in the prompt).

Deterministic: the same settings, seed and model give byte-identical files. Each week draws from its
own seeded stream, so one week can be simulated alone (`weeks=[k]`) and comes out as in a full run.
"""

from __future__ import annotations

import gc
import json
import math
import random
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel

from tasks.config import SHIPPED_DATA, SignalsSettings, SimulateSettings
from tasks.contracts import Annotation, Case, Generator
from tasks.knowledge import KnowledgeBase, load_knowledge_base
from tasks.text import answer_tokens, token_f1

Outcome = Literal["correct", "refusal", "wrong"]
OUTCOMES: tuple[Outcome, ...] = ("correct", "refusal", "wrong")
OFFTOPIC = "offtopic"
UNKNOWN_PRODUCT = "unknown_product"
TURN_KINDS = ("first", "reask", "switch", "followup")
WEEK_S = 7 * 86_400
REASK_DELAY_S = (2.0, 25.0)  # after the previous response: well inside a 30 s re-ask window
FOLLOWUP_MIN_S = 35.0  # a later follow-up comes clearly after the 30 s window
MAX_LATENCY_S = 6.0
CONVERSATIONS_PER_USER_WEEK = 200  # more traffic than that per user: the population grows
CORRECT_MIN_F1 = 0.5

# --------------------------------------------------------------------------------------------------
# Judging an answer the way the simulated user does

class _Judge:
    """judge_response with the knowledge base's refusal phrases and facts prepared once."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.refusal_phrases = frozenset(_norm(p) for p in kb.all_refusals())
        self.refusal_re = re.compile("|".join(f"(?:{p})" for p in SignalsSettings().refusal_patterns), re.IGNORECASE)
        self.facts = {t.id: tuple(f.lower() for f in t.facts) for t in kb.topics}
        self.cache: dict[tuple[str, str], Outcome] = {}

    def is_refusal(self, response: str) -> bool:
        return _norm(response) in self.refusal_phrases or self.refusal_re.search(response) is not None

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


_JUDGES: dict[int, _Judge] = {}


def judge_response(kb: KnowledgeBase, topic_id: str, response: str) -> Outcome:
    """How the simulated user takes an answer about `topic_id`.

    "refusal": one of the knowledge base's refusal phrases, or any default refusal pattern of
    `signals.refusal_patterns`. "correct": every fact of the topic appears (case-insensitive) and the
    token F1 against the knowledge-base answer is >= 0.5. Anything else is "wrong"; for off-topic
    questions and products the knowledge base does not have, every non-refusal is "wrong".
    """
    judge = _JUDGES.get(id(kb))
    if judge is None or judge.kb is not kb:
        judge = _JUDGES[id(kb)] = _Judge(kb)
    return judge(topic_id, response)


# --------------------------------------------------------------------------------------------------
# Questions: every subject (KB topic, unknown product, off-topic theme) with its paraphrases and
# their typed variants. The world and the scripted model share this table.

OFFTOPIC_QUESTIONS: dict[str, tuple[str, ...]] = {
    "weather": ("What's the weather like tomorrow?", "Will it rain this weekend?", "Is it going to be sunny today?",
                "What's the forecast for tonight?"),
    "joke": ("Tell me a joke.", "Can you say something funny?", "Do you know any good jokes?", "Make me laugh please."),
    "recipe": ("How do I bake banana bread?", "What's a good recipe for pancakes?", "How long should I boil an egg?",
               "Give me a quick pasta recipe."),
    "sports": ("Who won the football game last night?", "What's the score of the basketball match?",
               "When does the next World Cup start?", "Which team is leading the league?"),
    "trivia": ("What is the capital of Australia?", "Can you solve 37 times 43 for me?", "Who wrote Pride and Prejudice?",
               "Explain photosynthesis in simple words."),
    "travel": ("What's the cheapest flight to Paris?", "Can you book me a hotel in Rome?", "Which beach is best in Spain?",
               "Do I need a visa to visit Japan?"),
    "investing": ("Should I buy shares in tech companies?", "What will the stock market do next week?",
                  "Is bitcoin a good investment now?", "How do I start investing?"),
    "health": ("What should I take for a headache?", "How many hours of sleep do I need?", "Is coffee bad for my heart?",
               "How can I lose weight quickly?"),
}
GREETINGS = ("Hi!", "Hello.", "Hello there!", "Good morning.", "Good evening!", "Hey there.", "Hi team.", "Greetings.")
CONTEXTS = ("Quick question.", "I ordered from you before.", "I'm comparing a few shops.", "I'm shopping for a birthday present.",
            "I couldn't find this on the website.", "My friend recommended your shop.", "I have a question about your store.",
            "Thanks in advance.")
REASK_PREFIXES = ("Let me rephrase.", "That's not what I asked.", "Hmm, that didn't help.", "Sorry, let me ask again.",
                  "Please answer my question.", "That doesn't answer it.")
VARIANTS = 4  # per question: as written, two typo'd versions, all lower case
_SEGMENT = re.compile(r"(?<=[.?!])\s+")


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(" ?.!")


def _key(text: str) -> str:
    """_norm for text with single spaces already (the simulator's own prompts): cheaper."""
    return text.lower().rstrip(" ?.!")


def _typo(question: str, which: int) -> str:
    """A deterministic typo: swap two neighbouring letters (which=1) or drop one (which=2) of a word."""
    rng = random.Random(f"typo:{which}:{question}")
    words = question.split(" ")
    candidates = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha() and w.islower()]
    if not candidates:
        candidates = [i for i, w in enumerate(words) if len(w) >= 4 and w[:-1].isalpha()]
    if not candidates:
        return question
    i = rng.choice(candidates)
    w = words[i]
    j = rng.randrange(1, len(w) - 2) if len(w) > 3 else 1
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if which == 1 else w[:j] + w[j + 1:]
    return " ".join(words)


@dataclass
class _Bank:
    kinds: list[str]  # "kb" | "unknown" | "offtopic" per subject
    topic: list[str]  # ground-truth topic: KB topic id, "unknown_product" or "offtopic"
    label: list[str]  # KB topic id, the unknown product's name, or the off-topic theme
    kb_version: list[str | None]
    name: list[str]  # what a made-up answer talks about
    answer: list[str]  # the knowledge-base answer ("" for unknown products and off-topic themes)
    n_questions: np.ndarray
    offset: np.ndarray  # first flat variant index of each subject
    text: list[str]  # flat: subject-major, question, variant
    subject_of: np.ndarray  # flat index -> subject

    @property
    def size(self) -> int:
        return len(self.kinds)


def _build_bank(kb: KnowledgeBase) -> _Bank:
    kinds: list[str] = []
    topic: list[str] = []
    label: list[str] = []
    versions: list[str | None] = []
    names: list[str] = []
    answers: list[str] = []
    questions: list[tuple[str, ...]] = []
    for t in kb.topics:
        kinds.append("kb"), topic.append(t.id), label.append(t.id), versions.append(t.kb_version)
        names.append(t.name), answers.append(t.answer), questions.append(t.questions)
    for product in kb.unknown_products:
        kinds.append("unknown"), topic.append(UNKNOWN_PRODUCT), label.append(product), versions.append(None)
        names.append(product), answers.append(""), questions.append(tuple(q.format(product=product) for q in kb.unknown_questions))
    for theme, qs in OFFTOPIC_QUESTIONS.items():
        kinds.append("offtopic"), topic.append(OFFTOPIC), label.append(theme), versions.append(None)
        names.append(theme), answers.append(""), questions.append(qs)
    text: list[str] = []
    subject_of: list[int] = []
    offsets: list[int] = []
    for s, qs in enumerate(questions):
        offsets.append(len(text))
        for q in qs:
            text.extend((q, _typo(q, 1), _typo(q, 2), q.lower()))
            subject_of.extend((s,) * VARIANTS)
    return _Bank(kinds, topic, label, versions, names, answers, np.array([len(q) for q in questions]), np.array(offsets),
                 text, np.array(subject_of))


# --------------------------------------------------------------------------------------------------
# The scripted model

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
        self.bank = _build_bank(self.kb)
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
            self._lookup.setdefault(_norm(text), int(self.bank.subject_of[flat]))
        self._scorer = _scorer(self.bank)
        self._refusals = {lang: list(p) for lang, p in self.kb.refusals.items()}
        self._cache: dict[str, str] = {}
        self._answers = [self.kb.by_id[lab].answer if kind == "kb" else "" for kind, lab in zip(self.bank.kinds, self.bank.label)]

    # -- recognising the subject of a prompt
    def subject(self, prompt: str) -> int | None:
        """The bank subject a prompt is about, or None when nothing matches."""
        s = self._lookup.get(_key(prompt))
        if s is not None:
            return s
        for segment in _SEGMENT.split(prompt):
            s = self._lookup.get(_key(segment))
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


def _scorer(bank: _Bank) -> _Scorer:
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


# --------------------------------------------------------------------------------------------------
# Personal data inserted into prompts (kept as ground truth for leak tests)

_FIRST = ("James", "Maria", "Robert", "Linda", "Michael", "Sarah", "David", "Emily", "Daniel", "Olivia", "Thomas",
          "Sophia", "Kevin", "Grace", "Brian", "Chloe", "Jason", "Hannah", "Eric", "Natalie", "Minji", "Jisoo",
          "Carlos", "Priya", "Ahmed", "Elena", "Lucas", "Fatima", "Oliver", "Ingrid")
_LAST = ("Smith", "Garcia", "Johnson", "Brown", "Miller", "Davis", "Wilson", "Anderson", "Taylor", "Moore", "Jackson",
         "Martin", "Thompson", "White", "Harris", "Clark", "Lewis", "Walker", "Young", "King", "Kim", "Park", "Lee",
         "Patel", "Rossi", "Novak", "Schmidt", "Dubois", "Silva", "Hansen")
_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "proton.me", "fastmail.com", "icloud.com")
_STREETS = ("Maple Street", "Oak Avenue", "Cedar Lane", "Pine Road", "Elm Street", "Lakeview Drive", "Hillcrest Road",
            "Sunset Boulevard", "Park Avenue", "River Road", "Willow Way", "Main Street")
_CITIES = ("Springfield", "Portland", "Austin", "Denver", "Seattle", "Boston", "Chicago", "Phoenix", "Atlanta", "Madison")
_AREA = (212, 310, 312, 415, 206, 303, 512, 404, 617, 702, 813, 919)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
PII_TYPES = ("PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "ORDER_ID", "LOCATION", "CREDIT_CARD", "IBAN_CODE", "US_SSN",
             "IP_ADDRESS", "API_KEY")
_PII_WEIGHTS = (0.22, 0.2, 0.15, 0.15, 0.1, 0.08, 0.03, 0.03, 0.02, 0.02)
_PII_SENTENCES: dict[str, tuple[str, ...]] = {
    "PERSON": ("My name is {v}.", "This is {v} speaking.", "I'm {v}."),
    "EMAIL_ADDRESS": ("My email is {v}.", "Please reply to {v} if needed.", "You can email me at {v}."),
    "PHONE_NUMBER": ("You can call me at {v}.", "My phone number is {v}."),
    "ORDER_ID": ("My order number is {v}.", "It's about order {v}."),
    "LOCATION": ("I live at {v}.", "Please ship it to {v}."),
    "CREDIT_CARD": ("I paid with card {v}.", "My card number is {v}."),
    "IBAN_CODE": ("Please refund to my IBAN {v}.", "My IBAN is {v}."),
    "US_SSN": ("My SSN is {v} if you need it.", "My social security number is {v}."),
    "IP_ADDRESS": ("My IP address is {v}, if that helps.", "I'm connecting from {v}."),
    "API_KEY": ("My API key is {v}.", "Here is my key {v} for your developer portal."),
}


def _digit_strings(digits: np.ndarray) -> list[str]:
    """Rows of a (k, w) matrix of digits 0-9 as strings."""
    k, w = digits.shape
    raw = (digits.astype(np.uint8) + 48).tobytes().decode("ascii")
    return [raw[i * w:(i + 1) * w] for i in range(k)]


def luhn_check_digit(body: np.ndarray) -> np.ndarray:
    """Check digit per row of `body` (digits) making body + check digit pass the Luhn test."""
    doubled = body[:, ::-1].astype(np.int64)
    doubled[:, 0::2] *= 2  # the body's last digit sits next to the check digit: doubled
    doubled = np.where(doubled > 9, doubled - 9, doubled)
    return (10 - doubled.sum(axis=1) % 10) % 10


def _iban(rng: random.Random) -> str:
    country, length = rng.choice((("DE", 18), ("GB", 0), ("FR", 23)))
    if country == "GB":
        bban = rng.choice(("NWBK", "BARC", "HBUK")) + "".join(str(rng.randrange(10)) for _ in range(14))
    else:
        bban = "".join(str(rng.randrange(10)) for _ in range(length))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    raw = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


def _pii_values(kind: str, rng: np.random.Generator, k: int) -> list[str]:
    """k values of one PII type, drawn together."""
    ints = rng.integers
    if kind == "PERSON":
        return [f"{_FIRST[a]} {_LAST[b]}" for a, b in zip(ints(0, len(_FIRST), k).tolist(), ints(0, len(_LAST), k).tolist())]
    if kind == "EMAIL_ADDRESS":
        seps = (".", "_", "")
        return [f"{_FIRST[a].lower()}{seps[s]}{_LAST[b].lower()}{n}@{_DOMAINS[d]}" for a, s, b, n, d in zip(
            ints(0, len(_FIRST), k).tolist(), ints(0, 3, k).tolist(), ints(0, len(_LAST), k).tolist(),
            ints(1, 100, k).tolist(), ints(0, len(_DOMAINS), k).tolist())]
    if kind == "PHONE_NUMBER":
        exchange = ints(201, 990, k)
        exchange[exchange == 555] = 556  # 555 numbers are fictional: detectors may skip them
        styles = ("({a}) {e}-{n}", "{a}-{e}-{n}", "+1 {a} {e} {n}")
        return [styles[s].format(a=_AREA[a], e=e, n=n) for a, e, n, s in zip(
            ints(0, len(_AREA), k).tolist(), exchange.tolist(), ints(1000, 10000, k).tolist(), ints(0, 3, k).tolist())]
    if kind == "ORDER_ID":
        return [f"ORD-{n}" for n in ints(1_000_000, 10_000_000, k).tolist()]
    if kind == "LOCATION":
        return [f"{n} {_STREETS[a]}, {_CITIES[b]}" for n, a, b in zip(
            ints(12, 9800, k).tolist(), ints(0, len(_STREETS), k).tolist(), ints(0, len(_CITIES), k).tolist())]
    if kind == "CREDIT_CARD":
        body = ints(0, 10, (k, 15))
        visa = rng.random(k) < 0.6
        body[:, 0] = np.where(visa, 4, 5)
        body[:, 1] = np.where(visa, body[:, 1], ints(1, 6, k))  # Mastercard: 51-55
        numbers = _digit_strings(np.concatenate([body, luhn_check_digit(body)[:, None]], axis=1))
        spaced = (rng.random(k) < 0.5).tolist()
        return [" ".join((x[0:4], x[4:8], x[8:12], x[12:16])) if sp else x for x, sp in zip(numbers, spaced)]
    if kind == "IBAN_CODE":
        return [_iban(random.Random(int(seed))) for seed in ints(0, 2**62, k).tolist()]
    if kind == "US_SSN":
        area = np.where(rng.random(k) < 0.8, ints(1, 666, k), ints(667, 900, k))  # never 000, 666 or 9xx
        return [f"{a:03d}-{g:02d}-{n:04d}" for a, g, n in zip(area.tolist(), ints(1, 100, k).tolist(),
                                                             ints(1, 10000, k).tolist())]
    if kind == "IP_ADDRESS":
        first = _IP_FIRST[ints(0, len(_IP_FIRST), k)]
        return [f"{a}.{b}.{c}.{d}" for a, b, c, d in zip(first.tolist(), ints(0, 256, k).tolist(),
                                                          ints(0, 256, k).tolist(), ints(1, 255, k).tolist())]
    if kind == "API_KEY":
        raw = _ALNUM_BYTES[ints(0, len(_ALNUM_BYTES), (k, 32))].tobytes().decode("ascii")
        return ["sk-" + raw[i * 32:(i + 1) * 32] for i in range(k)]
    raise ValueError(f"no generator for PII type {kind!r}")


_IP_FIRST = np.array([a for a in range(11, 224) if a not in (127, 169, 172, 192)])
_ALNUM_BYTES = np.frombuffer(_ALNUM.encode("ascii"), dtype=np.uint8)


def _pii_batch(rng: np.random.Generator, count: int) -> list[tuple[str, list[dict[str, str]]]]:
    """`count` PII sentences (one or two entities each) with the values they contain."""
    if count == 0:
        return []
    per = 1 + (rng.random(count) < 0.3)
    kinds = rng.choice(len(PII_TYPES), size=int(per.sum()), p=np.array(_PII_WEIGHTS) / sum(_PII_WEIGHTS))
    owner = np.repeat(np.arange(count), per)
    second = np.concatenate([[False], owner[1:] == owner[:-1]])
    dup = second & np.concatenate([[False], kinds[1:] == kinds[:-1]])  # the same type twice: keep one
    kinds, owner = kinds[~dup], owner[~dup]
    values: list[str] = [""] * len(kinds)
    for t, kind in enumerate(PII_TYPES):
        rows = np.flatnonzero(kinds == t)
        if len(rows):
            for row, value in zip(rows.tolist(), _pii_values(kind, rng, len(rows))):
                values[row] = value
    template = rng.integers(0, 6, len(kinds)).tolist()
    sentences: list[list[str]] = [[] for _ in range(count)]
    found: list[list[dict[str, str]]] = [[] for _ in range(count)]
    for o, t, v, tpl in zip(owner.tolist(), kinds.tolist(), values, template):
        kind = PII_TYPES[t]
        options = _PII_SENTENCES[kind]
        sentences[o].append(options[tpl % len(options)].format(v=v))
        found[o].append({"type": kind, "value": v})
    return [(" ".join(sents), f) for sents, f in zip(sentences, found)]


# --------------------------------------------------------------------------------------------------
# The world and one simulated week


@dataclass
class World:
    """Everything a week of traffic is drawn from. Weeks are independent given the world: week k is
    drawn from the stream seeded by (seed, k), whatever was simulated before."""

    settings: SimulateSettings
    kb: KnowledgeBase  # v2: every topic that will ever exist
    bank: _Bank
    start: datetime
    data_dir: Path
    judge: _Judge
    popularity: dict[str, tuple[np.ndarray, np.ndarray]]  # category -> (subjects, probabilities)
    judged_as: list[str] = field(default_factory=list)  # per subject: the topic id the judge checks against
    _user_weights: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    @classmethod
    def create(cls, settings: SimulateSettings, data_dir: Path | None = None) -> World:
        if settings.unknown_product_share + settings.offtopic_share > 1:
            raise ValueError("simulate.unknown_product_share + simulate.offtopic_share must be <= 1 "
                             f"(got {settings.unknown_product_share} + {settings.offtopic_share})")
        try:
            start = datetime.combine(date.fromisoformat(settings.start), datetime.min.time(), tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"simulate.start must be a date like 2026-01-05, got {settings.start!r}") from None
        data_dir = Path(data_dir or SHIPPED_DATA)
        kb = load_knowledge_base(data_dir, "v2")
        bank = _build_bank(kb)
        rng = np.random.default_rng([settings.seed, 0x70])
        popularity: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        groups = {"v1": [s for s in range(bank.size) if bank.kb_version[s] == "v1"],
                  "v2": [s for s in range(bank.size) if bank.kb_version[s] == "v2"],
                  "unknown": [s for s in range(bank.size) if bank.kinds[s] == "unknown"],
                  "offtopic": [s for s in range(bank.size) if bank.kinds[s] == "offtopic"]}
        for name, subjects in groups.items():
            ranks = rng.permutation(len(subjects))
            weights = 1.0 / (ranks + 3.0) ** 0.8  # a few popular topics, a long tail
            popularity[name] = (np.array(subjects, dtype=np.int64), weights / weights.sum())
        judged_as = [bank.label[i] if bank.kinds[i] == "kb" else bank.topic[i] for i in range(bank.size)]
        return cls(settings=settings, kb=kb, bank=bank, start=start, data_dir=data_dir, judge=_Judge(kb),
                   popularity=popularity, judged_as=judged_as)

    def week_start(self, week: int) -> datetime:
        return self.start + timedelta(days=7 * (week - 1))

    @property
    def launch_date(self) -> datetime:
        return self.week_start(self.settings.launch_week)

    def user_weights(self, count: int) -> np.ndarray:
        """Activity of the first `count` users (lognormal; the same prefix whatever the count)."""
        if len(self._user_weights) < count:
            self._user_weights = np.random.default_rng([self.settings.seed, 0x05E5]).lognormal(0.0, 0.6, size=count)
        return self._user_weights[:count]


@dataclass
class WeekTraffic:
    week: int
    records: list[dict[str, Any]]  # LogRecord fields; ts a timezone-aware datetime; sorted by ts
    truth: list[dict[str, Any]]  # one ground-truth row per record, same order
    counts: dict[str, int]


class _Turns:
    """Column store of the turns of a week, grown round by round."""

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {k: [] for k in (
            "conv", "subject", "qlocal", "kind", "prev", "t_us", "prompt", "response", "outcome", "latency_ms",
            "prompt_tokens", "completion_tokens", "pii")}

    def __len__(self) -> int:
        return len(self.cols["conv"])

    def extend(self, **columns: Sequence[Any]) -> None:
        for key, values in columns.items():
            self.cols[key].extend(values)


def _diurnal_warp(length_s: float, first_weekday: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(cdf, grid) mapping uniform [0, 1] onto [0, length_s] with a daily rhythm (peak 15:00 UTC,
    quieter weekends), and the peak density relative to the mean."""
    grid = np.linspace(0.0, length_s, 4097)
    hours = (grid / 3600.0) % 24.0
    weekday = (first_weekday + (grid // 86_400).astype(int)) % 7
    density = (0.25 + np.exp(-(((hours - 15.0) / 5.0) ** 2))) * np.where(weekday >= 5, 0.7, 1.0)
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2.0)])
    cdf /= cdf[-1]
    return cdf, grid, float(density.max() / density.mean())


def _layout(world: World, rng: np.random.Generator, conversations: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(user index, start second within the week) per conversation, and the longest follow-up delay.

    Conversations of one user are at least G seconds apart and never cross the week's end, so the
    previous request of a user is always the previous turn of the same conversation."""
    s = world.settings
    users = max(s.users, math.ceil(conversations / CONVERSATIONS_PER_USER_WEEK))
    while True:
        weights = world.user_weights(users)
        user = rng.choice(users, size=conversations, p=weights / weights.sum()) if conversations else np.zeros(0, np.int64)
        k_max = int(np.bincount(user, minlength=users).max()) if conversations else 1
        _, _, peak = _diurnal_warp(WEEK_S - 1100.0, world.start.weekday())
        gap = min(1800.0, 0.9 * (WEEK_S - 1100.0) / (peak * max(k_max, 1)))
        if gap >= 150.0:
            break
        users *= 2
    followup_max = min(900.0, gap - 70.0)
    length = WEEK_S - (followup_max + 3 * MAX_LATENCY_S + REASK_DELAY_S[1] + 35.0)
    cdf, grid, peak = _diurnal_warp(length, world.start.weekday())
    step = gap * peak / length
    v = rng.random(conversations)
    order = np.lexsort((v, user))
    sorted_user = user[order]
    counts = np.bincount(sorted_user, minlength=users)
    first_of_group = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(conversations) - first_of_group[sorted_user]
    k = counts[sorted_user]
    x = v[order] * (1.0 - (k - 1) * step) + rank * step
    starts = np.empty(conversations)
    starts[order] = np.interp(np.clip(x, 0.0, 1.0), cdf, grid)
    return user, starts, followup_max


def _draw_subjects(world: World, rng: np.random.Generator, count: int, week: int) -> np.ndarray:
    s = world.settings
    after_launch = week >= s.launch_week
    new_share = s.new_topic_share if after_launch else 0.0
    rest = 1.0 - new_share
    p = {"v2": new_share, "unknown": rest * s.unknown_product_share, "offtopic": rest * s.offtopic_share}
    p["v1"] = max(0.0, 1.0 - sum(p.values()))
    names = ("v1", "v2", "unknown", "offtopic")
    probs = np.array([p[n] for n in names])
    category = rng.choice(4, size=count, p=probs / probs.sum())
    out = np.empty(count, dtype=np.int64)
    for c, name in enumerate(names):
        rows = np.flatnonzero(category == c)
        if len(rows):
            subjects, weights = world.popularity[name]
            out[rows] = subjects[rng.choice(len(subjects), size=len(rows), p=weights)]
    return out


def _draw_prompts(world: World, rng: np.random.Generator, subjects: np.ndarray, qlocal: np.ndarray,
                  reask: np.ndarray) -> tuple[list[str], list[list[dict[str, str]]]]:
    """Prompt texts (question variant plus optional greeting / context / re-ask phrase / PII)."""
    bank, s = world.bank, world.settings
    n = len(subjects)
    variant = rng.choice(VARIANTS, size=n, p=(0.78, 0.05, 0.05, 0.12))
    flat = bank.offset[subjects] + qlocal * VARIANTS + variant
    greet = np.where(rng.random(n) < 0.15, rng.integers(0, len(GREETINGS), n), -1)
    context = np.where(rng.random(n) < 0.10, rng.integers(0, len(CONTEXTS), n), -1)
    prefix = np.where(reask & (rng.random(n) < 0.3), rng.integers(0, len(REASK_PREFIXES), n), -1)
    has_pii = rng.random(n) < s.pii_rate
    pii_first = rng.random(n) < 0.3
    pii_items = iter(_pii_batch(rng, int(has_pii.sum())))
    text = bank.text
    prompts = [text[f] for f in flat.tolist()]  # most prompts are the bare question
    empty: list[dict[str, str]] = []
    pii: list[list[dict[str, str]]] = [empty] * n
    decorated = np.flatnonzero((greet >= 0) | (prefix >= 0) | (context >= 0) | has_pii)
    for i, g, x, c, p, first in zip(decorated.tolist(), greet[decorated].tolist(), prefix[decorated].tolist(),
                                    context[decorated].tolist(), has_pii[decorated].tolist(),
                                    pii_first[decorated].tolist()):
        parts = []
        if g >= 0:
            parts.append(GREETINGS[g])
        if x >= 0:
            parts.append(REASK_PREFIXES[x])
        if c >= 0:
            parts.append(CONTEXTS[c])
        if p:
            sentence, pii[i] = next(pii_items)
            parts.extend((sentence, prompts[i]) if first else (prompts[i], sentence))
        else:
            parts.append(prompts[i])
        prompts[i] = " ".join(parts)
    return prompts, pii


def _ask(model: Generator, prompts: list[str], seed: int) -> list[str]:
    if not prompts:
        return []
    out = model.generate(prompts, n=1, temperature=0.0, seed=seed)
    if len(out) != len(prompts):
        raise RuntimeError(f"model {getattr(model, 'model_version', model)!r} returned {len(out)} answers for "
                           f"{len(prompts)} prompts")
    return [row[0] if row else "" for row in out]


def _approx_tokens(texts: Sequence[str]) -> np.ndarray:
    """About 4 characters a token: the scripted path has no tokenizer, and a real one is not ours."""
    return np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) // 4 + 1


def _run_round(world: World, model: Generator, rng: np.random.Generator, turns: _Turns, seed: int, *,
               conv: np.ndarray, subjects: np.ndarray, qlocal: np.ndarray, kind: np.ndarray, prev: np.ndarray,
               t_us: np.ndarray) -> None:
    reask = kind == 1
    prompts, pii = _draw_prompts(world, rng, subjects, qlocal, reask)
    responses = _ask(model, prompts, seed)
    judge, judged_as = world.judge, world.judged_as
    code = {o: i for i, o in enumerate(OUTCOMES)}
    keys = [(judged_as[s], r) for s, r in zip(subjects.tolist(), responses)]
    known = judge.cache
    outcome = [code[known.get(k) or judge(*k)] for k in keys]
    pt, ct = _approx_tokens(prompts), _approx_tokens(responses)
    latency = (120.0 + 18.0 * ct + 2.0 * pt) * np.exp(rng.normal(0.0, 0.35, len(prompts)))
    latency = np.round(np.clip(latency, 40.0, MAX_LATENCY_S * 1000.0), 1)
    turns.extend(conv=conv.tolist(), subject=subjects.tolist(), qlocal=qlocal.tolist(), kind=kind.tolist(),
                 prev=prev.tolist(), t_us=t_us.tolist(), prompt=prompts, response=responses, outcome=outcome,
                 latency_ms=latency.tolist(), prompt_tokens=pt.tolist(), completion_tokens=ct.tolist(), pii=pii)


def _next_turns(world: World, rng: np.random.Generator, turns: _Turns, rows: np.ndarray, week: int,
                followup_max: float, *, allow_other: bool) -> dict[str, np.ndarray]:
    """The turns that follow `rows` (indices into `turns`): re-asks of unhappy answers, and with
    allow_other quick switches and later follow-ups."""
    s = world.settings
    cols = turns.cols
    n = len(rows)
    outcome = np.array([cols["outcome"][r] for r in rows], dtype=np.int64)
    unhappy = outcome != 0
    u = rng.random((3, n))
    is_reask = unhappy & (u[0] < s.reask_probability)
    is_switch = ~is_reask & (u[1] < s.topic_switch_rate) & allow_other
    is_follow = ~is_reask & ~is_switch & ~unhappy & (u[2] < s.followup_rate) & allow_other
    kind = np.select([is_reask, is_switch, is_follow], [1, 2, 3], 0)
    keep = kind > 0
    rows, kind = rows[keep], kind[keep]
    m = len(rows)
    subject = np.array([cols["subject"][r] for r in rows], dtype=np.int64)
    qprev = np.array([cols["qlocal"][r] for r in rows], dtype=np.int64)
    nq = world.bank.n_questions[subject]
    # a re-ask: another paraphrase of the same subject; otherwise a different subject
    shift = 1 + np.floor(rng.random(m) * np.maximum(nq - 1, 1)).astype(np.int64)
    q_reask = np.where(nq > 1, (qprev + shift) % nq, qprev)
    other = _draw_subjects(world, rng, m, week)
    for _ in range(10):  # a switch or follow-up is about something else
        clash = (other == subject) & (kind != 1)
        if not clash.any():
            break
        other[clash] = _draw_subjects(world, rng, int(clash.sum()), week)
    keep = (other != subject) | (kind == 1)
    rows, kind, subject, qprev, other = rows[keep], kind[keep], subject[keep], qprev[keep], other[keep]
    m = len(rows)
    new_subject = np.where(kind == 1, subject, other)
    new_nq = world.bank.n_questions[new_subject]
    q_other = np.floor(rng.random(m) * new_nq).astype(np.int64)
    qlocal = np.where(kind == 1, q_reask, q_other)
    prev_t = np.array([cols["t_us"][r] for r in rows], dtype=np.int64)
    prev_lat = np.array([cols["latency_ms"][r] for r in rows])
    quick = rng.uniform(*REASK_DELAY_S, m)
    later = rng.uniform(FOLLOWUP_MIN_S, followup_max, m)
    delay_s = np.where(kind == 3, later, quick)
    t_us = prev_t + np.round(prev_lat * 1000.0).astype(np.int64) + np.round(delay_s * 1e6).astype(np.int64)
    conv = np.array([cols["conv"][r] for r in rows], dtype=np.int64)
    return {"conv": conv, "subjects": new_subject, "qlocal": qlocal, "kind": kind, "prev": rows, "t_us": t_us}


def _followons(s: SimulateSettings, unhappy: float) -> float:
    """Expected follow-on turns per conversation when a share `unhappy` of answers disappoints."""
    u, r, sw, fr = unhappy, s.reask_probability, s.topic_switch_rate, s.followup_rate
    second = u * r + (1 - u * r) * sw + (1 - u) * (1 - sw) * fr
    return second + second * u * r


def _expected_followons(s: SimulateSettings, week: int) -> float:
    """_followons if the model behaved like the default scripted one."""
    new = s.new_topic_share if week >= s.launch_week else 0.0
    unknown = new + (1 - new) * (s.unknown_product_share + s.offtopic_share)
    return _followons(s, unknown + (1 - unknown) * s.hallucination_rate)


def simulate_week(world: World, week: int, model: Generator, *, exact: bool = True) -> WeekTraffic:
    """One week of traffic answered by `model`, in whole batches: all first turns, then all second
    turns, then all third turns (a fourth batch when conversations were added to fill the week).
    With `exact`, the week holds exactly `simulate.records_per_week` records."""
    # Hundreds of thousands of small dicts and lists, no reference cycles: the cyclic collector would
    # only rescan them over and over.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate_week(world, week, model, exact=exact)
    finally:
        if enabled:
            gc.enable()


def _simulate_week(world: World, week: int, model: Generator, *, exact: bool) -> WeekTraffic:
    if week < 1:
        raise ValueError(f"weeks are numbered from 1, got {week}")
    s = world.settings
    rng = np.random.default_rng([s.seed, week, 0x5EED])
    target = s.records_per_week
    # Follow-on turns add records: start fewer conversations than the target (as many as the scripted
    # model's error rates predict). After the first batch the model's real unhappy rate is known: more
    # conversations start with the second batch if needed (from a reserve laid out in advance), and
    # whole conversations are trimmed off a long week.
    main = max(1, round(target / (1.0 + _expected_followons(s, week))))
    reserve = math.ceil(0.5 * main) + 5
    total_conv = main + reserve
    user, starts, followup_max = _layout(world, rng, total_conv)
    perm = rng.permutation(total_conv)  # which conversations are main, which reserve
    subjects = _draw_subjects(world, rng, total_conv, week)
    qlocal = np.floor(rng.random(total_conv) * world.bank.n_questions[subjects]).astype(np.int64)
    start_us = np.round(starts * 1e6).astype(np.int64)
    turns = _Turns()
    base_seed = int(rng.integers(0, 2**31 - 1))

    def first_turns(conv: np.ndarray) -> dict[str, np.ndarray]:
        k = len(conv)
        return {"conv": conv, "subjects": subjects[conv], "qlocal": qlocal[conv], "kind": np.zeros(k, np.int64),
                "prev": np.full(k, -1, np.int64), "t_us": start_us[conv]}

    batch, batch_depth = first_turns(perm[:main]), np.zeros(main, np.int64)  # depth: turn number in its conversation
    used, calls = main, 0
    while len(batch["conv"]):
        mark = len(turns)
        calls += 1
        _run_round(world, model, rng, turns, base_seed + calls, **batch)
        rows = np.arange(mark, len(turns))
        parts = [(_next_turns(world, rng, turns, rows[batch_depth == d], week, followup_max, allow_other=d == 0), d + 1)
                 for d in (0, 1) if (batch_depth == d).any()]
        if calls == 1 and exact:
            unhappy = float(np.mean(np.array(turns.cols["outcome"]) != 0))
            expected = main * (1.0 + _followons(s, unhappy))
            more = min(reserve, max(0, math.ceil((target - expected) / (1.0 + _followons(s, unhappy)))))
            if more:
                parts.append((first_turns(perm[used:used + more]), 0))
                used += more
        batch = {key: np.concatenate([p[key] for p, _ in parts]) if parts else np.zeros(0, np.int64)
                 for key in ("conv", "subjects", "qlocal", "kind", "prev", "t_us")}
        batch_depth = np.concatenate([np.full(len(p["conv"]), d, np.int64) for p, d in parts]) if parts else np.zeros(0, np.int64)
    if exact and len(turns) < target and used < total_conv:  # still short: single-turn conversations
        extra = perm[used:used + min(total_conv - used, target - len(turns))]
        _run_round(world, model, rng, turns, base_seed + calls + 1, **first_turns(extra))
    keep = np.ones(len(turns), dtype=bool)
    if exact and len(turns) > target:
        keep = _trim(rng, np.array(turns.cols["conv"], dtype=np.int64), len(turns) - target)
    return _assemble(world, week, turns, keep, user, model)


def _trim(rng: np.random.Generator, conv: np.ndarray, excess: int) -> np.ndarray:
    """Drop whole conversations (chosen at random) so that exactly `excess` turns go."""
    ids, sizes = np.unique(conv, return_counts=True)
    order = rng.permutation(len(ids))
    cum = np.cumsum(sizes[order])
    cut = int(np.searchsorted(cum, excess, side="left"))  # first prefix reaching the excess
    if cut < len(cum) and cum[cut] == excess:
        drop = ids[order[:cut + 1]]
    else:
        drop = list(ids[order[:cut]])
        left = excess - (int(cum[cut - 1]) if cut else 0)
        rest = order[cut:]
        singles = ids[rest[sizes[rest] == 1]]
        if len(singles) >= left:
            drop.extend(singles[:left].tolist())
        else:  # cannot hit the target exactly: drop the prefix that overshoots least
            drop = ids[order[:cut + 1]]
        drop = np.array(drop, dtype=np.int64)
    return ~np.isin(conv, drop)


def _numbered(prefix: str, numbers: np.ndarray, width: int) -> list[str]:
    """[f"{prefix}{n:0{width}d}" for n in numbers], built as one byte buffer (ids for every record)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    width = max(width, len(str(int(numbers.max()))) if len(numbers) else width)
    head = np.frombuffer(prefix.encode("ascii"), dtype=np.uint8)
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10 + 48
    rows = np.concatenate([np.broadcast_to(head, (len(numbers), len(head))), digits.astype(np.uint8)], axis=1)
    step = rows.shape[1]
    raw = rows.tobytes().decode("ascii")
    return [raw[i:i + step] for i in range(0, len(raw), step)]


def _assemble(world: World, week: int, turns: _Turns, keep: np.ndarray, user: np.ndarray,
              model: Generator) -> WeekTraffic:
    """Sort the kept turns by time, number them, add thumbs and corrections, and build the rows."""
    cols, bank, kb, s = turns.cols, world.bank, world.kb, world.settings
    t_all = np.array(cols["t_us"], dtype=np.int64)
    conv_all = np.array(cols["conv"], dtype=np.int64)
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((conv_all[idx], t_all[idx]))]
    n = len(order)
    position = np.full(len(t_all), -1, dtype=np.int64)
    position[order] = np.arange(n)
    rids = _numbered(f"req-{week:02d}-", np.arange(1, n + 1), 7)
    conv = conv_all[order]
    _, first_seen, conv_rank = np.unique(conv, return_index=True, return_inverse=True)
    session_no = np.empty(len(first_seen), dtype=np.int64)
    session_no[np.argsort(first_seen, kind="stable")] = np.arange(1, len(first_seen) + 1)
    sessions = _numbered(f"sess-{week:02d}-", session_no, 6)
    session = [sessions[k] for k in np.asarray(conv_rank).ravel().tolist()]
    user_no = user[conv] + 1
    user_ids = _numbered("user-", user_no, 5)

    pick = order.tolist()
    subject = np.array(cols["subject"], dtype=np.int64)[order]
    kind = np.array(cols["kind"], dtype=np.int64)[order]
    outcome = np.array(cols["outcome"], dtype=np.int64)[order]
    prev = np.array(cols["prev"], dtype=np.int64)[order]
    prev_pos = np.where(prev >= 0, position[np.maximum(prev, 0)], -1)
    follows = [rids[p] if p >= 0 else None for p in prev_pos.tolist()]
    reask_of = [f if k == 1 else None for f, k in zip(follows, kind.tolist())]

    rng = np.random.default_rng([s.seed, week, 0xFEED])
    happy = outcome == 0
    has_fb = rng.random(n) < s.feedback_rate
    down = np.where(happy, rng.random(n) < 0.08, rng.random(n) < 0.9)
    wants_fix = rng.random(n) < s.correction_rate
    feedback_arr = np.where(has_fb, np.where(down, -1, 1), 0)
    feedback = [f or None for f in feedback_arr.tolist()]
    correction: list[str | None] = [None] * n
    is_kb = np.array([k == "kb" for k in bank.kinds])[subject]
    for i in np.flatnonzero((feedback_arr == -1) & wants_fix & is_kb).tolist():
        correction[i] = kb.by_id[bank.label[int(subject[i])]].answer

    start = world.week_start(week)
    ts = [start + timedelta(microseconds=t) for t in t_all[order].tolist()]
    version = model.model_version
    prompts = [cols["prompt"][r] for r in pick]
    responses = [cols["response"][r] for r in pick]
    latency = [cols["latency_ms"][r] for r in pick]
    ptok = [cols["prompt_tokens"][r] for r in pick]
    ctok = [cols["completion_tokens"][r] for r in pick]
    pii = [cols["pii"][r] for r in pick]
    records = [
        {"request_id": rid, "ts": t, "user_id": uid, "session_id": sid, "prompt": p, "response": r,
         "model_version": version, "latency_ms": lat, "prompt_tokens": pt, "completion_tokens": ct,
         "feedback": fb, "correction": cor, "metadata": {}}
        for rid, t, uid, sid, p, r, lat, pt, ct, fb, cor in zip(
            rids, ts, user_ids, session, prompts, responses, latency, ptok, ctok, feedback, correction)
    ]
    subj_list = subject.tolist()
    topics = [bank.topic[x] for x in subj_list]
    labels = [bank.label[x] for x in subj_list]
    versions = [bank.kb_version[x] for x in subj_list]
    outcomes = [OUTCOMES[o] for o in outcome.tolist()]
    turn = [TURN_KINDS[k] for k in kind.tolist()]
    truth = [
        {"request_id": rid, "week": week, "topic": tp, "subject": lb, "kb_version": kv, "turn": tk,
         "is_refusal": oc == "refusal", "is_reask": ro is not None, "reask_of": ro, "follows": fo,
         "is_hallucination": oc == "wrong", "outcome": oc, "pii": pi}
        for rid, tp, lb, kv, tk, oc, ro, fo, pi in zip(rids, topics, labels, versions, turn, outcomes, reask_of,
                                                         follows, pii)
    ]
    v2 = np.array([v == "v2" for v in bank.kb_version])[subject]
    counts = {
        "records": n, "correct": int((outcome == 0).sum()), "refusals": int((outcome == 1).sum()),
        "hallucinations": int((outcome == 2).sum()), "first_turns": int((kind == 0).sum()),
        "reasks": int((kind == 1).sum()), "switches": int((kind == 2).sum()), "followups": int((kind == 3).sum()),
        "thumbs_up": int((feedback_arr == 1).sum()), "thumbs_down": int((feedback_arr == -1).sum()),
        "corrections": n - correction.count(None), "pii_records": n - pii.count([]),
        "v2_records": int(v2.sum()),
    }
    return WeekTraffic(week=week, records=records, truth=truth, counts=counts)


# --------------------------------------------------------------------------------------------------
# Writing a simulated quarter


class SimulationResult(BaseModel):
    records: int
    files: list[str]
    ground_truth: str
    ground_truth_summary: str
    launch_week: int
    launch_date: str
    weeks: list[int]
    model_version: str
    counts: dict[str, int]
    seconds: float
    records_per_s: float


_JSON_TEXT: dict[str | None, str] = {None: "null"}


def _js(value: str | None) -> str:
    text = _JSON_TEXT.get(value)
    if text is None:
        text = json.dumps(value, ensure_ascii=False)
        if len(_JSON_TEXT) < 100_000:
            _JSON_TEXT[value] = text
    return text


def _jb(value: bool) -> str:
    return "true" if value else "false"


def _jid(value: str | None) -> str:  # request ids are plain ASCII: nothing to escape
    return "null" if value is None else f'"{value}"'


def _truth_line(row: Mapping[str, Any]) -> str:
    """The row as compact JSON, exactly as json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    writes it, several times faster (topic, subject, turn and outcome strings repeat)."""
    if len(row) != 13:
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"))
    pii = row["pii"]
    return (f'{{"request_id":{_jid(row["request_id"])},"week":{row["week"]},"topic":{_js(row["topic"])},'
            f'"subject":{_js(row["subject"])},"kb_version":{_js(row["kb_version"])},"turn":{_js(row["turn"])},'
            f'"is_refusal":{_jb(row["is_refusal"])},"is_reask":{_jb(row["is_reask"])},'
            f'"reask_of":{_jid(row["reask_of"])},"follows":{_jid(row["follows"])},'
            f'"is_hallucination":{_jb(row["is_hallucination"])},"outcome":{_js(row["outcome"])},'
            f'"pii":{json.dumps(pii, ensure_ascii=False, separators=(",", ":")) if pii else "[]"}}}')


def default_model(settings: SimulateSettings, data_dir: Path | None = None) -> ScriptedModel:
    """The scripted model that knows knowledge base v1, with the settings' error rates."""
    return ScriptedModel(data_dir, knows="v1", hallucination_rate=settings.hallucination_rate,
                         unknown_hallucination_rate=settings.unknown_hallucination_rate,
                         korean_refusal_share=settings.korean_refusal_share, seed=settings.seed)


def simulate(
    settings: SimulateSettings,
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    model: Generator | None = None,
    weeks: Iterable[int] | None = None,
    append: bool = False,
) -> SimulationResult:
    """Simulate `weeks` (default 1..settings.weeks) into out_dir: logs/ (one file per UTC day through
    tasks.logs.LogWriter, in `settings.format`), ground_truth.jsonl (one row per request, in log order)
    and ground_truth.json (seed, dates, counts per week).

    `model` answers the traffic (default: the scripted model that knows knowledge base v1).
    Without `append`, an earlier simulation in out_dir is replaced; with it, the weeks are added to it
    (the demo simulates week by week with the current champion answering).
    """
    from tasks.logs import LogWriter

    started = time.perf_counter()
    out_dir = Path(out_dir)
    logs_dir = out_dir / "logs"
    truth_path, summary_path = out_dir / "ground_truth.jsonl", out_dir / "ground_truth.json"
    week_list = sorted(set(int(w) for w in weeks)) if weeks is not None else list(range(1, settings.weeks + 1))
    if not week_list or week_list[0] < 1:
        raise ValueError(f"weeks must be numbers from 1 on, got {week_list}")
    previous: dict[str, Any] = {}
    if append and summary_path.is_file():
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
        again = sorted(set(week_list) & set(previous.get("weeks", [])))
        if again:
            raise ValueError(f"{out_dir} already holds simulated weeks {again}: simulate other weeks or drop append")
        if previous.get("seed") != settings.seed or previous.get("start") != settings.start:
            raise ValueError(f"{out_dir} was simulated with seed {previous.get('seed')} from {previous.get('start')}; "
                             f"appending seed {settings.seed} from {settings.start} would mix two worlds")
    elif logs_dir.is_dir():
        old = sorted(p for p in logs_dir.iterdir() if p.suffix in (".jsonl", ".parquet"))
        if old and not summary_path.is_file():
            raise FileExistsError(f"{logs_dir} holds log files the simulator did not write: choose an empty --out "
                                  "directory")
        for path in old:  # an earlier simulation's days: replaced, so that reruns give identical files
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    world = World.create(settings, data_dir)
    model = model or default_model(settings, world.data_dir)
    writer = LogWriter(logs_dir, fmt=settings.format)
    totals: Counter[str] = Counter()
    per_week: dict[str, dict[str, int]] = dict(previous.get("per_week", {}))
    versions: dict[str, str] = dict(previous.get("model_versions", {}))
    with truth_path.open("a" if append else "w", encoding="utf-8", newline="\n") as handle:
        for week in week_list:
            traffic = simulate_week(world, week, model)
            writer.append(traffic.records)
            handle.write("".join([_truth_line(row) + "\n" for row in traffic.truth]))
            per_week[str(week)] = traffic.counts
            versions[str(week)] = model.model_version
            totals.update(traffic.counts)
    files = [str(p) for p in writer.close()]
    all_weeks = sorted(set(week_list) | set(previous.get("weeks", [])))
    overall: Counter[str] = Counter()
    for counts in per_week.values():
        overall.update(counts)
    summary = {
        "seed": settings.seed, "start": settings.start, "weeks": all_weeks, "launch_week": settings.launch_week,
        "launch_date": world.launch_date.date().isoformat(), "records_per_week": settings.records_per_week,
        "format": settings.format, "model_versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
        "counts": dict(overall), "per_week": dict(sorted(per_week.items(), key=lambda kv: int(kv[0]))),
        "settings": settings.model_dump(mode="json"),
    }
    summary_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - started
    return SimulationResult(records=totals["records"], files=files, ground_truth=str(truth_path),
                            ground_truth_summary=str(summary_path), launch_week=settings.launch_week,
                            launch_date=summary["launch_date"], weeks=week_list, model_version=model.model_version,
                            counts=dict(totals), seconds=round(seconds, 3),
                            records_per_s=round(totals["records"] / seconds, 1) if seconds > 0 else 0.0)


def outcome_summary(truth_path: Path, weeks: Iterable[int]) -> dict[str, Any]:
    """What really happened in the simulated `weeks`, from the ground truth: the share of requests
    answered correctly, refused and answered wrongly, overall and for the topics of knowledge base
    v2 (the products launched mid-quarter). Shares are None when there is nothing to count."""
    wanted = set(weeks)
    counts: Counter[str] = Counter()
    with Path(truth_path).open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["week"] not in wanted:
                continue
            counts["records"] += 1
            counts[row["outcome"]] += 1
            if row["kb_version"] == "v2":
                counts["new_topic_records"] += 1
                counts[f"new_topic_{row['outcome']}"] += 1

    def share(part: str, whole: str) -> float | None:
        return round(counts[part] / counts[whole], 4) if counts[whole] else None

    return {
        "weeks": sorted(wanted),
        "records": counts["records"],
        "accuracy": share("correct", "records"),
        "refusal_share": share("refusal", "records"),
        "new_topic_records": counts["new_topic_records"],
        "new_topic_accuracy": share("new_topic_correct", "new_topic_records"),
        "new_topic_refusal_share": share("new_topic_refusal", "new_topic_records"),
    }


# --------------------------------------------------------------------------------------------------
# Synthetic annotators

TRUE_LABELS = ("should_answer", "correct_refusal", "hallucination", "acceptable")


def _truth_rows(path: Path, wanted: set[str]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    with Path(path).open(encoding="utf-8") as handle:
        for line in handle:
            # rows start with {"request_id":"..." : read the id without parsing the whole row
            rid = line[15:line.find('"', 15)] if line.startswith('{"request_id":"') else json.loads(line)["request_id"]
            if rid in wanted:
                rows[rid] = json.loads(line)
    return rows


def true_label(row: Mapping[str, Any], kb: KnowledgeBase) -> tuple[str, str | None]:
    """(label, corrected_response) an oracle annotator gives the request described by a ground-truth row."""
    topic = kb.topic(row["topic"])
    fallback = kb.refusals["en"][1] if len(kb.refusals.get("en", ())) > 1 else kb.refusals["en"][0]
    if row["outcome"] == "refusal":
        return ("should_answer", topic.answer) if topic is not None else ("correct_refusal", None)
    if row["outcome"] == "wrong":
        return "hallucination", topic.answer if topic is not None else fallback
    return "acceptable", None


def simulated_annotations(
    cases: Sequence[Case | Mapping[str, Any]],
    ground_truth_path: Path,
    *,
    annotators: int,
    accuracy: float | Sequence[float],
    seed: int,
    labels: Sequence[str] = TRUE_LABELS,
    data_dir: Path | None = None,
) -> list[Annotation]:
    """`annotators` synthetic annotators label every case. Each gives the true label (from the ground
    truth of the case's request) with probability `accuracy` (one value, or one per annotator), else a
    different label chosen uniformly. A label of should_answer or hallucination comes with a
    corrected_response (the knowledge-base answer; a refusal for products the shop does not have).
    Deterministic per (seed, case_id, annotator), whatever the order of the cases."""
    if annotators < 1:
        raise ValueError(f"annotators must be >= 1, got {annotators}")
    accuracies = [float(accuracy)] * annotators if isinstance(accuracy, (int, float)) else [float(a) for a in accuracy]
    if len(accuracies) != annotators or not all(0.0 <= a <= 1.0 for a in accuracies):
        raise ValueError(f"accuracy must be one value in [0, 1] or {annotators} of them, got {accuracy!r}")
    labels = list(labels)
    missing = [label for label in TRUE_LABELS if label not in labels]
    if missing:
        raise ValueError(f"labels {labels} lack {missing}: simulated annotators need annotation.labels to include "
                         f"{list(TRUE_LABELS)}")
    kb = load_knowledge_base(data_dir, "v2")
    items = [c.model_dump() if isinstance(c, BaseModel) else dict(c) for c in cases]
    truth = _truth_rows(Path(ground_truth_path), {str(c["request_id"]) for c in items})
    out: list[Annotation] = []
    for case in items:
        row = truth.get(str(case["request_id"]))
        if row is None:
            raise ValueError(f"case {case.get('case_id')!r}: request {case['request_id']!r} is not in {ground_truth_path}; "
                             "simulated annotators only label simulated traffic")
        label, corrected = true_label(row, kb)
        topic = kb.topic(row["topic"])
        ts = case.get("ts")
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        for a in range(annotators):
            rng = random.Random(f"annotate:{seed}:{case['case_id']}:{a}")
            given = label
            if rng.random() >= accuracies[a]:
                given = rng.choice([x for x in labels if x != label])
            fix = None
            if given in ("should_answer", "hallucination"):
                fix = corrected if given == label else (topic.answer if topic is not None else kb.refusals["en"][0])
            out.append(Annotation(
                case_id=str(case["case_id"]), annotator=f"sim-annotator-{a + 1}", label=given, corrected_response=fix,
                created_at=(ts + timedelta(days=1, minutes=17 * a + rng.randint(0, 600))) if isinstance(ts, datetime) else None,
            ))
    return out

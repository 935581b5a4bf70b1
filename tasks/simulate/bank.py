"""The question bank: every subject users ask about, with its paraphrases and their typed variants.

A subject is a knowledge-base topic, a product the shop does not have, or an off-topic theme. Each
question comes in VARIANTS forms (as written, two with a deterministic typo, all lower case); the
world draws prompts from the bank and the scripted model recognises them in it. Greetings, context
sentences and re-ask phrases decorate prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from tasks.knowledge import KnowledgeBase

OFFTOPIC = "offtopic"
UNKNOWN_PRODUCT = "unknown_product"

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


def phrase_key(text: str) -> str:
    """The simulator's key of a short phrase: lower case, single spaces, trailing " ?.!" dropped.

    It keys the bank's questions (the scripted model's lookup) and the refusal phrases (the judge).
    Not tasks.text.normalise: that one also drops inner punctuation and applies NFKC, which would
    make the judge's refusal match looser for a real model's answers and cost the per-prompt lookup
    more; the simulated traffic is defined with this key."""
    return " ".join(text.lower().split()).rstrip(" ?.!")


def fast_phrase_key(text: str) -> str:
    """phrase_key for text with single spaces already (the simulator's own prompts): cheaper."""
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
class QuestionBank:
    """Column store of the subjects and their question variants, flat-indexed subject by subject."""

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


def build_bank(kb: KnowledgeBase) -> QuestionBank:
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
    return QuestionBank(kinds, topic, label, versions, names, answers, np.array([len(q) for q in questions]), np.array(offsets),
                 text, np.array(subject_of))

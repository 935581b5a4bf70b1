"""Re-asks that mean "the same question" (tasks/reask.py): the similarity of content words, and the
conversation-aware rules (complaints, follow-ups that build on the answer, answers that missed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa

from tasks.config import SignalsSettings
from tasks.contracts import LOG_SCHEMA
from tasks.reask import ContentWords, detect_reasks, pair_similarity, reask_verdicts

S = SignalsSettings()
ANSWER = "You can return any item within 30 days of delivery for a full refund."


def verdicts(triples: list[tuple[str, str | None, str]], settings: SignalsSettings = S) -> list[bool]:
    return reask_verdicts([a for a, _, _ in triples], [r for _, r, _ in triples], [b for _, _, b in triples],
                          settings).tolist()


def test_the_same_question_in_other_words_is_a_reask_a_new_one_on_the_topic_is_not() -> None:
    assert verdicts([
        ("How many days do I have to return a purchase?", ANSWER, "how many days to return my purchase??"),
        ("How do I return an item?", ANSWER, "Do you also sell gift cards?"),
        # shares the topic word only: a different question about returns, after a good answer
        ("How do I return an item?", ANSWER, "What is the best way to pack a television for shipping?"),
    ]) == [True, False, False]


def test_content_words_ignore_stop_words_case_numbers_and_word_endings() -> None:
    words = ContentWords(["How do I RETURN the items?", "returning an item", "What is it?", "Order 12345 please",
                          "Order 99 please"])
    assert words.jaccard(np.array([0, 0, 3]), np.array([1, 2, 4])).tolist() == [1.0, 0.0, 1.0]
    assert pair_similarity(["How do I return items?"], ["Returning an item"], S).tolist() == [1.0]


def test_a_complaint_makes_any_quick_prompt_a_reask() -> None:
    assert verdicts([
        ("What is your return policy?", ANSWER, "That's not what I asked. Can I send back opened headphones?"),
        ("What is your return policy?", ANSWER, "Let me rephrase: can opened headphones go back?"),
        ("What is your return policy?", ANSWER, "Can opened headphones go back?"),
    ]) == [True, True, False]


def test_a_prompt_that_builds_on_the_answer_is_a_follow_up() -> None:
    poem = "Roses are red, violets are blue, the sea is deep and so are you."
    assert verdicts([
        ("Write me a poem about the sea", poem, "Please write a poem about the sea"),
        ("Write me a poem about the sea", poem, "Make it rhyme better, the poem about the sea"),
        ("Write me a poem about the sea", poem, "Thanks! Now a poem about the sea for kids"),
        # takes two content words of the answer that the question did not have ("violets", "roses")
        ("Write me a poem about the sea", poem, "Why violets and roses in a poem about the sea?"),
    ]) == [True, False, False, False]


def test_after_an_answer_that_missed_the_question_a_related_prompt_is_a_reask() -> None:
    missed = "Sure, that is free for orders above $59 and usually takes 28 hours."
    assert verdicts([
        ("What are the steps to close my customer account?", missed, "I want to close my account permanently."),
        ("What are the steps to close my customer account?", missed, "What's the weather like tomorrow?"),
    ]) == [True, False]
    off = S.model_copy(update={"reask_unanswered_relevance": None})
    assert verdicts([("What are the steps to close my customer account?", missed, "Can I close it online?")]) == [True]
    assert verdicts([("What are the steps to close my customer account?", missed, "Can I close it online?")], off) == [False]


def test_after_a_refusal_any_quick_prompt_retries_even_a_follow_up() -> None:
    assert verdicts([("Tell me about the Zephyr X9.", "I'm sorry, I don't know about that product.",
                      "Thanks. And the Nimbus S5?")]) == [True]


def test_without_responses_only_the_prompts_decide() -> None:
    flags = reask_verdicts(["The museum is located near the river .", "The museum is located near the river ."],
                           None, ["The museum is near the river .", "A cat sat on the mat ."], S)
    assert flags.tolist() == [True, False]


def test_a_conversation_of_follow_ups_spaced_20_s_has_no_reasks() -> None:
    """Real chats: every turn builds on the previous answer; none of them asks the same thing again."""
    turns = [
        ("How do I cook a salmon fillet on a stove top pan?", "Heat oil in a pan, season the salmon, cook skin side "
         "down for 4 minutes, flip, cook 3 more minutes."),
        ("What oil is best for cooking a salmon fillet?", "Use an oil with a high smoke point such as avocado or "
         "canola oil."),
        ("Looks good to me! Can I use butter instead?", "Yes, but add it at the end so it does not burn."),
        ("Great. What side dish goes with salmon?", "Roasted asparagus or a lemon rice work well."),
    ]
    start = datetime(2026, 1, 5, 12, tzinfo=timezone.utc)
    rows = []
    for i, (prompt, response) in enumerate(turns):
        rows.append({"request_id": f"r{i}", "ts": start + timedelta(seconds=21 * i), "user_id": "u1", "session_id": "s1",
                     "prompt": prompt, "response": response, "model_version": "v1", "latency_ms": 1000.0,
                     "prompt_tokens": None, "completion_tokens": None, "feedback": None, "correction": None,
                     "metadata": "{}"})
    table = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
    assert detect_reasks(table, S).tolist() == [-1, -1, -1, -1]
    before = S.model_copy(update={"reask_backend": "tfidf", "reask_similarity": 0.08, "reask_followup_patterns": [],
                                  "reask_followup_answer_words": None})
    assert (detect_reasks(table, before) >= 0).any()  # the rule of before issue 17 called some of them re-asks

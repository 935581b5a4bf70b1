"""Input drift: bands, null baseline, insufficient data, PII-safe explanations (tasks/drift.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.config import DriftSettings
from tasks.drift import compute_drift, load_prompts

D = DriftSettings(null_resamples=50, min_prompts=200)

TOPICS = [
    "how do i return an item", "what is your return policy", "how long does shipping take",
    "do you offer free shipping", "how do i reset my password", "where is my order",
    "can i cancel my order", "what payment methods do you accept", "is the nova phone waterproof",
    "how long is the warranty", "does the lumen tv support hdr", "what is the battery life of the nova phone",
]
NEW = ["tell me about the helix watch", "how much is the helix watch", "does the helix watch track sleep",
       "is the zephyr buds case waterproof", "what colours does the zephyr buds come in"]


def prompts(n: int, seed: int, pool=TOPICS, new_share: float = 0.0, new_pool=NEW) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        source = new_pool if rng.random() < new_share else pool
        text = source[rng.integers(len(source))]
        if rng.random() < 0.2:
            text = "hi there " + text
        out.append(text)
    return out


def test_no_change_is_same_and_no_alert():
    res = compute_drift(prompts(2000, 1), prompts(800, 2), D)
    assert res["band"] == "same" and res["alert"] is False
    assert res["kl"] < D.same_below
    assert res["null_kl"] > 0 and res["null_kl_mean"] <= res["null_kl"]
    assert res["n_reference"] == 2000 and res["n_current"] == 800
    for key in ("kl", "js", "psi", "null_kl", "band", "alert", "top_terms", "examples"):
        assert key in res
    json.dumps(res)


def test_bands_on_constructed_shifts():
    ref = prompts(3000, 1)
    slight = compute_drift(ref, prompts(1000, 3, new_share=0.05), D)
    drift = compute_drift(ref, prompts(1000, 4, new_share=0.6), D)
    assert slight["band"] == "slight" and slight["alert"] is True, slight["kl"]
    assert drift["band"] == "drift" and drift["alert"] is True, drift["kl"]
    assert D.same_below <= slight["kl"] <= D.drift_above < drift["kl"]
    assert 0 < slight["js"] < drift["js"] <= 1 and slight["psi"] < drift["psi"]
    # the explanation names the new product words
    terms = [t["term"] for t in drift["top_terms"]]
    assert "helix" in terms[:4] and "zephyr" in terms
    top = drift["top_terms"][0]
    assert top["contribution"] > 0 and top["current_share"] > top["reference_share"]
    assert any("helix" in e or "zephyr" in e for e in drift["examples"])


def test_custom_band_thresholds():
    settings = D.model_copy(update={"same_below": 0.01, "drift_above": 0.05})
    res = compute_drift(prompts(3000, 1), prompts(1000, 3, new_share=0.05), settings)
    assert res["band"] == "drift"


def test_insufficient_data_is_not_no_drift():
    res = compute_drift(prompts(3000, 1), prompts(150, 2, new_share=0.9), D)
    assert res["band"] == "insufficient" and res["alert"] is False
    assert res["kl"] > D.drift_above  # measured, but not trusted
    assert "insufficient" in res["reason"]
    assert compute_drift(prompts(100, 1), prompts(1000, 2), D)["band"] == "insufficient"
    empty = compute_drift([], ["", None], D)
    assert empty["band"] == "insufficient" and empty["n_current"] == 0 and empty["kl"] is None
    json.dumps(empty)


def test_null_baseline_grows_as_samples_shrink_and_gates_the_alert():
    ref = prompts(2000, 1)
    small = compute_drift(ref, prompts(200, 5), D)
    large = compute_drift(ref, prompts(2000, 6), D)
    assert small["null_kl"] > large["null_kl"]
    # A tiny sample can land in 'slight' by bias alone; the null baseline then holds the alert back.
    settings = D.model_copy(update={"same_below": 0.001, "drift_above": 5.0})
    noisy = compute_drift(ref, prompts(200, 7), settings)
    assert noisy["band"] == "slight" and noisy["kl"] <= noisy["null_kl"] and noisy["alert"] is False
    # deterministic per seed
    assert compute_drift(ref, prompts(200, 7), settings, seed=3)["null_kl"] == compute_drift(
        ref, prompts(200, 7), settings, seed=3)["null_kl"]


def test_false_alarms_on_no_change_windows_are_rare():
    ref = prompts(2000, 1)
    alerts = sum(compute_drift(ref, prompts(500, 100 + s), D, seed=s)["alert"] for s in range(20))
    assert alerts == 0


def test_explanations_are_pii_safe():
    ref = prompts(2000, 1)
    rng = np.random.default_rng(9)
    current = []
    for i in range(1000):
        text = NEW[i % len(NEW)]
        if i % 3 == 0:
            text += f" my email is jane.doe{i}@example.com and my phone is 555-{1000 + i}"
        if i % 7 == 0:
            text += f" my order is ORD-{rng.integers(10**6, 10**7)} and my name is Xavierina"  # one user's name
        if i == 5:
            text += " my name is Quixotella Brandywine"
        current.append(text)
    res = compute_drift(ref, current, D.model_copy(update={"top_terms": 30}))
    shown = [t["term"] for t in res["top_terms"]] + [w for e in res["examples"] for w in e.split()]
    assert "<email>" in shown and "<num>" in shown
    for leaked in ("jane", "doe", "example", "com", "555", "quixotella", "brandywine"):
        assert leaked not in shown, leaked
    for word in shown:
        assert word.isalpha() or word in ("<email>", "<num>", "<url>", "<oov>", "*"), word
    assert "@" not in json.dumps(res["top_terms"]) + json.dumps(res["examples"])
    for example in res["examples"]:
        assert not any(ch.isdigit() for ch in example)
    # 'xavierina' is in >= explain_min_prompts prompts (k-anonymous, may be named); 'quixotella' in one only


def test_load_prompts(tmp_path):
    jsonl = tmp_path / "ref.jsonl"
    jsonl.write_text('{"prompt": "a b"}\n\n{"prompt": "c", "response": "x"}\n', encoding="utf-8")
    assert load_prompts(jsonl) == ["a b", "c"]
    text = tmp_path / "ref.txt"
    text.write_text("first prompt\n\n second \n", encoding="utf-8")
    assert load_prompts(text) == ["first prompt", "second"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"nope": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_prompts(bad)
    with pytest.raises(FileNotFoundError):
        load_prompts(tmp_path / "missing.jsonl")


def test_large_windows_are_binned_from_a_sample():
    settings = D.model_copy(update={"max_current_prompts": 300})
    res = compute_drift(prompts(2000, 1), prompts(1000, 2), settings)
    assert res["n_current"] == 1000 and res["n_current_binned"] == 300
    assert res["band"] == "same" and res["alert"] is False
    full = compute_drift(prompts(2000, 1), prompts(1000, 2), D.model_copy(update={"max_current_prompts": None}))
    assert full["n_current_binned"] == 1000 and full["null_kl"] < res["null_kl"]


# ------------------------------------------------------------------------ clustered traffic (issue 17)

WORDS = [f"w{chr(97 + i)}{chr(97 + j)}" for i in range(26) for j in range(26)]


def conversations(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Prompts that come in conversations: each conversation keeps to its own few words for its 4
    turns, as real chats do, so two halves of the same traffic differ more than independent prompts."""
    rng = np.random.default_rng(seed)
    prompts, groups = [], []
    for c in range(n):
        own = rng.choice(len(WORDS), size=3, replace=False)
        for _ in range(4):
            prompts.append(" ".join(["please", "help"] + [WORDS[i] for i in own[rng.integers(0, 3, size=3)]]))
            groups.append(f"c{seed}-{c}")
    return prompts, groups


def test_the_null_resamples_whole_conversations_so_a_same_source_split_does_not_alarm():
    settings = D.model_copy(update={"vocab_size": 1000})
    alarms_by_prompt = alarms_by_conversation = 0
    for seed in range(4):
        reference, groups = conversations(150, seed)
        current, _ = conversations(150, 100 + seed)
        by_prompt = compute_drift(reference, current, settings, seed=seed)
        by_conversation = compute_drift(reference, current, settings, seed=seed, reference_groups=groups)
        assert by_prompt["null_resampled_by"] == "prompt" and by_prompt["null_groups"] == 600
        assert by_conversation["null_resampled_by"] == "session" and by_conversation["null_groups"] == 150
        assert by_conversation["null_kl"] > by_prompt["null_kl"]
        alarms_by_prompt += by_prompt["kl"] > by_prompt["null_kl"]
        alarms_by_conversation += by_conversation["kl"] > by_conversation["null_kl"]
    assert alarms_by_prompt == 4 and alarms_by_conversation == 0
    # asked to resample by prompt, the groups are not used
    reference, groups = conversations(150, 0)
    plain = compute_drift(reference, reference, settings.model_copy(update={"null_resample_by": "prompt"}),
                          reference_groups=groups)
    assert plain["null_resampled_by"] == "prompt"


def test_one_very_long_prompt_cannot_move_the_histogram():
    reference = prompts(1000, 1)
    pasted = " ".join(f"clause{i % 50} of the pasted contract" for i in range(3000))
    current = prompts(999, 2) + [pasted]
    capped = compute_drift(reference, current, D)
    uncapped = compute_drift(reference, current, D.model_copy(update={"max_prompt_tokens": None}))
    assert capped["band"] == "same" and capped["alert"] is False
    assert uncapped["band"] != "same" and uncapped["kl"] > 5 * capped["kl"]


def test_prompt_files_and_logs_carry_the_groups(tmp_path):
    import pyarrow as pa

    from tasks.contracts import LOG_SCHEMA
    from tasks.drift import load_prompt_records, prompt_groups

    jsonl = tmp_path / "ref.jsonl"
    jsonl.write_text('{"prompt": "a", "group": "g1"}\n{"prompt": "b", "session_id": "s9"}\n{"prompt": "c"}\n'
                     '{"prompt": "", "group": "g2"}\n', encoding="utf-8")
    assert load_prompt_records(jsonl) == (["a", "b", "c"], ["g1", "s9", None])
    table = pa.Table.from_pylist([
        {"request_id": str(i), "ts": None, "user_id": user, "session_id": session, "prompt": "p", "response": "r",
         "model_version": "v", "metadata": "{}"}
        for i, (user, session) in enumerate([("alice", "s1"), ("alice", "s1"), ("alice", None), ("bob", None)])
    ], schema=LOG_SCHEMA)
    by_session = prompt_groups(table, "session")
    assert by_session[0] == by_session[1] != by_session[2] != by_session[3]
    by_user = prompt_groups(table, "user")
    assert by_user[0] == by_user[1] == by_user[2] != by_user[3]
    assert prompt_groups(table, "prompt") is None
    assert not any("alice" in g or "bob" in g or "s1" in g for g in by_session)  # hashed, never the raw ids
    with pytest.raises(ValueError, match="2 reference groups for 3 reference prompts"):
        compute_drift(["a", "b", "c"], ["a"], D, reference_groups=["g", "g"])

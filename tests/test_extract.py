"""Case extraction: kinds (multi-label), follow-ups, user hashing, duplicates, the per-topic cap."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.config import ExtractSettings, SignalsSettings
from tasks.contracts import CASE_SCHEMA, LOG_SCHEMA
from tasks.extract import derive_topics, extract_cases, topic_cap, unsupported_flags, user_ref
from tasks.files import read_cases

KEY = b"test-secret-key"
T0 = datetime(2026, 2, 2, 9, 0, tzinfo=timezone.utc)
REFUSAL = "I don't know."
ANSWER = "Sure: open the app, choose Settings and follow the steps shown there."


def _row(i, *, user="alice", prompt, response=ANSWER, seconds=None, feedback=None, correction=None):
    return {
        "request_id": f"req-{i:04d}",
        "ts": T0 + timedelta(seconds=seconds if seconds is not None else 120 * i),
        "user_id": user,
        "session_id": None,
        "prompt": prompt,
        "response": response,
        "model_version": "v1",
        "latency_ms": 120.0,
        "prompt_tokens": 12,
        "completion_tokens": 20,
        "feedback": feedback,
        "correction": correction,
        "metadata": "{}",
    }


def _table(rows):
    return pa.Table.from_pylist(rows, schema=LOG_SCHEMA)


def _by_request(result_path):
    return {c.request_id: c for c in read_cases(result_path)}


def test_kinds_are_multi_labelled_and_the_reask_carries_its_followup(tmp_path):
    rows = [
        # refused, thumbs-down, and re-asked 10 s later by the same user
        _row(
            0,
            user="alice@example.com",
            prompt="What is the battery life of the Zephyr headset?",
            response=REFUSAL,
            seconds=0,
            feedback=-1,
        ),
        _row(1, user="alice@example.com", prompt="what is the battery life of the zephyr headset", seconds=10),
        _row(2, user="bob", prompt="How do I reset the Aurora lamp?", seconds=300, feedback=1),  # fine
        _row(3, user="carol", prompt="Which colours does the Nimbus kettle come in?", seconds=400, feedback=-1),
        _row(4, user="dave", prompt="Can I return a Solstice blender after 60 days?", response=REFUSAL, seconds=500),
        # same user, similar text, but 10 minutes later: not a re-ask
        _row(5, user="dave", prompt="Can I return a Solstice blender after 60 days please?", seconds=1100),
    ]
    out = tmp_path / "cases.parquet"
    result = extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=out)
    cases = _by_request(out)
    assert set(cases) == {"req-0000", "req-0003", "req-0004"}
    assert cases["req-0000"].kinds == ["reask", "refusal", "thumbs_down"]
    assert cases["req-0000"].followup == "what is the battery life of the zephyr headset"
    assert cases["req-0003"].kinds == ["thumbs_down"] and cases["req-0003"].followup is None
    assert cases["req-0004"].kinds == ["refusal"]
    assert result["cases"] == 3 and result["read"] == 6
    assert result["by_kind"] == {"refusal": 2, "reask": 1, "thumbs_down": 2, "unsupported": 0}
    assert result["duplicates_removed"] == 0 and result["capped"] == 0


def test_user_ids_are_replaced_by_a_keyed_hash(tmp_path):
    rows = [
        _row(0, user="alice@example.com", prompt="What does the Zephyr cost?", response=REFUSAL),
        _row(1, user="bob-4411", prompt="Is the Aurora waterproof?", feedback=-1),
        _row(2, user="alice@example.com", prompt="Does the Nimbus have a timer?", response=REFUSAL),
    ]
    for suffix in (".parquet", ".jsonl"):
        out = tmp_path / f"cases{suffix}"
        extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=out)
        raw = out.read_bytes()
        assert b"alice" not in raw and b"bob-4411" not in raw
        refs = {c.request_id: c.user_ref for c in read_cases(out)}
        assert refs["req-0000"] == refs["req-0002"] == user_ref("alice@example.com", KEY)
        assert refs["req-0001"] != refs["req-0000"]
    expected = hmac.new(KEY, b"user_ref\x00alice@example.com", hashlib.sha256).hexdigest()[:16]
    assert user_ref("alice@example.com", KEY) == expected
    assert user_ref("alice@example.com", b"another key") != expected
    assert user_ref("alice@example.com", KEY) != hashlib.sha256(b"alice@example.com").hexdigest()[:16]
    with pytest.raises(ValueError, match="key"):
        user_ref("alice", b"")
    with pytest.raises(ValueError, match="key"):
        extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=b"", out_path=tmp_path / "never.parquet")


def test_parquet_and_jsonl_outputs_follow_the_case_contract(tmp_path):
    rows = [_row(0, prompt="Is the Zephyr compatible with iOS?", response=REFUSAL)]
    extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "a.parquet")
    assert pq.read_schema(tmp_path / "a.parquet").equals(CASE_SCHEMA, check_metadata=False)
    extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "nested" / "a.jsonl")
    (record,) = [json.loads(line) for line in (tmp_path / "nested" / "a.jsonl").read_text().splitlines()]
    assert record["kinds"] == ["refusal"] and record["ts"].startswith("2026-02-02T09:00:00")
    assert read_cases(tmp_path / "a.parquet") == read_cases(tmp_path / "nested" / "a.jsonl")


def test_empty_window(tmp_path):
    result = extract_cases(_table([]), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "cases.parquet")
    assert result["cases"] == 0 and result["by_kind"] == {"refusal": 0, "reask": 0, "thumbs_down": 0, "unsupported": 0}
    assert pq.read_table(tmp_path / "cases.parquet").num_rows == 0


def test_exact_and_near_duplicates_are_removed(tmp_path):
    long = "My Zephyr headset keeps disconnecting from my laptop every few minutes, what can I do about it"
    rows = [
        _row(0, user="u0", prompt=long + "?", response=REFUSAL),
        _row(
            1,
            user="u1",
            prompt="  my ZEPHYR headset keeps disconnecting from my laptop every few minutes -- what can I do about it!! ",
            response=REFUSAL,
        ),
        _row(2, user="u2", prompt=long.replace("disconnecting", "disconecting") + "?", feedback=-1),  # a typo
        _row(3, user="u3", prompt="Hi! " + long + "?", response=REFUSAL),  # near: a greeting added
        _row(7, user="u7", prompt=long.replace("laptop", "phone") + "?", response=REFUSAL),  # another device: kept
        _row(
            4, user="u4", prompt="My Aurora lamp keeps flickering at night, what can I do about it?", response=REFUSAL
        ),
        _row(5, user="u5", prompt="How much does the Nimbus kettle cost?", response=REFUSAL),
        _row(6, user="u6", prompt="How much does the Solstice blender cost?", response=REFUSAL),  # similar, not a dup
    ]
    result = extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "cases.jsonl")
    kept = _by_request(tmp_path / "cases.jsonl")
    assert result["exact_duplicates"] == 1
    assert result["near_duplicates"] == 2
    assert result["duplicates_removed"] == 3
    assert set(kept) == {"req-0000", "req-0004", "req-0005", "req-0006", "req-0007"}  # the earliest of each group


def test_near_duplicate_threshold_is_configurable(tmp_path):
    rows = [
        _row(0, user="u0", prompt="How much does the Nimbus kettle cost?", response=REFUSAL),
        _row(1, user="u1", prompt="How much does the Nimbus kettle cost in Canada?", response=REFUSAL),
    ]
    strict = extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "a.jsonl")
    loose = extract_cases(
        _table(rows),
        SignalsSettings(),
        ExtractSettings(near_duplicate_threshold=0.6),
        key=KEY,
        out_path=tmp_path / "b.jsonl",
    )
    assert strict["cases"] == 2 and loose["cases"] == 1


FEATURES = [
    "bluetooth", "wifi", "voice control", "a sleep timer", "fast charging", "noise cancelling", "firmware updates",
    "a travel case", "multipoint pairing", "an equaliser", "spatial audio", "a low battery alert", "gestures",
    "a find my device mode", "sidetone", "a hearing test", "ear detection", "usb audio", "a dark theme", "a guest mode",
    "a kids mode", "calendar sync", "offline maps", "dual sim", "wireless charging", "a lanyard", "nfc payments",
    "an sos button", "water lock", "a flashlight",
]  # fmt: skip
PRODUCTS = [
    "Aurora", "Nimbus", "Solstice", "Borealis", "Cirrus", "Meridian", "Tempest", "Halcyon", "Equinox", "Zenith",
    "Obsidian", "Quasar", "Pulsar", "Nebula", "Vortex", "Cascade", "Summit", "Horizon", "Lumen", "Ember",
]  # fmt: skip


def _flood(n_flood=30):
    """A window where the Zephyr fails a lot (one noisy topic) and twenty other products fail once."""
    rows = []
    for i, feature in enumerate(FEATURES[:n_flood]):
        rows.append(_row(len(rows), user=f"z{i}", prompt=f"Does the Zephyr support {feature}?", response=REFUSAL))
    for i, product in enumerate(PRODUCTS):
        rows.append(
            _row(len(rows), user=f"p{i}", prompt=f"Does the {product} support {FEATURES[i]}?", response=REFUSAL)
        )
    # answered traffic: every product, the same template words
    for i in range(200):
        product = (PRODUCTS + ["Zephyr"])[i % 21]
        rows.append(
            _row(
                len(rows), user=f"t{i}", prompt=f"Does the {product} support {FEATURES[i % 30]} and what is the price?"
            )
        )
    return rows


def test_topics_are_what_the_failures_are_about():
    rows = _flood()
    prompts = [r["prompt"] for r in rows]
    failing = prompts[:50]
    topics = derive_topics(failing, background=prompts)
    assert topics[:30] == ["zephyr"] * 30
    # the twenty single failures are not lumped together by their shared template word "support"
    assert "support" not in topics
    assert len(set(topics[30:])) == 20
    assert derive_topics(["the and of", "?"]) == [None, None]


def test_topic_cap_limits_one_noisy_topic(tmp_path):
    result = extract_cases(_table(_flood()), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "cases.parquet")
    cases = read_cases(tmp_path / "cases.parquet")
    zephyr = [c for c in cases if c.topic == "zephyr"]
    # c <= 0.25 * (c + 20) -> c = 6: the Zephyr keeps 6 of 30, the twenty others stay
    assert len(zephyr) == 6 and result["capped"] == 24
    assert result["cases"] == len(cases) == 26
    assert len(zephyr) / len(cases) <= 0.25
    assert result["topics"]["zephyr"] == 6
    # reproducible: the same window gives the same cut
    again = extract_cases(_table(_flood()), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "again.parquet")
    assert again == {**result, "path": str(tmp_path / "again.parquet")}
    assert read_cases(tmp_path / "again.parquet") == cases


def test_topic_cap_prefers_cases_with_more_kinds(tmp_path):
    rows = _flood()
    rows[29]["feedback"] = -1  # the last Zephyr failure is also a thumbs-down
    extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=tmp_path / "cases.parquet")
    kept = _by_request(tmp_path / "cases.parquet")
    assert kept["req-0029"].kinds == ["refusal", "thumbs_down"]


def test_topic_cap_arithmetic():
    assert topic_cap([30] + [1] * 20, 0.25, 1) == 6
    assert topic_cap([30] + [1] * 20, 0.25, 10) == 10  # the floor wins
    assert topic_cap([3, 2, 1], 0.25, 5) == 5  # small sets: nothing is cut
    assert topic_cap([4, 4, 4, 4], 0.25, 1) == 4  # evenly spread: nothing to cut
    assert topic_cap([10, 10], 0.25, 1) == 1  # fewer topics than 1/share: impossible, floor
    assert topic_cap([], 0.25, 5) == 5


def test_answers_the_docs_do_not_support_become_unsupported_cases(tmp_path):
    from tasks.config import load_settings
    from tasks.knowledge import load_knowledge_base

    answers = {t.id: t.answer for t in load_knowledge_base(None, "v2").topics}
    rows = [
        _row(0, user="ann", prompt="How much is the Helix Watch?", response=answers["product_helix_watch"]),
        _row(1, user="ben", prompt="How much is the Quasar VR headset?", response=answers["product_lumen_55"]),
        _row(2, user="cy", prompt="What is your return policy?", response=answers["return_policy"].replace("30", "90")),
        _row(3, user="dee", prompt="Tell me a joke.", response=answers["gift_cards"], feedback=-1),
    ]
    grounding = load_settings(None, {"paths.workspace": str(tmp_path / "ws")})
    out = tmp_path / "cases.jsonl"
    result = extract_cases(_table(rows), SignalsSettings(), ExtractSettings(), key=KEY, out_path=out,
                           unsupported=unsupported_flags(grounding, None))
    cases = _by_request(out)
    assert set(cases) == {"req-0001", "req-0002", "req-0003"}  # the documented answer is no case
    assert cases["req-0001"].kinds == ["unsupported"] and cases["req-0002"].kinds == ["unsupported"]
    assert cases["req-0003"].kinds == ["thumbs_down", "unsupported"]
    assert result["flagged"]["unsupported"] == 3 and result["by_kind"]["unsupported"] == 3

"""The traffic simulator, its knowledge base and its synthetic annotators (tasks/simulate/)."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from tasks.config import SHIPPED_DATA, SignalsSettings, SimulateSettings
from tasks.contracts import Generator, LogRecord
from tasks.knowledge import load_knowledge_base
from tasks.simulate.bank import VARIANTS
from tasks.simulate import (
    ScriptedModel,
    World,
    default_model,
    judge_response,
    luhn_check_digit,
    outcome_summary,
    simulate,
    simulate_week,
    simulated_annotations,
    true_label,
)
from tasks.simulate._lines import truth_line
from tasks.text import token_f1

KB_DIR = SHIPPED_DATA / "knowledge_base"
SMALL = dict(seed=11, weeks=3, launch_week=2, records_per_week=1500, users=120)
REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in SignalsSettings().refusal_patterns), re.IGNORECASE)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("sim")
    settings = SimulateSettings(**SMALL)
    result = simulate(settings, out)
    records = [r for f in result.files for r in _read_jsonl(Path(f))]
    truth = _read_jsonl(Path(result.ground_truth))
    return {"out": out, "settings": settings, "result": result, "records": records, "truth": truth,
            "summary": json.loads(Path(result.ground_truth_summary).read_text(encoding="utf-8"))}


# -- knowledge base files -------------------------------------------------------------------------


def test_knowledge_base_files_have_the_agreed_shape() -> None:
    v1 = json.loads((KB_DIR / "v1.json").read_text(encoding="utf-8"))
    v2 = json.loads((KB_DIR / "v2.json").read_text(encoding="utf-8"))
    assert v1["version"] == "v1" and v2["version"] == "v2" and v2["launch_note"]
    assert len(v1["topics"]) >= 20 and len(v2["topics"]) >= 8
    ids = [t["id"] for t in v1["topics"] + v2["topics"]]
    assert len(ids) == len(set(ids)), "topic ids must be unique across v1 and v2"
    seen_questions: dict[str, str] = {}
    for topic in v1["topics"] + v2["topics"]:
        assert topic["kind"] in ("product", "policy")
        questions = topic["questions"]
        assert len(set(questions)) >= 12 and len(set(questions)) == len(questions), topic["id"]
        assert len(topic["answer"].split()) <= 40, topic["id"]
        assert topic["facts"] and all(f in topic["answer"] for f in topic["facts"]), topic["id"]
        assert not REFUSAL_RE.search(topic["answer"]), f"{topic['id']}: an answer must not read as a refusal"
        for q in questions:
            assert not re.search(r"[.?!]\s", q), f"{q!r}: one sentence per question"
            assert q not in seen_questions, f"{q!r} is asked in {seen_questions.get(q)} and {topic['id']}"
            seen_questions[q] = topic["id"]
        if topic["kind"] == "product":  # every question names the product, unambiguously
            words = topic["name"].lower().split()
            shared = sum(t["name"].lower().split()[0] == words[0] for t in v1["topics"] + v2["topics"]) > 1
            short = " ".join(words[:2] if shared else words[:1])
            assert all(short in q.lower() for q in questions), f"{topic['id']}: a question lacks {short!r}"
    for lang in ("en", "ko"):
        assert len(v1["refusals"][lang]) >= 3
        assert all(REFUSAL_RE.search(p) for p in v1["refusals"][lang]), "refusals must match signals.refusal_patterns"
    unknown = [u.lower() for u in v1["unknown_products"]]
    assert len(unknown) >= 25 and len(set(unknown)) == len(unknown)
    all_names = " ".join(t["name"].lower() for t in v1["topics"] + v2["topics"]).split()
    for product in unknown:
        assert product.split()[0] not in all_names, f"{product!r} shares its name with a knowledge-base topic"


def test_load_knowledge_base_v2_adds_the_launch() -> None:
    v1 = load_knowledge_base(SHIPPED_DATA, "v1")
    v2 = load_knowledge_base(SHIPPED_DATA, "v2")
    assert [t.id for t in v2.topics[: len(v1.topics)]] == [t.id for t in v1.topics]
    launched = v2.topics[len(v1.topics):]
    assert launched and all(t.kb_version == "v2" for t in launched)
    assert v2.launch_note and v1.refusals["ko"]
    with pytest.raises(ValueError, match="v3"):
        load_knowledge_base(SHIPPED_DATA, "v3")  # type: ignore[arg-type]


# -- judge and scripted model ---------------------------------------------------------------------


def test_judge_response() -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    topic = kb.topic("product_aurora_x2")
    assert judge_response(kb, topic.id, topic.answer) == "correct"
    assert judge_response(kb, topic.id, "Sure! " + topic.answer) == "correct"
    assert judge_response(kb, topic.id, topic.answer.replace("$199", "$149")) == "wrong"  # a fact is off
    assert judge_response(kb, topic.id, kb.topic("return_policy").answer) == "wrong"
    assert judge_response(kb, topic.id, kb.refusals["en"][0]) == "refusal"
    assert judge_response(kb, topic.id, kb.refusals["ko"][1]) == "refusal"
    assert judge_response(kb, topic.id, "Hmm, I'm not sure, sorry.") == "refusal"
    assert judge_response(kb, "unknown_product", "It costs $99 and ships tomorrow.") == "wrong"
    assert judge_response(kb, "offtopic", kb.refusals["en"][2]) == "refusal"
    v1 = load_knowledge_base(SHIPPED_DATA, "v1")  # a v2 topic is unknown to the v1 knowledge base
    assert judge_response(v1, "product_helix_fold", kb.topic("product_helix_fold").answer) == "wrong"
    assert token_f1("The cat sat", "the cat sat") == 1.0 and token_f1("x", "y") == 0.0


def test_scripted_model_knows_its_version_and_varies_when_it_makes_things_up() -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    v1_model, v2_model = ScriptedModel(hallucination_rate=0.0, unknown_hallucination_rate=0.0), ScriptedModel(knows="v2")
    assert isinstance(v1_model, Generator) and v1_model.model_version == "scripted-v1"
    fold = kb.topic("product_helix_fold")
    refused = v1_model.generate([fold.questions[0], "Tell me about the Zorblax 9000 blender."])
    assert all(judge_response(kb, fold.id, row[0]) == "refusal" for row in refused)
    assert v2_model.generate([fold.questions[0]])[0] == [fold.answer]
    # greedy decoding is a pure function of the prompt; n copies at temperature 0
    prompts = [q for t in kb.topics for q in t.questions]
    assert v1_model.generate(prompts, n=2) == v1_model.generate(prompts, n=2)
    assert all(a == b for a, b in v1_model.generate(prompts[:20], n=2))
    # self-consistency: samples of a made-up answer differ far more than samples of a known one
    model = ScriptedModel(hallucination_rate=0.0, unknown_hallucination_rate=1.0)
    def consistency(prompt: str) -> float:
        samples = model.generate([prompt], n=5, temperature=0.8, seed=3)[0]
        return float(np.mean([token_f1(a, b) for a, b in itertools.combinations(samples, 2)]))
    known = np.mean([consistency(q) for q in kb.topic("return_policy").questions[:5]])
    made_up = np.mean([consistency(q) for q in fold.questions[:5]])
    assert known > 0.8 and made_up < 0.6, (known, made_up)
    assert model.generate(["How do I return an item?"], n=3, temperature=0.8, seed=1) == \
        model.generate(["How do I return an item?"], n=3, temperature=0.8, seed=1)
    assert all(len(t.split()) <= 4 for t in model.generate(prompts[:5], max_new_tokens=4)[0])


def test_scripted_model_korean_refusal_share() -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    model = ScriptedModel(unknown_hallucination_rate=0.0, korean_refusal_share=0.3)
    prompts = [f"{q} Order ORD-{i:07d}." for i in range(300) for q in kb.topic("product_zephyr_mini").questions[:2]]
    answers = [row[0] for row in model.generate(prompts)]
    korean = sum(a in kb.refusals["ko"] for a in answers) / len(answers)
    assert all(a in kb.all_refusals() for a in answers)
    assert 0.24 < korean < 0.36, korean


# -- the simulation -------------------------------------------------------------------------------


def test_simulation_is_deterministic_per_seed(run: dict, tmp_path: Path) -> None:
    again = simulate(run["settings"], tmp_path / "again")
    assert again.records == run["result"].records
    assert _digests(tmp_path / "again") == _digests(run["out"])
    other = simulate(run["settings"].model_copy(update={"seed": 12, "weeks": 1}), tmp_path / "other")
    first_day = json.loads(Path(other.files[0]).read_text(encoding="utf-8").splitlines()[0])
    assert first_day != run["records"][0]


def test_parquet_output_is_deterministic_and_loads_as_log_records(tmp_path: Path) -> None:
    settings = SimulateSettings(**{**SMALL, "weeks": 1, "records_per_week": 400, "format": "parquet"})
    a, _ = simulate(settings, tmp_path / "a"), simulate(settings, tmp_path / "b")
    assert a.files and all(f.endswith(".parquet") for f in a.files)
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    import pyarrow.parquet as pq
    assert sum(pq.read_table(f).num_rows for f in a.files) == 400


def test_every_record_is_a_log_record_with_one_ground_truth_row(run: dict) -> None:
    records, truth, settings = run["records"], run["truth"], run["settings"]
    assert len(records) == run["result"].records == settings.weeks * settings.records_per_week
    assert [r["request_id"] for r in records] == [t["request_id"] for t in truth]
    assert len({r["request_id"] for r in records}) == len(records)
    for r in records[:200]:
        LogRecord.model_validate(r)
    times = [r["ts"] for r in records]
    assert times == sorted(times)
    summary = run["summary"]
    assert summary["seed"] == settings.seed and summary["weeks"] == [1, 2, 3]
    assert summary["launch_date"] == "2026-01-12" and summary["counts"]["records"] == len(records)
    assert summary["counts"]["refusals"] == sum(t["is_refusal"] for t in truth)


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_reasks_follow_the_previous_response_of_the_same_user_within_30_s(run: dict) -> None:
    records, truth = run["records"], run["truth"]
    by_id = {r["request_id"]: (r, t) for r, t in zip(records, truth)}
    previous: dict[str, dict] = {}
    gaps: dict[str, list[float]] = defaultdict(list)
    asked_again: list[tuple[str, str]] = []
    for r, t in zip(records, truth):
        before = previous.get(r["user_id"])
        if t["follows"] is not None:
            assert before is not None and before["request_id"] == t["follows"]
            gap = (_ts(r["ts"]) - _ts(before["ts"]) - timedelta(milliseconds=before["latency_ms"])).total_seconds()
            gaps[t["turn"]].append(gap)
            if t["is_reask"]:
                assert t["reask_of"] == before["request_id"]
                original, original_truth = by_id[t["reask_of"]]
                assert original_truth["subject"] == t["subject"]
                assert original_truth["outcome"] != "correct"  # only unhappy users re-ask
                asked_again.append((original["prompt"], r["prompt"]))
            else:  # a switch or a follow-up asks about something else
                assert t["reask_of"] is None and t["subject"] != by_id[t["follows"]][1]["subject"]
        else:
            assert t["turn"] == "first" and t["reask_of"] is None
        previous[r["user_id"]] = r
    assert gaps["reask"] and max(gaps["reask"]) <= 30 and min(gaps["reask"]) > 0
    assert gaps["switch"] and max(gaps["switch"]) <= 30  # negatives for re-ask detectors: within 30 s
    assert gaps["followup"] and min(gaps["followup"]) > 30  # and later, different questions
    unhappy_first = [t for t in truth if t["turn"] == "first" and t["outcome"] != "correct"]
    reasked = {t["reask_of"] for t in truth if t["is_reask"]}
    share = sum(t["request_id"] in reasked for t in unhappy_first) / len(unhappy_first)
    assert abs(share - run["settings"].reask_probability) < 0.08
    # A re-ask asks the same question again, not another question about the same product: wherever both
    # prompts hold a bank question verbatim (not a typo variant), it is the same one.
    bank = World.create(run["settings"]).bank
    questions = sorted({q.lower() for q in bank.text[::VARIANTS]}, key=len, reverse=True)  # as written, no typos

    def question_in(prompt: str) -> str | None:
        return next((q for q in questions if q in prompt.lower()), None)

    pairs = [(question_in(a), question_in(b)) for a, b in asked_again]
    verbatim = [(a, b) for a, b in pairs if a and b]
    assert len(verbatim) >= len(asked_again) / 2
    assert all(a == b for a, b in verbatim), [p for p in verbatim if p[0] != p[1]][:3]


def test_refusals_in_ground_truth_are_the_knowledge_base_phrases(run: dict) -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    phrases = set(kb.all_refusals())
    refused = [r["response"] in phrases for r in run["records"]]
    assert sum(refused) == sum(t["is_refusal"] for t in run["truth"]) > 0
    assert all(f == t["is_refusal"] for f, t in zip(refused, run["truth"]))
    korean = sum(r["response"] in kb.refusals["ko"] for r in run["records"]) / sum(refused)
    assert abs(korean - run["settings"].korean_refusal_share) < 0.08
    for r, t in zip(run["records"], run["truth"]):
        assert t["is_hallucination"] == (t["outcome"] == "wrong")
        assert judge_response(kb, t["topic"], r["response"]) == t["outcome"]


def _luhn_valid(number: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(number)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def test_luhn_check_digit() -> None:
    body = np.array([[int(c) for c in "411111111111111"], [int(c) for c in "555555555555444"]])
    assert luhn_check_digit(body).tolist() == [1, 4]  # 4111 1111 1111 1111, 5555 5555 5555 4444
    rng = np.random.default_rng(0)
    bodies = rng.integers(0, 10, (200, 15))
    for row, check in zip(bodies, luhn_check_digit(bodies)):
        assert _luhn_valid("".join(map(str, row)) + str(check))


def test_pii_values_appear_verbatim_in_prompts(run: dict) -> None:
    with_pii = [(r, t) for r, t in zip(run["records"], run["truth"]) if t["pii"]]
    share = len(with_pii) / len(run["records"])
    assert abs(share - run["settings"].pii_rate) < 0.03
    types = Counter()
    for r, t in with_pii:
        for item in t["pii"]:
            assert item["value"] in r["prompt"], (item, r["prompt"])
            types[item["type"]] += 1
            if item["type"] == "CREDIT_CARD":
                assert _luhn_valid(item["value"].replace(" ", "")) and len(item["value"].replace(" ", "")) == 16
            if item["type"] == "IBAN_CODE":
                raw = item["value"].replace(" ", "")
                assert int("".join(str(int(c, 36)) for c in raw[4:] + raw[:4])) % 97 == 1
            if item["type"] == "ORDER_ID":
                assert re.fullmatch(r"ORD-\d{7}", item["value"])
            if item["type"] == "API_KEY":
                assert re.fullmatch(r"sk-[A-Za-z0-9]{32}", item["value"])
            if item["type"] == "US_SSN":
                area = int(item["value"][:3])
                assert re.fullmatch(r"\d{3}-\d{2}-\d{4}", item["value"]) and area not in (0, 666) and area < 900
    assert {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER", "ORDER_ID", "CREDIT_CARD"} <= set(types)


def test_the_launch_brings_v2_topics_from_launch_week_on(run: dict) -> None:
    settings = run["settings"]
    by_week: dict[int, list[dict]] = defaultdict(list)
    for t in run["truth"]:
        by_week[t["week"]].append(t)
    assert not any(t["kb_version"] == "v2" for t in by_week[1])
    for week in (2, 3):
        first = [t for t in by_week[week] if t["turn"] == "first"]
        share = sum(t["kb_version"] == "v2" for t in first) / len(first)
        assert abs(share - settings.new_topic_share) < 0.05, (week, share)
    refusal_rate = {w: np.mean([t["is_refusal"] for t in rows]) for w, rows in by_week.items()}
    assert refusal_rate[2] > 2 * refusal_rate[1]  # the v1 model cannot answer the new products


def test_feedback_and_corrections(run: dict) -> None:
    records, truth = run["records"], run["truth"]
    rated = [(r, t) for r, t in zip(records, truth) if r["feedback"] is not None]
    assert abs(len(rated) / len(records) - run["settings"].feedback_rate) < 0.015
    down_when_unhappy = np.mean([r["feedback"] == -1 for r, t in rated if t["outcome"] != "correct"])
    up_when_happy = np.mean([r["feedback"] == 1 for r, t in rated if t["outcome"] == "correct"])
    assert down_when_unhappy > 0.7 and up_when_happy > 0.7
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    for r, t in zip(records, truth):
        if r["correction"] is not None:
            assert r["feedback"] == -1 and r["correction"] == kb.topic(t["topic"]).answer


def test_append_week_by_week_equals_one_run(run: dict, tmp_path: Path) -> None:
    settings = run["settings"]
    simulate(settings, tmp_path, weeks=[1, 2])
    result = simulate(settings, tmp_path, weeks=[3], append=True)
    assert result.weeks == [3] and result.records == settings.records_per_week
    assert _digests(tmp_path) == _digests(run["out"])
    with pytest.raises(ValueError, match="already holds"):
        simulate(settings, tmp_path, weeks=[3], append=True)


def test_simulate_week_batches_calls_and_hits_the_weekly_volume() -> None:
    settings = SimulateSettings(seed=5, records_per_week=700, launch_week=1, users=50)
    world = World.create(settings)
    base = default_model(settings)
    calls: list[int] = []

    class Counting:
        model_version = "counting"

        def generate(self, prompts, **kw):  # type: ignore[no-untyped-def]
            calls.append(len(prompts))
            return base.generate(prompts, **kw)

    traffic = simulate_week(world, 1, Counting())
    assert len(traffic.records) == 700 and len(calls) <= 4 and calls[0] >= 400
    assert traffic.records[0]["model_version"] == "counting"
    model = default_model(settings)
    recognised = [model.bank.label[model.subject(r["prompt"])] for r in traffic.records]
    assert recognised == [t["subject"] for t in traffic.truth]  # the scripted model reads every prompt right


def test_truth_lines_are_compact_json() -> None:
    settings = SimulateSettings(seed=3, records_per_week=300, launch_week=1)
    traffic = simulate_week(World.create(settings), 1, default_model(settings))
    for row in traffic.truth:
        assert truth_line(row) == json.dumps(row, ensure_ascii=False, separators=(",", ":"))


# -- synthetic annotators -------------------------------------------------------------------------


def test_simulated_annotations_have_the_requested_accuracy(run: dict) -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    truth = run["truth"]
    picked = [t for t in truth if t["outcome"] != "correct"][:600] + [t for t in truth if t["outcome"] == "correct"][:200]
    cases = [{"case_id": f"case-{i}", "request_id": t["request_id"], "ts": "2026-01-06T10:00:00Z"}
             for i, t in enumerate(picked)]
    labels = ["should_answer", "correct_refusal", "hallucination", "acceptable"]
    annotations = simulated_annotations(cases, Path(run["result"].ground_truth), annotators=3, accuracy=0.85,
                                        seed=1, labels=labels)
    assert len(annotations) == 3 * len(cases)
    expected = {c["case_id"]: true_label(t, kb) for c, t in zip(cases, picked)}
    hits = [a.label == expected[a.case_id][0] for a in annotations]
    assert abs(np.mean(hits) - 0.85) < 0.03
    assert {label for label, _ in expected.values()} == set(labels)
    for a in annotations:
        assert a.label in labels and a.annotator.startswith("sim-annotator-")
        assert (a.corrected_response is not None) == (a.label in ("should_answer", "hallucination"))
        if a.label == expected[a.case_id][0] == "should_answer":
            assert a.corrected_response == expected[a.case_id][1]
    again = simulated_annotations(list(reversed(cases)), Path(run["result"].ground_truth), annotators=3,
                                  accuracy=0.85, seed=1, labels=labels)
    assert sorted(a.model_dump_json() for a in again) == sorted(a.model_dump_json() for a in annotations)
    perfect = simulated_annotations(cases[:50], Path(run["result"].ground_truth), annotators=2, accuracy=1.0,
                                    seed=2, labels=labels)
    assert all(a.label == expected[a.case_id][0] for a in perfect)
    with pytest.raises(ValueError, match="not in"):
        simulated_annotations([{"case_id": "x", "request_id": "req-99-0000001"}], Path(run["result"].ground_truth),
                              annotators=1, accuracy=0.9, seed=0, labels=labels)


def test_true_labels_follow_the_ground_truth() -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v2")
    row = {"topic": "product_helix_fold", "outcome": "refusal"}
    assert true_label(row, kb) == ("should_answer", kb.topic("product_helix_fold").answer)
    assert true_label({"topic": "unknown_product", "outcome": "refusal"}, kb) == ("correct_refusal", None)
    assert true_label({"topic": "return_policy", "outcome": "wrong"}, kb)[0] == "hallucination"
    label, fix = true_label({"topic": "offtopic", "outcome": "wrong"}, kb)
    assert label == "hallucination" and fix in kb.refusals["en"]
    assert true_label({"topic": "return_policy", "outcome": "correct"}, kb) == ("acceptable", None)


def test_outcome_summary_counts_the_new_products_only_after_their_launch(run: dict) -> None:
    truth_path = Path(run["result"].ground_truth)
    before, after = outcome_summary(truth_path, [1]), outcome_summary(truth_path, [2, 3])
    assert before["records"] == 1500 and before["new_topic_records"] == 0 and before["new_topic_accuracy"] is None
    rows = [r for r in run["truth"] if r["week"] in (2, 3)]
    new = [r for r in rows if r["kb_version"] == "v2"]
    assert after["records"] == len(rows) and after["new_topic_records"] == len(new) > 0
    assert after["new_topic_accuracy"] == round(sum(r["outcome"] == "correct" for r in new) / len(new), 4)
    assert after["new_topic_refusal_share"] > 0.5  # the scripted model knows only v1: it mostly refuses v2
    assert after["accuracy"] == round(sum(r["outcome"] == "correct" for r in rows) / len(rows), 4)

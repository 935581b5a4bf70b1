"""Agreement figures against published worked examples, and each outcome of the agreement gate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.annotate.agreement import agreement, fleiss_kappa, gate_decision, score_agreement
from tasks.config import AnnotationSettings
from tasks.contracts import Annotation

LABELS = ["should_answer", "correct_refusal", "hallucination", "acceptable"]


def _from_matrix(rows: list[list[object]]) -> list[tuple[str, str, str]]:
    """Reliability data as published (one row per coder, None = missing) -> (item, annotator, label)."""
    return [
        (f"u{unit + 1}", f"coder{coder}", str(value))
        for coder, row in enumerate(rows)
        for unit, value in enumerate(row)
        if value is not None
    ]


# -- published worked examples ------------------------------------------------------------------------


def test_krippendorff_2011_nominal_example_with_missing_data():
    # Krippendorff (2011) "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
    # 12 units, values 1-5, missing data; nominal alpha = 0.743.
    _ = None
    rows = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, _, _, _],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, _, 3],
        [_, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, _],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, _],
    ]
    result = agreement(_from_matrix(rows))
    assert result["krippendorff_alpha"] == pytest.approx(0.743, abs=5e-4)
    assert result["n_items"] == 12 and result["n_annotators"] == 4
    assert result["n_pairable_items"] == 11  # unit 12 has a single value and does not count
    assert result["fleiss_kappa"] is None  # items have 1 to 4 ratings
    assert result["cohen_kappa"] is None  # four coders
    lo, hi = result["alpha_ci"]
    assert lo < result["krippendorff_alpha"] < hi


def test_krippendorff_2011_binary_two_observers():
    # Same paper, section A: two observers, binary data, no missing values: alpha = 0.095.
    rows = [[0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0, 0]]
    result = agreement(_from_matrix(rows))
    assert result["krippendorff_alpha"] == pytest.approx(0.095, abs=5e-4)
    # Cohen's kappa on the same table: p_o = 0.6, p_e = 0.2*0.4 + 0.8*0.6 = 0.56 -> 0.04/0.44.
    assert result["cohen_kappa"] == pytest.approx(0.04 / 0.44)
    assert result["observed_agreement"] == pytest.approx(0.6)


def test_krippendorff_alpha_wikipedia_example_three_coders():
    # The reliability data of Krippendorff's alpha's Wikipedia article (and the `krippendorff`
    # package's README): 3 coders, 15 units, many missing values; nominal alpha = 0.691.
    _ = None
    rows = [
        [_, _, _, _, _, 3, 4, 1, 2, 1, 1, 3, 3, _, 3],
        [1, _, 2, 1, 3, 3, 4, 3, _, _, _, _, _, _, _],
        [_, _, 2, 1, 3, 4, 4, _, 2, 1, 1, 3, 3, _, 4],
    ]
    assert agreement(_from_matrix(rows))["krippendorff_alpha"] == pytest.approx(0.691, abs=5e-4)


def test_fleiss_kappa_wikipedia_table():
    # Wikipedia's "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories: kappa = 0.210,
    # P-bar = 0.378, P-e = 0.213.
    table = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    direct = fleiss_kappa(table)
    assert direct["kappa"] == pytest.approx(0.210, abs=5e-4)
    assert direct["p_bar"] == pytest.approx(0.378, abs=5e-4)
    assert direct["p_e"] == pytest.approx(0.213, abs=5e-4)
    ratings = [
        (f"s{i}", f"r{r}", f"cat{c}") for i, row in enumerate(table) for r, c in enumerate(np.repeat(np.arange(5), row))
    ]
    assert agreement(ratings)["fleiss_kappa"] == pytest.approx(direct["kappa"])


# Fleiss (1971), Table 1: psychiatric diagnoses of 30 patients by 6 raters each (1 depression,
# 2 personality disorder, 3 schizophrenia, 4 neurosis, 5 other); as R's irr::diagnoses.
FLEISS_1971 = [
    [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5], [2, 2, 2, 4, 4, 4],
    [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4], [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5],
    [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4], [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5],
    [3, 3, 3, 3, 3, 5], [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
    [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4], [1, 4, 4, 4, 4, 5],
    [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4], [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
]  # fmt: skip


def test_fleiss_1971_psychiatric_diagnoses():
    # Fleiss (1971): kappa = 0.430; per-category kappas 0.245, 0.245, 0.520, 0.471, 0.566.
    ratings = [(f"patient{i}", f"rater{r}", str(v)) for i, row in enumerate(FLEISS_1971) for r, v in enumerate(row)]
    result = agreement(ratings)
    assert result["fleiss_kappa"] == pytest.approx(0.430, abs=5e-4)
    per_category = [result["per_label"][str(c)]["fleiss_kappa"] for c in range(1, 6)]
    assert per_category == pytest.approx([0.245, 0.245, 0.520, 0.471, 0.566], abs=5e-4)
    assert result["observed_agreement"] == pytest.approx(0.5556, abs=5e-4)  # Fleiss' P-bar
    assert result["n_items"] == 30 and result["n_annotators"] == 6
    assert result["unanimous_items"] == 5


def test_cohen_kappa_known_value():
    # Wikipedia's "Cohen's kappa" example: 50 proposals; both yes 20, A yes/B no 5, A no/B yes 10,
    # both no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4.
    cells = [("yes", "yes", 20), ("yes", "no", 5), ("no", "yes", 10), ("no", "no", 15)]
    ratings = []
    for a, b, count in cells:
        for _ in range(count):
            item = f"p{len(ratings) // 2}"
            ratings += [(item, "A", a), (item, "B", b)]
    result = agreement(ratings)
    assert result["cohen_kappa"] == pytest.approx(0.4)
    assert result["fleiss_kappa"] is not None  # two ratings on every item: Fleiss (= Scott's pi) too
    assert result["n_items"] == 50


# -- properties ---------------------------------------------------------------------------------------


def test_alpha_interval_is_seeded_and_sensible():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, size=200)
    ratings = [
        (f"i{i}", f"a{a}", LABELS[t if rng.random() < 0.85 else rng.integers(0, 4)])
        for i, t in enumerate(truth)
        for a in range(3)
    ]
    first = agreement(ratings, bootstrap_samples=300, seed=1)
    again = agreement(ratings, bootstrap_samples=300, seed=1)
    assert first["alpha_ci"] == again["alpha_ci"]
    lo, hi = first["alpha_ci"]
    assert lo < first["krippendorff_alpha"] < hi
    assert hi - lo < 0.2
    assert set(first["per_label"]) == set(LABELS)
    for figures in first["per_label"].values():
        assert 0 < figures["specific_agreement"] <= 1
        assert figures["alpha"] is not None


def test_undefined_alpha_when_a_single_label_is_used():
    ratings = [(f"i{i}", f"a{a}", "acceptable") for i in range(5) for a in range(2)]
    result = agreement(ratings)
    assert result["krippendorff_alpha"] is None and result["alpha_ci"] is None
    assert result["observed_agreement"] == 1.0
    assert gate_decision(result["krippendorff_alpha"], AnnotationSettings()) == "block"


def test_duplicate_rating_is_an_error():
    with pytest.raises(ValueError, match="more than once"):
        agreement([("i1", "a", "x"), ("i1", "a", "y"), ("i1", "b", "x")])


# -- the gate -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alpha", "decision"),
    [(1.0, "pass"), (0.80, "pass"), (0.7999, "filter"), (0.667, "filter"), (0.6669, "block"), (-0.2, "block"),
     (None, "block"), (float("nan"), "block")],
)  # fmt: skip
def test_gate_thresholds(alpha, decision):
    assert gate_decision(alpha, AnnotationSettings()) == decision


def test_gate_thresholds_must_be_ordered():
    with pytest.raises(ValueError):
        AnnotationSettings(pass_alpha=0.6, block_alpha=0.7)


def _annotations(n_items: int, *, majority_splits: int = 0, three_way: int = 0) -> list[Annotation]:
    """Three annotators on n_items; the first `majority_splits` items get a 2-1 split, the next
    `three_way` items three different labels, the rest are unanimous."""
    records = []
    for i in range(n_items):
        label = LABELS[i % 4]
        for a in range(3):
            chosen = label
            if i < majority_splits and a == 2:
                chosen = LABELS[(i + 1) % 4]
            elif majority_splits <= i < majority_splits + three_way and a > 0:
                chosen = LABELS[(i + a) % 4]
            corrected = f"fixed answer {i}" if chosen == "should_answer" else None
            records.append(
                Annotation(case_id=f"c{i:02d}", annotator=f"ann{a}", label=chosen, corrected_response=corrected)
            )
    return records


def _write(path, records):
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gate_pass_keeps_majority_items(tmp_path):
    path = _write(tmp_path / "annotations.jsonl", _annotations(20, majority_splits=2))
    result = score_agreement(path, tmp_path / "out", AnnotationSettings(bootstrap_samples=200))
    assert result["krippendorff_alpha"] >= 0.80
    assert result["decision"] == "pass"
    curated = _lines(tmp_path / "out" / "curated.jsonl")
    assert len(curated) == 20 == result["curated"]
    split = {c["case_id"]: c for c in curated}["c00"]
    assert split["consensus"] == "majority" and split["label"] == "should_answer"
    assert split["annotators"] == ["ann0", "ann1"]
    assert split["corrected_response"] == "fixed answer 0"
    # the dissent still goes to a human
    adjudication = _lines(tmp_path / "out" / "adjudication.jsonl")
    assert [a["case_id"] for a in adjudication] == ["c00", "c01"]
    assert all(a["curated_as_majority"] for a in adjudication)
    recorded = json.loads((tmp_path / "out" / "agreement.json").read_text())
    assert recorded["decision"] == "pass"
    assert recorded["thresholds"] == {"pass_alpha": 0.8, "block_alpha": 0.667}
    assert recorded["inputs"]["annotations"]["sha256"]


def test_gate_filter_keeps_unanimous_and_adjudicated_only(tmp_path):
    records = _annotations(20, majority_splits=6)
    # c01 (a 2-1 split) was adjudicated: the adjudicator's label and correction win
    records.append(
        Annotation(case_id="c01", annotator="adjudicator", label="should_answer", corrected_response="the right answer")
    )
    path = _write(tmp_path / "annotations.jsonl", records)
    result = score_agreement(path, tmp_path / "out", AnnotationSettings(bootstrap_samples=200))
    assert 0.667 <= result["krippendorff_alpha"] < 0.80
    assert result["n_annotators"] == 3  # the adjudicator is not an independent annotator
    assert result["decision"] == "filter"
    curated = {c["case_id"]: c for c in _lines(tmp_path / "out" / "curated.jsonl")}
    assert set(curated) == {f"c{i:02d}" for i in range(6, 20)} | {"c01"}
    assert curated["c01"]["consensus"] == "adjudicated"
    assert curated["c01"]["label"] == "should_answer"
    assert curated["c01"]["corrected_response"] == "the right answer"
    assert all(c["consensus"] == "unanimous" for k, c in curated.items() if k != "c01")
    adjudication = _lines(tmp_path / "out" / "adjudication.jsonl")
    assert [a["case_id"] for a in adjudication] == ["c00", "c02", "c03", "c04", "c05"]
    assert not any(a["curated_as_majority"] for a in adjudication)
    first = adjudication[0]
    assert first["majority_label"] == "should_answer"
    assert {r["annotator"]: r["label"] for r in first["ratings"]} == {
        "ann0": "should_answer",
        "ann1": "should_answer",
        "ann2": "correct_refusal",
    }


def test_gate_block_writes_empty_curated_file(tmp_path):
    path = _write(tmp_path / "annotations.jsonl", _annotations(20, three_way=8))
    result = score_agreement(path, tmp_path / "out", AnnotationSettings(bootstrap_samples=200))
    assert result["krippendorff_alpha"] < 0.667
    assert result["decision"] == "block"
    assert result["curated"] == 0
    assert (tmp_path / "out" / "curated.jsonl").read_text() == ""
    assert json.loads((tmp_path / "out" / "agreement.json").read_text())["decision"] == "block"
    assert len(_lines(tmp_path / "out" / "adjudication.jsonl")) == 8


def test_curated_items_carry_the_case_text(tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "".join(
            json.dumps(
                {"case_id": f"c{i:02d}", "prompt": f"question {i}", "response": "I don't know", "kinds": ["refusal"]}
            )
            + "\n"
            for i in range(19)  # c19 is not in this cycle's cases
        )
    )
    path = _write(tmp_path / "annotations.jsonl", _annotations(20))
    result = score_agreement(path, tmp_path / "out", AnnotationSettings(bootstrap_samples=200), cases_path=cases)
    assert result["decision"] == "pass"
    assert result["unknown_cases"] == 1 and result["unknown_case_ids"] == ["c19"]
    curated = _lines(tmp_path / "out" / "curated.jsonl")
    assert len(curated) == 19
    assert curated[0]["prompt"] == "question 0" and curated[0]["kinds"] == ["refusal"]


def test_too_few_ratings_go_to_adjudication(tmp_path):
    records = _annotations(12)
    records.append(Annotation(case_id="lonely", annotator="ann0", label="acceptable"))
    path = _write(tmp_path / "annotations.jsonl", records)
    result = score_agreement(path, tmp_path / "out", AnnotationSettings(bootstrap_samples=200))
    assert result["decision"] == "pass"
    assert "lonely" not in {c["case_id"] for c in _lines(tmp_path / "out" / "curated.jsonl")}
    (entry,) = _lines(tmp_path / "out" / "adjudication.jsonl")
    assert entry["case_id"] == "lonely" and entry["reason"].startswith("fewer than 2")


def test_unknown_label_in_annotations_is_an_error(tmp_path):
    path = _write(tmp_path / "annotations.jsonl", [Annotation(case_id="c", annotator="a", label="spam")])
    with pytest.raises(ValueError, match="spam"):
        score_agreement(path, tmp_path / "out", AnnotationSettings())

"""Label Studio round trip, the CSV / JSONL forms, and quarantine of unusable rows."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.annotate import export_tasks, import_annotations, read_annotations, read_ratings, score_agreement
from tasks.config import AnnotationSettings
from tasks.contracts import CASE_SCHEMA

LABELS = ["should_answer", "correct_refusal", "hallucination", "acceptable"]
TS = datetime(2026, 2, 2, 9, 30, tzinfo=timezone.utc)


def _cases(tmp_path, n=4, suffix=".parquet"):
    rows = [
        {
            "case_id": f"case{i}",
            "request_id": f"req{i}",
            "kinds": ["refusal", "reask"] if i % 2 == 0 else ["thumbs_down"],
            "prompt": f"How do I pair the Zephyr {i} with my phone?",
            "response": "I don't know.",
            "followup": "how to pair zephyr" if i % 2 == 0 else None,
            "ts": TS,
            "user_ref": "0123456789abcdef",
            "model_version": "v1",
            "topic": "zephyr",
        }
        for i in range(n)
    ]
    path = tmp_path / f"cases{suffix}"
    if suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows, schema=CASE_SCHEMA), path)
    else:
        path.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    return path


def _label_studio_export(tasks, votes):
    """What Label Studio's JSON export looks like after people labelled the imported tasks.

    votes: {case_id: [(completed_by, label or None, corrected text or None), ...]}"""
    exported = []
    for task_id, task in enumerate(tasks, start=1):
        annotations = []
        for ann_id, (who, label, text) in enumerate(votes.get(task["data"].get("case_id"), []), start=1):
            result = []
            if label is not None:
                result.append(
                    {
                        "id": f"r{task_id}{ann_id}a",
                        "from_name": "label",
                        "to_name": "response",
                        "type": "choices",
                        "origin": "manual",
                        "value": {"choices": label if isinstance(label, list) else [label]},
                    }
                )
            if text is not None:
                result.append(
                    {
                        "id": f"r{task_id}{ann_id}b",
                        "from_name": "corrected_response",
                        "to_name": "response",
                        "type": "textarea",
                        "origin": "manual",
                        "value": {"text": [text]},
                    }
                )
            annotations.append(
                {
                    "id": 100 * task_id + ann_id,
                    "completed_by": who,
                    "result": result,
                    "was_cancelled": False,
                    "ground_truth": False,
                    "created_at": "2026-02-03T10:00:00.000000Z",
                    "updated_at": "2026-02-03T10:00:00.000000Z",
                    "lead_time": 12.5,
                    "task": task_id,
                    "project": 1,
                }
            )
        exported.append(
            {
                "id": task_id,
                "data": task["data"],
                "annotations": annotations,
                "predictions": [],
                "meta": {},
                "created_at": "2026-02-03T09:00:00.000000Z",
                "project": 1,
            }
        )
    return exported


def test_export_writes_tasks_and_a_config_with_the_closed_label_set(tmp_path):
    out = tmp_path / "annotation" / "tasks.json"
    result = export_tasks(_cases(tmp_path), out, LABELS)
    assert result["tasks"] == 4
    tasks = json.loads(out.read_text())
    assert tasks[0] == {
        "data": {
            "case_id": "case0",
            "prompt": "How do I pair the Zephyr 0 with my phone?",
            "response": "I don't know.",
            "followup": "how to pair zephyr",
            "kinds": "reask, refusal",
            "topic": "zephyr",
        }
    }
    assert tasks[1]["data"]["followup"] == ""  # Label Studio shows "" as nothing, None as "null"
    config = ET.parse(result["config"]).getroot()
    assert result["config"] == str(out.parent / "label_config.xml")
    choices = config.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "response" and choices.get("choice") == "single"
    assert [c.get("value") for c in choices.findall("Choice")] == LABELS
    textarea = config.find("TextArea")
    assert textarea.get("name") == "corrected_response" and textarea.get("toName") == "response"
    # every $variable of the config is a key of the task data
    variables = {el.get("value")[1:] for el in config.iter("Text")}
    assert variables <= set(tasks[0]["data"])


def test_export_escapes_labels_in_the_config(tmp_path):
    result = export_tasks(_cases(tmp_path, suffix=".jsonl"), tmp_path / "tasks.json", ['say "no" & <stop>', "ok"])
    values = [c.get("value") for c in ET.parse(result["config"]).getroot().iter("Choice")]
    assert values == ['say "no" & <stop>', "ok"]


def test_label_studio_round_trip(tmp_path):
    tasks_path = tmp_path / "tasks.json"
    export_tasks(_cases(tmp_path), tasks_path, LABELS)
    tasks = json.loads(tasks_path.read_text())
    votes = {
        "case0": [
            (1, "should_answer", "Open Settings > Bluetooth."),
            (2, "should_answer", "Open Settings > Bluetooth."),
            (3, "should_answer", "Hold the button."),
        ],
        "case1": [(1, "correct_refusal", None), (2, "correct_refusal", None), (3, "hallucination", None)],
        "case2": [(1, "acceptable", None), (2, "acceptable", ""), (3, "acceptable", None)],
        "case3": [
            (1, "hallucination", "It has no such feature."),
            (2, "hallucination", None),
            (3, "hallucination", None),
        ],
    }
    # Label Studio versions differ in how they write the annotator: a user id or a user object.
    votes["case3"][2] = ({"id": 3, "email": "3", "first_name": "", "last_name": ""}, "hallucination", None)
    export = tmp_path / "project-1-at-2026-02-03.json"
    export.write_text(json.dumps(_label_studio_export(tasks, votes)))

    result = import_annotations([export], tmp_path / "imported", LABELS)
    assert result == {
        "annotations": 12,
        "items": 4,
        "annotators": 3,
        "quarantined": 0,
        "reasons": {},
        "unannotated_tasks": 0,
        "path": str(tmp_path / "imported" / "annotations.jsonl"),
        "quarantine": str(tmp_path / "imported" / "quarantine.jsonl"),
    }
    records = read_annotations(tmp_path / "imported" / "annotations.jsonl")
    got = {(r.case_id, r.annotator): (r.label, r.corrected_response) for r in records}
    want = {
        (case_id, str(who["id"] if isinstance(who, dict) else who)): (label, text or None)
        for case_id, rows in votes.items()
        for who, label, text in rows
    }
    assert got == want
    assert records[0].created_at == datetime(2026, 2, 3, 10, 0, tzinfo=timezone.utc)

    # the ratings the agreement command reads from the same export
    ratings = [(r.case_id, r.annotator, r.label) for _, _, r in read_ratings([export], LABELS).kept]
    assert sorted(ratings) == sorted((c, a, label) for (c, a), (label, _) in want.items())

    scored = score_agreement(
        tmp_path / "imported" / "annotations.jsonl",
        tmp_path / "scored",
        AnnotationSettings(bootstrap_samples=200),
        cases_path=_cases(tmp_path),
    )
    curated = {
        c["case_id"]: c for c in map(json.loads, (tmp_path / "scored" / "curated.jsonl").read_text().splitlines())
    }
    # one 2-1 split in four items: alpha = 0.792, in the filter band; the split waits for adjudication
    assert scored["krippendorff_alpha"] == pytest.approx(0.7925, abs=1e-4)
    assert scored["decision"] == "filter"
    assert set(curated) == {"case0", "case2", "case3"}
    adjudication = (tmp_path / "scored" / "adjudication.jsonl").read_text().splitlines()
    assert [json.loads(line)["case_id"] for line in adjudication] == ["case1"]
    # the corrected response is the one most of the agreeing annotators wrote
    assert curated["case0"]["corrected_response"] == "Open Settings > Bluetooth."
    assert curated["case0"]["prompt"] == "How do I pair the Zephyr 0 with my phone?"
    assert curated["case2"]["corrected_response"] is None


def test_several_annotators_in_several_exports_and_a_csv_adjudication(tmp_path):
    tasks_path = tmp_path / "tasks.json"
    export_tasks(_cases(tmp_path, n=2), tasks_path, LABELS)
    tasks = json.loads(tasks_path.read_text())
    first = tmp_path / "alice.json"
    first.write_text(
        json.dumps(
            _label_studio_export(
                tasks, {"case0": [("alice", "should_answer", "A")], "case1": [("alice", "acceptable", None)]}
            )
        )
    )
    second = tmp_path / "bob.json"
    second.write_text(
        json.dumps(
            _label_studio_export(
                tasks, {"case0": [("bob", "hallucination", None)], "case1": [("bob", "acceptable", None)]}
            )
        )
    )
    verdicts = tmp_path / "adjudicated.csv"
    verdicts.write_text(
        'item,annotator,label,corrected_response\ncase0,adjudicator,should_answer,"Pair it, then restart."\n'
    )
    result = import_annotations([first, second, verdicts], tmp_path / "out", LABELS)
    assert (result["annotations"], result["items"], result["annotators"], result["quarantined"]) == (5, 2, 3, 0)
    records = {(r.case_id, r.annotator): r for r in read_annotations(tmp_path / "out" / "annotations.jsonl")}
    assert records[("case0", "adjudicator")].corrected_response == "Pair it, then restart."


def test_csv_and_jsonl_forms(tmp_path):
    csv_path = tmp_path / "ratings.csv"
    csv_path.write_text(
        'item,annotator,label,corrected_response\nc1,ann1,should_answer,"Line one,\nline two"\nc1,ann2,should_answer,\n'
    )
    jsonl_path = tmp_path / "more.jsonl"
    jsonl_path.write_text(
        json.dumps({"case_id": "c2", "annotator": "ann1", "label": "acceptable"})
        + "\n"
        + json.dumps(
            {"case_id": "c2", "annotator": "ann2", "label": "acceptable", "created_at": "2026-02-03T10:00:00Z"}
        )
        + "\n"
    )
    result = import_annotations([csv_path, jsonl_path], tmp_path / "out", LABELS)
    assert (result["annotations"], result["items"], result["annotators"], result["quarantined"]) == (4, 2, 2, 0)
    records = {(r.case_id, r.annotator): r for r in read_annotations(tmp_path / "out" / "annotations.jsonl")}
    assert records[("c1", "ann1")].corrected_response == "Line one,\nline two"
    assert records[("c1", "ann2")].corrected_response is None


def test_bad_rows_are_quarantined_with_file_row_and_reason(tmp_path):
    csv_path = tmp_path / "ratings.csv"
    csv_path.write_text(
        "item,annotator,label\n"
        "c1,ann1,should_answer\n"  # line 2: fine
        ",ann1,acceptable\n"  # line 3: no case id
        "c2,ann1,spam\n"  # line 4: unknown label
        "c3,,acceptable\n"  # line 5: no annotator
        "c4,ann1,\n"  # line 6: no label
        "c1,ann1,acceptable\n"  # line 7: replaces line 2
    )
    tasks = [{"data": {"case_id": "c9"}}, {"data": {"prompt": "no id"}}, {"data": {"case_id": "c10"}}]
    export = tmp_path / "export.json"
    exported = _label_studio_export(
        tasks, {"c9": [(1, ["acceptable", "hallucination"], None), (2, "acceptable", None)]}
    )
    exported[0]["annotations"].append({"id": 9, "completed_by": 3, "result": [], "was_cancelled": True})
    exported[1]["annotations"] = [
        {"id": 10, "completed_by": 1, "result": [{"type": "choices", "value": {"choices": ["acceptable"]}}]}
    ]
    export.write_text(json.dumps(exported))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"case_id": "c5", "annotator": "a", "label": "acceptable"}\n{not json\n')

    result = import_annotations([csv_path, export, broken], tmp_path / "out", LABELS)
    assert result["annotations"] == 3  # c1/ann1 (line 7), c9/2, c5/a
    assert result["unannotated_tasks"] == 1  # c10: nobody labelled it; nothing lost
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert result["quarantined"] == len(quarantine) == 9
    where = {(q["file"].rsplit("/", 1)[-1], q["row"].split(":", 1)[1]): q["reason"] for q in quarantine}
    assert where[("ratings.csv", "line 3")].startswith("no case id")
    assert where[("ratings.csv", "line 4")].startswith("unknown label: 'spam' is not in annotation.labels")
    assert where[("ratings.csv", "line 5")].startswith("no annotator")
    assert where[("ratings.csv", "line 6")] == "no label chosen"
    assert where[("ratings.csv", "line 2")].startswith("superseded") and "line 7" in where[("ratings.csv", "line 2")]
    assert where[("export.json", "task 1 (id 1) annotation 1")].startswith("several labels chosen")
    assert where[("export.json", "task 1 (id 1) annotation 3")].startswith("annotation was cancelled")
    assert where[("export.json", "task 2 (id 2) annotation 1")].startswith("no case id")
    assert where[("broken.jsonl", "line 2")].startswith("not valid JSON")
    assert sum(result["reasons"].values()) == 9
    kept = {(r.case_id, r.annotator): r.label for r in read_annotations(tmp_path / "out" / "annotations.jsonl")}
    assert kept[("c1", "ann1")] == "acceptable"


def test_csv_with_a_wrong_header_is_refused(tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_text("case,who,what\nc1,a,x\n")
    with pytest.raises(ValueError, match="item,annotator,label"):
        import_annotations([path], tmp_path / "out", LABELS)
    with pytest.raises(ValueError, match="item,annotator,label"):
        read_ratings([path], LABELS)


def test_read_ratings_judges_against_the_configured_labels(tmp_path):
    csv_path = tmp_path / "ratings.csv"
    csv_path.write_text("item,annotator,label\n1,a,cat\n1,b,dog\n2,a,cat\n2,b,\n3,,cat\n")
    ratings = read_ratings([csv_path], ["cat", "dog"])  # annotation.labels of another project
    assert [(r.case_id, r.annotator, r.label) for _, _, r in ratings.kept] == [("1", "a", "cat"), ("1", "b", "dog"),
                                                                              ("2", "a", "cat")]
    assert [(q["row"], q["reason"]) for q in ratings.set_aside] == [
        ("ratings.csv:line 5", "no label chosen"), ("ratings.csv:line 6", "no annotator (completed_by / annotator is empty)")]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_label_studio_export([{"data": {"text": "hello"}}], {None: []})))
    data = json.loads(export.read_text())
    data[0]["annotations"] = [{"completed_by": 7, "result": [_choice("cat")]}]
    export.write_text(json.dumps(data))
    (set_aside,) = read_ratings([export], ["cat", "dog"]).set_aside  # a task without case_id is not a case
    assert set_aside["reason"].startswith("no case id") and set_aside["annotator"] == "7"


def test_agreement_command_keys(tmp_path):
    from tasks.annotate import agreement_from_file

    path = tmp_path / "ratings.csv"
    rows = ["item,annotator,label"]
    for i in range(30):
        for a in ("ann1", "ann2"):
            label = "yes" if i % 3 else "no"
            if a == "ann2" and i % 10 == 0:
                label = "maybe"
            rows.append(f"{i},{a},{label}")
    path.write_text("\n".join(rows) + "\n")
    result = agreement_from_file(path, AnnotationSettings(labels=["yes", "no", "maybe"], bootstrap_samples=200))
    for key in (
        "n_items",
        "n_annotators",
        "krippendorff_alpha",
        "alpha_ci",
        "fleiss_kappa",
        "cohen_kappa",
        "per_label",
        "decision",
    ):
        assert key in result
    assert (result["n_items"], result["n_annotators"]) == (30, 2)
    assert result["cohen_kappa"] is not None and result["fleiss_kappa"] is not None
    assert result["decision"] == "pass" and result["krippendorff_alpha"] >= 0.8
    assert set(result["per_label"]) == {"yes", "no", "maybe"}
    json.dumps(result)  # the CLI prints it as JSON


# ------------------------------------------------------------------------------ bad input (issue 13)


def _ann(who, result, **extra):
    return {"id": 1, "completed_by": who, "result": result, "was_cancelled": False, **extra}


def _choice(label):
    return {"type": "choices", "from_name": "label", "to_name": "response", "value": {"choices": [label]}}


def test_malformed_label_studio_shapes_are_quarantined_with_a_reason(tmp_path):
    export = tmp_path / "export.json"
    export.write_text(json.dumps([
        {"id": 1, "data": {"case_id": "c1"}, "annotations": [_ann(1, "acceptable")]},  # result: a string
        {"id": 2, "data": {"case_id": "c2"}, "annotations": [_ann(1, [{"type": "choices", "value": ["acceptable"]}])]},
        {"id": 3, "data": "c3", "annotations": [_ann(1, [_choice("acceptable")])]},  # data: a string
        {"id": 4, "data": {"case_id": "c4"}, "annotations": [_ann(1, _choice("acceptable"))]},  # result: an object
        {"id": 5, "data": {"case_id": "c5"},
         "annotations": [_ann(1, [{"type": "choices", "value": {"choices": "acceptable"}}])]},  # choices: a string
        {"id": 6, "data": {"case_id": "c6"}, "annotations": "acceptable"},  # annotations: a string
        {"id": 7, "data": {"case_id": "c7"},
         "annotations": [_ann(1, [_choice("acceptable"), {"type": "textarea", "value": {"text": "Say so."}}])]},
        {"id": 8, "data": {"case_id": "c8"}, "annotations": [_ann(1, [_choice("acceptable"), "stray text"])]},
        {"id": 9, "data": {"case_id": "c9"}, "annotations": [_ann(1, [_choice("should_answer")])]},  # fine
    ]))
    result = import_annotations([export], tmp_path / "out", LABELS)  # raised AttributeError before
    assert result["annotations"] == 1 and result["quarantined"] == 8
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    reasons = {q["row"].split(":", 1)[1].split(" (")[0]: q["reason"] for q in quarantine}
    assert "result is a string" in reasons["task 1"]
    assert "value is a list" in reasons["task 2"]
    assert "data is a string" in reasons["task 3"]
    assert "result is an object" in reasons["task 4"]
    assert "choices is a string" in reasons["task 5"] and "several labels" not in reasons["task 5"]
    assert "annotations is a string" in reasons["task 6"]
    assert "text is a string" in reasons["task 7"]
    assert "result item 2 is a string" in reasons["task 8"]
    from tasks.annotate import agreement_from_file

    scored = agreement_from_file(export, AnnotationSettings(bootstrap_samples=100))  # the same rows, the same reasons
    assert scored["excluded"]["ratings"] == 8
    assert {row["reason"] for row in scored["excluded"]["rows"]} == {q["reason"] for q in quarantine}


def _three_annotator_export(tmp_path, votes):
    tasks = [{"data": {"case_id": case_id}} for case_id in votes]
    export = _label_studio_export(tasks, votes)
    return export


def test_agreement_applies_the_import_label_rules_and_explains_every_exclusion(tmp_path):
    from tasks.annotate import agreement_from_file

    votes = {f"c{i}": [(1, "should_answer" if i % 3 else "acceptable", None), (2, "should_answer" if i % 3 else "acceptable", None),
                       (3, "hallucination", None)] for i in range(8)}
    votes["c0"][1] = (2, "spam", None)  # not in annotation.labels
    exported = _three_annotator_export(tmp_path, votes)
    for task in exported:  # annotator 3 skipped every task in Label Studio
        task["annotations"][2]["was_cancelled"] = True
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported))

    scored = agreement_from_file(path, AnnotationSettings(bootstrap_samples=100))
    assert scored["n_annotators"] == 2 and "spam" not in scored["per_label"]
    assert scored["excluded"]["ratings"] == 9
    assert scored["excluded"]["reasons"] == {"annotation was cancelled": 8, "unknown label": 1}
    (dropped,) = scored["excluded_annotators"]
    assert dropped["annotator"] == "3" and dropped["ratings"] == 8 and "cancelled" in dropped["reason"]

    imported = import_annotations([path], tmp_path / "out", LABELS)  # import sets aside exactly the same rows
    quarantine = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((q["row"], q["reason"]) for q in quarantine) == \
        sorted((row["row"], row["reason"]) for row in scored["excluded"]["rows"])
    assert imported["annotations"] == scored["n_ratings"]


def test_agreement_when_every_rating_was_cancelled_says_so(tmp_path):
    from tasks.annotate import agreement_from_file

    exported = _three_annotator_export(tmp_path, {f"c{i}": [(1, "acceptable", None), (2, "acceptable", None)]
                                                  for i in range(3)})
    for task in exported:
        for annotation in task["annotations"]:
            annotation["was_cancelled"] = True
    path = tmp_path / "export.json"
    path.write_text(json.dumps(exported))
    scored = agreement_from_file(path, AnnotationSettings(bootstrap_samples=100))  # a numpy error before
    assert scored["decision"] == "block" and scored["n_ratings"] == 0
    assert "no usable ratings" in scored["decision_reason"] and "6 excluded" in scored["decision_reason"]
    assert len(scored["excluded_annotators"]) == 2


def test_agreement_with_a_single_annotator_explains_why_it_blocks(tmp_path):
    import subprocess
    import sys

    from tasks.config import REPO_ROOT

    path = tmp_path / "ratings.csv"
    path.write_text("item,annotator,label\n" + "".join(f"c{i},ann1,{LABELS[i % 4]}\n" for i in range(6)))
    done = subprocess.run([sys.executable, "-m", "flows.cli", "agreement", "--annotations", str(path), "--json"],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert done.returncode == 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["decision"] == "block" and "one annotator" in result["decision_reason"]
    assert "alpha None" not in done.stderr and "one annotator" in done.stderr

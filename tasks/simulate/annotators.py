"""Simulated annotators: the label an oracle gives a simulated request, and noisy annotators around it.

`true_label` reads a ground-truth row; `simulated_annotations` has several synthetic annotators label
cases with a given accuracy, deterministically per (seed, case, annotator).
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import BaseModel

from tasks.contracts import Annotation, Case
from tasks.knowledge import KnowledgeBase, load_knowledge_base

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

"""The cycle's two annotation stages: hand the masked cases to annotators and take their labels back
(`collect_stage`), then score agreement and curate (`agreement_stage`).

Annotation is the human step. The cases are exported for Label Studio into `03_annotation/tasks.json`;
the annotators' exports dropped into `03_annotation/exports/` are imported on the next run. Until then
the cycle waits (AwaitingAnnotations, naming the folder). Demos and tests let the simulator's annotators
answer instead (`annotation.simulate`).
"""

from __future__ import annotations

import time
from pathlib import Path

from tasks.annotate.agreement import score_agreement
from tasks.annotate.labelstudio import export_tasks, import_annotations
from tasks.config import AnnotationSettings
from tasks.contracts import StageResult
from tasks.files import read_cases, write_jsonl

EXPORT_SUFFIXES = (".json", ".jsonl", ".csv")


class AwaitingAnnotations(RuntimeError):
    """The human step has not happened yet: the message says where the exports go."""


def collect_stage(masked_cases: Path, directory: Path, settings: AnnotationSettings, *,
                  ground_truth: Path | None = None, seed: int = 0, data_dir: Path | None = None) -> StageResult:
    """Export the cases for Label Studio, then import the annotations: the exports in
    `directory/exports/`, or with `settings.simulate` the simulator's annotators (who read the
    simulator's `ground_truth` file and knowledge base in `data_dir`, and draw with `seed`). Raises
    AwaitingAnnotations otherwise."""
    start = time.perf_counter()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    exported = export_tasks(masked_cases, directory / "tasks.json", settings.labels)
    exports = directory / "exports"
    files = sorted(p for p in exports.glob("*") if p.suffix in EXPORT_SUFFIXES) if exports.is_dir() else []
    if not files and settings.simulate:
        files = [_simulated_annotations(masked_cases, exports / "simulated.jsonl", settings, ground_truth, seed,
                                        data_dir)]
    if not files:
        raise AwaitingAnnotations(
            f"{exported['tasks']} cases wait for annotation: import {directory / 'tasks.json'} into Label Studio "
            f"(labelling config {exported['config']}), put the annotators' exports into {exports}/ and run the "
            "cycle again; finished stages are skipped"
        )
    imported = import_annotations(files, directory, settings.labels)
    return StageResult.of(
        "annotate", {"annotations": imported["path"], "quarantine": imported["quarantine"], "tasks": directory / "tasks.json"},
        counts={"tasks": exported["tasks"], **{k: imported[k] for k in ("annotations", "items", "annotators", "quarantined")}},
        seconds=time.perf_counter() - start, details={"sources": [str(p) for p in files]},
    )


def agreement_stage(annotations: Path, masked_cases: Path, directory: Path, settings: AnnotationSettings) -> StageResult:
    """`score_agreement` as a stage: agreement.json (the decision), curated.jsonl, adjudication.jsonl."""
    start = time.perf_counter()
    scored = score_agreement(annotations, directory, settings, cases_path=masked_cases)
    alpha = scored["krippendorff_alpha"]
    return StageResult.of(
        "agreement", dict(scored["paths"]),
        counts={"items": scored["n_items"], "annotators": scored["n_annotators"], "curated": scored["curated"]},
        seconds=time.perf_counter() - start,
        details={"decision": scored["decision"], "krippendorff_alpha": None if alpha is None else round(alpha, 4)},
    )


def _simulated_annotations(masked_cases: Path, out: Path, settings: AnnotationSettings, ground_truth: Path | None,
                           seed: int, data_dir: Path | None) -> Path:
    from tasks.simulate import simulated_annotations

    if ground_truth is None or not Path(ground_truth).is_file():
        raise AwaitingAnnotations(
            f"annotation.simulate is on but there is no simulator ground truth at {ground_truth}: "
            "simulate traffic into this workspace first (flywheel simulate), or turn it off and annotate"
        )
    annotations = simulated_annotations(
        read_cases(masked_cases), Path(ground_truth),
        annotators=settings.simulated_annotators,
        accuracy=settings.simulated_accuracy,
        seed=seed,
        labels=settings.labels,
        data_dir=data_dir,
    )
    write_jsonl(out, annotations)
    return out

"""The retraining cycle's own bookkeeping: its directory and manifest, the cache key that lets a
rerun skip finished stages, where replay data comes from, and the annotation hand-off.

Stage logic stays in the stage modules; this module only knows how a cycle is laid out on disk
(DESIGN.md section 3).
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.config import Settings
from tasks.contracts import sha256_file

MANIFEST = "manifest.json"
CASES = "01_cases.parquet"
MASKED = "02_masked.parquet"
ANNOTATION = "03_annotation"
DATASET = "04_dataset"
ADAPTER = "05_adapter"
EVAL = "06_eval"


class AwaitingAnnotations(RuntimeError):
    """The human step has not happened yet: the message says where the exports go."""


def pii_key(settings: Settings) -> bytes:
    """The secret that user refs and PII pseudonyms are keyed with; a demo config
    (pii.require_key: false) may create one in the workspace."""
    from tasks.pii import PiiKeyError, load_pii_key

    try:
        return load_pii_key(settings.pii, workspace=settings.workspace, create=not settings.pii.require_key)
    except PiiKeyError as err:
        raise ValueError(str(err)) from None


def cycle_dir(settings: Settings, cycle_id: str) -> Path:
    path = settings.paths.under("cycles", cycle_id)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digest(value: Any) -> str:
    """A content digest for a stage's cache key: files by their bytes, folders by their files
    (training checkpoints and Python's bytecode caches aside), settings by their JSON, anything else by
    its JSON form."""
    h = hashlib.sha256()
    if isinstance(value, Path):
        if value.is_file():
            h.update(sha256_file(value).encode())
        elif value.is_dir():
            for file in sorted(p for p in value.rglob("*")
                               if p.is_file() and "checkpoints" not in p.parts and "__pycache__" not in p.parts):
                h.update(str(file.relative_to(value)).encode() + sha256_file(file).encode())
        else:
            h.update(f"missing:{value}".encode())
    elif hasattr(value, "model_dump_json"):
        h.update(value.model_dump_json().encode())
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


def stage_cache_key(stage: str, source_file: str, inputs: dict[str, Any]) -> str:
    """Stage name + the code of its module + digests of every input (files, settings, values). The
    stage's own output location (`out`) counts by its path only: it does not exist before the first
    run. The MLflow run a stage logs into does not count either. To redo finished stages whose
    outputs were removed, run the flow with fresh=True."""
    parts = [stage, digest(Path(source_file))] + [
        f"{name}={str(value) if name == 'out' else digest(value)}"
        for name, value in sorted(inputs.items())
        if name != "run_id"  # where results are logged, not what they are
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def stage_intact(directory: Path, stage: str) -> bool:
    """Did `stage` finish in this cycle directory, with every file it recorded still there unchanged?
    Only then may a rerun reuse its cached result (outputs deleted by hand, or a workspace wiped
    between runs, mean the stage runs again)."""
    entry = read_manifest(directory)["stages"].get(stage)
    if not entry or entry.get("status") != "done":
        return False
    for output in entry.get("outputs", {}).values():
        path = Path(output["path"])
        if not path.exists() or (output.get("sha256") and sha256_file(path) != output["sha256"]):
            return False
    return True


def logs_fingerprint(settings: Settings) -> list[list[Any]]:
    """(file, size, mtime) of every log file the cycle reads: part of the extract stage's cache key,
    so logs that arrived or changed since the last run are extracted again."""
    from tasks.logs import resolve_sources

    fingerprint: list[list[Any]] = []
    for source in resolve_sources(None, settings.logs, settings.workspace):
        path = Path(source)
        stat = path.stat() if path.is_file() else None
        fingerprint.append([source, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    return fingerprint


def record_stage(directory: Path, stage: str, result: dict[str, Any], outputs: dict[str, Path], seconds: float) -> None:
    """Write the stage's status, outputs (with sha256) and counts into the cycle manifest."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}
    manifest["cycle_id"] = directory.name
    manifest["stages"][stage] = {
        "status": "done",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 3),
        "outputs": {
            name: {"path": str(p), "sha256": sha256_file(p) if p.is_file() else None} for name, p in outputs.items()
        },
        "summary": {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def replay_source(settings: Settings, champion_cycle: str | None, base: Path) -> Path | None:
    """What the champion was trained on, for replay against forgetting: the champion cycle's
    training set, or with no champion yet the base model's own pre-training pairs (written by
    `flywheel model bootstrap`). A base model of your own has none: no replay then."""
    from tasks.base_model import PRETRAINING_FILE

    candidates = [settings.paths.under("cycles", champion_cycle, DATASET, "train.jsonl")] if champion_cycle else []
    candidates.append(base / PRETRAINING_FILE)
    return next((path for path in candidates if path.is_file()), None)


def collect_annotations(settings: Settings, masked_cases: Path, directory: Path) -> dict[str, Any]:
    """Export the cases for Label Studio, then take the annotations: exports already dropped into
    `03_annotation/exports/`, or (demo) the simulator's annotators. Otherwise the cycle waits."""
    from tasks.annotate import export_tasks, import_annotations

    directory.mkdir(parents=True, exist_ok=True)
    exported = export_tasks(masked_cases, directory / "tasks.json", settings.annotation.labels)
    exports = directory / "exports"
    files = sorted(p for p in exports.glob("*") if p.suffix in (".json", ".jsonl", ".csv")) if exports.is_dir() else []
    if not files and settings.annotation.simulate:
        files = [_simulated_annotations(settings, masked_cases, exports / "simulated.jsonl")]
    if not files:
        raise AwaitingAnnotations(
            f"{exported['tasks']} cases wait for annotation: import {directory / 'tasks.json'} into Label Studio "
            f"(labelling config {exported['config']}), put the annotators' exports into {exports}/ and run the "
            "cycle again; finished stages are skipped"
        )
    imported = import_annotations(files, directory, settings.annotation.labels)
    return {**imported, "tasks": exported["tasks"], "sources": [str(p) for p in files]}


def _simulated_annotations(settings: Settings, masked_cases: Path, out: Path) -> Path:
    from tasks.files import read_cases
    from tasks.simulate import simulated_annotations

    truth = settings.workspace / "ground_truth.jsonl"
    if not truth.is_file():
        raise AwaitingAnnotations(
            f"annotation.simulate is on but there is no simulator ground truth at {truth}: "
            "simulate traffic into this workspace first (flywheel simulate), or turn it off and annotate"
        )
    annotations = simulated_annotations(
        read_cases(masked_cases), truth,
        annotators=settings.annotation.simulated_annotators,
        accuracy=settings.annotation.simulated_accuracy,
        seed=settings.simulate.seed,
        labels=settings.annotation.labels,
        data_dir=settings.paths.data_dir,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for annotation in annotations:
            handle.write(annotation.model_dump_json() + "\n")
    return out

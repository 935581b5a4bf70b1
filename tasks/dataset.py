"""Training-set building (DESIGN.md section 3, stage 04_dataset).

Curated cases from this cycle + a configurable share of replay from the champion's training data
(against forgetting), deduplicated, split into train / val (and a held-out slice of the new cases for
the `new_cases` evaluation suite), stored as HF-datasets-compatible JSONL with a dataset card.
Every choice is a pure function of the inputs and `DatasetSettings.seed`: same inputs, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tasks.config import DatasetSettings, SignalsSettings
from tasks.contracts import MlflowRun, StageResult, TrainingExample, sha256_file
from tasks.files import atomic_write_text, write_jsonl
from tasks.text import normalise

TRAIN_FILE, VAL_FILE, HOLDOUT_FILE, CARD_FILE = "train.jsonl", "val.jsonl", "holdout.jsonl", "dataset_card.json"
# Field names accepted for the answer in a curated row, in order of preference.
RESPONSE_FIELDS = ("corrected_response", "response", "completion", "reference", "answer")


class DatasetError(ValueError):
    """Input rows that cannot become training examples; the message names the file, row and fix."""


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}:{line_no}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path}:{line_no}: expected a JSON object per line")
            yield line_no, row


def _curated_examples(path: Path, cycle_id: str) -> list[TrainingExample]:
    examples = []
    for line_no, row in _rows(path):
        prompt = row.get("prompt")
        response = next((row[f] for f in RESPONSE_FIELDS if isinstance(row.get(f), str) and row[f].strip()), None)
        if not isinstance(prompt, str) or not prompt.strip() or response is None:
            raise DatasetError(
                f"{path}:{line_no}: a curated row needs a non-empty 'prompt' and one of {list(RESPONSE_FIELDS)}"
            )
        source = str(row.get("case_id") or row.get("source") or row.get("id") or f"curated:{line_no}")
        examples.append(TrainingExample(prompt=prompt.strip(), response=response.strip(), source=source, cycle_id=cycle_id))
    return examples


def _replay_file(replay_path: Path) -> Path:
    replay_path = Path(replay_path)
    if replay_path.is_dir():
        replay_path = replay_path / TRAIN_FILE
    if not replay_path.is_file():
        raise DatasetError(f"replay data {replay_path} not found: pass the champion's 04_dataset/ folder or its train.jsonl")
    return replay_path


def _bucket(seed: int, key: str) -> float:
    """A stable uniform number in [0, 1) per (seed, key): splits do not depend on row order."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _write_examples(path: Path, examples: Iterable[TrainingExample]) -> int:
    """One example per line, keys sorted (the bytes do not depend on the field order of the model)."""
    return write_jsonl(path, ({key: row[key] for key in sorted(row)} for row in (e.model_dump() for e in examples)))


def build_dataset(
    curated_path: Path,
    out_dir: Path,
    settings: DatasetSettings,
    *,
    cycle_id: str,
    replay_path: Path | None = None,
    mlflow: MlflowRun | None = None,
    is_refusal: Callable[[list[str]], Sequence[bool]] | None = None,
) -> dict:
    """Write train.jsonl, val.jsonl, holdout.jsonl and dataset_card.json into `out_dir`.

    * Curated rows: `prompt` + a response (`corrected_response` preferred), source = their case id.
    * Deduplicated on the normalised prompt (a prompt has one target; the first curated row wins, and a
      replay row never overrides a curated one).
    * `new_cases_holdout` of the new cases go to holdout.jsonl (never trained on: the `new_cases` suite).
    * `max_new_examples` (when set) keeps a hash-ordered sample of that many of the other new cases.
    * Replay: `replay_share` of the final training set is drawn from the champion's training data
      (source `replay:<sha256 of that file>`), as far as there is enough of it. With
      `replay_refusals` (and `is_refusal`, the monitoring refusal detector), every one of the champion's
      refusal examples is replayed on top of that share: replay protects behaviours (declining what the
      shop does not sell or do), not only facts.
    * `val_share` of each source goes to val.jsonl, by a hash of the prompt (stable under reordering).

    Returns {train, val, holdout, replay, duplicates, sha256, card}.
    """
    curated_path, out_dir = Path(curated_path), Path(out_dir)
    if not curated_path.is_file():
        raise DatasetError(f"curated cases {curated_path} not found: run the annotation stage first")
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = settings.seed

    seen: set[str] = set()
    duplicates = 0
    new: list[TrainingExample] = []
    curated = _curated_examples(curated_path, cycle_id)
    for example in curated:
        key = normalise(example.prompt)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        new.append(example)
    if not new:
        raise DatasetError(f"{curated_path} holds no usable curated case: nothing to train on")

    holdout = [e for e in new if _bucket(seed, "holdout:" + normalise(e.prompt)) < settings.new_cases_holdout]
    held = {id(e) for e in holdout}
    new_train = [e for e in new if id(e) not in held]
    if not new_train:
        raise DatasetError(f"dataset.new_cases_holdout={settings.new_cases_holdout} left no curated case to train on")
    new_available = len(new_train)
    if settings.max_new_examples and new_available > settings.max_new_examples:
        # A hash-ordered sample (stable under reordering), so that scarce replay can still make up
        # replay_share of the set (a first cycle has only the base model's own pairs to replay).
        new_train = sorted(new_train, key=lambda e: _bucket(seed, "sample:" + normalise(e.prompt)))
        new_train = new_train[:settings.max_new_examples]

    replay_sources: list[dict[str, Any]] = []
    replay: list[TrainingExample] = []
    replay_available = replay_refusals = 0
    if replay_path is not None and settings.replay_share > 0:
        replay_file = _replay_file(replay_path)
        replay_sha = sha256_file(replay_file)
        candidates = []
        for line_no, row in _rows(replay_file):
            if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
                raise DatasetError(f"{replay_file}:{line_no}: replay rows need 'prompt' and 'response'")
            key = normalise(row["prompt"])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            candidates.append(TrainingExample(prompt=row["prompt"], response=row["response"],
                                              source=f"replay:{replay_sha}", cycle_id=cycle_id))
        replay_available = len(candidates)
        kept: list[TrainingExample] = []
        if settings.replay_refusals and is_refusal is not None and candidates:
            flags = list(is_refusal([e.response for e in candidates]))
            kept = [e for e, refused in zip(candidates, flags) if refused]
            candidates = [e for e, refused in zip(candidates, flags) if not refused]
        # replay / (replay + new) == share  =>  replay = share / (1 - share) * new
        wanted = round(settings.replay_share / (1 - settings.replay_share) * len(new_train))
        candidates.sort(key=lambda e: _bucket(seed, "replay:" + normalise(e.prompt)))
        replay = kept + candidates[:wanted]
        replay_refusals = len(kept)
        replay_sources.append({"path": str(replay_file), "sha256": replay_sha, "rows": replay_available, "used": len(replay)})

    def is_val(example: TrainingExample) -> bool:
        return _bucket(seed, "val:" + normalise(example.prompt)) < settings.val_share

    pool = new_train + replay
    val = [e for e in pool if is_val(e)]
    train = [e for e in pool if not is_val(e)]
    if not val:  # tiny inputs: keep at least one validation example for early stopping
        val, train = train[-1:], train[:-1]
    if not train:
        raise DatasetError("too few examples to split into train and val: add curated cases or lower dataset.val_share")
    # A deterministic shuffle, so replay is interleaved with new cases on disk as in training.
    random.Random(seed).shuffle(train)

    files = {}
    for name, rows in ((TRAIN_FILE, train), (VAL_FILE, val), (HOLDOUT_FILE, holdout)):
        count = _write_examples(out_dir / name, rows)
        files[name] = {"rows": count, "sha256": sha256_file(out_dir / name)}
    combined = hashlib.sha256((files[TRAIN_FILE]["sha256"] + files[VAL_FILE]["sha256"]).encode()).hexdigest()
    replay_in_train = sum(e.source.startswith("replay:") for e in train)
    card = {
        "name": f"flywheel-{cycle_id}",
        "cycle_id": cycle_id,
        "format": "jsonl; fields prompt, response, source, cycle_id (datasets.load_dataset('json', ...))",
        "sha256": combined,
        "sources": [{"kind": "curated", "path": str(curated_path), "sha256": sha256_file(curated_path),
                     "rows": len(curated)}] + [{"kind": "replay", **s} for s in replay_sources],
        "counts": {
            "curated_unique": len(new),
            "duplicates_dropped": duplicates,
            "holdout": len(holdout),
            "new_available": new_available,
            "new_used": len(new_train),
            "replay_available": replay_available,
            "replay_used": len(replay),
            "replay_refusals": replay_refusals,
            "train": len(train),
            "val": len(val),
            "replay_in_train": replay_in_train,
        },
        "replay_share": {"target": settings.replay_share,
                         "actual": round(len(replay) / len(pool), 4) if pool else 0.0},
        "files": files,
        "settings": settings.model_dump(mode="json"),
    }
    atomic_write_text(out_dir / CARD_FILE, json.dumps(card, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    if mlflow:
        log_dataset_input(out_dir, mlflow, context="training")
    return {"train": len(train), "val": len(val), "holdout": len(holdout), "replay": len(replay),
            "duplicates": duplicates, "sha256": combined, "card": str(out_dir / CARD_FILE)}


def read_examples(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in _rows(Path(path))]


def log_dataset_input(dataset_dir: Path, run: MlflowRun, *, context: str = "training") -> None:
    """Record the dataset as an input of an MLflow run (lineage): name, digest = the card's sha256,
    source = the folder, schema and profile from pandas."""
    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.tracking import MlflowClient

    dataset_dir = Path(dataset_dir)
    card = json.loads((dataset_dir / CARD_FILE).read_text(encoding="utf-8"))
    frames = []
    for split, name in (("train", TRAIN_FILE), ("val", VAL_FILE)):
        frame = pd.DataFrame(read_examples(dataset_dir / name), columns=["prompt", "response", "source", "cycle_id"])
        frame["split"] = split
        frames.append(frame)
    from mlflow.data.sources import LocalArtifactDatasetSource

    dataset = mlflow.data.from_pandas(
        pd.concat(frames, ignore_index=True),
        source=LocalArtifactDatasetSource(str(dataset_dir.resolve())),
        targets="response",
        name=card.get("name", dataset_dir.name),
        digest=card["sha256"][:32],
    )
    tags = [InputTag(key="mlflow.data.context", value=context)]
    MlflowClient(run.tracking_uri).log_inputs(run.run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])


def dataset_stage(curated: Path, replay: Path | None, out_dir: Path, settings: DatasetSettings, *, cycle_id: str,
                  mlflow: MlflowRun | None = None, signals: SignalsSettings | None = None) -> StageResult:
    """The cycle's dataset stage: `build_dataset`, with train / val / holdout and the card as outputs.
    `signals` decides which replayed answers are refusals (the monitoring detector)."""
    start = time.perf_counter()
    is_refusal = None
    if signals is not None:
        from tasks.signals import detect_refusals

        def is_refusal(texts: list[str]) -> Sequence[bool]:
            return detect_refusals(texts, signals)

    built = build_dataset(curated, out_dir, settings, cycle_id=cycle_id, replay_path=replay, mlflow=mlflow,
                          is_refusal=is_refusal)
    out_dir = Path(out_dir)
    return StageResult.of(
        "dataset", {"train": out_dir / TRAIN_FILE, "val": out_dir / VAL_FILE, "holdout": out_dir / HOLDOUT_FILE,
                    "card": out_dir / CARD_FILE},
        counts={k: built[k] for k in ("train", "val", "holdout", "replay", "duplicates")},
        seconds=time.perf_counter() - start, details={"sha256": built["sha256"]},
    )

"""The retraining cycle's bookkeeping: its directory and manifest, and the cache key that lets a rerun
skip the stages whose inputs, configuration and code have not changed (DESIGN.md section 3).

Stage logic stays in the stage modules; this module only knows how a cycle is laid out on disk and what
a stage's identity is. A stage's cache key is its name, the code of the modules it runs, the digests of
its input files and the settings sections it is given (never the whole Settings: changing
`review.timeout_days` must not mask the cycle's PII again).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks.config import Settings
from tasks.contracts import StageResult, sha256_file
from tasks.files import atomic_write_text

MANIFEST = "manifest.json"
CASES = "01_cases.parquet"
MASKED = "02_masked.parquet"
ANNOTATION = "03_annotation"
DATASET = "04_dataset"
ADAPTER = "05_adapter"
EVAL = "06_eval"
RAMP = "07_ramp"  # the canary ramp's looks (flows/ramp.py), shown in the review
COST = "cost.json"  # the cost/ROI report the cycle was judged with (the review summary reads it)
# Parameters that say where a stage logs, not what it computes: left out of its cache key.
NOT_IN_CACHE_KEY = frozenset({"mlflow", "progress"})
# Where a stage writes: counted by path, not content (they do not exist before the first run, and a
# stage whose outputs went missing runs again anyway: stage_intact).
OUTPUT_PARAMETERS = frozenset({"out", "quarantine"})


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
    """A content digest for a cache key: files by their bytes, folders by their files (training
    checkpoints and bytecode caches aside), pydantic models by their JSON, anything else by its JSON form
    (a secret key only ever enters as part of this hash)."""
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


def code_digest(modules: tuple[str, ...]) -> str:
    """The source of the named modules (a package: every file in it), as one digest."""
    parts = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"stage code module {name!r} does not exist")
        source = Path(spec.origin)
        parts.append(digest(source.parent if source.name == "__init__.py" else source))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def stage_cache_key(stage: str, modules: tuple[str, ...], inputs: dict[str, Any]) -> str:
    """Stage name + the code of its modules + a digest of every parameter it is given (input files
    by content, settings sections by value), except where it logs (NOT_IN_CACHE_KEY); where it writes
    (OUTPUT_PARAMETERS) counts by path."""
    parts = [stage, code_digest(modules)] + [
        f"{name}={str(value) if name in OUTPUT_PARAMETERS else digest(value)}"
        for name, value in sorted(inputs.items())
        if name not in NOT_IN_CACHE_KEY
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def stage_intact(directory: Path, stage: str, cache_key: str) -> bool:
    """Did `stage` last finish in this cycle directory with this very cache key, every output it recorded
    still there unchanged? Only then may a rerun reuse its cached result. Outputs deleted by hand, a
    workspace wiped between runs, or a run with other settings that replaced the files since (the cache
    still holds the earlier result, the folder no longer does) all mean the stage runs again."""
    entry = read_manifest(directory)["stages"].get(stage)
    if not entry or entry.get("status") != "done" or entry.get("cache_key") != cache_key:
        return False
    for output in entry.get("outputs", {}).values():
        path = Path(output["path"])
        if not path.is_file() or sha256_file(path) != output["sha256"]:
            return False
    return True


def log_files(settings: Settings) -> list[str]:
    """Every log file the cycle reads (logs.sources, else the workspace's logs/)."""
    from tasks.logs import resolve_sources

    return resolve_sources(None, settings.logs, settings.workspace)


def files_fingerprint(files: list[str]) -> list[list[Any]]:
    """(file, size, mtime) per file: part of the extraction's cache key, so logs that arrived or
    changed since the last run are extracted again, without hashing a quarter of logs on every run."""
    fingerprint: list[list[Any]] = []
    for name in files:
        path = Path(name)
        stat = path.stat() if path.is_file() else None
        fingerprint.append([name, stat.st_size if stat else None, stat.st_mtime_ns if stat else None])
    return fingerprint


def record_stage(directory: Path, result: StageResult, cache_key: str) -> None:
    """Write the stage's status, cache key, declared outputs (with their sha256), counts and details
    into the cycle manifest."""
    manifest = read_manifest(directory)
    manifest["cycle_id"] = directory.name
    manifest["stages"][result.stage] = {
        "status": "done",
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(result.seconds, 3),
        "cache_key": cache_key,
        "outputs": {name: out.model_dump() for name, out in result.outputs.items()},
        "counts": result.counts,
        "details": result.details,
    }
    atomic_write_text(directory / MANIFEST, json.dumps(manifest, indent=2, default=str))


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


def replay_source(settings: Settings, champion_cycle: str | None, base: Path) -> Path | None:
    """What the champion was trained on, for replay against forgetting: the champion cycle's
    training set, or with no champion yet the base model's own pre-training pairs (written by
    `flywheel model bootstrap`). A base model of your own has none: no replay then."""
    from tasks.base_model import PRETRAINING_FILE

    candidates = [settings.paths.under("cycles", champion_cycle, DATASET, "train.jsonl")] if champion_cycle else []
    candidates.append(base / PRETRAINING_FILE)
    return next((path for path in candidates if path.is_file()), None)

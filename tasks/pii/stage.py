"""The mask stage: the text fields of a JSONL or Parquet record file masked into another, with an audit.

    records --cells (record, field) holding text--> ShardPool(mask_shard): mask, re-scan, re-mask
            --> masked records (a failing record dropped whole) + an audit of counts (never text)

Fail closed: a record with a field that is not text, or whose analysis, anonymisation or re-scan
raises, is dropped and counted; it never reaches the output. Whatever the final re-scan still finds
is a leak: the audit is written, the output removed, and `PiiLeakError` raised.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from tasks.config import PiiSettings
from tasks.contracts import StageResult
from tasks.files import atomic_write_text, read_records, write_records
from tasks.pii.masker import REMASK_ROUNDS
from tasks.pii.pool import ShardPool, mask_shard

log = logging.getLogger(__package__)  # the package's logger: log lines keep the name "tasks.pii"

DEFAULT_FIELDS = ("prompt", "response", "followup", "correction")
AUDIT_FILE = "pii_audit.json"


class PiiLeakError(RuntimeError):
    """The re-scan of the masked output still found PII. The message holds counts and types only."""


def mask_file(
    in_path: Path,
    out_path: Path,
    settings: PiiSettings,
    *,
    key: bytes,
    fields: Sequence[str] = DEFAULT_FIELDS,
    audit_path: Path | None = None,
) -> dict[str, Any]:
    """Mask `fields` of every record of a JSONL/Parquet file into another (format by suffix).

    A record with any field that fails is dropped (fail closed). The output is re-scanned; leaks
    raise PiiLeakError after the audit is written, and the output is not left in place.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    started = time.perf_counter()
    records = read_records(in_path)
    schema = None
    if in_path.suffix.lower() == ".parquet" and out_path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(in_path)

    # Flatten (record, field) cells holding non-empty text. A field that holds something else than
    # text or null (a list, an object) cannot be masked: its record is dropped.
    cells: list[tuple[int, str]] = []
    texts: list[str] = []
    failed: set[int] = set()
    errors: Counter[str] = Counter()
    for i, record in enumerate(records):
        for name in fields:
            value = record.get(name)
            if isinstance(value, str):
                if value.strip():
                    cells.append((i, name))
                    texts.append(value)
            elif value is not None and i not in failed:
                failed.add(i)
                errors["NonTextField"] += 1

    with ShardPool(settings, key, size=len(texts)) as pool:
        ready = time.perf_counter()
        masked = pool.map(mask_shard, texts, True)
        work_seconds = time.perf_counter() - ready

    entities: Counter[str] = Counter()
    leak_types: Counter[str] = Counter()
    leaked_records: set[int] = set()
    for (i, _), item in zip(cells, masked):
        if item["text"] is None and i not in failed:
            errors[item["error"] or "Exception"] += 1
            failed.add(i)
    out_records = [dict(r) for r in records]
    for (i, name), item in zip(cells, masked):
        if i in failed:  # dropped whole: none of its fields is written, masked or not
            continue
        out_records[i][name] = item["text"]
        entities.update(item["entities"])
        if item["leaks"]:
            leaked_records.add(i)
            leak_types.update(item["leaks"])
    kept = [r for i, r in enumerate(out_records) if i not in failed]
    leaks = sum(leak_types.values())
    seconds = time.perf_counter() - started
    audit = {
        "input": str(in_path),
        "output": str(out_path),
        "records": len(records),
        "masked_records": len(kept),
        "dropped": len(failed),
        "drop_reasons": dict(errors),
        "fields": list(fields),
        "texts": len(texts),
        "distinct_texts": pool.distinct_texts,
        "entities": dict(sorted(entities.items())),
        "leaks": leaks,
        "leak_types": dict(sorted(leak_types.items())),
        "leaked_records": len(leaked_records),
        "rescan": (
            f"the full analyzer over every masked text that had detections; findings outside pseudonym "
            f"tokens are masked (up to {REMASK_ROUNDS} rounds), what the final re-scan finds is a leak"
        ),
        "entity_types": list(settings.entities),
        "spacy_model": settings.spacy_model,
        "processes": pool.processes,
        "docs_per_s": round(len(texts) / work_seconds, 1) if work_seconds > 0 and texts else 0.0,
        "cpu_seconds": round(pool.cpu_seconds, 3),
        "seconds": round(seconds, 3),
    }
    if audit_path is not None:
        audit_path = atomic_write_text(audit_path, json.dumps(audit, indent=2))
    if leaks:
        if out_path.exists():
            out_path.unlink()
        raise PiiLeakError(
            f"PII re-scan found {leaks} detection(s) in {len(leaked_records)} masked record(s) "
            f"(types: {', '.join(f'{k}={v}' for k, v in sorted(leak_types.items()))}); the output was "
            f"not written. See the audit{f' at {audit_path}' if audit_path else ''}."
        )
    write_records(out_path, kept, schema)
    log.info(
        "masked %d of %d records (%d dropped), %d entities, 0 leaks, %.1f docs/s",
        len(kept), len(records), len(failed), sum(entities.values()), audit["docs_per_s"],
    )
    return audit


def mask_stage(cases: Path, out_path: Path, settings: PiiSettings, *, key: bytes) -> StageResult:
    """The cycle's masking stage: every text field of the cases file masked, the audit beside it."""
    out_path = Path(out_path)
    audit_path = out_path.parent / AUDIT_FILE
    audit = mask_file(cases, out_path, settings, key=key, audit_path=audit_path)
    return StageResult.of(
        "mask", {"masked": out_path, "audit": audit_path},
        counts={k: audit[k] for k in ("records", "masked_records", "dropped", "leaks")}, seconds=audit["seconds"],
        details={"entities": audit["entities"]},
    )

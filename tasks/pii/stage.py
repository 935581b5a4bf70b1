"""The mask stage: the text fields of a JSONL or Parquet record file masked into another, with an audit.

    records --cells (record, field) holding text--> ShardPool(mask_shard): mask, re-scan, re-mask
            --> derived columns re-derived from the masked text (a case's topic)
            --> the independent leak scan over every text column of every record written
            --> masked records (a failing record dropped whole) + an audit of counts (never text)

Fail closed: a record with a field that is not text, or whose analysis, anonymisation or re-scan
raises, is dropped and counted; it never reaches the output. Whatever the final re-scan still finds
is a leak: the audit is written, the output removed, and `PiiLeakError` raised.

The independent scan (tasks/pii/scan.py) reads every string a written record holds, in every column,
not only the masked fields: ids, a derived topic, metadata. Its hits are leaks too; `pii.leak_scan`
says whether they are masked ("mask") or fail the stage like the re-scan's ("fail"). Only the
pipeline's own keyed hashes (`case_id`, `user_ref` holding a hex digest) are not text.

A case's `topic` is a word `extract` picked from the raw prompt, often its rarest (a surname, an
account number). Masking the word on its own cannot work (a lone "smith" has no context for NER), so
it is derived again from the masked prompt: the word stays when the masked prompt still holds it
(then it shows nothing the prompt does not), else it becomes the keyed pseudonym `<TOPIC_xxxxxxxx>`,
which keeps the cases of one topic together without saying what the topic was.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from tasks.config import PiiSettings
from tasks.contracts import StageResult
from tasks.files import atomic_write_text, read_records, write_records
from tasks.pii.keys import PSEUDONYM_RE, pseudonym
from tasks.pii.masker import REMASK_ROUNDS
from tasks.pii.pool import ShardMapper, ShardPool, mask_shard
from tasks.pii.scan import LeakScan, leak_scan

log = logging.getLogger(__package__)  # the package's logger: log lines keep the name "tasks.pii"

DEFAULT_FIELDS = ("prompt", "response", "followup", "correction")
AUDIT_FILE = "pii_audit.json"
DERIVED_FIELDS = {"topic": "prompt"}  # a column derived from a text field -> that field
# Columns holding the pipeline's own keyed hashes (tasks/extract.py): a hex digest there is no text.
KEYED_ID_COLUMNS = frozenset({"case_id", "user_ref"})
_HEX_DIGEST = re.compile(r"[0-9a-f]{16,64}")
_WORD = re.compile(r"\w\w+")


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
    mapper: ShardMapper | None = None,
) -> dict[str, Any]:
    """Mask `fields` of every record of a JSONL/Parquet file into another (format by suffix).
    `mapper`: where the shards run (flows/parallel.py's Dask mapper); default: pii.processes here.

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

    with ShardPool(settings, key, size=len(texts), mapper=mapper) as pool:
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
    kept_rows = [i for i in range(len(out_records)) if i not in failed]
    for i in kept_rows:
        for column, source in DERIVED_FIELDS.items():
            value = out_records[i].get(column)
            if isinstance(value, str) and value and source in fields and isinstance(out_records[i].get(source), str):
                out_records[i][column] = derived_from_masked(value, out_records[i][source], key, column)

    # The second opinion: every string of every record written, masked in place or failing the stage.
    scan_masks = settings.leak_scan == "mask"
    scanned = scan_records([out_records[i] for i in kept_rows], leak_scan(tuple(settings.leak_scan_detectors)),
                           key, mask=scan_masks)
    scan_hits = sum(scanned["by_detector"].values())
    scan_rows = {kept_rows[j] for j in scanned["rows"]}
    leak_types.update({f"scan:{name}": n for name, n in scanned["by_detector"].items()})
    kept = [out_records[i] for i in kept_rows]
    leaks = sum(leak_types.values())
    blocking = leaks - (scan_hits if scan_masks else 0)  # what no one masked
    if not scan_masks:
        leaked_records |= scan_rows
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
        "leaked_records": len(leaked_records | scan_rows),
        "leaks_masked": scan_hits if scan_masks else 0,
        "rescan": (
            f"the full analyzer over every masked text that had detections; findings outside pseudonym "
            f"tokens are masked (up to {REMASK_ROUNDS} rounds), what the final re-scan finds is a leak"
        ),
        "scan": {
            "method": "independent shape detectors (tasks/pii/scan.py) over every string of every column written",
            "on_hit": settings.leak_scan,
            "detectors": list(settings.leak_scan_detectors),
            "hits": scan_hits,
            "by_detector": dict(sorted(scanned["by_detector"].items())),
            "by_column": dict(sorted(scanned["by_column"].items())),
            "texts": scanned["texts"],
            "seconds": round(scanned["seconds"], 3),
        },
        "entity_types": list(settings.entities),
        "spacy_model": settings.spacy_model,
        "processes": pool.processes,
        "docs_per_s": round(len(texts) / work_seconds, 1) if work_seconds > 0 and texts else 0.0,
        "cpu_seconds": round(pool.cpu_seconds, 3),
        "seconds": round(seconds, 3),
    }
    if audit_path is not None:
        audit_path = atomic_write_text(audit_path, json.dumps(audit, indent=2))
    if blocking:
        if out_path.exists():
            out_path.unlink()
        raise PiiLeakError(
            f"PII re-scan found {blocking} detection(s) in {len(leaked_records)} masked record(s) "
            f"(types: {', '.join(f'{k}={v}' for k, v in sorted(leak_types.items()))}); the output was "
            f"not written. See the audit{f' at {audit_path}' if audit_path else ''}."
        )
    write_records(out_path, kept, schema)
    log.info(
        "masked %d of %d records (%d dropped), %d entities, %d leak(s) found by the scan and masked, %.1f docs/s",
        len(kept), len(records), len(failed), sum(entities.values()), audit["leaks_masked"], audit["docs_per_s"],
    )
    return audit


def derived_from_masked(value: str, masked_source: str, key: bytes, column: str) -> str:
    """A label derived from a text field, as the masked field allows: the label when the masked text
    still holds it as a word (outside pseudonyms), else its keyed pseudonym (`<TOPIC_xxxxxxxx>`)."""
    label = value.strip().casefold()
    if _WORD.fullmatch(label) and label in set(_WORD.findall(PSEUDONYM_RE.sub(" ", masked_source).casefold())):
        return value
    return pseudonym(key, column.upper(), value)


def scan_records(records: list[dict[str, Any]], scan: LeakScan, key: bytes, *, mask: bool) -> dict[str, Any]:
    """The independent scan over every string of every record (nested lists and objects too), in place
    when `mask`. Returns counts by detector and column, the indices of records with hits, texts read."""
    started = time.perf_counter()
    by_detector: Counter[str] = Counter()
    by_column: Counter[str] = Counter()
    rows: set[int] = set()
    seen: dict[str, tuple[str, list[str]]] = {}  # text -> (masked text, detector per hit): texts repeat

    def visit(value: Any) -> tuple[Any, list[str]]:
        if isinstance(value, str):
            if value not in seen:
                hits = scan.hits(value)
                seen[value] = (scan.mask(value, hits, key) if hits else value, [name for _, _, name in hits])
            return seen[value]
        if isinstance(value, list):
            pairs = [visit(item) for item in value]
            return [p[0] for p in pairs], [n for p in pairs for n in p[1]]
        if isinstance(value, dict):
            pairs = {k: visit(v) for k, v in value.items()}
            return {k: p[0] for k, p in pairs.items()}, [n for p in pairs.values() for n in p[1]]
        return value, []

    for row, record in enumerate(records):
        for column, value in list(record.items()):
            if column in KEYED_ID_COLUMNS and isinstance(value, str) and _HEX_DIGEST.fullmatch(value):
                continue
            new, hits = visit(value)
            if hits:
                rows.add(row)
                by_detector.update(hits)
                by_column[column] += len(hits)
                if mask:
                    record[column] = new
    return {"by_detector": by_detector, "by_column": by_column, "rows": rows, "texts": len(seen),
            "seconds": time.perf_counter() - started}


def mask_stage(cases: Path, out_path: Path, settings: PiiSettings, *, key: bytes,
               mapper: ShardMapper | None = None) -> StageResult:
    """The cycle's masking stage: every text field of the cases file masked, the audit beside it."""
    out_path = Path(out_path)
    audit_path = out_path.parent / AUDIT_FILE
    audit = mask_file(cases, out_path, settings, key=key, audit_path=audit_path, mapper=mapper)
    return StageResult.of(
        "mask", {"masked": out_path, "audit": audit_path},
        counts={k: audit[k] for k in ("records", "masked_records", "dropped", "leaks", "leaks_masked")},
        seconds=audit["seconds"],
        details={"entities": audit["entities"]},
    )

"""Atomic file writes and the record files stages hand each other (JSONL and Parquet, case files).

Every output a stage records in a cycle manifest is written here: to a temporary file beside the
target, then renamed over it, so a crash never leaves a half-written file that a rerun could mistake
for a finished one. Readers name the file and line of a bad row and never echo its content (it may
hold PII).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.contracts import CASE_SCHEMA, Case

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename."""
    path = Path(path)
    return _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_copy(source: str | Path, dest: str | Path) -> Path:
    return _atomic(Path(dest), lambda tmp: shutil.copyfile(source, tmp))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any] | BaseModel]) -> int:
    """One JSON object per line (pydantic models by their JSON form), atomically; returns the count."""
    count = 0

    def write(tmp: Path) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            for row in rows:
                line = row.model_dump_json() if isinstance(row, BaseModel) else json.dumps(row, ensure_ascii=False, default=str)
                handle.write(line + "\n")
                count += 1

    _atomic(Path(path), write)
    return count


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line; a line that is not a JSON object is a ValueError
    naming the file and line (its content is withheld: it may hold PII)."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {number} is not valid JSON (content withheld)") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            yield number, row


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a Parquet or JSONL file as plain dicts."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix in JSONL_SUFFIXES:
        return [row for _, row in read_jsonl(path)]
    raise ValueError(f"{path}: unsupported suffix {suffix!r}; use .jsonl or .parquet")


def write_records(path: str | Path, records: list[dict[str, Any]], schema: Any = None) -> Path:
    """Parquet (with `schema` when given) when the suffix is .parquet, JSONL otherwise; atomically."""
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        write_jsonl(path, records)
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(records, schema=schema) if records else (schema or pa.schema([])).empty_table()
    return _atomic(path, lambda tmp: pq.write_table(table, tmp))


def write_cases(cases: list[Case], path: str | Path) -> Path:
    """Cases as Parquet (CASE_SCHEMA) when the suffix is .parquet, JSONL otherwise; atomically."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return write_records(path, [case.model_dump() for case in cases], CASE_SCHEMA)
    write_jsonl(path, cases)
    return path


def read_case_rows(path: str | Path) -> list[dict[str, Any]]:
    """Case rows (CASE_SCHEMA) from Parquet or JSONL as plain dicts; every row needs a case_id."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cases file {path} does not exist")
    rows = read_records(path)
    for number, row in enumerate(rows, 1):
        if not row.get("case_id"):
            raise ValueError(f"{path}: row {number} has no case_id; a cases file comes from `flywheel extract`")
    return rows


def read_cases(path: str | Path) -> list[Case]:
    """Cases from a file written by `write_cases` (or any CASE_SCHEMA Parquet / JSONL of Case)."""
    return [Case.model_validate(row) for row in read_case_rows(path)]


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _temporary_beside(path: Path) -> Path:
    """A new empty file next to `path` with the mode a plain open() gives (0666 less the umask), so the
    renamed output is as readable as a file written in place (tempfile.mkstemp's would be 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp

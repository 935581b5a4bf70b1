"""Write logs: append LogRecords to one JSON Lines (or Parquet) file per UTC day.

The writing side of the log store, used by the traffic simulator and the model server; what it writes
is what ``tasks.logs.load_logs`` reads with the default ``flywheel`` preset. Feedback that arrives after
a record was written goes to ``<dir>/YYYY-MM-DD.feedback.jsonl`` (FeedbackEvent lines), which the loader
joins onto the records by request_id.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Iterable, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from tasks.contracts import LOG_SCHEMA, FeedbackEvent, LogRecord
from tasks.windows import as_utc, iso_z

__all__ = ["FEEDBACK_SUFFIX", "LogWriter"]

FEEDBACK_SUFFIX = ".feedback.jsonl"  # <day>.feedback.jsonl: feedback events, joined by request_id on load


class LogWriter:
    """Append LogRecords to one file per UTC day: ``<dir>/YYYY-MM-DD.jsonl``.

    With ``fmt="parquet"`` rows are buffered per day and written as ``<dir>/YYYY-MM-DD.part-NNNNN.parquet``
    (LOG_SCHEMA) every `rows_per_part` rows and on `flush`/`close`; Parquet cannot be appended to, so each
    flush adds a part and never rewrites one. JSONL lines are on disk when `append` returns.
    Thread-safe; usable as a context manager. Records are validated as LogRecord (naive times are UTC).
    """

    def __init__(
        self, directory: Path | str, fmt: Literal["jsonl", "parquet"] = "jsonl", *, rows_per_part: int = 100_000
    ):
        if fmt not in ("jsonl", "parquet"):
            raise ValueError(f"LogWriter format must be 'jsonl' or 'parquet', got {fmt!r}")
        self.directory = Path(directory)
        self.fmt = fmt
        self.rows_per_part = max(1, int(rows_per_part))
        self._lock = threading.Lock()
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._written: set[Path] = set()
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, records: Iterable[LogRecord | dict[str, Any]]) -> int:
        """Validate and write records; returns how many were written (or buffered, for Parquet)."""
        rows = [_row(record, number) for number, record in enumerate(records, start=1)]
        by_day: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(row["ts"].strftime("%Y-%m-%d"), []).append(row)
        with self._lock:
            if self._closed:
                raise RuntimeError(f"LogWriter for {self.directory} is closed")
            for day, day_rows in by_day.items():
                if self.fmt == "jsonl":
                    path = self.directory / f"{day}.jsonl"
                    with open(path, "a", encoding="utf-8") as handle:
                        handle.write("".join(_jsonl_line(row) for row in day_rows))
                    self._written.add(path)
                else:
                    pending = self._pending.setdefault(day, [])
                    pending.extend(day_rows)
                    if len(pending) >= self.rows_per_part:
                        self._flush_day(day)
        return len(rows)

    def append_feedback(self, events: Iterable[FeedbackEvent | dict[str, Any]]) -> int:
        """Validate and append feedback events to ``<dir>/<day of the event>.feedback.jsonl`` (JSON Lines
        whatever `fmt` is: events are few and must be on disk when this returns)."""
        by_day: dict[str, list[str]] = {}
        for number, event in enumerate(events, start=1):
            try:
                checked = event if isinstance(event, FeedbackEvent) else FeedbackEvent.model_validate(event)
            except ValidationError as err:
                raise ValueError(f"feedback event {number} of this append is not valid: {_problems(err)}") from None
            row = checked.model_dump()
            row["ts"] = as_utc(row["ts"])
            by_day.setdefault(row["ts"].strftime("%Y-%m-%d"), []).append(_jsonl_line(row))
        with self._lock:
            if self._closed:
                raise RuntimeError(f"LogWriter for {self.directory} is closed")
            for day, lines in by_day.items():
                path = self.directory / f"{day}{FEEDBACK_SUFFIX}"
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write("".join(lines))
                self._written.add(path)
        return sum(len(lines) for lines in by_day.values())

    def flush(self) -> None:
        with self._lock:
            for day in list(self._pending):
                self._flush_day(day)

    def close(self) -> list[Path]:
        """Flush and return every file this writer wrote to, sorted."""
        self.flush()
        with self._lock:
            self._closed = True
            return sorted(self._written)

    def _flush_day(self, day: str) -> None:
        rows = self._pending.pop(day, [])
        if not rows:
            return
        number = 0
        for existing in self.directory.glob(f"{day}.part-*.parquet"):
            match = re.fullmatch(rf"{re.escape(day)}\.part-(\d+)\.parquet", existing.name)
            if match:
                number = max(number, int(match.group(1)) + 1)
        path = self.directory / f"{day}.part-{number:05d}.parquet"
        columns = {name: [row[name] for row in rows] for name in LOG_SCHEMA.names}
        columns["metadata"] = [json.dumps(value, ensure_ascii=False, default=str) for value in columns["metadata"]]
        pq.write_table(pa.table(columns, schema=LOG_SCHEMA), path)
        self._written.add(path)


def _row(record: LogRecord | dict[str, Any], number: int) -> dict[str, Any]:
    if not isinstance(record, LogRecord):
        try:
            record = LogRecord.model_validate(record)
        except ValidationError as err:
            raise ValueError(f"record {number} of this append is not a valid LogRecord: {_problems(err)}") from None
    row = record.model_dump()
    row["ts"] = as_utc(row["ts"])
    return row


def _problems(err: ValidationError) -> str:
    """What is wrong, by field, without quoting the values (they may hold PII)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in problem['loc']) or 'record'}: {problem['msg']}"
        for problem in err.errors(include_input=False, include_url=False)
    )


def _jsonl_line(row: dict[str, Any]) -> str:
    out = dict(row)
    out["ts"] = iso_z(row["ts"])
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"

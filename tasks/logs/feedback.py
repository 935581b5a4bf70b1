"""Join late feedback onto log records: ``*.feedback.jsonl`` files hold FeedbackEvents by request_id.

A server writes a request's LogRecord within a second of answering it, but the user's thumbs up/down
comes minutes later; rewriting the day's file for it would race the writer. So feedback is appended as
its own event (``LogWriter.append_feedback``) and joined here, when logs are loaded: a folder or pattern
that picks up the log files picks up the feedback files beside them, and ``load_logs`` hands them here.

Rules: events are applied in time order (then file and line order), so the latest thumbs wins; a
correction stays until a later event brings another one. An event that is not a valid FeedbackEvent is
counted as rejected and named (file and line, never its text) in the load's warnings; an event whose
request is not among the loaded records (another window, a lost record) is counted as unmatched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import ValidationError

from tasks.contracts import FeedbackEvent
from tasks.logs.sources import is_remote
from tasks.logs.writer import FEEDBACK_SUFFIX
from tasks.windows import as_utc

__all__ = ["FeedbackJoin", "apply_feedback", "is_feedback_file", "read_feedback"]

_NAMED_REJECTS = 5  # rejected lines named one by one in the warnings; the rest are counted


def is_feedback_file(name: str) -> bool:
    return str(name).lower().endswith(FEEDBACK_SUFFIX)


@dataclass
class FeedbackJoin:
    """What the join did, for ``LoadResult.summary()``."""

    files: list[str] = field(default_factory=list)
    events: int = 0  # valid events read
    rejected: int = 0  # lines that are not valid events
    applied: int = 0  # loaded records whose feedback or correction came from an event
    unmatched: int = 0  # requests with events but no loaded record
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.files), "events": self.events, "rejected": self.rejected,
                "applied": self.applied, "unmatched": self.unmatched}


def read_feedback(files: Sequence[str]) -> tuple[list[FeedbackEvent], FeedbackJoin]:
    """The valid events of `files` in the order they apply (time, then file, then line)."""
    join = FeedbackJoin(files=list(files))
    keyed: list[tuple[Any, int, int, FeedbackEvent]] = []
    for index, source in enumerate(files):
        for number, line in enumerate(_lines(source), start=1):
            if not line.strip():
                continue
            try:
                event = FeedbackEvent.model_validate(json.loads(line))
            except (ValueError, ValidationError) as err:
                join.rejected += 1
                if join.rejected <= _NAMED_REJECTS:
                    reason = "not JSON" if isinstance(err, json.JSONDecodeError) else _fields(err)
                    join.warnings.append(f"{source}:{number}: not a feedback event ({reason}); skipped")
                continue
            keyed.append((as_utc(event.ts), index, number, event))
    if join.rejected > _NAMED_REJECTS:
        join.warnings.append(f"{join.rejected - _NAMED_REJECTS} more feedback lines were not valid events")
    keyed.sort(key=lambda item: item[:3])
    join.events = len(keyed)
    return [item[3] for item in keyed], join


def apply_feedback(table: pa.Table, events: Sequence[FeedbackEvent], join: FeedbackJoin,
                   seen: np.ndarray | None = None) -> pa.Table:
    """`table` (LOG_SCHEMA) with each request's feedback and correction taken from its events.

    `seen` (one flag per request with events, in first-event order) lets several calls on parts of one
    load count together: it marks the requests matched so far, and `join.applied` adds up."""
    latest: dict[str, list[Any]] = {}
    for event in events:
        current = latest.setdefault(event.request_id, [None, None])
        current[0] = event.feedback
        if event.correction is not None:
            current[1] = event.correction
    if seen is None:
        seen = np.zeros(len(latest), dtype=bool)
        join.applied = 0
    if not latest or table.num_rows == 0:
        join.unmatched = len(latest) - int(seen.sum())
        return table
    keys = pa.array(list(latest), pa.string())
    position = pc.index_in(table["request_id"], value_set=keys)
    matched = pc.is_valid(position)
    join.applied += pc.sum(matched.cast(pa.int64())).as_py() or 0
    seen[pc.unique(pc.filter(position, matched)).to_numpy(zero_copy_only=False)] = True
    join.unmatched = len(latest) - int(seen.sum())
    thumbs = pa.array([value[0] for value in latest.values()], pa.int8())
    corrections = pa.array([value[1] for value in latest.values()], pa.string())
    feedback = pc.if_else(matched, pc.take(thumbs, position), table["feedback"])
    correction = pc.coalesce(pc.take(corrections, position), table["correction"])
    table = table.set_column(table.schema.get_field_index("feedback"), "feedback", feedback)
    return table.set_column(table.schema.get_field_index("correction"), "correction", correction)


def _lines(source: str):
    if is_remote(source):
        import fsspec

        with fsspec.open(source, "rt", encoding="utf-8", errors="replace") as handle:
            yield from handle
        return
    with open(source.removeprefix("file://"), encoding="utf-8", errors="replace") as handle:
        yield from handle


def _fields(err: Exception) -> str:
    if not isinstance(err, ValidationError):
        return type(err).__name__
    return "; ".join(f"{'.'.join(str(p) for p in problem['loc']) or 'event'}: {problem['msg']}"
                     for problem in err.errors(include_input=False, include_url=False))

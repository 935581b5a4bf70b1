"""Typed records that cross stage boundaries (DESIGN.md section 3).

Stages exchange files plus digests, never large Python objects: each stage reads its inputs from
paths, writes its outputs into the cycle directory and returns a small `StageResult`. The record
models below describe one row of those files; the Arrow schemas describe them when stored as Parquet.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, Sequence, runtime_checkable

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

CaseKind = Literal["refusal", "reask", "thumbs_down", "unsupported"]
Suite = Literal["regression", "ood", "adversarial", "new_cases"]
Expected = Literal["answer", "refuse"]


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LogRecord(Record):
    """One production request/response, whatever the source's own column names were."""

    request_id: str
    ts: datetime  # always timezone-aware UTC once loaded
    user_id: str
    session_id: str | None = None
    prompt: str
    response: str
    model_version: str
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    feedback: Literal[1, -1] | None = None
    correction: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)



class FeedbackEvent(Record):
    """A thumbs up/down (and maybe a correction) given after the answer was logged. The model server
    writes these beside its log files; the log store joins them onto the LogRecord with the same
    request_id when it loads (tasks/logs/feedback.py)."""

    request_id: str
    ts: datetime
    feedback: Literal[1, -1]
    correction: str | None = None

# How LogRecords are stored as Parquet and returned by the log store. `metadata` is kept as a JSON
# string: a free-form dict has no stable Arrow type.
LOG_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("user_id", pa.string()),
        ("session_id", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("model_version", pa.string()),
        ("latency_ms", pa.float64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("feedback", pa.int8()),
        ("correction", pa.string()),
        ("metadata", pa.string()),
    ]
)
REQUIRED_LOG_FIELDS = ("request_id", "ts", "user_id", "prompt", "response", "model_version")


class Case(Record):
    """A production failure worth learning from, with the user replaced by a keyed hash."""

    case_id: str
    request_id: str
    kinds: list[CaseKind]
    prompt: str
    response: str
    followup: str | None = None
    ts: datetime
    user_ref: str
    model_version: str
    topic: str | None = None

    @field_validator("kinds")
    @classmethod
    def _kinds_not_empty(cls, kinds: list[str]) -> list[str]:
        if not kinds:
            raise ValueError("a case needs at least one kind (refusal, reask, thumbs_down or unsupported)")
        return sorted(set(kinds))


CASE_SCHEMA = pa.schema(
    [
        ("case_id", pa.string()),
        ("request_id", pa.string()),
        ("kinds", pa.list_(pa.string())),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("followup", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("user_ref", pa.string()),
        ("model_version", pa.string()),
        ("topic", pa.string()),
    ]
)


class Annotation(Record):
    case_id: str
    annotator: str
    label: str  # one of Settings.annotation.labels
    corrected_response: str | None = None
    created_at: datetime | None = None


class TrainingExample(Record):
    prompt: str
    response: str
    source: str  # a case_id, or "replay:<dataset sha256>"
    cycle_id: str


class EvalItem(Record):
    id: str
    suite: Suite
    prompt: str
    reference: str | None = None
    expected: Expected
    must_include: list[str] = Field(default_factory=list)
    must_not_include: list[str] = Field(default_factory=list)


class FileDigest(Record):
    path: str
    sha256: str
    bytes: int

    @classmethod
    def of(cls, path: str | Path) -> FileDigest:
        path = Path(path)
        return cls(path=str(path), sha256=sha256_file(path), bytes=path.stat().st_size)


class StageResult(Record):
    """What a stage returns: its declared outputs with their digests, counts, timing, and a few small
    details for people (JSON values only). The next stage takes its inputs from `outputs`."""

    stage: str
    outputs: dict[str, FileDigest] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    details: dict[str, Any] = Field(default_factory=dict)

    def path(self, output: str) -> Path:
        if output not in self.outputs:
            raise KeyError(f"stage {self.stage!r} declares no output {output!r} (it has {sorted(self.outputs)})")
        return Path(self.outputs[output].path)

    @classmethod
    def of(cls, stage: str, outputs: dict[str, str | Path], *, counts: dict[str, int] | None = None,
           seconds: float = 0.0, details: dict[str, Any] | None = None) -> StageResult:
        """A result whose outputs are digested now, from the files the stage just wrote."""
        return cls(stage=stage, outputs={name: FileDigest.of(path) for name, path in outputs.items()},
                   counts=counts or {}, seconds=round(seconds, 3), details=details or {})


class MlflowRun(Record):
    """Where a stage logs: the tracking store and the run, always passed explicitly. A stage running in
    another process (a worker, a Dask task) has no process-wide tracking URI set for it."""

    tracking_uri: str
    run_id: str


@runtime_checkable
class Generator(Protocol):
    """Anything that answers prompts: the local transformers+peft model, an OpenAI-compatible server,
    or the simulator's scripted policy. Returns, per prompt, a list of `n` completions."""

    model_version: str

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> list[list[str]]: ...


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()

"""Production-log store: read JSONL / Parquet logs, map them onto LogRecord, quarantine bad rows.

Sources
    Local files, directories (every ``*.jsonl``, ``*.ndjson``, ``*.jsonl.gz`` and ``*.parquet`` below
    them) and glob patterns (``logs/2026-01-*.jsonl``, ``**`` allowed). Object storage goes through
    fsspec: ``s3://bucket/logs/*.parquet`` or ``gs://...`` work once the matching fsspec backend
    (s3fs, gcsfs) is installed and its credentials are in the environment; nothing else changes.
    DuckDB's httpfs extension is not used because installing it needs network access at run time.
    A file whose name does not say its format is sniffed (Parquet files start with ``PAR1``).

Column mapping (``logs.preset`` + ``logs.columns``)
    ``flywheel``: columns are named exactly as LogRecord's fields.
    ``openai_chat``: one row per chat completion, shaped like the OpenAI request and response merged::

        {"id": "chatcmpl-1", "created": 1767600000, "model": "qwen-0.5b+lora-3", "user": "u-42",
         "messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "Hi"}],
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}}],
         "usage": {"prompt_tokens": 9, "completion_tokens": 2},
         "session_id": "s-1", "latency_ms": 120.5, "feedback": 1, "correction": null, "metadata": {}}

    request_id <- id, ts <- created, user_id <- user, model_version <- model,
    prompt_tokens / completion_tokens <- usage.*, prompt <- the content of the *last* ``user``
    message in ``messages``, response <- the first of: ``choices[0].message.content``,
    ``response`` (a string, or a full response object with ``choices``), or the last message of
    ``messages`` when its role is ``assistant`` (transcripts logged with the reply appended).
    A content given as a list of parts (``[{"type": "text", "text": ...}]``) is joined with newlines.
    session_id, latency_ms, feedback, correction and metadata keep their own names.

    ``logs.columns`` overrides single fields on top of either preset: ``{user_id: customer,
    prompt_tokens: usage.input_tokens}``. Dotted paths reach into nested objects (JSON) or structs
    (Parquet); ``choices[0].message.content`` style indexes work too. The two special sources
    ``@last_user_message`` and ``@assistant_reply`` (the openai_chat rules above) can be named there
    as well. A column named in ``logs.columns`` that no row of a file has is an error that names the
    file; columns of the preset that are optional (session_id, latency_ms, ...) may simply be absent.
    Source columns that are not mapped are ignored.

Validation (one reason per rejected row, checked in this order)
    ``invalid_utf8``   the line (or a Parquet string value) is not valid UTF-8
    ``too_large``      the line is longer than ``logs.max_record_bytes`` (Parquet: its text and nested values)
    ``not_json``       the line is not JSON
    ``not_object``     JSON, but not an object
    ``missing_field``  a required field (request_id, ts, user_id, prompt, response, model_version)
                       is absent or null
    ``bad_timestamp``  ts is neither an ISO-8601 date/time (``Z`` or an offset; no offset means UTC)
                       nor an epoch number (seconds; values above 2e10 are milliseconds, as pydantic does)
    ``wrong_type``     a field has the wrong JSON type: strings must be strings (an integer user id is
                       rejected, not converted), latency_ms a number, token counts integers, metadata
                       an object (or a string holding one), feedback 1, -1, "up", "down" or null
                       (0 is rejected: on a 0/1 scale it would mean thumbs-down).
    Parquet columns are judged by their type the same way: text fields need text columns; ts takes a
    timestamp column (any unit; no time zone means UTC), a date, text or epoch numbers; metadata a
    struct/map or JSON text. A required column missing from a file's schema is an error naming the file.
    Rejected rows are written to a quarantine file (JSON Lines: ``source``, ``line`` (1-based line, or
    row number for Parquet), ``reason``, ``message``, ``bytes`` and ``raw``, the row's text truncated to
    ``logs.quarantine_raw_chars``). The raw text may hold PII, so it goes to that file only: exception
    messages never quote row content. Blank lines are skipped and not counted.

Counts
    ``read = accepted + quarantined`` always holds and is always reported. ``since``/``until``/
    ``model_version`` select which accepted rows land in ``LoadResult.table``; they do not change the
    three counts (``LoadResult.selected`` is the table's row count, ``filtered_out`` the rest).

Command line (flows/cli.py)
    ``flywheel logs validate PATH... [--quarantine FILE] [--strict]``: ``resolve_sources(paths,
    settings.logs, settings.workspace)``, then ``load_logs(files, settings.logs, quarantine=FILE or
    default_quarantine(settings, settings.workspace))``; print ``result.summary()`` (read, accepted,
    quarantined, reasons, ...); ``--strict`` exits 1 when anything was quarantined.
    ``flywheel logs stats PATH...``: the same load, then print ``log_stats(result)``.

Speed
    Nothing on the happy path loops over rows in Python. A JSONL file is read once into a numpy
    buffer and split into lines by numpy; the lines go to DuckDB as a zero-copy Arrow array; UTF-8
    is checked per file by Arrow (only a file that fails is searched, by halves, for its bad lines,
    which are then blanked in place). DuckDB's vectorised JSON functions read all mapped fields of a
    line in two passes (types, then text); a line shaped like an object (``{...}``) skips the separate
    validity pass, and if one turns out not to be JSON the query reruns with it. Parquet is read by
    pyarrow and validated by the same query levels. Accepted rows that are already in time order are
    returned as zero-copy slices. ``benchmarks/logs_throughput.py`` measures it.
"""

from __future__ import annotations

import glob as _glob
import gzip
import json
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ValidationError

from tasks.config import LogsSettings
from tasks.contracts import LOG_SCHEMA, REQUIRED_LOG_FIELDS, LogRecord
from tasks.windows import as_utc, iso_z, parse_time

__all__ = [
    "FIELDS",
    "PRESETS",
    "REASONS",
    "LoadResult",
    "LogWriter",
    "column_mapping",
    "default_quarantine",
    "load_logs",
    "load_window",
    "log_stats",
    "resolve_sources",
]

REASONS = (
    "invalid_utf8",
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "bad_timestamp",
    "wrong_type",
)
FIELDS: tuple[str, ...] = tuple(LOG_SCHEMA.names)

LAST_USER_MESSAGE = "@last_user_message"
ASSISTANT_REPLY = "@assistant_reply"
_SPECIALS = (LAST_USER_MESSAGE, ASSISTANT_REPLY)

PRESETS: dict[str, dict[str, str]] = {
    "flywheel": {name: name for name in FIELDS},
    "openai_chat": {
        "request_id": "id",
        "ts": "created",
        "user_id": "user",
        "session_id": "session_id",
        "prompt": LAST_USER_MESSAGE,
        "response": ASSISTANT_REPLY,
        "model_version": "model",
        "latency_ms": "latency_ms",
        "prompt_tokens": "usage.prompt_tokens",
        "completion_tokens": "usage.completion_tokens",
        "feedback": "feedback",
        "correction": "correction",
        "metadata": "metadata",
    },
}

_KIND = {
    "request_id": "str",
    "ts": "ts",
    "user_id": "str",
    "session_id": "str",
    "prompt": "str",
    "response": "str",
    "model_version": "str",
    "latency_ms": "float",
    "prompt_tokens": "int",
    "completion_tokens": "int",
    "feedback": "feedback",
    "correction": "str",
    "metadata": "meta",
}
_EXPECTED = {
    "str": "a string",
    "ts": "an ISO-8601 time or epoch seconds/milliseconds",
    "float": "a number",
    "int": "an integer",
    "feedback": '1, -1, "up", "down" or null',
    "meta": "a JSON object",
}
_OUT_TYPE = {
    "str": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "float": "DOUBLE",
    "int": "BIGINT",
    "feedback": "TINYINT",
    "meta": "VARCHAR",
}

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_BOM = b"\xef\xbb\xbf"
_BATCH_ROWS = 65_536  # Arrow batches handed to DuckDB: its unit of parallel work
_EPOCH_MS_ABOVE = 2e10  # pydantic's rule: larger epoch numbers are milliseconds
_EPOCH_MAX = 2e13  # ... up to year 2603 either way; beyond that the number is not a time
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = re.compile(r"[*?\[]")
_NUMERIC_JSON = "('BIGINT', 'UBIGINT', 'DOUBLE')"
_INTERNAL = ("__file", "__line", "__nbytes", "__reason", "__message", "__raw")


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class LoadResult:
    """Validated logs plus the accounting of what was read.

    ``table`` has exactly ``contracts.LOG_SCHEMA`` (ts timezone-aware UTC), sorted by ts, and holds
    the accepted rows that pass the since/until/model_version filters.
    """

    table: pa.Table
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int]
    files: list[str]
    quarantine_path: Path | None
    warnings: list[str] = field(default_factory=list)

    @property
    def selected(self) -> int:
        """Rows in ``table``: accepted and inside the requested window / model version."""
        return self.table.num_rows

    @property
    def filtered_out(self) -> int:
        return self.accepted - self.table.num_rows

    def summary(self) -> dict[str, Any]:
        """The JSON object of ``flywheel logs validate --json``."""
        return {
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "reasons": dict(self.reasons),
            "selected": self.selected,
            "files": list(self.files),
            "quarantine": str(self.quarantine_path) if self.quarantine_path else None,
            "warnings": list(self.warnings),
        }


# --------------------------------------------------------------------------------------------
# Sources


def _logs(settings: Any) -> LogsSettings:
    if isinstance(settings, LogsSettings):
        return settings
    logs = getattr(settings, "logs", None)
    if isinstance(logs, LogsSettings):
        return logs
    raise TypeError(f"expected LogsSettings or Settings, got {type(settings).__name__}")


def default_quarantine(settings: Any, workspace: str | Path) -> Path:
    """``logs.quarantine`` resolved against the workspace (where it is relative)."""
    path = Path(_logs(settings).quarantine)
    return path if path.is_absolute() else Path(workspace) / path


def resolve_sources(
    sources: Sequence[str | Path] | None,
    settings: Any,
    workspace: str | Path,
    *,
    exclude: Iterable[str | Path] = (),
) -> list[str]:
    """Expand files, directories and globs into a sorted, de-duplicated list of log files.

    No sources: ``logs.sources`` from the config; none there either: ``<workspace>/logs``. A path
    that does not exist or a pattern that matches nothing is an error naming it. The configured
    quarantine file (and ``exclude``) is never picked up by a directory or a pattern.
    """
    logs = _logs(settings)
    items = [str(item) for item in (sources or [])] or [str(item) for item in logs.sources]
    if not items:
        default = Path(workspace) / "logs"
        if not default.is_dir():
            raise FileNotFoundError(
                f"no log sources given and {default} does not exist: pass log files or globs, "
                "set logs.sources in the config, or write logs there (e.g. flywheel simulate)"
            )
        items = [str(default)]
    skip = {_canonical(p) for p in [default_quarantine(logs, workspace), *exclude]}
    found: list[str] = []
    for item in items:
        matched = [path for path in _expand(item) if path == item or _canonical(path) not in skip]
        if not matched:
            raise FileNotFoundError(_nothing_matched(item))
        found.extend(matched)
    return list(dict.fromkeys(found))


def _canonical(path: str | Path) -> str:
    text = str(path)
    return text if _URL.match(text) else str(Path(text).resolve())


def _is_log_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(_JSONL_SUFFIXES + _PARQUET_SUFFIXES)


def _expand(item: str) -> list[str]:
    """Files named by one source entry ([] if it names nothing); an explicit file is kept as given."""
    if _URL.match(item) and not item.startswith("file://"):
        return _expand_remote(item)
    if item.startswith("file://"):
        item = item[len("file://") :]
    if _GLOB_CHARS.search(item):
        return sorted(path for path in _glob.glob(item, recursive=True) if Path(path).is_file())
    path = Path(item)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.is_file() and _is_log_name(p.name))
    if path.is_file():
        return [item]
    return []


def _expand_remote(url: str) -> list[str]:
    import fsspec  # optional: only object storage needs it

    fs, path = fsspec.core.url_to_fs(url)
    if _GLOB_CHARS.search(path):
        paths = [p for p in fs.glob(path) if fs.isfile(p)]
    elif fs.isdir(path):
        paths = [p for p in fs.find(path) if _is_log_name(p.rsplit("/", 1)[-1])]
    elif fs.exists(path):
        return [url]
    else:
        paths = []
    return sorted(fs.unstrip_protocol(p) for p in paths)


def _nothing_matched(item: str) -> str:
    if _GLOB_CHARS.search(item):
        return f"log source pattern {item!r} matches no files: check the folder and the pattern"
    if Path(item).is_dir():
        return (
            f"log folder {item} holds no .jsonl/.ndjson/.jsonl.gz/.parquet files: "
            "point at the files themselves or write logs there"
        )
    return f"log source {item} does not exist: check the path (relative paths start at the current directory)"


def _read_bytes(source: str) -> np.ndarray:
    """The whole file as a uint8 array; a local file is read into a fresh writable array (no
    zero-fill, no extra copy), so that lines with bad bytes can be blanked in place."""
    if _URL.match(source) and not source.startswith("file://"):
        import fsspec

        with fsspec.open(source, "rb") as handle:
            return np.frombuffer(handle.read(), dtype=np.uint8)
    with open(source.removeprefix("file://"), "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        buf = np.empty(size, dtype=np.uint8)
        got = handle.readinto(memoryview(buf)) if size else 0
        while got < size:  # readinto may return short counts
            more = handle.readinto(memoryview(buf)[got:])
            if not more:
                break
            got += more
        rest = handle.read()  # the file grew while we read it
    buf = buf[:got]
    return np.concatenate([buf, np.frombuffer(rest, dtype=np.uint8)]) if rest else buf


def _is_parquet(source: str) -> bool:
    lower = source.lower()
    if lower.endswith(_PARQUET_SUFFIXES):
        return True
    if lower.endswith(_JSONL_SUFFIXES + (".json",)):
        return False
    if _URL.match(source) and not source.startswith("file://"):
        import fsspec

        with fsspec.open(source, "rb") as handle:
            return handle.read(4) == b"PAR1"
    with open(source.removeprefix("file://"), "rb") as handle:
        return handle.read(4) == b"PAR1"


# --------------------------------------------------------------------------------------------
# Column mapping


def column_mapping(settings: Any) -> dict[str, str]:
    """LogRecord field -> source column (or dotted path, or a special source) for these settings."""
    logs = _logs(settings)
    unknown = sorted(set(logs.columns) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"logs.columns names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"LogRecord fields: keys must be one of {', '.join(FIELDS)} (values are your column names)"
        )
    mapping = dict(PRESETS[logs.preset])
    mapping.update(logs.columns)
    for name, source in mapping.items():
        _path_parts(name, source)  # raises on a malformed path
    return mapping


def _path_parts(name: str, source: str) -> list[str | int]:
    if source in _SPECIALS:
        return []
    parts: list[str | int] = []
    for piece in str(source).split("."):
        match = re.fullmatch(r'([^\[\]"]+)((?:\[\d+\])*)', piece)
        if not match:
            raise ValueError(
                f"logs.columns.{name} = {source!r} is not a column name or dotted path: write a column "
                "name, a path like usage.prompt_tokens or choices[0].message.content, or one of "
                + ", ".join(_SPECIALS)
            )
        parts.append(match.group(1))
        parts.extend(int(index) for index in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def _json_path(parts: Sequence[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f'."{p}"' for p in parts)


def _lit(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------
# SQL: one plan per LogRecord field, then the same validation levels for every source shape
#
#   A   the source rows (+ __early: too_large / not_json / not_object / blank, decided per line)
#   B1  JSON values that need more than one path lookup (openai prompt/response, Parquet nested)
#   B2  per field: its JSON type (__ty_*) and its text (__sv_*)
#   C   per field: the typed value (__v_*; only meaningful when the field has no error code, so that
#       big strings pass through without a CASE copying them), whether the key is there (__k_*)
#   D   per field: an error code (M missing, B bad timestamp, T wrong type) or NULL
#   E   the row's reason
#   F   output columns, message, raw text


@dataclass
class _Plan:
    name: str
    kind: str
    required: bool
    origin: str  # for messages: where the value comes from
    value: str  # level C expression: the typed value, NULL when absent or invalid
    code: str  # level D expression: 'M' / 'B' / 'T' / NULL (may use __v_<name>, __ty_<name>, __sv_<name>)
    type_name: str  # expression (levels D-F) naming what was found, for messages
    key_present: str | None = None  # level C: the key exists in the row (JSONL schema check)
    j_cols: dict[str, str] = field(default_factory=dict)  # level B1 columns
    ts_cols: dict[str, str] = field(default_factory=dict)  # level B2 columns
    passthrough: str | None = None  # a Parquet text column whose valid values are the output as is


def _json_plan(name: str, source: str, t_expr: str, s_expr: str, *, key_expr: str | None = None,
               j_cols: dict[str, str] | None = None) -> _Plan:
    """A field read from a JSON value whose type is `t_expr` and text `s_expr`."""
    kind = _KIND[name]
    ty, sv = f"__ty_{name}", f"__sv_{name}"
    return _Plan(
        name, kind, name in REQUIRED_LOG_FIELDS, _origin(source),
        value=_value_from_json(kind, ty, sv),
        code=_code_from_json(kind, ty, sv, f"__v_{name}", name in REQUIRED_LOG_FIELDS),
        type_name=_json_type_name(ty),
        key_present=key_expr or f"({ty} IS NOT NULL)",
        j_cols=j_cols or {},
        ts_cols={ty: t_expr, sv: s_expr},
    )


_MISSING = "'M'"
_BAD = {"ts": "'B'", "str": "'T'", "float": "'T'", "int": "'T'", "feedback": "'T'", "meta": "'T'"}


def _value_from_json(kind: str, t: str, s: str) -> str:
    """Typed value of a JSON value whose json_type is `t` and text `s`. Text is taken as it is: the
    field's error code (below) rejects the row when the type is wrong, and a CASE here would copy
    every prompt and response once more."""
    if kind in ("str", "meta"):
        return s
    if kind == "ts":
        return (
            f"CASE WHEN {t} = 'VARCHAR' THEN {_ts_from_text(s)} "
            f"WHEN {t} IN {_NUMERIC_JSON} THEN {_ts_from_epoch(f'TRY_CAST({s} AS DOUBLE)')} END"
        )
    if kind == "float":
        return f"TRY_CAST({s} AS DOUBLE)"
    if kind == "int":
        return (
            f"CASE WHEN {t} IN ('BIGINT', 'UBIGINT') THEN TRY_CAST({s} AS BIGINT) "
            f"WHEN {t} = 'DOUBLE' THEN {_integral(f'TRY_CAST({s} AS DOUBLE)')} END"
        )
    if kind == "feedback":
        return (
            f"CASE WHEN {t} IN {_NUMERIC_JSON} THEN {_feedback_number(f'TRY_CAST({s} AS DOUBLE)')} "
            f"WHEN {t} = 'VARCHAR' THEN {_feedback_text(s)} END"
        )
    raise AssertionError(kind)


def _code_from_json(kind: str, t: str, s: str, v: str, required: bool) -> str:
    """Error code of a JSON field: M (absent or null, and required), B (bad timestamp), T (wrong type)."""
    absent = f"WHEN {t} IS NULL OR {t} = 'NULL' THEN {_MISSING if required else 'NULL'}"
    if kind == "str":
        return f"CASE {absent} WHEN {t} <> 'VARCHAR' THEN 'T' END"
    if kind == "float":
        return f"CASE {absent} WHEN {t} NOT IN {_NUMERIC_JSON} THEN 'T' END"
    if kind == "meta":  # an object, or a string holding one
        return (
            f"CASE {absent} WHEN {t} = 'OBJECT' THEN NULL "
            f"WHEN {t} = 'VARCHAR' THEN CASE WHEN {_object_text(s)} IS NULL THEN 'T' END ELSE 'T' END"
        )
    return f"CASE {absent} WHEN {v} IS NULL THEN {_BAD[kind]} END"


_INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}


def _duck_family(duck_type: str) -> str:
    upper = duck_type.upper()
    if upper in ("VARCHAR", "JSON") or upper.startswith("ENUM"):
        return "text"
    if upper in _INTEGER_TYPES:
        return "int"
    if upper in ("FLOAT", "DOUBLE") or upper.startswith("DECIMAL"):
        return "float"
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return "time"
    if upper.startswith(("STRUCT", "MAP")):
        return "object"
    return "other"


def _value_from_column(kind: str, col: str, duck_type: str) -> str:
    """Typed value from a flat Parquet column of DuckDB type `duck_type` (same rules as JSON)."""
    family = _duck_family(duck_type)
    text = f"CAST({col} AS VARCHAR)"
    if kind == "str":
        return text if family == "text" else "NULL"
    if kind == "ts":
        if family == "time":
            return f"CASE WHEN isfinite({col}) THEN CAST({col} AS TIMESTAMPTZ) END"
        if family == "text":
            return _ts_from_text(text)
        if family in ("int", "float"):
            return _ts_from_epoch(f"TRY_CAST({col} AS DOUBLE)")
        return "NULL"
    if kind == "float":
        return f"CAST({col} AS DOUBLE)" if family in ("int", "float") else "NULL"
    if kind == "int":
        if family == "int":
            return f"TRY_CAST({col} AS BIGINT)"
        return _integral(f"CAST({col} AS DOUBLE)") if family == "float" else "NULL"
    if kind == "feedback":
        if family in ("int", "float"):
            return _feedback_number(f"CAST({col} AS DOUBLE)")
        return _feedback_text(text) if family == "text" else "NULL"
    if kind == "meta":
        if family == "text":
            return _object_text(text)
        return f"CAST(to_json({col}) AS VARCHAR)" if family == "object" else "NULL"
    raise AssertionError(kind)


def _ts_from_text(s: str) -> str:
    # A leading digit keeps DuckDB's special words ('epoch', 'infinity', 'now'...) out.
    return f"CASE WHEN left({s}, 1) BETWEEN '0' AND '9' THEN TRY_CAST({s} AS TIMESTAMPTZ) END"


def _ts_from_epoch(x: str) -> str:
    return (
        f"CAST(CASE WHEN abs({x}) < {_EPOCH_MS_ABOVE} THEN make_timestamp(CAST(round({x} * 1e6) AS BIGINT)) "
        f"WHEN abs({x}) < {_EPOCH_MAX} THEN make_timestamp(CAST(round({x} * 1e3) AS BIGINT)) END AS TIMESTAMPTZ)"
    )


def _integral(x: str) -> str:
    return f"CASE WHEN {x} = trunc({x}) AND abs({x}) < 9.2e18 THEN CAST({x} AS BIGINT) END"


def _feedback_number(x: str) -> str:
    return f"CASE WHEN {x} = 1 THEN 1 WHEN {x} = -1 THEN -1 END"


def _feedback_text(s: str) -> str:
    return f"CASE lower(trim({s})) WHEN 'up' THEN 1 WHEN 'down' THEN -1 WHEN '1' THEN 1 WHEN '-1' THEN -1 END"


def _object_text(s: str) -> str:
    return f"CASE WHEN json_valid({s}) THEN CASE WHEN json_type({s}) = 'OBJECT' THEN {s} END END"


def _json_type_name(t: str) -> str:
    return (
        f"CASE {t} WHEN 'VARCHAR' THEN 'a string' WHEN 'BIGINT' THEN 'a number' WHEN 'UBIGINT' THEN 'a number' "
        f"WHEN 'DOUBLE' THEN 'a number' WHEN 'BOOLEAN' THEN 'a boolean' WHEN 'ARRAY' THEN 'an array' "
        f"WHEN 'OBJECT' THEN 'an object' ELSE 'nothing usable' END"
    )


def _special_json(source: str, get: Any) -> str:
    """JSON-valued SQL for the openai_chat prompt/response. `get(key)` gives a top-level value as
    JSON, or None when the source has no such column (then that branch is left out)."""
    messages = get("messages")
    if source == LAST_USER_MESSAGE:
        if messages is None:
            return "NULL::JSON"
        last_user = (
            f"list_filter(json_extract({messages}, '$[*]'), lambda m: json_extract_string(m, '$.role') = 'user')[-1]"
        )
        return f"__content(json_extract({last_user}, '$.content'))"
    choices, response = get("choices"), get("response")
    branches = []
    if choices is not None:
        branches.append(f"__content(json_extract({choices}, '$[0].message.content'))")
    if response is not None:
        branches.append(
            f"CASE json_type({response}) WHEN 'VARCHAR' THEN {response} "
            f"WHEN 'OBJECT' THEN __content(json_extract({response}, '$.choices[0].message.content')) END"
        )
    if messages is not None:
        branches.append(
            f"CASE WHEN json_extract_string({messages}, '$[#-1].role') = 'assistant' "
            f"THEN __content(json_extract({messages}, '$[#-1].content')) END"
        )
    return f"COALESCE({', '.join(branches)})" if branches else "NULL::JSON"


_MACROS = [
    # A message content: a string, or a list of parts whose text parts are joined with newlines.
    "CREATE OR REPLACE TEMP MACRO __content(c) AS CASE WHEN json_type(c) = 'ARRAY' THEN "
    "to_json(NULLIF(array_to_string(list_transform(list_filter(json_extract(c, '$[*]'), "
    "lambda p: json_extract_string(p, '$.type') = 'text'), lambda p: json_extract_string(p, '$.text')), "
    "chr(10)), '')) ELSE c END",
]


def _origin(source: str) -> str:
    if source == LAST_USER_MESSAGE:
        return "the last user message in messages"
    if source == ASSISTANT_REPLY:
        return "choices[0].message.content, response or a final assistant message"
    return f"column {source!r}"


def _line_plans(mapping: dict[str, str]) -> tuple[list[_Plan], list[str]]:
    """Plans for JSON text lines (column `line`): the plain paths are read in one pass into the
    __t / __s lists; also returns those paths."""
    plans, paths = [], []
    for name, source in mapping.items():
        if source in _SPECIALS:
            j = f"__j_{name}"
            expr = _special_json(source, lambda key: f"json_extract(line, {_lit(_json_path([key]))})")
            plans.append(
                _json_plan(name, source, f"json_type({j})", f"json_extract_string({j}, '$')",
                           key_expr=f"({j} IS NOT NULL)", j_cols={j: f"CASE WHEN __early IS NULL THEN {expr} END"})
            )
            continue
        paths.append(_json_path(_path_parts(name, source)))
        plans.append(_json_plan(name, source, f"__t[{len(paths)}]", f"__s[{len(paths)}]"))
    return plans, paths


def _parquet_plans(
    mapping: dict[str, str], schema: dict[str, str], explicit: set[str], source_file: str
) -> list[_Plan]:
    """Plans for a Parquet file whose DuckDB column types are `schema`."""
    plans = []
    lower = {name.lower(): name for name in schema}

    def column(key: str) -> str | None:
        return key if key in schema else lower.get(key.lower())

    def get(key: str) -> str | None:
        col = column(key)
        return f"to_json({_ident(col)})" if col else None

    for name, source in mapping.items():
        kind, required = _KIND[name], name in REQUIRED_LOG_FIELDS
        j = f"__j_{name}"
        if source in _SPECIALS:
            expr = _special_json(source, get)
            plans.append(
                _json_plan(name, source, f"json_type({j})", f"json_extract_string({j}, '$')",
                           j_cols={j: f"CASE WHEN __early IS NULL THEN {expr} END"})
            )
            continue
        flat = column(source)
        if flat is not None:  # a plain column (a name with dots that exists as such wins over a path)
            quoted, duck_type = _ident(flat), schema[flat]
            as_is = kind in ("str", "meta") and duck_type.upper() == "VARCHAR"
            plans.append(
                _Plan(
                    name, kind, required, _origin(source),
                    value=_value_from_column(kind, quoted, duck_type),
                    code=f"CASE WHEN {quoted} IS NULL THEN {_MISSING if required else 'NULL'} "
                    f"WHEN __v_{name} IS NULL THEN {_BAD[kind]} END",
                    type_name=_lit(f"a {duck_type} value"),
                    passthrough=flat if as_is else None,
                )
            )
            continue
        parts = _path_parts(name, source)
        top = column(str(parts[0]))
        if top is None or len(parts) == 1:
            if name in explicit or required:
                raise ValueError(_missing_column_message(source_file, name, source, list(schema)))
            plans.append(
                _Plan(name, kind, required, _origin(source), value="NULL", code="NULL", type_name="'nothing'")
            )
            continue
        expr = f"json_extract(to_json({_ident(top)}), {_lit(_json_path(parts[1:]))})"
        plans.append(
            _json_plan(name, source, f"json_type({j})", f"json_extract_string({j}, '$')",
                       j_cols={j: f"CASE WHEN __early IS NULL THEN {expr} END"})
        )
    return plans


def _missing_column_message(source_file: str, name: str, source: str, available: list[str]) -> str:
    shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
    return (
        f"{source_file}: the mapping reads LogRecord field {name!r} from column {source!r}, which this file "
        f"does not have (columns: {shown}). Fix: set logs.columns.{name} to the column that holds it, "
        "or choose the right logs.preset (flywheel or openai_chat)"
    )


def _validation_sql(
    level_a: str, plans: list[_Plan], *, raw_sql: str, max_bytes: int, keys: Iterable[str] = ()
) -> str:
    """Levels B1-F over `level_a`, which provides __file, __line, __nbytes, __early, __what.
    `keys`: fields that get a __k_<field> output column (does the row have the key at all)."""
    keys = set(keys)

    def cols(items: Iterable[tuple[str, str]]) -> str:
        return "".join(f", {expr} AS {_ident(name)}" for name, expr in items)

    level_b1 = f"SELECT *{cols((k, v) for p in plans for k, v in p.j_cols.items())} FROM ({level_a})"
    level_b2 = f"SELECT *{cols((k, v) for p in plans for k, v in p.ts_cols.items())} FROM ({level_b1})"
    level_c = (
        f"SELECT *{cols((f'__v_{p.name}', p.value) for p in plans)}"
        f"{cols((f'__k_{p.name}', p.key_present) for p in plans if p.name in keys and p.key_present)} FROM ({level_b2})"
    )

    level_d = f"SELECT *{cols((f'__e_{p.name}', p.code) for p in plans)} FROM ({level_c})"
    codes = "concat(" + ", ".join(f"__e_{plan.name}" for plan in plans) + ")"
    level_e = (
        "SELECT *, CASE WHEN __early IS NOT NULL THEN __early "
        f"WHEN {codes} = '' THEN NULL WHEN contains({codes}, 'M') THEN 'missing_field' "
        f"WHEN contains({codes}, 'B') THEN 'bad_timestamp' ELSE 'wrong_type' END AS __reason "
        f"FROM ({level_d})"
    )

    def field_message(plan: _Plan) -> str:
        missing = _lit(f"missing required field {plan.name} (from {plan.origin})")
        wrong = _lit(f"{plan.name}: expected {_EXPECTED[plan.kind]}, got ")
        code = f"__e_{plan.name}"
        return f"CASE WHEN {code} = 'M' THEN {missing} WHEN {code} IS NOT NULL THEN {wrong} || {plan.type_name} END"

    field_messages = "concat_ws('; ', " + ", ".join(field_message(plan) for plan in plans) + ")"
    message = (
        "CASE __reason WHEN 'blank' THEN NULL "
        f"WHEN 'too_large' THEN 'record is ' || __nbytes || ' bytes, over logs.max_record_bytes = {max_bytes}' "
        "WHEN 'not_json' THEN 'not valid JSON' "
        "WHEN 'not_object' THEN 'valid JSON but ' || __what || ', not an object' "
        f"ELSE {field_messages} END"
    )
    outputs = ", ".join(
        (f"COALESCE(__v_{plan.name}, '{{}}')" if plan.kind == "meta" else f"__v_{plan.name}")
        + f"::{_OUT_TYPE[plan.kind]} AS {_ident(plan.name)}"
        for plan in plans
        if not plan.passthrough  # taken from the source table afterwards, without a copy
    )
    key_cols = "".join(f", __k_{plan.name}" for plan in plans if plan.name in keys and plan.key_present)
    return (
        f"SELECT {outputs}, __file::INTEGER AS __file, __line::BIGINT AS __line, __nbytes::BIGINT AS __nbytes, "
        f"__reason, CASE WHEN __reason IS NOT NULL THEN {message} END AS __message, "
        f"CASE WHEN __reason IS NOT NULL AND __reason <> 'blank' THEN {raw_sql} END::VARCHAR AS __raw{key_cols} "
        f"FROM ({level_e})"
    )


def _lines_sql(
    plans: list[_Plan], paths: list[str], max_bytes: int, raw_chars: int, trust_braces: bool, keys: Iterable[str] = ()
) -> str:
    """Validation of JSON text lines (table `lines`: __file, __line, __nbytes, __braced, line).

    With `trust_braces`, a line that starts with '{' and ends with '}' is not checked with
    json_valid first (saving a parse); if one is not JSON after all, extracting from it raises."""
    path_list = "[" + ", ".join(_lit(p) for p in paths) + "]"
    whitespace = "' ' || chr(9) || chr(10) || chr(13)"
    level_a = (
        "SELECT __file, __line, __nbytes, line, "
        f"CASE WHEN __nbytes > {max_bytes} THEN 'too_large' "
        + ("WHEN __braced THEN NULL " if trust_braces else "")
        + f"WHEN NOT json_valid(line) THEN CASE WHEN trim(line, {whitespace}) = '' THEN 'blank' ELSE 'not_json' END "
        # starts_with('{') settles the common case without parsing the line a second time.
        "WHEN starts_with(line, '{') THEN NULL WHEN json_type(line) <> 'OBJECT' THEN 'not_object' END AS __early "
        "FROM lines"
    )
    level_a = (
        f"SELECT *, CASE WHEN __early IS NULL THEN json_type(line, {path_list}) END AS __t, "
        f"CASE WHEN __early IS NULL THEN json_extract_string(line, {path_list}) END AS __s, "
        f"CASE WHEN __early = 'not_object' THEN lower(json_type(line)) END AS __what FROM ({level_a})"
    )
    raw = f"left(rtrim(line, chr(10) || chr(13)), {raw_chars})"
    return _validation_sql(level_a, plans, raw_sql=raw, max_bytes=max_bytes, keys=keys)


def _parquet_sql(plans: list[_Plan], schema: dict[str, str], max_bytes: int) -> str:
    """Validation of a Parquet file registered as `src` (plus __file, __line)."""
    sizes = []
    for name, duck_type in schema.items():
        family = _duck_family(duck_type)
        if family == "text":
            sizes.append(f"COALESCE(strlen(CAST({_ident(name)} AS VARCHAR)), 0)")
        elif duck_type.upper() == "BLOB":
            sizes.append(f"COALESCE(octet_length({_ident(name)}), 0)")
        elif family in ("object", "other"):
            sizes.append(f"COALESCE(strlen(CAST(to_json({_ident(name)}) AS VARCHAR)), 0)")
        else:
            sizes.append("8")
    size = " + ".join(sizes) or "0"
    level_a = (
        f"SELECT *, CASE WHEN __nbytes > {max_bytes} THEN 'too_large' END AS __early, NULL::VARCHAR AS __what "
        f"FROM (SELECT *, ({size})::BIGINT AS __nbytes FROM src)"
    )
    return _validation_sql(level_a, plans, raw_sql="NULL", max_bytes=max_bytes)


# --------------------------------------------------------------------------------------------
# Loading

_TRUST_BRACES = True  # tests switch this off to check that both ways of classifying lines agree


_CONNECTIONS = threading.local()


def _connect() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB connection (UTC, macros loaded): opening one costs more than
    loading a small file. A forked child opens its own."""
    cached = getattr(_CONNECTIONS, "value", None)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    for macro in _MACROS:
        con.execute(macro)
    _CONNECTIONS.value = (os.getpid(), con)
    return con


def _split_lines(buf: np.ndarray, block: int = 1 << 20) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Lines of a JSONL file (a uint8 array) as a zero-copy Arrow large_binary array (each keeps
    its line break), their sizes without the line break, and whether each looks like an object:
    starts with '{' and ends with '}' (a cheap hint; DuckDB still parses every line)."""
    start = len(_BOM) if bytes(buf[:3]) == _BOM else 0
    # Newline positions block by block: cache-sized blocks are faster than one file-sized mask.
    ends = np.concatenate(
        [np.flatnonzero(buf[at : at + block] == 10) + at for at in range(0, len(buf), block)] or [np.empty(0, np.int64)]
    ).astype(np.int64)
    if len(buf) > (int(ends[-1]) + 1 if len(ends) else start):
        ends = np.append(ends, len(buf))  # a last line without a newline
    count = len(ends)
    offsets = np.empty(count + 1, dtype=np.int64)
    offsets[0] = start
    offsets[1:] = np.minimum(ends + 1, len(buf))
    starts = offsets[:-1]
    sizes = ends - starts
    braced = np.zeros(count, dtype=bool)
    if count:
        sizes = sizes - ((sizes > 0) & (buf[np.maximum(ends - 1, 0)] == 13))  # CRLF
        nonempty = np.flatnonzero(sizes > 0)
        first, last = buf[starts[nonempty]], buf[starts[nonempty] + sizes[nonempty] - 1]
        braced[nonempty] = (first == ord("{")) & (last == ord("}"))
    lines = pa.Array.from_buffers(pa.large_binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(buf)])
    return lines, sizes.astype(np.int64), braced


def _bad_utf8_rows(array: pa.Array, block: int = 1024) -> list[int]:
    """Positions of the values of `array` (text, or anything holding text) that are not UTF-8:
    Arrow validates blocks of values once, then halves of each bad block until the bad values are
    cornered, so a big input with a few bad values costs a few checks per bad value."""

    def bad(begin: int, length: int) -> bool:
        try:
            array.slice(begin, length).validate(full=True)
            return False
        except pa.ArrowInvalid:
            return True

    def search(begin: int, length: int) -> list[int]:
        if length == 1:
            return [begin]
        half = length // 2
        return [row for b, n in ((begin, half), (begin + half, length - half)) if bad(b, n) for row in search(b, n)]

    found = []
    for begin in range(0, len(array), block):
        length = min(block, len(array) - begin)
        if bad(begin, length):
            found.extend(search(begin, length))
    return found


def _batches(table: pa.Table) -> pa.Table:
    """Re-chunk so that DuckDB can spread the scan over its threads."""
    if table.num_rows <= _BATCH_ROWS:
        return table
    return pa.Table.from_batches(
        [b for at in range(0, table.num_rows, _BATCH_ROWS) for b in table.slice(at, _BATCH_ROWS).to_batches()],
        schema=table.schema,
    )


@dataclass
class _Quarantined:
    file: int
    line: int
    reason: str
    message: str
    nbytes: int
    raw: str


def _decode_raw(value: bytes | None, chars: int) -> str:
    if not value or chars == 0:
        return ""
    return value[: chars * 4].decode("utf-8", errors="backslashreplace")[:chars]


def _is_remote(source: str) -> bool:
    return bool(_URL.match(source)) and not source.startswith("file://")


def _jsonl_lines(index: int, source: str, logs: LogsSettings, extra: list[_Quarantined]) -> pa.Table:
    """One JSONL file as a table of lines (__file, __line, __nbytes, __braced, line). Lines that are
    not UTF-8 go straight to `extra` and are blanked in the buffer: Arrow checks the whole file at
    once, and only a file that fails is searched (by halves) for its bad lines."""
    buf = _read_bytes(source)
    if len(buf) >= 2 and buf[0] == 0x1F and buf[1] == 0x8B:
        buf = np.frombuffer(gzip.decompress(buf.tobytes()), dtype=np.uint8)
    lines, sizes, braced = _split_lines(buf)
    try:
        lines.view(pa.large_string()).validate(full=True)
    except pa.ArrowInvalid:
        if not buf.flags.writeable:
            buf = buf.copy()
            lines = pa.Array.from_buffers(pa.large_binary(), len(lines), [None, lines.buffers()[1], pa.py_buffer(buf)])
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1)
        for row in _bad_utf8_rows(lines.view(pa.large_string())):
            start, size = int(offsets[row]), int(sizes[row])
            raw = _decode_raw(buf[start : start + size].tobytes(), logs.quarantine_raw_chars)
            extra.append(_Quarantined(index, row + 1, "invalid_utf8", "the line is not valid UTF-8 text", size, raw))
            buf[start : start + size] = 32  # now a blank line: skipped by the query, counted here
            braced[row] = False
    return pa.table(
        {
            "__file": pa.array(np.full(len(lines), index, dtype=np.int32)),
            "__line": pa.array(np.arange(1, len(lines) + 1, dtype=np.int64)),
            "__nbytes": pa.array(sizes),
            "__braced": pa.array(braced),
            "line": lines.view(pa.large_string()),
        }
    )


def _load_jsonl(
    con: duckdb.DuckDBPyConnection,
    files: list[tuple[int, str]],
    logs: LogsSettings,
    mapping: dict[str, str],
    extra: list[_Quarantined],
    warnings: list[str],
) -> pa.Table:
    """All JSONL files in one DuckDB query over their lines."""
    lines = _batches(pa.concat_tables([_jsonl_lines(index, source, logs, extra) for index, source in files]))
    plans, paths = _line_plans(mapping)
    con.register("lines", lines)
    try:
        def run(trust: bool) -> pa.Table:
            sql = _lines_sql(plans, paths, logs.max_record_bytes, logs.quarantine_raw_chars, trust, logs.columns)
            return con.sql(sql).to_arrow_table()

        result = None
        if _TRUST_BRACES:
            # Lines shaped like objects skip the separate validity check; one that is not valid JSON
            # after all makes DuckDB raise, and the careful query runs instead.
            try:
                result = run(True)
            except duckdb.Error:
                result = None
        if result is None:
            result = run(False)
    finally:
        con.unregister("lines")
    _check_keys(result, mapping, logs, dict(files), warnings)
    return result.drop_columns([name for name in result.column_names if name.startswith("__k_")])


def _check_keys(
    result: pa.Table, mapping: dict[str, str], logs: LogsSettings, names: dict[int, str], warnings: list[str]
) -> None:
    """A column named in logs.columns must be in some row of each file (else: ValueError). A file
    whose every row misses a required field gets a warning: the preset probably does not fit it."""
    if result.num_rows == 0:
        return
    files = result["__file"].to_numpy()
    reasons = result["__reason"]
    field_level = pc.fill_null(pc.is_in(reasons, pa.array(["missing_field", "bad_timestamp", "wrong_type"])), False)
    objects = pc.or_(pc.is_null(reasons), field_level).to_numpy(zero_copy_only=False)
    missing = pc.fill_null(pc.equal(reasons, "missing_field"), False).to_numpy(zero_copy_only=False)
    size = int(files.max()) + 1
    per_file_objects = np.bincount(files, weights=objects, minlength=size)
    per_file_missing = np.bincount(files, weights=missing, minlength=size)
    for name in logs.columns:
        column = f"__k_{name}"
        if column not in result.column_names:
            continue
        has_key = pc.fill_null(result[column], False).to_numpy(zero_copy_only=False) & objects
        per_file_keys = np.bincount(files, weights=has_key, minlength=size)
        for index in np.flatnonzero((per_file_objects > 0) & (per_file_keys == 0)):
            raise ValueError(
                f"{names[int(index)]}: logs.columns.{name} = {mapping[name]!r}, but no row of this file has it. "
                f"Fix: set logs.columns.{name} to a column the file has, or remove the override"
            )
    for index in np.flatnonzero((per_file_objects > 0) & (per_file_missing == per_file_objects)):
        in_file = pc.and_(pc.equal(result["__file"], int(index)), pc.equal(reasons, "missing_field"))
        first = pc.index(in_file, True).as_py()
        warnings.append(
            f"{names[int(index)]}: every row misses a required field ({result['__message'][first].as_py()}); "
            f"check logs.preset ({logs.preset}) and logs.columns"
        )


def _read_parquet(index: int, source: str, logs: LogsSettings, extra: list[_Quarantined]) -> pa.Table:
    """One Parquet file with __file and __line (1-based row) columns; rows holding text that is not
    UTF-8 go to `extra` (Arrow checks the whole table at once; only a failing file is searched)."""
    if _is_remote(source):
        import fsspec

        with fsspec.open(source, "rb") as handle:
            table = pq.read_table(handle)
    else:
        table = pq.read_table(source.removeprefix("file://"))
    table = table.replace_schema_metadata(None)
    line_numbers = np.arange(1, table.num_rows + 1, dtype=np.int64)
    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        table, line_numbers = _drop_bad_utf8(table, line_numbers, index, logs, extra)
    table = table.append_column("__file", pa.array(np.full(table.num_rows, index, dtype=np.int32)))
    return table.append_column("__line", pa.array(line_numbers))


def _load_parquet(
    con: duckdb.DuckDBPyConnection,
    files: list[tuple[int, str]],
    logs: LogsSettings,
    mapping: dict[str, str],
    extra: list[_Quarantined],
    raws: list[pa.Table],
) -> list[pa.Table]:
    """Parquet files, one DuckDB query per distinct schema (daily parts of one writer: one query)."""
    groups: list[tuple[pa.Schema, list[str], list[pa.Table]]] = []
    for index, source in files:
        table = _read_parquet(index, source, logs, extra)
        for schema, names, tables in groups:
            if schema.equals(table.schema):
                names.append(source)
                tables.append(table)
                break
        else:
            groups.append((table.schema, [source], [table]))
    return [_validate_parquet(con, pa.concat_tables(tables), names, logs, mapping, raws) for _, names, tables in groups]


def _validate_parquet(
    con: duckdb.DuckDBPyConnection,
    table: pa.Table,
    names: list[str],
    logs: LogsSettings,
    mapping: dict[str, str],
    raws: list[pa.Table],
) -> pa.Table:
    label = names[0] if len(names) == 1 else f"{names[0]} (and {len(names) - 1} more files with the same columns)"
    schema_names = [name for name in table.column_names if name not in ("__file", "__line")]
    con.register("src", _batches(table))
    try:
        probe = con.sql("SELECT * FROM src LIMIT 0")
        schema = {name: str(kind) for name, kind in zip(probe.columns, probe.types) if name in schema_names}
        plans = _parquet_plans(mapping, schema, set(logs.columns), label)
        result = con.sql(_parquet_sql(plans, schema, logs.max_record_bytes)).to_arrow_table()
        # Text columns that are valid as they stand are not copied through DuckDB: rows come back
        # in scan order (checked), so the source columns line up with the result.
        same_order = np.array_equal(result["__line"].to_numpy(), table["__line"].to_numpy()) and np.array_equal(
            result["__file"].to_numpy(), table["__file"].to_numpy()
        )
        if not same_order:
            raise AssertionError(f"{label}: DuckDB returned the rows out of order")
        for plan in plans:
            if plan.passthrough:
                column = table[plan.passthrough].cast(pa.string())
                if plan.kind == "meta":  # null metadata reads as {}
                    column = pc.fill_null(column, "{}")
                result = result.append_column(plan.name, column)
        result = result.select([*FIELDS, *[name for name in result.column_names if name not in FIELDS]])
        rejected = pc.fill_null(pc.not_equal(result["__reason"], "blank"), False)
        if pc.any(rejected).as_py() and logs.quarantine_raw_chars:
            # The raw text of rejected rows, rendered as JSON for those rows only.
            con.register("rejected", result.select(["__file", "__line"]).filter(rejected))
            columns = ", ".join(f"{_ident(name)} := {_ident(name)}" for name in schema)
            raws.append(
                con.sql(
                    f"SELECT __file, __line, left(CAST(to_json(struct_pack({columns})) AS VARCHAR), "
                    f"{logs.quarantine_raw_chars}) AS raw FROM src "
                    "SEMI JOIN rejected ON src.__file = rejected.__file AND src.__line = rejected.__line"
                ).to_arrow_table()
            )
            con.unregister("rejected")
    finally:
        con.unregister("src")
    return result


def _drop_bad_utf8(
    table: pa.Table, line_numbers: np.ndarray, index: int, logs: LogsSettings, extra: list[_Quarantined]
) -> tuple[pa.Table, np.ndarray]:
    bad: set[int] = set()
    for column in table.columns:
        bad.update(_bad_utf8_rows(column.combine_chunks()))  # text nested in lists/structs too
    for row in sorted(bad):
        values: dict[str, Any] = {}
        for name, column in zip(table.column_names, table.columns):
            value = column[row]
            if pa.types.is_string(value.type) or pa.types.is_large_string(value.type):
                raw = value.cast(pa.large_binary()).as_py()
                values[name] = None if raw is None else raw.decode("utf-8", errors="backslashreplace")
            else:
                try:
                    values[name] = value.as_py()
                except Exception:  # noqa: BLE001 (an unreadable nested value)
                    values[name] = "<not valid UTF-8>"
        text = json.dumps(values, ensure_ascii=False, default=str)
        extra.append(_Quarantined(index, int(line_numbers[row]), "invalid_utf8", "a text value is not valid UTF-8",
                                  len(text.encode("utf-8", errors="replace")), text[: logs.quarantine_raw_chars]))
    keep = np.ones(table.num_rows, dtype=bool)
    keep[sorted(bad)] = False
    return table.filter(pa.array(keep)), line_numbers[keep]


def load_logs(
    sources: Sequence[str | Path],
    settings: Any,
    *,
    quarantine: Path | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    model_version: str | None = None,
) -> LoadResult:
    """Read, map and validate logs; quarantine bad rows; return the accepted rows in the window.

    `sources` are files (a folder or a glob is expanded too; `resolve_sources` adds the config and
    workspace defaults). `settings` is the `logs` section (or the whole Settings). Rejected rows go
    to `quarantine` (rewritten) when a path is given. The window is [since, until); naive times are
    UTC. File-level problems (a missing file, a mapped column a file lacks) raise; row-level ones never do.
    """
    logs = _logs(settings)
    mapping = column_mapping(logs)
    skip = {_canonical(quarantine)} if quarantine is not None else set()
    files: list[str] = []
    for source in sources:
        text = str(source)
        # A folder or a pattern never picks up the quarantine file this call is about to write.
        expanded = [path for path in _expand(text) if path == text or _canonical(path) not in skip]
        if not expanded:
            raise FileNotFoundError(_nothing_matched(text))
        files.extend(expanded)
    files = list(dict.fromkeys(files))
    if not files:
        raise ValueError("load_logs needs at least one log file: pass files, folders or globs")
    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise ValueError(f"empty time window: since {start.isoformat()} is not before until {end.isoformat()}")

    con = _connect()
    try:
        extra: list[_Quarantined] = []
        warnings: list[str] = []
        raws: list[pa.Table] = []
        parquet = {index for index, name in enumerate(files) if _is_parquet(name)}
        jsonl = [(index, name) for index, name in enumerate(files) if index not in parquet]
        parts = [_load_jsonl(con, jsonl, logs, mapping, extra, warnings)] if jsonl else []
        if parquet:
            for part in _load_parquet(con, [(i, files[i]) for i in sorted(parquet)], logs, mapping, extra, raws):
                _check_keys(part, mapping, logs, dict(enumerate(files)), warnings)
                parts.append(part)
        combined = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]
        del parts

        counts = Counter(
            {item["values"]: item["counts"] for item in pc.value_counts(combined["__reason"]).to_pylist()
             if item["values"] is not None}
        )
        counts.update(item.reason for item in extra)
        blank = counts.pop("blank", 0)
        quarantined = sum(counts.values())
        read = combined.num_rows - blank + len(extra)
        reasons = {reason: counts[reason] for reason in REASONS if counts.get(reason)}

        con.register("res", combined)
        written = _write_quarantine(con, Path(quarantine), files, extra, raws) if quarantine is not None else None
        table = _select(combined, quarantined + blank > 0, start, end, model_version)
    finally:
        for name in ("res", "lines", "src"):
            try:
                con.unregister(name)
            except duckdb.Error:
                pass
    return LoadResult(
        table=table,
        read=read,
        accepted=read - quarantined,
        quarantined=quarantined,
        reasons=reasons,
        files=files,
        quarantine_path=written,
        warnings=warnings,
    )


def load_window(
    settings: Any,
    sources: Sequence[str | Path] | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    *,
    quarantine: Path | str | bool | None = True,
    model_version: str | None = None,
) -> LoadResult:
    """`resolve_sources` + `load_logs` with the settings' defaults, for the CLI and the flows.

    `settings` is the whole Settings (for the workspace). `quarantine`: True writes the configured
    ``logs.quarantine`` under the workspace, a path writes there, None/False writes none.
    """
    workspace = settings.workspace
    files = resolve_sources([str(s) for s in sources] if sources else None, settings.logs, workspace)
    if quarantine is True:
        target: Path | None = default_quarantine(settings.logs, workspace)
    elif quarantine:
        target = Path(quarantine)
    else:
        target = None
    return load_logs(files, settings.logs, quarantine=target, since=since, until=until, model_version=model_version)


def _select(
    combined: pa.Table,
    rejected: bool,
    start: datetime | None,
    end: datetime | None,
    model_version: str | None,
) -> pa.Table:
    """Accepted rows in the window, sorted by ts (then source order). Rows are not copied when
    nothing moves: kept runs of rows are zero-copy slices."""
    ts = combined["ts"]
    masks = [pc.is_null(combined["__reason"])] if rejected else []
    if start is not None:
        masks.append(pc.greater_equal(ts, pa.scalar(start, type=ts.type)))
    if end is not None:
        masks.append(pc.less(ts, pa.scalar(end, type=ts.type)))
    if model_version is not None:
        masks.append(pc.equal(combined["model_version"], pa.scalar(model_version, pa.string())))
    table = combined.select([*FIELDS, "__file", "__line"])
    if masks:
        mask = masks[0]
        for more in masks[1:]:
            mask = pc.and_kleene(mask, more)
        keep = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        edges = np.flatnonzero(np.diff(np.concatenate([[False], keep, [False]]).astype(np.int8)))
        runs = edges.reshape(-1, 2)  # [start, stop) of each kept run
        if len(runs) <= 4096:
            table = pa.concat_tables([table.slice(a, b - a) for a, b in runs]) if len(runs) else table.slice(0, 0)
        else:
            table = table.filter(pa.array(keep))
    values = table["ts"].cast(pa.int64()).to_numpy() if table.num_rows else np.empty(0, np.int64)
    if not bool(np.all(values[1:] >= values[:-1])):  # logs usually arrive in order: then no sort
        keys = [("ts", "ascending"), ("__file", "ascending"), ("__line", "ascending")]
        order = pc.sort_indices(table, sort_keys=keys)
        table = table.take(order)
    return table.select(list(FIELDS)).cast(LOG_SCHEMA)


def _write_quarantine(
    con: duckdb.DuckDBPyConnection, path: Path, files: list[str], extra: list[_Quarantined], raws: list[pa.Table]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw_schema = pa.schema([("__file", pa.int32()), ("__line", pa.int64()), ("raw", pa.string())])
    parquet_raws = pa.concat_tables([raw.cast(raw_schema) for raw in raws]) if raws else raw_schema.empty_table()
    con.register("parquet_raws", parquet_raws)
    names = pa.table({"idx": pa.array(range(len(files)), pa.int32()), "source": pa.array(files, pa.string())})
    con.register("file_names", names)
    con.register(
        "extra_rows",
        pa.table(
            {
                "__file": pa.array([item.file for item in extra], pa.int32()),
                "__line": pa.array([item.line for item in extra], pa.int64()),
                "__reason": pa.array([item.reason for item in extra], pa.string()),
                "__message": pa.array([item.message for item in extra], pa.string()),
                "__nbytes": pa.array([item.nbytes for item in extra], pa.int64()),
                "__raw": pa.array([item.raw for item in extra], pa.string()),
            }
        ),
    )
    query = (
        "SELECT f.source AS source, q.__line AS line, q.__reason AS reason, q.__message AS message, "
        "q.__nbytes AS bytes, COALESCE(q.__raw, r.raw, '') AS raw FROM ("
        "SELECT __file, __line, __reason, __message, __nbytes, __raw FROM res "
        "WHERE __reason IS NOT NULL AND __reason <> 'blank' "
        "UNION ALL SELECT * FROM extra_rows) q JOIN file_names f ON f.idx = q.__file "
        "LEFT JOIN parquet_raws r ON r.__file = q.__file AND r.__line = q.__line ORDER BY q.__file, q.__line"
    )
    try:
        con.execute(f"COPY ({query}) TO {_lit(str(path))} (FORMAT json)")
    finally:
        for name in ("file_names", "extra_rows", "parquet_raws"):
            con.unregister(name)
    return path


# --------------------------------------------------------------------------------------------
# Statistics


def log_stats(result: LoadResult) -> dict[str, Any]:
    """The JSON object of ``flywheel logs stats``: volume, users, time span, versions, weeks, feedback."""
    table = result.table
    con = _connect()
    con.register("logs", table)
    (records, users, first, last, up, down) = con.sql(
        "SELECT count(*), count(DISTINCT user_id), min(ts), max(ts), "
        "count(*) FILTER (WHERE feedback = 1), count(*) FILTER (WHERE feedback = -1) FROM logs"
    ).fetchall()[0]
    by_version = dict(con.sql("SELECT model_version, count(*) FROM logs GROUP BY 1 ORDER BY 1").fetchall())
    by_week = dict(con.sql("SELECT strftime(ts, '%G-W%V'), count(*) FROM logs GROUP BY 1 ORDER BY 1").fetchall())
    con.unregister("logs")
    return {
        "records": int(records),
        "users": int(users),
        "first_ts": iso_z(first) if first else None,
        "last_ts": iso_z(last) if last else None,
        "by_model_version": {str(k): int(v) for k, v in by_version.items()},
        "by_week": {str(k): int(v) for k, v in by_week.items()},
        "feedback": {"up": int(up), "down": int(down), "none": int(records - up - down)},
        "read": result.read,
        "accepted": result.accepted,
        "quarantined": result.quarantined,
        "reasons": dict(result.reasons),
        "files": len(result.files),
    }


# --------------------------------------------------------------------------------------------
# Writing


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
        columns = {name: [row[name] for row in rows] for name in FIELDS}
        columns["metadata"] = [json.dumps(value, ensure_ascii=False, default=str) for value in columns["metadata"]]
        pq.write_table(pa.table(columns, schema=LOG_SCHEMA), path)
        self._written.add(path)


def _row(record: LogRecord | dict[str, Any], number: int) -> dict[str, Any]:
    if not isinstance(record, LogRecord):
        try:
            record = LogRecord.model_validate(record)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in problem['loc']) or 'record'}: {problem['msg']}"
                for problem in err.errors(include_input=False, include_url=False)
            )
            raise ValueError(f"record {number} of this append is not a valid LogRecord: {problems}") from None
    row = record.model_dump()
    row["ts"] = as_utc(row["ts"])
    return row


def _jsonl_line(row: dict[str, Any]) -> str:
    out = dict(row)
    out["ts"] = iso_z(row["ts"])
    return json.dumps(out, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"

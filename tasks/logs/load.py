"""Load logs: read the files, validate every row, quarantine the bad ones, return the accepted table.

``load_logs`` is the stage (files in, a ``LoadResult`` out: a LOG_SCHEMA table sorted by ts plus the
read = accepted + quarantined accounting); ``load_window`` adds the settings' defaults for the CLI
and the flows; ``log_stats`` summarises a result. Finding the files is ``sources``, the per-field
SQL is ``_mapping``, splitting lines and UTF-8 checks are ``_lines``, joining late feedback
(``*.feedback.jsonl``) onto the records is ``feedback``; the rules are in the ``tasks.logs`` docstring.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import LogsSettings
from tasks.contracts import LOG_SCHEMA
from tasks.logs._lines import Quarantined, drop_bad_utf8, jsonl_lines
from tasks.logs.feedback import FeedbackJoin, apply_feedback, is_feedback_file, read_feedback
from tasks.logs._mapping import (
    FIELDS,
    MACROS,
    REASONS,
    column_mapping,
    ident,
    line_plans,
    lines_sql,
    lit,
    parquet_plans,
    parquet_sql,
)
from tasks.logs.sources import default_quarantine, expand_sources, is_parquet, is_remote, logs_settings, resolve_sources
from tasks.windows import iso_z, parse_time

__all__ = ["LoadResult", "load_logs", "load_window", "log_stats"]

_TRUST_BRACES = True  # tests switch this off to check that both ways of classifying lines agree
_BATCH_ROWS = 65_536  # Arrow batches handed to DuckDB: its unit of parallel work
_CONNECTIONS = threading.local()
# A file that raises one of these while being read is unreadable (truncated, not Parquet after all, a
# broken gzip stream, no permission): it is set aside and named, and the other files load.
_UNREADABLE = (OSError, EOFError, zlib.error, pa.ArrowException)


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
    # Files that could not be read at all ({"source", "error"}): their rows are in none of the counts.
    unreadable_files: list[dict[str, str]] = field(default_factory=list)
    feedback: FeedbackJoin = field(default_factory=FeedbackJoin)  # late feedback joined by request_id

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
            "unreadable_files": [dict(item) for item in self.unreadable_files],
            "feedback": self.feedback.summary(),
        }


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
    UTC. A missing file or a mapped column a file lacks raises; a file that cannot be read (truncated,
    corrupt, not what its name says) is set aside in `unreadable_files`, named in the warnings and the
    quarantine file, and the other files load. Row-level problems never raise.
    """
    logs = logs_settings(settings)
    mapping = column_mapping(logs)
    files, feedback_files, start, end = _files_and_window(sources, quarantine, since, until)

    con = _connect()
    try:
        extra: list[Quarantined] = []
        warnings: list[str] = []
        unreadable: dict[int, str] = {}
        raws: list[pa.Table] = []
        parquet = {index for index, name in enumerate(files) if _readable(index, name, is_parquet, unreadable)}
        jsonl = [(index, name) for index, name in enumerate(files) if index not in parquet and index not in unreadable]
        parts = [_load_jsonl(con, jsonl, logs, mapping, extra, warnings, unreadable)] if jsonl else []
        if parquet:
            for part in _load_parquet(con, [(i, files[i]) for i in sorted(parquet)], logs, mapping, extra, raws,
                                      unreadable):
                _check_keys(part, mapping, logs, dict(enumerate(files)), warnings)
                parts.append(part)
        parts = [part for part in parts if part is not None]
        combined = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else \
            parts[0] if parts else _no_rows()
        del parts
        for index, error in sorted(unreadable.items()):
            warnings.append(f"{files[index]}: could not be read ({error}); its rows are in none of the counts. "
                            "Fix: restore or remove the file")

        counts, read = _tally(combined, extra)
        blank = counts.pop("blank", 0)
        quarantined = sum(counts.values())
        reasons = {reason: counts[reason] for reason in REASONS if counts.get(reason)}

        con.register("res", combined)
        written = _write_quarantine(con, Path(quarantine), files, extra, raws, unreadable) \
            if quarantine is not None else None
        table = _select(combined, quarantined + blank > 0, start, end, model_version)
        events, joined = read_feedback(feedback_files)
        table = apply_feedback(table, events, joined)
        warnings.extend(joined.warnings)
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
        unreadable_files=[{"source": files[index], "error": error} for index, error in sorted(unreadable.items())],
        feedback=joined,
    )


def _files_and_window(
    sources: Sequence[str | Path], quarantine: Path | None, since: datetime | str | None, until: datetime | str | None,
) -> tuple[list[str], list[str], datetime | None, datetime | None]:
    """The log files and the feedback files of `sources`, and the window [start, end)."""
    # A folder or a pattern never picks up the quarantine file this call is about to write.
    found = expand_sources([str(source) for source in sources], [quarantine] if quarantine is not None else [])
    feedback_files = [name for name in found if is_feedback_file(name)]
    files = [name for name in found if not is_feedback_file(name)]
    if not files:
        raise ValueError("load_logs needs at least one log file: pass files, folders or globs")
    start = parse_time(since) if since is not None else None
    end = parse_time(until) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise ValueError(f"empty time window: since {start.isoformat()} is not before until {end.isoformat()}")
    return files, feedback_files, start, end


def _tally(combined: pa.Table, extra: list[Quarantined]) -> tuple[Counter, int]:
    """Rows per reason (``blank`` included: not read) and rows read, of validated rows plus `extra`."""
    counts = Counter(
        {item["values"]: item["counts"] for item in pc.value_counts(combined["__reason"]).to_pylist()
         if item["values"] is not None}
    )
    counts.update(item.reason for item in extra)
    return counts, combined.num_rows - counts.get("blank", 0) + len(extra)


def _readable(index: int, source: str, check: Any, unreadable: dict[int, str]) -> Any:
    """`check(source)`, or False with the file recorded in `unreadable` when reading it fails."""
    try:
        return check(source)
    except _UNREADABLE as err:
        unreadable[index] = _clip(f"{type(err).__name__}: {err}")
        return False


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_rows() -> pa.Table:
    """The validated-rows table with no rows (every file was unreadable)."""
    extra = [("__file", pa.int32()), ("__line", pa.int64()), ("__nbytes", pa.int64()), ("__reason", pa.string()),
             ("__message", pa.string()), ("__raw", pa.string())]
    return pa.schema([*LOG_SCHEMA, *extra]).empty_table()


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
        "unreadable_files": len(result.unreadable_files),
    }


def _connect() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB connection (UTC, macros loaded): opening one costs more than
    loading a small file. A forked child opens its own."""
    cached = getattr(_CONNECTIONS, "value", None)
    if cached is not None and cached[0] == os.getpid():
        return cached[1]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    for macro in MACROS:
        con.execute(macro)
    _CONNECTIONS.value = (os.getpid(), con)
    return con


def _load_jsonl(
    con: duckdb.DuckDBPyConnection,
    files: list[tuple[int, str]],
    logs: LogsSettings,
    mapping: dict[str, str],
    extra: list[Quarantined],
    warnings: list[str],
    unreadable: dict[int, str],
) -> pa.Table | None:
    """All JSONL files in one DuckDB query over their lines (None when none of them could be read)."""
    tables = []
    for index, source in files:
        found: list[Quarantined] = []
        table = _readable(index, source, lambda name: jsonl_lines(index, name, logs, found), unreadable)
        if table is not False:
            tables.append(table)
            extra.extend(found)
    if not tables:
        return None
    result = _validate_lines(con, pa.concat_tables(tables), logs, mapping)
    _check_keys(result, mapping, logs, dict(files), warnings)
    return result.drop_columns([name for name in result.column_names if name.startswith("__k_")])


def _validate_lines(con: duckdb.DuckDBPyConnection, lines: pa.Table, logs: LogsSettings,
                    mapping: dict[str, str]) -> pa.Table:
    """JSONL lines (jsonl_lines tables) mapped and validated in one DuckDB query; __k_* columns say
    which rows have each logs.columns key (see _key_counts)."""
    lines = _batches(lines)
    plans, paths = line_plans(mapping)
    con.register("lines", lines)
    try:
        def run(trust: bool) -> pa.Table:
            sql = lines_sql(plans, paths, logs.max_record_bytes, logs.quarantine_raw_chars, trust, logs.columns)
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
    return result


def _check_keys(
    result: pa.Table, mapping: dict[str, str], logs: LogsSettings, names: dict[int, str], warnings: list[str]
) -> None:
    """A column named in logs.columns must be in some row of each file (else: ValueError). A file
    whose every row misses a required field gets a warning: the preset probably does not fit it."""
    _judge_keys(_key_counts(result, logs), mapping, logs, names, warnings)


def _key_counts(result: pa.Table, logs: LogsSettings) -> dict[int, dict[str, Any]]:
    """Per file in `result`: rows that are objects, rows missing a required field (and the first such
    message), rows having each logs.columns key. Counts of a file's chunks add up (_add_key_counts)."""
    if result.num_rows == 0:
        return {}
    files = result["__file"].to_numpy()
    reasons = result["__reason"]
    field_level = pc.fill_null(pc.is_in(reasons, pa.array(["missing_field", "bad_timestamp", "wrong_type"])), False)
    objects = pc.or_(pc.is_null(reasons), field_level).to_numpy(zero_copy_only=False)
    missing = pc.fill_null(pc.equal(reasons, "missing_field"), False).to_numpy(zero_copy_only=False)
    size = int(files.max()) + 1
    per_file_objects = np.bincount(files, weights=objects, minlength=size)
    per_file_missing = np.bincount(files, weights=missing, minlength=size)
    per_file_keys = {}
    for name in logs.columns:
        column = f"__k_{name}"
        if column in result.column_names:
            has_key = pc.fill_null(result[column], False).to_numpy(zero_copy_only=False) & objects
            per_file_keys[name] = np.bincount(files, weights=has_key, minlength=size)
    counts = {}
    for index in np.unique(files):
        message = None
        if per_file_missing[index]:
            in_file = pc.and_(pc.equal(result["__file"], int(index)), pc.equal(reasons, "missing_field"))
            message = result["__message"][pc.index(in_file, True).as_py()].as_py()
        counts[int(index)] = {"objects": int(per_file_objects[index]), "missing": int(per_file_missing[index]),
                              "message": message,
                              "keys": {name: int(keys[index]) for name, keys in per_file_keys.items()}}
    return counts


def _add_key_counts(total: dict[int, dict[str, Any]], more: dict[int, dict[str, Any]]) -> None:
    for index, counts in more.items():
        if index not in total:
            total[index] = counts
            continue
        into = total[index]
        into["objects"] += counts["objects"]
        into["missing"] += counts["missing"]
        into["message"] = into["message"] or counts["message"]
        for name, found in counts["keys"].items():
            into["keys"][name] = into["keys"].get(name, 0) + found


def _judge_keys(
    counts: dict[int, dict[str, Any]], mapping: dict[str, str], logs: LogsSettings, names: dict[int, str],
    warnings: list[str],
) -> None:
    for name in logs.columns:
        for index in sorted(counts):
            found = counts[index]["keys"].get(name)
            if counts[index]["objects"] > 0 and found == 0:
                raise ValueError(
                    f"{names[index]}: logs.columns.{name} = {mapping[name]!r}, but no row of this file has it. "
                    f"Fix: set logs.columns.{name} to a column the file has, or remove the override"
                )
    for index in sorted(counts):
        if counts[index]["objects"] > 0 and counts[index]["missing"] == counts[index]["objects"]:
            warnings.append(
                f"{names[index]}: every row misses a required field ({counts[index]['message']}); "
                f"check logs.preset ({logs.preset}) and logs.columns"
            )


def _read_parquet(index: int, source: str, logs: LogsSettings, extra: list[Quarantined]) -> pa.Table:
    """One Parquet file with __file and __line (1-based row) columns; rows holding text that is not
    UTF-8 go to `extra` (Arrow checks the whole table at once; only a failing file is searched)."""
    if is_remote(source):
        import fsspec

        with fsspec.open(source, "rb") as handle:
            table = pq.read_table(handle)
    else:
        table = pq.read_table(source.removeprefix("file://"))
    return _number_parquet_rows(table, index, 1, logs, extra)


def _number_parquet_rows(table: pa.Table, index: int, first_line: int, logs: LogsSettings,
                         extra: list[Quarantined]) -> pa.Table:
    """Rows of a Parquet file (from row `first_line`, 1-based) with __file and __line columns."""
    table = table.replace_schema_metadata(None)
    line_numbers = np.arange(first_line, first_line + table.num_rows, dtype=np.int64)
    try:
        table.validate(full=True)
    except pa.ArrowInvalid:
        table, line_numbers = drop_bad_utf8(table, line_numbers, index, logs, extra)
    table = table.append_column("__file", pa.array(np.full(table.num_rows, index, dtype=np.int32)))
    return table.append_column("__line", pa.array(line_numbers))


def _load_parquet(
    con: duckdb.DuckDBPyConnection,
    files: list[tuple[int, str]],
    logs: LogsSettings,
    mapping: dict[str, str],
    extra: list[Quarantined],
    raws: list[pa.Table],
    unreadable: dict[int, str],
) -> list[pa.Table]:
    """Parquet files, one DuckDB query per distinct schema (daily parts of one writer: one query)."""
    groups: list[tuple[pa.Schema, list[str], list[pa.Table]]] = []
    for index, source in files:
        found: list[Quarantined] = []
        table = _readable(index, source, lambda name: _read_parquet(index, name, logs, found), unreadable)
        if table is False:
            continue
        extra.extend(found)
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
        plans = parquet_plans(mapping, schema, set(logs.columns), label)
        result = con.sql(parquet_sql(plans, schema, logs.max_record_bytes)).to_arrow_table()
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
            columns = ", ".join(f"{ident(name)} := {ident(name)}" for name in schema)
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


def _batches(table: pa.Table) -> pa.Table:
    """Re-chunk so that DuckDB can spread the scan over its threads."""
    if table.num_rows <= _BATCH_ROWS:
        return table
    return pa.Table.from_batches(
        [b for at in range(0, table.num_rows, _BATCH_ROWS) for b in table.slice(at, _BATCH_ROWS).to_batches()],
        schema=table.schema,
    )


def _select(
    combined: pa.Table,
    rejected: bool,
    start: datetime | None,
    end: datetime | None,
    model_version: str | None,
) -> pa.Table:
    """Accepted rows in the window, sorted by ts (then source order). Rows are not copied when
    nothing moves: kept runs of rows are zero-copy slices."""
    table = _in_window(combined, rejected, start, end, model_version)
    values = table["ts"].cast(pa.int64()).to_numpy() if table.num_rows else np.empty(0, np.int64)
    if not bool(np.all(values[1:] >= values[:-1])):  # logs usually arrive in order: then no sort
        keys = [("ts", "ascending"), ("__file", "ascending"), ("__line", "ascending")]
        order = pc.sort_indices(table, sort_keys=keys)
        table = table.take(order)
    return table.select(list(FIELDS)).cast(LOG_SCHEMA)


def _in_window(
    combined: pa.Table,
    rejected: bool,
    start: datetime | None,
    end: datetime | None,
    model_version: str | None,
) -> pa.Table:
    """The accepted rows in the window, in source order: FIELDS, __file and __line."""
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
    return table


def _write_quarantine(
    con: duckdb.DuckDBPyConnection, path: Path, files: list[str], extra: list[Quarantined], raws: list[pa.Table],
    unreadable: dict[int, str],
) -> Path:
    """Rejected rows, then one entry per unreadable file (line null, reason unreadable_file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw_schema = pa.schema([("__file", pa.int32()), ("__line", pa.int64()), ("raw", pa.string())])
    parquet_raws = pa.concat_tables([raw.cast(raw_schema) for raw in raws]) if raws else raw_schema.empty_table()
    con.register("parquet_raws", parquet_raws)
    names = pa.table({"idx": pa.array(range(len(files)), pa.int32()), "source": pa.array(files, pa.string())})
    con.register("file_names", names)
    set_aside = sorted(unreadable.items())
    con.register(
        "extra_rows",
        pa.table(
            {
                "__file": pa.array([item.file for item in extra] + [index for index, _ in set_aside], pa.int32()),
                "__line": pa.array([item.line for item in extra] + [None] * len(set_aside), pa.int64()),
                "__reason": pa.array([item.reason for item in extra] + ["unreadable_file"] * len(set_aside), pa.string()),
                "__message": pa.array([item.message for item in extra] + [error for _, error in set_aside], pa.string()),
                "__nbytes": pa.array([item.nbytes for item in extra] + [_size(files[i]) for i, _ in set_aside], pa.int64()),
                "__raw": pa.array([item.raw for item in extra] + [""] * len(set_aside), pa.string()),
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
        con.execute(f"COPY ({query}) TO {lit(str(path))} (FORMAT json)")
    finally:
        for name in ("file_names", "extra_rows", "parquet_raws"):
            con.unregister(name)
    return path


def _size(source: str) -> int | None:
    try:
        if is_remote(source):
            import fsspec

            fs, path = fsspec.core.url_to_fs(source)
            return int(fs.size(path))
        return os.path.getsize(source.removeprefix("file://"))
    except (OSError, TypeError, ValueError):
        return None

"""Load logs in bounded memory: the rows of ``load_logs``, one file and one chunk at a time, spooled to disk.

``spool_logs`` reads each file in chunks of about ``chunk_rows`` rows (Parquet batches; JSONL blocks cut
at line breaks) and puts every chunk through the loader's own validation (``load._validate_lines`` /
``load._validate_parquet``), so reasons, quarantine entries (file and line), counts, warnings and the
late-feedback join come out exactly as ``load_logs`` gives them. The accepted rows of the window go to
one Parquet file per log file under a working folder; ``SpooledLogs.batches`` reads them back in window
order (ts, then file, then line: the order of ``load_logs``' table). When the files gave their rows in
that order already (a writer's daily files usually do), that is a plain read; otherwise DuckDB sorts
them out of core, within ``_SORT_MEMORY``, spilling to the folder.

A file that fails part-way (a broken gzip stream, a corrupt Parquet page) is set aside as a whole, as
``load_logs`` does: its spooled rows, its quarantine entries and its counts are dropped, and it is named
in ``unreadable_files``. Peak memory: one chunk (plus DuckDB's sort budget), whatever the files' size.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.contracts import LOG_SCHEMA
from tasks.logs._lines import Quarantined, jsonl_chunks
from tasks.logs._mapping import FIELDS, REASONS, column_mapping, lit
from tasks.logs.feedback import FeedbackJoin, apply_feedback, read_feedback
from tasks.logs.load import (_UNREADABLE, LoadResult, _add_key_counts, _clip, _connect, _files_and_window,
                             _in_window, _judge_keys, _key_counts, _no_rows, _number_parquet_rows, _tally,
                             _validate_lines, _validate_parquet, _write_quarantine)
from tasks.logs.sources import default_quarantine, is_parquet, is_remote, logs_settings, resolve_sources

__all__ = ["SpooledLogs", "spool_logs", "spool_window"]

_SORT_MEMORY = "512MB"  # DuckDB's budget for ordering spooled rows that came out of order
SPOOL_SCHEMA = pa.schema([*LOG_SCHEMA, pa.field("__file", pa.int32()), pa.field("__line", pa.int64())])


@dataclass
class SpooledLogs:
    """What ``load_logs`` returns, with the table on disk: ``result`` has the counts, files, quarantine,
    warnings and feedback join (its ``table`` is empty); ``rows`` accepted rows of the window are in
    ``paths``; ``batches`` gives them in window order."""

    result: LoadResult
    rows: int
    paths: list[Path]
    in_order: bool
    chunk_rows: int
    folder: Path

    @property
    def num_rows(self) -> int:
        return self.rows

    def take(self, indices: Any, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows at these window positions, in the order given (as pa.Table.take): one pass."""
        wanted = np.asarray(indices.to_numpy() if hasattr(indices, "to_numpy") else indices, dtype=np.int64)
        names = list(columns or FIELDS)
        schema = pa.schema([LOG_SCHEMA.field(name) for name in names])
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= self.rows):
            raise IndexError(f"take: positions must be in [0, {self.rows})")
        positions = np.unique(wanted)
        parts, offset = [], 0
        for batch in self.batches(names) if len(positions) else ():
            inside = positions[(positions >= offset) & (positions < offset + batch.num_rows)] - offset
            if len(inside):
                parts.append(pa.Table.from_batches([batch]).take(pa.array(inside)))
            offset += batch.num_rows
            if offset > positions[-1]:
                break
        picked = pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()
        return picked.take(pa.array(np.searchsorted(positions, wanted)))

    def where_valid(self, column: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows (in window order) where `column` is not null: one pass."""
        names = list(columns or FIELDS)
        schema = pa.schema([LOG_SCHEMA.field(name) for name in names])
        read = list(dict.fromkeys([*names, column]))
        parts = [pa.Table.from_batches([batch]).filter(pc.is_valid(batch.column(column))).select(names)
                 for batch in self.batches(read)]
        return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()

    def read(self, columns: Sequence[str]) -> pa.Table:
        """These columns of all the rows: the whole window in memory (for what needs it whole)."""
        schema = pa.schema([LOG_SCHEMA.field(name) for name in columns])
        return pa.Table.from_batches(list(self.batches(columns)), schema=schema)

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The window's rows in load_logs' order (LOG_SCHEMA types), about `chunk_rows` at a time."""
        names = list(columns or FIELDS)
        schema = pa.schema([LOG_SCHEMA.field(name) for name in names])
        if not self.paths:
            return
        if self.in_order:
            for path in self.paths:
                yield from pq.ParquetFile(path).iter_batches(batch_size=self.chunk_rows, columns=names)
            return
        scratch = self.folder / "sort"
        scratch.mkdir(exist_ok=True)
        con = duckdb.connect(config={"memory_limit": _SORT_MEMORY, "temp_directory": str(scratch),
                                     "preserve_insertion_order": True})
        try:
            con.execute("SET TimeZone = 'UTC'")
            files = ", ".join(lit(str(path)) for path in self.paths)
            selected = ", ".join(f'"{name}"' for name in names)
            reader = con.sql(f"SELECT {selected} FROM read_parquet([{files}]) ORDER BY ts, __file, __line") \
                .fetch_record_batch(self.chunk_rows)
            for batch in reader:
                yield pa.Table.from_batches([batch]).cast(schema).combine_chunks().to_batches()[0]
        finally:
            con.close()
            shutil.rmtree(scratch, ignore_errors=True)


def spool_logs(
    sources: Sequence[str | Path],
    settings: Any,
    folder: Path,
    *,
    chunk_rows: int,
    quarantine: Path | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    model_version: str | None = None,
) -> SpooledLogs:
    """``load_logs(sources, settings, quarantine=..., since=..., until=..., model_version=...)`` in bounded
    memory: the same result, the accepted rows of the window spooled under `folder` (see the module)."""
    logs = logs_settings(settings)
    mapping = column_mapping(logs)
    files, feedback_files, start, end = _files_and_window(sources, quarantine, since, until)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    events, joined = read_feedback(feedback_files)
    seen = np.zeros(len({event.request_id for event in events}), dtype=bool)
    joined.applied = 0
    if quarantine is not None:
        Path(quarantine).parent.mkdir(parents=True, exist_ok=True)
        Path(quarantine).write_bytes(b"")
    con = _connect()
    counts: Counter = Counter()
    read = rows = 0
    warnings: list[str] = []
    unreadable: dict[int, str] = {}
    paths: list[Path] = []
    last_ts: int | None = None
    in_order = True
    for index, source in enumerate(files):
        spooled = folder / f"rows-{index:05d}.parquet"
        part = _FilePart(index, spooled, seen.copy())
        try:
            kind = is_parquet(source)
            chunks = _parquet_chunks(index, source, logs, chunk_rows) if kind else \
                _jsonl_chunks(index, source, logs, chunk_rows)
            for table, extra in chunks:
                raws: list[pa.Table] = []
                result = _validate_parquet(con, table, [source], logs, mapping, raws) if kind else \
                    _validate_lines(con, table, logs, mapping)
                del table
                _add_key_counts(part.keys, _key_counts(result, logs))
                result = result.drop_columns([name for name in result.column_names if name.startswith("__k_")])
                more, got = _tally(result, extra)
                part.counts.update(more)
                part.read += got
                if sum(n for reason, n in more.items() if reason != "blank") and quarantine is not None:
                    part.quarantine(con, files, extra, raws, result)
                part.write(_in_window(result, True, start, end, model_version), events)
            part.close()
        except _UNREADABLE as err:
            part.discard()
            unreadable[index] = _clip(f"{type(err).__name__}: {err}")
            if quarantine is not None:
                part.quarantine(con, files, [], [], _no_rows(), {index: unreadable[index]})
        _judge_keys(part.keys, mapping, logs, dict(enumerate(files)), warnings)
        if quarantine is not None:
            with open(quarantine, "ab") as out:
                for entry in part.entries:
                    with open(entry, "rb") as handle:
                        shutil.copyfileobj(handle, out)
                    entry.unlink()
        if index in unreadable:
            continue
        counts.update(part.counts)
        read += part.read
        rows += part.rows
        seen = part.seen
        joined.applied += part.join.applied
        if part.rows:
            paths.append(spooled)
            in_order = in_order and (last_ts is None or part.first_ts >= last_ts) and part.in_order
            last_ts = part.last_ts
    for index, error in sorted(unreadable.items()):
        warnings.append(f"{files[index]}: could not be read ({error}); its rows are in none of the counts. "
                        "Fix: restore or remove the file")
    counts.pop("blank", None)
    quarantined = sum(counts.values())
    joined.unmatched = len(seen) - int(seen.sum())
    warnings.extend(joined.warnings)
    result = LoadResult(
        table=LOG_SCHEMA.empty_table(), read=read, accepted=read - quarantined, quarantined=quarantined,
        reasons={reason: counts[reason] for reason in REASONS if counts.get(reason)}, files=files,
        quarantine_path=Path(quarantine) if quarantine is not None else None, warnings=warnings,
        unreadable_files=[{"source": files[index], "error": error} for index, error in sorted(unreadable.items())],
        feedback=joined,
    )
    return SpooledLogs(result=result, rows=rows, paths=paths, in_order=in_order, chunk_rows=chunk_rows, folder=folder)


def spool_window(settings: Any, since: datetime | str | None, until: datetime | str | None, folder: Path, *,
                 chunk_rows: int) -> SpooledLogs:
    """``load_window(settings, None, since, until)`` (the configured sources, the configured quarantine)
    in bounded memory: ``spool_logs`` into `folder`."""
    files = resolve_sources(None, settings.logs, settings.workspace)
    return spool_logs(files, settings.logs, folder, chunk_rows=chunk_rows,
                      quarantine=default_quarantine(settings.logs, settings.workspace), since=since, until=until)


class _FilePart:
    """One file's share while it is read: committed by spool_logs when the file reads to the end."""

    def __init__(self, index: int, path: Path, seen: np.ndarray) -> None:
        self.index, self.path, self.seen = index, path, seen
        self.counts: Counter = Counter()
        self.keys: dict[int, dict[str, Any]] = {}
        self.read = self.rows = 0
        self.join = FeedbackJoin()
        self.entries: list[Path] = []
        self.writer: pq.ParquetWriter | None = None
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.in_order = True

    def write(self, table: pa.Table, events: list) -> None:
        if table.num_rows == 0:
            return
        keys = table.select(["__file", "__line"])
        table = apply_feedback(table.select(list(FIELDS)).cast(LOG_SCHEMA), events, self.join, self.seen)
        table = pa.Table.from_arrays([*table.columns, *keys.columns], schema=SPOOL_SCHEMA)
        ts = table["ts"].cast(pa.int64()).to_numpy()
        self.in_order = self.in_order and bool(np.all(ts[1:] >= ts[:-1])) and \
            (self.last_ts is None or int(ts[0]) >= self.last_ts)
        self.first_ts = int(ts[0]) if self.first_ts is None else self.first_ts
        self.last_ts = int(ts[-1])
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, SPOOL_SCHEMA, write_statistics=False)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def quarantine(self, con: duckdb.DuckDBPyConnection, files: list[str], extra: list[Quarantined],
                   raws: list[pa.Table], result: pa.Table, unreadable: dict[int, str] | None = None) -> None:
        """This chunk's rejected rows as load_logs writes them (the same query), kept until the file ends."""
        entry = self.path.with_name(f"quarantine-{self.index:05d}-{len(self.entries):05d}.json")
        con.register("res", result)
        try:
            _write_quarantine(con, entry, files, extra, raws, unreadable or {})
        finally:
            con.unregister("res")
        self.entries.append(entry)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def discard(self) -> None:
        """The file failed part-way: nothing of it counts (load_logs sets such a file aside whole)."""
        if self.writer is not None:
            try:
                self.writer.close()
            except _UNREADABLE:
                pass
            self.writer = None
        self.path.unlink(missing_ok=True)
        for entry in self.entries:
            entry.unlink(missing_ok=True)
        self.entries = []
        self.counts, self.keys, self.read, self.rows = Counter(), {}, 0, 0


def _jsonl_chunks(index: int, source: str, logs: Any, chunk_rows: int):
    extra: list[Quarantined] = []
    for table in jsonl_chunks(index, source, logs, extra, chunk_rows):
        yield table, extra
        extra = []


def _parquet_chunks(index: int, source: str, logs: Any, chunk_rows: int):
    if is_remote(source):
        import fsspec

        handle = fsspec.open(source, "rb").open()
    else:
        handle = open(source.removeprefix("file://"), "rb")
    with handle:
        file = pq.ParquetFile(handle)
        first_line, any_rows = 1, False
        for batch in file.iter_batches(batch_size=chunk_rows):
            extra: list[Quarantined] = []
            table = _number_parquet_rows(pa.Table.from_batches([batch]), index, first_line, logs, extra)
            first_line += batch.num_rows
            any_rows = True
            yield table, extra
        if not any_rows:  # the columns are still checked (a required one missing is an error)
            yield _number_parquet_rows(file.schema_arrow.empty_table(), index, 1, logs, []), []

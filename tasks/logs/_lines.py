"""Raw bytes to rows: split a JSONL file into lines with numpy and set aside what is not UTF-8.

The performance fast path of the log store (private to ``tasks.logs``). A JSONL file is read once
into a numpy buffer and cut into lines without a Python loop; the lines become a zero-copy Arrow
array for DuckDB. UTF-8 is checked per file by Arrow; only a file that fails is searched, by halves,
for its bad lines (or, for Parquet, its bad rows), which are recorded as ``Quarantined`` rows.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.config import LogsSettings
from tasks.logs.sources import is_remote

__all__ = ["Quarantined", "drop_bad_utf8", "jsonl_chunks", "jsonl_lines"]

_BOM = b"\xef\xbb\xbf"
_BLOCK_BYTES = 8 << 20  # jsonl_chunks reads this much at a time


@dataclass
class Quarantined:
    """A row rejected before the SQL sees it (``invalid_utf8``): where it was, why, and its text."""

    file: int
    line: int
    reason: str
    message: str
    nbytes: int
    raw: str


def jsonl_lines(index: int, source: str, logs: LogsSettings, extra: list[Quarantined]) -> pa.Table:
    """One JSONL file as a table of lines (__file, __line, __nbytes, __braced, line). Lines that are
    not UTF-8 go straight to `extra` and are blanked in the buffer: Arrow checks the whole file at
    once, and only a file that fails is searched (by halves) for its bad lines."""
    buf = _read_bytes(source)
    if len(buf) >= 2 and buf[0] == 0x1F and buf[1] == 0x8B:
        buf = np.frombuffer(gzip.decompress(buf.tobytes()), dtype=np.uint8)
    return _lines_table(buf, index, 1, logs, extra)


def jsonl_chunks(index: int, source: str, logs: LogsSettings, extra: list[Quarantined], chunk_lines: int):
    """The lines of one JSONL file as jsonl_lines does, but `chunk_lines` lines or a little more at a
    time (read in blocks, cut at a line break): a file of any size in bounded memory. Line numbers run
    on over the chunks; a byte-order mark is dropped at the file's start only."""
    with _open_bytes(source) as raw:
        head = raw.read(2)
        raw.seek(0)
        handle = gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw
        carry, first_line, pending, newlines = b"", 1, [], 0
        while True:
            block = handle.read(_BLOCK_BYTES)
            if block:
                pending.append(block)
                newlines += block.count(b"\n")
                if newlines < chunk_lines:
                    continue
            data = carry + b"".join(pending)
            cut = data.rfind(b"\n") + 1 if block else len(data)
            carry, pending, newlines = data[cut:], [], 0
            if cut:
                buf = np.frombuffer(data, dtype=np.uint8)[:cut]
                table = _lines_table(buf, index, first_line, logs, extra, file_start=first_line == 1)
                first_line += table.num_rows
                yield table
            if not block:
                return


def _lines_table(buf: np.ndarray, index: int, first_line: int, logs: LogsSettings, extra: list[Quarantined], *,
                 file_start: bool = True) -> pa.Table:
    """The lines in `buf` (numbered from `first_line`) as jsonl_lines' table; bad UTF-8 lines to `extra`."""
    lines, sizes, braced = _split_lines(buf, file_start)
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
            extra.append(Quarantined(index, first_line + row, "invalid_utf8", "the line is not valid UTF-8 text", size, raw))
            buf[start : start + size] = 32  # now a blank line: skipped by the query, counted here
            braced[row] = False
    return pa.table(
        {
            "__file": pa.array(np.full(len(lines), index, dtype=np.int32)),
            "__line": pa.array(np.arange(first_line, first_line + len(lines), dtype=np.int64)),
            "__nbytes": pa.array(sizes),
            "__braced": pa.array(braced),
            "line": lines.view(pa.large_string()),
        }
    )


def drop_bad_utf8(
    table: pa.Table, line_numbers: np.ndarray, index: int, logs: LogsSettings, extra: list[Quarantined]
) -> tuple[pa.Table, np.ndarray]:
    """`table` (a Parquet file's rows, numbered by `line_numbers`) without the rows holding text that
    is not UTF-8 (nested in lists/structs too); each dropped row goes to `extra` as JSON text."""
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
        extra.append(Quarantined(index, int(line_numbers[row]), "invalid_utf8", "a text value is not valid UTF-8",
                                  len(text.encode("utf-8", errors="replace")), text[: logs.quarantine_raw_chars]))
    keep = np.ones(table.num_rows, dtype=bool)
    keep[sorted(bad)] = False
    return table.filter(pa.array(keep)), line_numbers[keep]


def _open_bytes(source: str):
    """A binary file handle on a local file or a remote URL (fsspec)."""
    if is_remote(source):
        import fsspec

        return fsspec.open(source, "rb").open()
    return open(source.removeprefix("file://"), "rb")


def _read_bytes(source: str) -> np.ndarray:
    """The whole file as a uint8 array; a local file is read into a fresh writable array (no
    zero-fill, no extra copy), so that lines with bad bytes can be blanked in place."""
    if is_remote(source):
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


def _split_lines(buf: np.ndarray, file_start: bool = True, block: int = 1 << 20) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Lines of a JSONL file (a uint8 array) as a zero-copy Arrow large_binary array (each keeps
    its line break), their sizes without the line break, and whether each looks like an object:
    starts with '{' and ends with '}' (a cheap hint; DuckDB still parses every line)."""
    start = len(_BOM) if file_start and bytes(buf[:3]) == _BOM else 0
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


def _decode_raw(value: bytes | None, chars: int) -> str:
    if not value or chars == 0:
        return ""
    return value[: chars * 4].decode("utf-8", errors="backslashreplace")[:chars]

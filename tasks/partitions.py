"""Monitoring a window in bounded memory: the week split by user hash into Parquet partitions, each
reduced to sufficient statistics, merged into exactly what the in-memory computation gives.

- `spill_partitions` streams record batches (in the window's order) into `partitions` Parquet files,
  by a stable hash of user_id, so a user's consecutive prompts meet in one partition and a re-ask never
  crosses a boundary. Each row carries `_row` (its position in the window) and `_rank` (its position
  among the non-empty prompts, -1 for an empty one): what the seeded samples of the in-memory path
  are drawn over.
- `partition_stats` reads one partition: the signals' counts (tasks.signals.signal_counts) and the
  drift's current-side token statistics over the partition's prompts in the drift sample
  (tasks.drift.current_token_stats).
- `merge_partition_stats` adds them up; `partition_examples` + tasks.drift.merge_examples find the
  drift examples in window order.

Peak memory: one partition (about `monitoring.partition_rows` rows) plus the batch being spilled, the
drift reference and the drift sample's row numbers (`drift.max_current_prompts` at most), whatever the
week's size. The batches come from tasks.logs.spool (the log files read chunk by chunk), so the week is
never in memory whole. flows/monitoring.py maps `partition_stats` as Prefect tasks (on Dask with
runner.kind dask).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.config import DriftSettings, SignalsSettings
from tasks.drift import (bins_with_current, current_sample, current_token_stats, drift_from_bins, empty_drift_result,
                         example_candidates, finish_drift, merge_examples, merge_token_stats)
from tasks.reask import reask_idf_sample
from tasks.signals import merge_signal_counts, signal_counts, signals_from_counts

# What the signals and the drift read from a log row; the rest of contracts.LOG_SCHEMA is not spilled.
COLUMNS = ("user_id", "ts", "prompt", "response", "model_version", "latency_ms", "feedback")


def partition_count(rows: int, partition_rows: int) -> int:
    return max(1, math.ceil(rows / partition_rows))


def user_partitions(users: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """Per row, its partition: CRC-32 of the user id modulo `partitions` (stable across processes and
    runs, unlike Python's hash); rows without a user go to partition 0 (they never pair as re-asks)."""
    encoded = pa.chunked_array([users]).combine_chunks() if isinstance(users, pa.Array) else users.combine_chunks()
    encoded = encoded.cast(pa.string()).dictionary_encode()
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    of_user = np.array([zlib.crc32(u.encode("utf-8")) % partitions for u in encoded.dictionary.to_pylist()] + [0],
                       dtype=np.int64)
    return of_user[codes]  # -1 (null) picks the trailing 0


def _non_empty(prompts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    keep = pc.and_(pc.is_valid(prompts), pc.greater(pc.utf8_length(pc.fill_null(prompts, "")), 0))
    return np.asarray(keep.to_numpy(zero_copy_only=False) if len(prompts) else np.zeros(0), dtype=bool)


def spill_partitions(batches: Iterable[pa.RecordBatch | pa.Table], folder: Path, partitions: int, *,
                     total_rows: int | None = None, settings: SignalsSettings | None = None) -> dict[str, Any]:
    """Write the window's rows (batches in window order) into `partitions` Parquet files under `folder`.

    Returns the files, the rows, the non-empty prompts and, for the re-ask TF-IDF backend (which needs
    `total_rows` and `settings`), the window's IDF corpus (the prompts of `reask_idf_sample`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"part-{i:05d}.parquet" for i in range(partitions)]
    idf_rows = None
    if settings is not None and settings.reask_backend == "tfidf":
        if total_rows is None:
            raise ValueError("spill_partitions: reask_backend tfidf needs total_rows (the IDF sample is drawn over them)")
        idf_rows = reask_idf_sample(total_rows)
    idf_parts: list[pa.Array] = []
    writers: list[pq.ParquetWriter | None] = [None] * partitions
    rows = ranks = 0
    try:
        for batch in batches:
            table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            n = table.num_rows
            if n == 0:
                continue
            table = table.select([c for c in COLUMNS if c in table.column_names])
            keep = _non_empty(table.column("prompt"))
            rank = np.where(keep, ranks + np.cumsum(keep) - 1, -1)
            table = table.append_column("_row", pa.array(np.arange(rows, rows + n, dtype=np.int64)))
            table = table.append_column("_rank", pa.array(rank.astype(np.int64)))
            if idf_rows is not None:
                local = idf_rows[(idf_rows >= rows) & (idf_rows < rows + n)] - rows
                idf_parts.append(table.column("prompt").take(pa.array(local)).combine_chunks())
            part = user_partitions(table.column("user_id"), partitions)
            order = np.argsort(part, kind="stable")  # window order kept inside each partition
            bounds = np.searchsorted(part[order], np.arange(partitions + 1))
            table = table.take(pa.array(order))
            for i in range(partitions):
                if bounds[i + 1] > bounds[i]:
                    piece = table.slice(bounds[i], bounds[i + 1] - bounds[i])
                    if writers[i] is None:
                        # no column statistics: nothing filters on them, and their footer grows with the pieces
                        writers[i] = pq.ParquetWriter(paths[i], piece.schema, write_statistics=False)
                    writers[i].write_table(piece)
            rows += n
            ranks += int(keep.sum())
    finally:
        for writer in writers:
            if writer is not None:
                writer.close()
    idf_corpus = pa.chunked_array(idf_parts, type=pa.string()) if idf_rows is not None else None
    return {"paths": [p for p, w in zip(paths, writers) if w is not None], "rows": rows, "prompts": ranks,
            "idf_corpus": idf_corpus}


def _binned(table: pa.Table, sample: np.ndarray | None) -> tuple[pa.Array, np.ndarray]:
    """The partition's prompts the drift bins (all non-empty ones, or those in the sample) and their ranks."""
    rank = table.column("_rank").to_numpy()
    if sample is None:
        mask = rank >= 0
    else:
        position = np.searchsorted(sample, rank)
        mask = (rank >= 0) & (position < len(sample)) & (sample[np.minimum(position, len(sample) - 1)] == rank)
    return table.column("prompt").filter(pa.array(mask)).combine_chunks(), rank[mask]


def partition_stats(path: Path, signals: SignalsSettings, drift: DriftSettings, *, vocab: pa.Array | None,
                    sample: np.ndarray | None, idf_corpus: pa.ChunkedArray | None = None) -> dict[str, Any]:
    """One partition's sufficient statistics (see the module docstring). `vocab`: the drift
    reference's vocabulary (None: no drift); `sample`: the ranks of the prompts the drift bins."""
    table = pq.read_table(path)
    out: dict[str, Any] = {"signals": signal_counts(table, signals, idf_corpus=idf_corpus)}
    if vocab is not None:
        prompts, _ = _binned(table, sample)
        out["drift"] = current_token_stats(prompts, vocab, drift)
    return out


def merge_partition_stats(parts: Sequence[dict[str, Any]], vocab: pa.Array | None) -> dict[str, Any]:
    merged = {"signals": merge_signal_counts([p["signals"] for p in parts])}
    if vocab is not None:
        merged["drift"] = merge_token_stats([p["drift"] for p in parts], len(vocab) + 1)
    return merged


def partition_examples(path: Path, sample: np.ndarray | None, wanted: dict[str, Any]) -> list:
    """The partition's drift example candidates (tasks.drift.example_candidates), keyed by rank."""
    prompts, ranks = _binned(pq.read_table(path, columns=["prompt", "_rank"]), sample)
    return example_candidates(prompts, ranks, **wanted)


def partitioned_signals_and_drift(
    paths: Sequence[Path],
    spilled: dict[str, Any],
    signals: SignalsSettings,
    drift: DriftSettings,
    reference: dict[str, Any] | None,
    *,
    seed: int = 0,
    map_partitions: Any = None,
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """The window's signals (as tasks.signals.compute_signals without hallucination sampling) and drift
    (as tasks.drift.compute_drift; None without a `reference` from tasks.drift.prepare_reference) from
    its spilled partitions, and the merged statistics. `map_partitions(fn, paths)` runs `fn` over the
    partitions, in order (default: one after another, here); flows/monitoring.py maps them as tasks."""
    if drift.bins != "tokens" and reference is not None:
        raise ValueError("monitoring.partition_rows needs drift.bins: tokens (embedding clusters are fitted on "
                         "the whole window); set drift.bins to tokens or monitoring.partition_rows to null")
    run = map_partitions or (lambda fn, items: [fn(item) for item in items])
    n_cur = spilled["prompts"]
    sample = current_sample(n_cur, drift, seed)
    vocab = reference["bins"]["vocab_array"] if reference is not None and reference["bins"] is not None else None

    def stats(path: Path) -> dict[str, Any]:
        return partition_stats(path, signals, drift, vocab=vocab, sample=sample, idf_corpus=spilled["idf_corpus"])

    merged = merge_partition_stats(run(stats, list(paths)), vocab)
    result = signals_from_counts(merged["signals"])
    result["hallucination"] = None
    if reference is None:
        return result, None, merged
    n_binned = n_cur if sample is None else len(sample)
    if reference["n"] == 0 or n_cur == 0:
        found = empty_drift_result(drift, reference["n"], n_cur, n_binned)
        found["reason"] = (f"insufficient data: {reference['n']} reference and {n_cur} current prompts "
                           f"(need {drift.min_prompts} each)")
        return result, found, merged
    found, wanted = drift_from_bins(reference, bins_with_current(reference["bins"], merged["drift"]), n_cur, n_binned,
                                    drift, seed)
    examples = None
    if wanted is not None:
        examples = merge_examples(run(lambda path: partition_examples(path, sample, wanted), list(paths)),
                                  drift.examples)
    return result, finish_drift(found, drift, examples), merged


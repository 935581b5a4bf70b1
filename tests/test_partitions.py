"""Monitoring in bounded memory (tasks/partitions.py): the week split by user hash into partitions,
reduced to sufficient statistics and merged, gives exactly the in-memory signals and drift."""

from __future__ import annotations

import gzip
import json
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from tasks.config import DriftSettings, LogsSettings, SignalsSettings
from tasks.contracts import LOG_SCHEMA
from tasks.drift import compute_drift, prepare_reference
import tasks.logs._lines as lines_module
from tasks.logs import load_logs
from tasks.logs.spool import spool_logs
from tasks.partitions import COLUMNS, partitioned_signals_and_drift, spill_partitions, user_partitions
from tasks.signals import compute_signals

T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)
QUESTIONS = ["How do I return my order?", "Can I return the jacket I bought?", "What is the shipping cost to Canada?",
             "Do you ship the X200 to Canada?", "Where is my parcel 12345?", "my email is jo@mail.com, any news?",
             "That's not what I asked. How do I return it?", "Let me rephrase: shipping cost to Canada?",
             "thanks!", "", "Warranty for the Z9 blender?", "zorblax quux frobnicate?"]
ANSWERS = ["Returns are free within 30 days.", "I'm sorry, I can't help with that.", "Shipping to Canada costs $12.",
           "I cannot share that information.", "The warranty is two years.", "Sure! Returns are easy."]


def week(seed: int, n: int) -> pa.Table:
    """n rows of a small shop's week: few users (so re-asks happen), some empty prompts and null users."""
    rng = np.random.default_rng(seed)
    users = [None if u == 0 else f"user-{u}" for u in rng.integers(0, 12, n)]
    ts = np.sort(rng.integers(0, 3_600_000_000, n))  # one hour: consecutive prompts are often quick
    feedback = rng.choice([None, None, None, 1, -1], n).tolist()
    return pa.Table.from_pylist([{
        "request_id": f"r{i}", "ts": T0 + timedelta(microseconds=int(ts[i])), "user_id": users[i], "session_id": None,
        "prompt": QUESTIONS[rng.integers(len(QUESTIONS))], "response": ANSWERS[rng.integers(len(ANSWERS))],
        "model_version": ["adapter-1", "adapter-2", None][rng.integers(3)], "latency_ms": float(rng.integers(100, 5000)),
        "prompt_tokens": None, "completion_tokens": None, "feedback": feedback[i], "correction": None,
        "metadata": None} for i in range(n)], schema=LOG_SCHEMA)


REFERENCE = [q for q in QUESTIONS if q] * 4 + ["How much is shipping?", "Can I return shoes?"] * 3


@pytest.mark.slow
@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(0, 160), partitions=st.integers(1, 6),
       batch=st.integers(1, 70), sampled=st.sampled_from([None, 40]), backend=st.sampled_from(["words", "tfidf"]))
def test_partitioned_signals_and_drift_equal_the_in_memory_ones(seed, n, partitions, batch, sampled, backend):
    table = week(seed, n)
    signals = SignalsSettings(reask_backend=backend)
    drift = DriftSettings(min_prompts=5, explain_min_prompts=2, vocab_size=10, null_resamples=20,
                          max_current_prompts=sampled)
    expected_signals = compute_signals(table, signals)
    expected_drift = compute_drift(REFERENCE, table.column("prompt"), drift, seed=3)
    with tempfile.TemporaryDirectory() as folder:
        spilled = spill_partitions(table.to_batches(max_chunksize=batch), Path(folder), partitions,
                                   total_rows=n, settings=signals)
        got_signals, got_drift, _ = partitioned_signals_and_drift(
            spilled["paths"], spilled, signals, drift, prepare_reference(REFERENCE, drift), seed=3)
    assert got_signals == expected_signals
    assert got_drift == expected_drift


def test_a_users_rows_share_one_partition_whatever_the_batch():
    users = pa.array(["alice", "bob", None, "alice", "carol", "bob"])
    whole = user_partitions(users, 4)
    assert list(np.concatenate([user_partitions(users.slice(0, 2), 4), user_partitions(users.slice(2), 4)])) == list(whole)
    assert whole[0] == whole[3] and whole[1] == whole[5] and whole[2] == 0


def test_a_week_with_re_asks_across_batches_counts_them_once():
    table = week(7, 300)
    signals = SignalsSettings()
    expected = compute_signals(table, signals)
    assert expected["reask_count"] > 0 and expected["refusal_count"] > 0  # the data exercises both
    with tempfile.TemporaryDirectory() as folder:
        spilled = spill_partitions(table.to_batches(max_chunksize=17), Path(folder), 5)
        got, drift, merged = partitioned_signals_and_drift(spilled["paths"], spilled, signals, DriftSettings(), None)
    assert drift is None and got == expected
    assert merged["signals"]["all"][0] == spilled["rows"] == table.num_rows


@pytest.mark.parametrize("interleaved", [False, True])
def test_a_week_streamed_from_its_log_files_equals_the_in_memory_one(tmp_path, monkeypatch, interleaved):
    """The partitioned path reads the week's files chunk by chunk (tasks/logs/spool.py): over three files
    (JSONL, Parquet in small row groups, gzipped JSONL) holding bad rows, and a gzipped file cut off
    part-way (set aside whole, though its first chunks read), the same counts, the same quarantine file
    (names and line numbers), and the same signals and drift as loading it whole. Interleaved: the
    files' time ranges overlap, so the spooled rows must be put back in window order."""
    monkeypatch.setattr(lines_module, "_BLOCK_BYTES", 256)  # many small reads: chunks end mid-file
    rows = week(11, 240).to_pylist()
    split = [rows[i::3] for i in range(3)] if interleaved else [rows[:100], rows[100:180], rows[180:]]
    folder = tmp_path / "logs"
    folder.mkdir()

    def line(row: dict) -> bytes:
        return json.dumps({**row, "ts": row["ts"].isoformat()}).encode()

    jsonl = [line(r) for r in split[0]]
    jsonl[5:5] = [b"not json", b'{"request_id": "bad \xff utf8"}', b"", b"[1, 2]"]
    (folder / "2026-01-05.jsonl").write_bytes(b"\n".join(jsonl) + b"\n")
    pq.write_table(pa.Table.from_pylist(split[1], schema=LOG_SCHEMA), folder / "2026-01-06.parquet", row_group_size=7)
    (folder / "2026-01-07.jsonl.gz").write_bytes(gzip.compress(b"\n".join(line(r) for r in split[2]) + b"\n"))
    cut = gzip.compress(b"\n".join(line(r) for r in rows[:60]) + b"\n")
    (folder / "2026-01-08.jsonl.gz").write_bytes(cut[: len(cut) * 3 // 4])
    logs = LogsSettings()
    whole = load_logs([folder], logs, quarantine=tmp_path / "whole.jsonl")
    spooled = spool_logs([folder], logs, tmp_path / "spool", chunk_rows=13, quarantine=tmp_path / "streamed.jsonl")

    summary = {k: v for k, v in whole.summary().items() if k not in ("quarantine", "selected")}
    assert {k: v for k, v in spooled.result.summary().items() if k not in ("quarantine", "selected")} == summary
    assert summary["quarantined"] > 4 and set(summary["reasons"]) >= {"not_json", "invalid_utf8", "missing_field"}
    assert [f["source"] for f in summary["unreadable_files"]] == [str(folder / "2026-01-08.jsonl.gz")]
    assert (tmp_path / "streamed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert spooled.rows == whole.table.num_rows and spooled.in_order is not interleaved
    assert pa.Table.from_batches(list(spooled.batches()), schema=LOG_SCHEMA).equals(whole.table)
    assert spooled.take([40, 3, 40]).equals(whole.table.take([40, 3, 40]))  # what the samples read
    assert spooled.where_valid("feedback").equals(whole.table.filter(whole.table["feedback"].is_valid()))

    signals, drift = SignalsSettings(reask_backend="tfidf"), DriftSettings(min_prompts=5, vocab_size=10,
                                                                         null_resamples=20)
    expected = compute_signals(whole.table, signals), compute_drift(REFERENCE, whole.table.column("prompt"), drift)
    spilled = spill_partitions(spooled.batches(COLUMNS), tmp_path / "partitions", 3, total_rows=spooled.rows,
                               settings=signals)
    got = partitioned_signals_and_drift(spilled["paths"], spilled, signals, drift, prepare_reference(REFERENCE, drift))
    assert got[:2] == expected

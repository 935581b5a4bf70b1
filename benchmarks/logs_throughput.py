"""Log-store throughput: load + validate production logs from JSONL and from Parquet.

    python benchmarks/logs_throughput.py [--records 1000000] [--baseline-records 100000] [--bad-rate 0.0005]

Synthesises `--records` LogRecord-shaped rows (deterministic; ts increasing as logs are written;
prompts/responses of varied length with quotes, newlines and non-ASCII text; 3% feedback; metadata
objects), plus a small share of broken rows of every quarantine kind (not JSON, not an object,
invalid UTF-8, oversized, missing field, bad timestamp, wrong type), writes them as JSONL and as
Parquet (LOG_SCHEMA, the broken rows as null required fields) into a temporary folder and times, in
the same process:

- ours: tasks.logs.load_logs on the JSONL file and on the Parquet file (all records), and on the
  baseline's subset of the JSONL file;
- a straightforward baseline on a subset of the clean rows (it cannot survive a broken line:
  pandas.read_json raises on the first one): pandas.read_json(lines=True), then one
  LogRecord.model_validate per row. It does less than ours (no quarantine file, no line numbers,
  no sort), so the ratio is conservative.

Prints a table, then one JSON object as the last line: seconds, rows/s, CPU seconds (all threads),
peak RSS per phase, and the ratios. On a shared machine the wall-clock ratio moves with the load
(ours runs DuckDB on all cores, the baseline on one); the per-CPU-second ratio does not.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import LogsSettings  # noqa: E402
from tasks.contracts import LOG_SCHEMA, LogRecord  # noqa: E402
from tasks.logs import load_logs  # noqa: E402


# ------------------------------------------------------------------------------------------ memory

def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the resident set size every 20 ms while a phase runs."""

    def __enter__(self):
        gc.collect()
        self.start_rss = rss_bytes()
        self.peak = self.start_rss
        self.cpu_started = time.process_time()  # all threads of this process (DuckDB's included)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# ------------------------------------------------------------------------------------------ data

TOPICS = ["router", "printer", "billing plan", "mobile app", "warranty", "smart watch", "gift card", "return label"]
REPLIES = [
    "To set it up, open Settings, choose {t}, then follow the steps shown.",
    "I don't know the answer to that question.",
    'Sure! Press "Reset" for 5 seconds,\nthen wait until the light turns green.',
    "잘 모르겠습니다. 다른 질문이 있으신가요?",
    "Your {t} is covered for 24 months; keep the receipt (order {n}).",
]


def synthesize(path_jsonl: Path, path_clean: Path, path_parquet: Path, n: int, bad_rate: float, seed: int) -> dict:
    """Write n records as JSONL (with broken rows), the clean JSONL subset source and Parquet."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE MACRO h(a, b, m) AS (hash(a, b) % m)::BIGINT")  # a deterministic pseudo-random integer
    topics = "[" + ", ".join(f"'{t}'" for t in TOPICS) + "]"
    replies = "[" + ", ".join("'" + r.replace("'", "''") + "'" for r in REPLIES) + "]"
    con.execute(f"""
        CREATE TABLE logs AS
        SELECT 'req-' || lpad(i::VARCHAR, 9, '0') AS request_id,
               TIMESTAMPTZ '2026-01-05 00:00:00+00' + to_microseconds((i * 600_000 + h(i, {seed}, 500_000))::BIGINT) AS ts,
               'user-' || h(i // 7, {seed}, 40_000)::VARCHAR AS user_id,
               'sess-' || (i // 7)::VARCHAR AS session_id,
               ['Hi! ', '', 'Quick question: ', 'Hello. '][1 + i % 4]
                 || 'How do I configure the ' || {topics}[1 + h(i, 1, 8)] || ' for account ' || h(i, 2, 1_000_000)::VARCHAR
                 || '?' || repeat(' I tried restarting it twice and it still fails.', h(i, 3, 4)::INTEGER) AS prompt,
               replace(replace({replies}[1 + h(i, 4, 5)], '{{t}}', {topics}[1 + h(i, 1, 8)]), '{{n}}', i::VARCHAR)
                 || repeat(' If the problem persists, contact support with the error code.', h(i, 5, 3)::INTEGER) AS response,
               ['base-v1', 'adapter-2026q1'][1 + (i * 2 >= {n})::INTEGER] AS model_version,
               round(80 + h(i, 6, 2000) * 0.73, 1) AS latency_ms,
               (12 + h(i, 7, 60))::BIGINT AS prompt_tokens,
               (20 + h(i, 8, 120))::BIGINT AS completion_tokens,
               CASE WHEN h(i, 9, 100) < 2 THEN -1 WHEN h(i, 9, 100) < 3 THEN 1 END::TINYINT AS feedback,
               CASE WHEN h(i, 9, 100) < 1 THEN 'Reset it from the app instead.' END AS correction,
               to_json(struct_pack(topic := {topics}[1 + h(i, 1, 8)], channel := ['web', 'app', 'api'][1 + i % 3]))::VARCHAR AS metadata
        FROM range({n}) t(i)
    """)
    con.execute(f"""
        COPY (SELECT request_id, strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ') AS ts, user_id, session_id, prompt, response,
                     model_version, latency_ms, prompt_tokens, completion_tokens, feedback, correction,
                     metadata::JSON AS metadata FROM logs ORDER BY request_id)
        TO '{path_clean}' (FORMAT json)
    """)
    rng = np.random.default_rng(seed)
    bad_count = int(round(n * bad_rate))
    positions = np.sort(rng.choice(n, size=bad_count, replace=False)) if bad_count else np.empty(0, np.int64)
    kinds = [
        b"this is not json",
        b'["an", "array"]',
        b'{"request_id": "bad-utf8", "prompt": "caf\xe9"}',
        b'{"request_id": "big", "prompt": "' + b"x" * 1_100_000 + b'"}',
        b'{"request_id": "no-user", "ts": "2026-01-05T10:00:00Z", "prompt": "p", "response": "r", "model_version": "v"}',
        b'{"request_id": "bad-ts", "ts": "yesterday", "user_id": "u", "prompt": "p", "response": "r", "model_version": "v"}',
        b'{"request_id": "bad-type", "ts": 1767600000, "user_id": 42, "prompt": "p", "response": "r", "model_version": "v"}',
    ]
    # Broken lines go in after the clean line at each position.
    data = path_clean.read_bytes()
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    pieces, last = [], 0
    for k, pos in enumerate(positions):
        cut = int(ends[pos]) + 1
        pieces.append(data[last:cut])
        pieces.append(kinds[k % len(kinds)] + b"\n")
        last = cut
    pieces.append(data[last:])
    path_jsonl.write_bytes(b"".join(pieces))
    del data, buf, pieces

    # Parquet as the LogWriter stores it; its broken rows are rows with a required field missing.
    table = con.sql("SELECT * FROM logs ORDER BY request_id").to_arrow_table().cast(LOG_SCHEMA)
    if bad_count:
        user = np.array(table.column("user_id").to_pylist(), dtype=object)
        user[positions] = None
        table = table.set_column(2, "user_id", pa.array(user, pa.string()))
    pq.write_table(table, path_parquet, row_group_size=128 * 1024)
    con.close()
    return {"bad_rows_jsonl": bad_count, "bad_rows_parquet": bad_count,
            "jsonl_bytes": path_jsonl.stat().st_size, "parquet_bytes": path_parquet.stat().st_size}


# ------------------------------------------------------------------------------------------ runs

def ours(path: Path, quarantine: Path) -> dict:
    with PeakRss() as mem:
        result = load_logs([path], LogsSettings(), quarantine=quarantine)
    assert result.read == result.accepted + result.quarantined
    return {"seconds": mem.seconds, "cpu_seconds": mem.cpu_seconds, "rows_per_s": result.read / mem.seconds,
            "rows_per_cpu_s": result.read / mem.cpu_seconds, "read": result.read,
            "accepted": result.accepted, "quarantined": result.quarantined, "reasons": result.reasons,
            "peak_rss_gb": mem.peak / 1e9, "rss_added_gb": (mem.peak - mem.start_rss) / 1e9}


def baseline(path: Path) -> dict:
    """pandas.read_json(lines=True) + one pydantic LogRecord validation per row."""
    import pandas as pd

    with PeakRss() as mem:
        frame = pd.read_json(path, lines=True, dtype=False)
        accepted = rejected = 0
        for row in frame.to_dict("records"):
            row = {key: (None if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}
            if row.get("metadata") is None:
                row["metadata"] = {}
            try:
                LogRecord.model_validate(row)
                accepted += 1
            except ValueError:
                rejected += 1
    rows = accepted + rejected
    return {"seconds": mem.seconds, "cpu_seconds": mem.cpu_seconds, "rows_per_s": rows / mem.seconds,
            "rows_per_cpu_s": rows / mem.cpu_seconds, "read": rows, "accepted": accepted,
            "quarantined": rejected, "peak_rss_gb": mem.peak / 1e9, "rss_added_gb": (mem.peak - mem.start_rss) / 1e9}


def head_lines(source: Path, target: Path, count: int) -> int:
    with source.open("rb") as src, target.open("wb") as out:
        written = 0
        for line in src:
            if written == count:
                break
            out.write(line)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--baseline-records", type=int, default=100_000)
    parser.add_argument("--bad-rate", type=float, default=0.0005, help="share of broken rows added")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files (default: a temp dir)")
    args = parser.parse_args()
    report: dict = {"records": args.records, "cpus": os.cpu_count(), "bad_rate": args.bad_rate}

    import pandas  # noqa: F401  (imported up front: its import time belongs to no phase)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp_path = Path(tmp)
        jsonl, clean, parquet = tmp_path / "logs.jsonl", tmp_path / "clean.jsonl", tmp_path / "logs.parquet"
        started = time.perf_counter()
        report["data"] = synthesize(jsonl, clean, parquet, args.records, args.bad_rate, args.seed)
        report["synth_s"] = round(time.perf_counter() - started, 2)
        print(f"synthesised {args.records:,} records (+{report['data']['bad_rows_jsonl']:,} broken) "
              f"in {report['synth_s']:.1f} s", file=sys.stderr)
        subset_clean = tmp_path / "subset_clean.jsonl"
        subset_rows = head_lines(clean, subset_clean, args.baseline_records)
        clean.unlink()
        subset = tmp_path / "subset.jsonl"
        head_lines(jsonl, subset, args.baseline_records)

        load_logs([subset_clean], LogsSettings())  # warm-up: DuckDB start, lazy imports
        report["ours_jsonl"] = ours(jsonl, tmp_path / "q_jsonl.jsonl")
        report["ours_parquet"] = ours(parquet, tmp_path / "q_parquet.jsonl")
        report["ours_subset_jsonl"] = ours(subset, tmp_path / "q_subset.jsonl")
        report["ours_subset_clean_jsonl"] = ours(subset_clean, tmp_path / "q_subset_clean.jsonl")
        report["baseline_subset_clean_jsonl"] = baseline(subset_clean)
    base = report["baseline_subset_clean_jsonl"]
    report["baseline_rows"] = subset_rows
    for name in ("jsonl", "parquet"):
        report[f"speedup_{name}_rows_per_s"] = report[f"ours_{name}"]["rows_per_s"] / base["rows_per_s"]
    report["speedup_same_subset"] = base["seconds"] / report["ours_subset_clean_jsonl"]["seconds"]
    # CPU time does not depend on how busy the machine is (wall time does, and ours uses 2 threads).
    report["cpu_speedup_jsonl"] = report["ours_jsonl"]["rows_per_cpu_s"] / base["rows_per_cpu_s"]
    report["cpu_speedup_parquet"] = report["ours_parquet"]["rows_per_cpu_s"] / base["rows_per_cpu_s"]
    report["load_average_1m"] = os.getloadavg()[0]
    report["goal_10x_met"] = min(report["speedup_jsonl_rows_per_s"], report["speedup_parquet_rows_per_s"]) >= 10.0
    report["goal_parquet_under_10s"] = report["ours_parquet"]["seconds"] < 10.0 * args.records / 1_000_000

    rows = [
        ("ours, JSONL, all", report["ours_jsonl"]),
        ("ours, Parquet, all", report["ours_parquet"]),
        ("ours, JSONL, subset", report["ours_subset_jsonl"]),
        ("ours, JSONL, clean subset", report["ours_subset_clean_jsonl"]),
        ("pandas+pydantic, clean subset", base),
    ]
    print(f"{'implementation':<31}{'read':>11}{'quarantined':>13}{'seconds':>9}{'rows/s':>12}"
          f"{'CPU s':>8}{'rows/CPU s':>12}{'peak RSS GB':>13}")
    for label, run in rows:
        print(f"{label:<31}{run['read']:>11,}{run['quarantined']:>13,}{run['seconds']:>9.2f}"
              f"{run['rows_per_s']:>12,.0f}{run['cpu_seconds']:>8.2f}{run['rows_per_cpu_s']:>12,.0f}"
              f"{run['peak_rss_gb']:>13.2f}")
    print(f"speed-up vs baseline (rows/s): JSONL {report['speedup_jsonl_rows_per_s']:.1f}x, "
          f"Parquet {report['speedup_parquet_rows_per_s']:.1f}x; same clean subset {report['speedup_same_subset']:.1f}x "
          f"(baseline timed on {subset_rows:,} rows); per CPU second: JSONL {report['cpu_speedup_jsonl']:.1f}x, "
          f"Parquet {report['cpu_speedup_parquet']:.1f}x; load average {report['load_average_1m']:.1f} on "
          f"{report['cpus']} CPUs")
    print(json.dumps(report, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None))


if __name__ == "__main__":
    main()

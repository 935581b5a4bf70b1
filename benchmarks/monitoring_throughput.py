"""Monitoring throughput: signals (without sampling generation) + drift over one week of records.

    python benchmarks/monitoring_throughput.py [--records 10000000] [--baseline-records 100000] [--json]

Synthesises one week of records with numpy/Arrow (the simulator's knowledge-base questions and refusal
phrases, greetings, personal data, paraphrased re-asks and quick topic switches within 30 s, 3%
thumbs), then times, in the same process:

- ours: tasks.signals.compute_signals + tasks.drift.compute_drift (current = the week's prompts,
  reference = 50k prompts drawn the same way), over all records and over the baseline's subset;
- a plain pandas implementation on a subset (per-row regex with .str.contains, groupby-shift re-ask
  with a per-row Python TF-IDF cosine, Counter-based drift with only 10 null resamples instead of
  200: it does less work than ours, so the ratio is conservative).

Prints a table, then one JSON object as the last line: seconds, rows/s, peak RSS per phase, ratio.

Streaming mode (tasks/partitions.py, monitoring.partition_rows):

    python benchmarks/monitoring_throughput.py --stream 10000000,50000000 [--partition-rows 1000000] \
        [--compare 10000000]

writes each week once as log files (Parquet, 1M records each, in time order; cached under --cache and
reused), then, each in a fresh process, reads them through the log loader chunk by chunk
(tasks.logs.spool, `--chunk-rows` rows at a time), spills them into user-hash partitions and computes
signals + drift (peak RSS of that process); for the `--compare` size also in memory (load_logs, then
compute_signals + compute_drift): the results and the loader's counts must be identical. Rows/s of both
side by side, peak RSS per size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import DriftSettings, SignalsSettings  # noqa: E402
from tasks.contracts import LOG_SCHEMA  # noqa: E402
from tasks.drift import compute_drift  # noqa: E402
from tasks.signals import compute_signals  # noqa: E402

WEEK_US = 7 * 86_400 * 1_000_000
GREETINGS = ["", "", "", "", "Hi! ", "Hello. ", "Hey there. ", "Good morning. ", "Hi team. "]
CONTEXTS = ["", "", "", "", "", "Quick question. ", "I ordered from you before. ", "I'm comparing a few shops. "]
PREFIXES = ["", "", "Let me rephrase. ", "That's not what I asked. ", "Sorry, let me ask again. "]
STYLES = ["", "Sure! ", "Happy to help. "]


# ------------------------------------------------------------------------------------------ memory

def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the resident set size every 20 ms while a phase runs."""

    def __enter__(self):
        self.peak = rss_bytes()
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
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


# ------------------------------------------------------------------------------------------ data

def _kb():
    topics, refusals, unknown = [], [], []
    for version in ("v1", "v2"):
        data = json.loads((ROOT / "data" / "knowledge_base" / f"{version}.json").read_text(encoding="utf-8"))
        for topic in data["topics"]:
            topics.append((topic["questions"], topic["answer"], version))
        for phrases in data.get("refusals", {}).values():
            refusals.extend(phrases)
        for product in data.get("unknown_products", []):
            for q in data.get("unknown_questions", []):
                unknown.append(q.format(product=product))
    return topics, sorted(set(refusals)), sorted(set(unknown))


def _take(values: list[str], idx: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.string()).take(pa.array(idx))


def synth_prompts(rng: np.random.Generator, n: int, questions: list[str], subject_q: np.ndarray | None = None) -> pa.Array:
    """Prompts: greeting + context + question + optional personal data / filler, mostly unique."""
    q = subject_q if subject_q is not None else rng.integers(0, len(questions), n)
    words = [f"{a}{b}" for a in ("al", "be", "co", "da", "el", "fi", "go", "ha", "in", "jo") for b in
             ("ron", "vel", "mas", "tin", "ko", "ra", "dy", "sol", "pe", "nu")]
    pii = rng.random(n)
    email = pc.binary_join_element_wise(
        "My email is ", _take(words, rng.integers(0, len(words), n)),
        pc.cast(pa.array(rng.integers(1, 99_999, n)), pa.string()), "@mail.com.", "")
    phone = pc.binary_join_element_wise(
        "Call me at ", pc.cast(pa.array(rng.integers(200_000_0000, 999_999_9999, n)), pa.string()), ".", "")
    filler = pc.binary_join_element_wise(
        "(", _take(words, rng.integers(0, len(words), n)), " ", _take(words, rng.integers(0, len(words), n)), ")", "")
    tail = pc.if_else(pa.array(pii < 0.08), email, pc.if_else(pa.array(pii < 0.15), phone,
                      pc.if_else(pa.array(pii < 0.6), filler, pa.scalar(""))))
    return pc.binary_join_element_wise(
        _take(GREETINGS, rng.integers(0, len(GREETINGS), n)), _take(CONTEXTS, rng.integers(0, len(CONTEXTS), n)),
        _take(questions, q), " ", tail, "")


def synth_week(n: int, seed: int = 0, span_us: int = WEEK_US) -> tuple[pa.Table, pa.Array]:
    """One week of n records (over the first `span_us` of it) and a 50k-prompt reference drawn from
    the same distribution."""
    rng = np.random.default_rng(seed)
    topics, refusals, unknown = _kb()
    questions, subject_of, answers = [], [], []
    for s, (qs, answer, _) in enumerate(topics):
        for q in qs:
            questions.append(q)
            subject_of.append(s)
        answers.append(answer)
    base_unknown = len(questions)
    questions.extend(unknown)
    subject_of.extend([-1] * len(unknown))
    subject_of = np.array(subject_of)
    n_follow = int(0.08 * n)  # quick second turns: 3/4 re-asks (paraphrases), 1/4 topic switches
    n_first = n - n_follow
    user = rng.integers(0, 200_000, n_first)
    ts = rng.integers(0, span_us - 600_000_000, n_first)
    qidx = np.where(rng.random(n_first) < 0.07, rng.integers(base_unknown, len(questions), n_first),
                    rng.integers(0, base_unknown, n_first))
    latency = np.round(np.exp(rng.normal(6.5, 0.4, n)), 1)
    parent = rng.choice(n_first, n_follow, replace=False)
    is_reask = rng.random(n_follow) < 0.75
    same_subject = subject_of[qidx[parent]]
    # a paraphrase: another question of the same subject (the next one in the list), else any question
    paraphrase = np.where((same_subject >= 0) & (np.roll(subject_of, -1)[qidx[parent]] == same_subject),
                          qidx[parent] + 1, qidx[parent] - 1)
    follow_q = np.where(is_reask, np.clip(paraphrase, 0, len(questions) - 1), rng.integers(0, base_unknown, n_follow))
    all_user = np.concatenate([user, user[parent]])
    all_ts = np.concatenate([ts, ts[parent] + (latency[parent] * 1000).astype(np.int64)
                             + rng.integers(2_000_000, 25_000_000, n_follow)])
    all_q = np.concatenate([qidx, follow_q])
    prompts = synth_prompts(rng, n, questions, all_q)
    prefix = np.where(np.concatenate([np.zeros(n_first, bool), is_reask]), rng.integers(0, len(PREFIXES), n), 0)
    prompts = pc.binary_join_element_wise(_take(PREFIXES, prefix), prompts, "")
    # responses: refusals for unknown products (and 3% of the rest), answers otherwise; unique tails
    subj = subject_of[all_q]
    refuse = (subj < 0) | (rng.random(n) < 0.03)
    answer_text = _take(answers, np.maximum(subj, 0))
    refusal_text = _take(refusals, rng.integers(0, len(refusals), n))
    tail = pc.binary_join_element_wise("Ticket ", pc.cast(pa.array(rng.integers(0, 10**9, n)), pa.string()), ".", "")
    responses = pc.binary_join_element_wise(
        _take(STYLES, rng.integers(0, len(STYLES), n)), pc.if_else(pa.array(refuse), refusal_text, answer_text), " ", tail, "")
    order = np.argsort(all_ts, kind="stable")
    feedback = np.where(rng.random(n) < 0.03, np.where(rng.random(n) < 0.3, -1, 1), 0).astype(np.int8)
    table = pa.table({
        "request_id": pc.binary_join_element_wise("req-", pc.cast(pa.array(np.arange(n)), pa.string()), ""),
        "ts": pa.array(all_ts[order] + 1_767_571_200_000_000, type=pa.timestamp("us", tz="UTC")),
        "user_id": pc.binary_join_element_wise("user-", pc.cast(pa.array(all_user[order]), pa.string()), ""),
        "session_id": pa.nulls(n, pa.string()),
        "prompt": prompts.take(pa.array(order)),
        "response": responses.take(pa.array(order)),
        "model_version": _take(["adapter-3", "adapter-4"], (rng.random(n) < 0.1).astype(np.int64)),
        "latency_ms": pa.array(latency),
        "prompt_tokens": pa.array(rng.integers(5, 60, n)),
        "completion_tokens": pa.array(rng.integers(5, 120, n)),
        "feedback": pa.array(feedback, mask=feedback == 0),
        "correction": pa.nulls(n, pa.string()),
        "metadata": pa.array(["{}"] * 1, type=pa.string()).take(pa.array(np.zeros(n, np.int64))),
    }, schema=LOG_SCHEMA)
    ref_rng = np.random.default_rng(seed + 1)
    ref_q = np.where(ref_rng.random(50_000) < 0.07, ref_rng.integers(base_unknown, len(questions), 50_000),
                     ref_rng.integers(0, base_unknown, 50_000))
    reference = synth_prompts(ref_rng, 50_000, questions, ref_q)
    return table, reference


# ------------------------------------------------------------------------------------------ ours

def ours(table: pa.Table, reference: pa.Array, signals: SignalsSettings, drift: DriftSettings) -> dict:
    out = {}
    with PeakRss() as mem:
        result = compute_signals(table, signals)
    out["signals_s"], out["signals_peak_rss_gb"] = mem.seconds, mem.peak / 1e9
    with PeakRss() as mem:
        d = compute_drift(reference, table.column("prompt"), drift)
    out["drift_s"], out["drift_peak_rss_gb"] = mem.seconds, mem.peak / 1e9
    out["seconds"] = out["signals_s"] + out["drift_s"]
    out["result"] = {k: result[k] for k in ("records", "refusal_count", "reask_count", "thumbs_up", "thumbs_down")}
    out["result"].update(kl=d["kl"], null_kl=d["null_kl"], band=d["band"], alert=d["alert"])
    return out


# ------------------------------------------------------------------------------------------ pandas baseline

def baseline(table: pa.Table, reference: pa.Array, signals: SignalsSettings, drift: DriftSettings) -> dict:
    import pandas as pd
    from sklearn.feature_extraction.text import TfidfVectorizer

    started = time.perf_counter()
    with PeakRss() as mem:
        df = table.to_pandas()
        pattern = "|".join(f"(?:{p})" for p in signals.refusal_patterns)
        refusal = df["response"].str.contains(pattern, case=False, regex=True, na=False)
        df = df.sort_values(["user_id", "ts"], kind="stable")
        prev_user = df["user_id"].shift()
        prev_end = df["ts"].shift() + pd.to_timedelta(df["latency_ms"].shift().fillna(0), unit="ms")
        prev_prompt = df["prompt"].shift()
        prev_refusal = refusal.loc[df.index].shift().fillna(False).astype(bool)
        candidate = (df["user_id"] == prev_user) & ((df["ts"] - prev_end).dt.total_seconds() <= signals.reask_window_s)
        vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 4)).fit(df["prompt"].sample(
            min(len(df), 50_000), random_state=0))
        reasks = 0
        for a, b, refused in zip(prev_prompt[candidate], df["prompt"][candidate], prev_refusal[candidate]):
            va, vb = vectorizer.transform([a]), vectorizer.transform([b])  # per-row similarity
            sim = float(va.multiply(vb).sum())
            if sim >= (0.0 if refused else signals.reask_similarity):
                reasks += 1
        up = int((df["feedback"] == 1).sum())
        down = int((df["feedback"] == -1).sum())

        def tokens(text: str) -> list[str]:
            return re.findall(r"[^\W\d_]+", text.lower())

        ref_lists = [tokens(t) for t in reference.to_pylist()]
        ref_counter = Counter(t for toks in ref_lists for t in toks)
        cur_counter = Counter(t for text in df["prompt"] for t in tokens(text))
        vocab = [t for t, _ in ref_counter.most_common(drift.vocab_size)]
        index = {t: i for i, t in enumerate(vocab)}

        def hist(counter: Counter) -> np.ndarray:
            h = np.zeros(len(vocab) + 1)
            for t, c in counter.items():
                h[index.get(t, len(vocab))] += c
            h += drift.smoothing
            return h / h.sum()

        p, q = hist(cur_counter), hist(ref_counter)
        kl = float(np.sum(p * np.log(p / q)))
        rng = np.random.default_rng(0)
        null = []
        for _ in range(10):  # 10 instead of 200 resamples: the baseline does less work
            sample = Counter()
            for i in rng.integers(0, len(ref_lists), len(df)):
                sample.update(ref_lists[i])
            null.append(float(np.sum(hist(sample) * np.log(hist(sample) / q))))
    return {"seconds": time.perf_counter() - started, "peak_rss_gb": mem.peak / 1e9,
            "result": {"records": len(df), "refusal_count": int(refusal.sum()), "reask_count": reasks,
                       "thumbs_up": up, "thumbs_down": down, "kl": kl, "null_kl": float(np.quantile(null, 0.99))}}


# ------------------------------------------------------------------------------------------ streaming

BLOCK = 1_000_000
BASE_BLOCKS = 5  # distinct synthesised blocks; further blocks reuse them with other users and times
BLOCK_SPAN_US = WEEK_US // 50  # each block's records fall within this span (so 50 blocks fill a week)


def write_week(folder: Path, records: int, seed: int) -> list[Path]:
    """The week as log files the way a writer leaves them: Parquet files of 1M records, each covering
    its own stretch of the week, in time order. Synthesising is slow (about 20 s per 1M here), so
    `BASE_BLOCKS` blocks are drawn (cached under folder/../base) and block b is base b % BASE_BLOCKS
    with its own users (prefix b<b>-), request ids and time offset. Written once; reused when complete."""
    import pyarrow.parquet as pq

    blocks = math.ceil(records / BLOCK)
    files = [folder / f"part-{b:05d}.parquet" for b in range(blocks)]
    done = folder / "complete"
    if done.exists():
        return files
    folder.mkdir(parents=True, exist_ok=True)
    base_folder = folder.parent / "base"
    base_folder.mkdir(parents=True, exist_ok=True)
    stride = WEEK_US // blocks
    for b, path in enumerate(files):
        base = base_folder / f"seed{seed}-{b % BASE_BLOCKS}.parquet"
        if not base.exists():
            table, _ = synth_week(BLOCK, seed + b % BASE_BLOCKS, span_us=BLOCK_SPAN_US)
            pq.write_table(table, base.with_suffix(".tmp"))
            base.with_suffix(".tmp").rename(base)
        table = pq.read_table(base).slice(0, min(BLOCK, records - b * BLOCK))
        users = pc.binary_join_element_wise(f"b{b}-", table.column("user_id"), "")
        ids = pc.binary_join_element_wise(f"b{b}-", table.column("request_id"), "")
        ts = pc.add(table.column("ts").cast(pa.int64()), b * stride).cast(table.schema.field("ts").type)
        for name, column in (("user_id", users), ("request_id", ids), ("ts", ts)):
            table = table.set_column(table.schema.get_field_index(name), name, column)
        pq.write_table(table, path)
    done.write_text("")
    return files


def child(mode: str, folder: Path, partition_rows: int, chunk_rows: int, seed: int) -> dict:
    """One measurement in this (fresh) process: peak RSS is the process's own high-water mark. Both
    modes read the week's files through the log loader (validation, quarantine accounting)."""
    import resource
    import tempfile

    from tasks.config import LogsSettings
    from tasks.drift import prepare_reference
    from tasks.logs import load_logs
    from tasks.logs.spool import spool_logs
    from tasks.partitions import COLUMNS, partition_count, partitioned_signals_and_drift, spill_partitions

    signals, drift, logs = SignalsSettings(), DriftSettings(), LogsSettings()
    _, reference = synth_week(1_000, seed)  # the 50k reference prompts of the blocks' distribution
    started = time.perf_counter()
    phases = {}
    if mode == "memory":
        loaded = load_logs([folder / "*.parquet"], logs)
        counts = loaded.summary()
        phases["load_s"] = time.perf_counter() - started
        table = loaded.table
        found = compute_signals(table, signals)
        d = compute_drift(reference, table.column("prompt"), drift)
    else:
        with tempfile.TemporaryDirectory(dir=folder.parent) as work:
            spooled = spool_logs([folder / "*.parquet"], logs, Path(work) / "spool", chunk_rows=chunk_rows)
            counts = spooled.result.summary() | {"selected": spooled.rows}
            phases["load_s"] = time.perf_counter() - started
            rows = spooled.rows
            spilled = spill_partitions(spooled.batches(COLUMNS), Path(work) / "partitions",
                                       partition_count(rows, partition_rows), total_rows=rows, settings=signals)
            phases["spill_s"] = time.perf_counter() - started - phases["load_s"]
            found, d, _ = partitioned_signals_and_drift(spilled["paths"], spilled, signals, drift,
                                                        prepare_reference(reference, drift))
        phases["in_order"] = spooled.in_order
    seconds = time.perf_counter() - started
    return {"mode": mode, "records": found["records"], "seconds": seconds, "phases": phases,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "arrow_pool": pa.default_memory_pool().backend_name,
            "load": {k: counts[k] for k in ("read", "accepted", "quarantined", "reasons", "selected")},
            "signals": {k: v for k, v in found.items() if k != "hallucination"}, "drift": d}


def stream_main(args: argparse.Namespace) -> None:
    import subprocess

    sizes = [int(x) for x in args.stream.split(",")]
    report: dict = {"partition_rows": args.partition_rows, "chunk_rows": args.chunk_rows, "cpus": os.cpu_count(),
                    "runs": []}
    results = {}
    cache = Path(args.cache)
    env = dict(os.environ)
    if args.arrow_pool:
        env["ARROW_DEFAULT_MEMORY_POOL"] = args.arrow_pool
    for records in sizes:
        folder = cache / f"week-{records}-seed{args.seed}"
        started = time.perf_counter()
        write_week(folder, records, args.seed)
        print(f"{records:,} records in {folder} ({time.perf_counter() - started:.0f} s to write or find)",
              file=sys.stderr)
        for mode in (["stream", "memory"] if records == args.compare else ["stream"]):
            out = cache / f"{mode}-{records}.json"
            subprocess.run([sys.executable, __file__, "--child", mode, "--child-folder", str(folder), "--child-out",
                            str(out), "--partition-rows", str(args.partition_rows), "--chunk-rows",
                            str(args.chunk_rows), "--seed", str(args.seed)], check=True, env=env)
            run = json.loads(out.read_text())
            results[(mode, records)] = run
            report["runs"].append({k: run[k] for k in ("mode", "records", "seconds", "peak_rss_gb", "phases",
                                                       "arrow_pool", "load")}
                                  | {"rows_per_s": run["records"] / run["seconds"]})
            print(json.dumps(report["runs"][-1]), file=sys.stderr)
    if args.compare in sizes:
        stream, memory = results[("stream", args.compare)], results[("memory", args.compare)]
        report["identical_to_memory"] = all(stream[key] == memory[key] for key in ("signals", "drift", "load"))
    peaks = [r["peak_rss_gb"] for r in report["runs"] if r["mode"] == "stream"]
    report["stream_peak_ratio"] = max(peaks) / min(peaks)
    report["stream_within_20pct_and_2gb"] = report["stream_peak_ratio"] <= 1.2 and max(peaks) <= 2.0
    print(f"{'mode':<10}{'records':>14}{'seconds':>10}{'rows/s':>12}{'peak RSS GB':>13}")
    for r in report["runs"]:
        print(f"{r['mode']:<10}{r['records']:>14,}{r['seconds']:>10.1f}{r['rows_per_s']:>12,.0f}{r['peak_rss_gb']:>13.2f}")
    print(f"streaming peak RSS max/min {report['stream_peak_ratio']:.2f}; identical to in-memory: "
          f"{report.get('identical_to_memory')}")
    print(json.dumps(report))


# ------------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--baseline-records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", default=None, help="streaming mode: comma-separated week sizes, e.g. 10000000,50000000")
    parser.add_argument("--partition-rows", type=int, default=1_000_000)
    parser.add_argument("--compare", type=int, default=10_000_000, help="streaming mode: also run this size in memory")
    parser.add_argument("--chunk-rows", type=int, default=250_000,
                        help="streaming mode: rows the loader reads and spills at a time")
    parser.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "flywheel-monitoring-weeks"),
                        help="streaming mode: where the week files are written once and reused")
    parser.add_argument("--arrow-pool", choices=["jemalloc", "mimalloc", "system"], default=None,
                        help="streaming mode: Arrow's memory pool in the measured processes (default: Arrow's)")
    parser.add_argument("--child", choices=["stream", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--child-folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.child_out.write_text(json.dumps(child(args.child, args.child_folder, args.partition_rows,
                                                   args.chunk_rows, args.seed), default=str))
        return
    if args.stream:
        stream_main(args)
        return
    signals, drift = SignalsSettings(), DriftSettings()
    report: dict = {"records": args.records, "cpus": os.cpu_count()}

    with PeakRss() as mem:
        table, reference = synth_week(args.records, args.seed)
    report["synth_s"], report["rss_after_data_gb"] = round(mem.seconds, 2), rss_bytes() / 1e9
    print(f"synthesised {args.records:,} records in {mem.seconds:.1f} s", file=sys.stderr)

    full = ours(table, reference, signals, drift)
    report["ours"] = full
    subset = table.slice(0, min(args.baseline_records, table.num_rows))
    # a subset: a contiguous time slice keeps users' turns together
    report["ours_subset"] = ours(subset, reference, signals, drift)
    report["baseline_subset"] = baseline(subset, reference, signals, drift)
    rows_s = args.records / full["seconds"]
    base_rows_s = subset.num_rows / report["baseline_subset"]["seconds"]
    report["ours_rows_per_s"] = rows_s
    report["baseline_rows_per_s"] = base_rows_s
    report["speedup_rows_per_s"] = rows_s / base_rows_s
    report["speedup_same_subset"] = report["baseline_subset"]["seconds"] / report["ours_subset"]["seconds"]
    report["goal_60s_met"] = full["seconds"] <= 60.0
    report["goal_10x_met"] = report["speedup_rows_per_s"] >= 10.0

    rows = [
        ("ours, all records", args.records, full["seconds"], rows_s, max(full["signals_peak_rss_gb"], full["drift_peak_rss_gb"])),
        ("ours, subset", subset.num_rows, report["ours_subset"]["seconds"], subset.num_rows / report["ours_subset"]["seconds"],
         max(report["ours_subset"]["signals_peak_rss_gb"], report["ours_subset"]["drift_peak_rss_gb"])),
        ("pandas baseline, subset", subset.num_rows, report["baseline_subset"]["seconds"], base_rows_s,
         report["baseline_subset"]["peak_rss_gb"]),
    ]
    print(f"{'implementation':<26}{'records':>12}{'seconds':>10}{'rows/s':>14}{'peak RSS GB':>13}")
    for name, n, s, r, m in rows:
        print(f"{name:<26}{n:>12,}{s:>10.2f}{r:>14,.0f}{m:>13.2f}")
    print(f"signals {full['signals_s']:.2f} s + drift {full['drift_s']:.2f} s; speed-up (rows/s) "
          f"{report['speedup_rows_per_s']:.1f}x, same subset {report['speedup_same_subset']:.1f}x")
    print(json.dumps(report, default=lambda o: o if not isinstance(o, float) or math.isfinite(o) else None))


if __name__ == "__main__":
    main()

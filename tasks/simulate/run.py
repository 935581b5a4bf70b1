"""A simulated quarter on disk: `simulate` writes logs and ground truth, `outcome_summary` reads them back.

simulate() writes out_dir/logs/ (one file per UTC day, through tasks.logs.LogWriter),
ground_truth.jsonl (one row per request, in log order) and ground_truth.json (seed, dates, counts per
week); outcome_summary() counts what really happened in some weeks from the ground truth.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel

from tasks.config import SimulateSettings
from tasks.contracts import Generator
from tasks.files import read_jsonl
from tasks.simulate._lines import truth_line
from tasks.simulate.policy import default_model
from tasks.simulate.traffic import World, simulate_week


class SimulationResult(BaseModel):
    records: int
    files: list[str]
    ground_truth: str
    ground_truth_summary: str
    launch_week: int
    launch_date: str
    weeks: list[int]
    model_version: str
    counts: dict[str, int]
    seconds: float
    records_per_s: float


def simulate(
    settings: SimulateSettings,
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    model: Generator | None = None,
    weeks: Iterable[int] | None = None,
    append: bool = False,
) -> SimulationResult:
    """Simulate `weeks` (default 1..settings.weeks) into out_dir: logs/ (one file per UTC day through
    tasks.logs.LogWriter, in `settings.format`), ground_truth.jsonl (one row per request, in log order)
    and ground_truth.json (seed, dates, counts per week).

    `model` answers the traffic (default: the scripted model that knows knowledge base v1).
    Without `append`, an earlier simulation in out_dir is replaced; with it, the weeks are added to it
    (the demo simulates week by week with the current champion answering).
    """
    from tasks.logs import LogWriter  # duckdb and pyarrow: loaded when a simulation runs, not on import

    started = time.perf_counter()
    out_dir = Path(out_dir)
    logs_dir = out_dir / "logs"
    truth_path, summary_path = out_dir / "ground_truth.jsonl", out_dir / "ground_truth.json"
    week_list = sorted(set(int(w) for w in weeks)) if weeks is not None else list(range(1, settings.weeks + 1))
    if not week_list or week_list[0] < 1:
        raise ValueError(f"weeks must be numbers from 1 on, got {week_list}")
    previous: dict[str, Any] = {}
    if append and summary_path.is_file():
        previous = json.loads(summary_path.read_text(encoding="utf-8"))
        again = sorted(set(week_list) & set(previous.get("weeks", [])))
        if again:
            raise ValueError(f"{out_dir} already holds simulated weeks {again}: simulate other weeks or drop append")
        if previous.get("seed") != settings.seed or previous.get("start") != settings.start:
            raise ValueError(f"{out_dir} was simulated with seed {previous.get('seed')} from {previous.get('start')}; "
                             f"appending seed {settings.seed} from {settings.start} would mix two worlds")
    elif logs_dir.is_dir():
        old = sorted(p for p in logs_dir.iterdir() if p.suffix in (".jsonl", ".parquet"))
        if old and not summary_path.is_file():
            raise FileExistsError(f"{logs_dir} holds log files the simulator did not write: choose an empty --out "
                                  "directory")
        for path in old:  # an earlier simulation's days: replaced, so that reruns give identical files
            path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    world = World.create(settings, data_dir)
    model = model or default_model(settings, world.data_dir)
    writer = LogWriter(logs_dir, fmt=settings.format)
    totals: Counter[str] = Counter()
    per_week: dict[str, dict[str, int]] = dict(previous.get("per_week", {}))
    versions: dict[str, str] = dict(previous.get("model_versions", {}))
    with truth_path.open("a" if append else "w", encoding="utf-8", newline="\n") as handle:
        for week in week_list:
            traffic = simulate_week(world, week, model)
            writer.append(traffic.records)
            handle.write("".join([truth_line(row) + "\n" for row in traffic.truth]))
            per_week[str(week)] = traffic.counts
            versions[str(week)] = model.model_version
            totals.update(traffic.counts)
    files = [str(p) for p in writer.close()]
    all_weeks = sorted(set(week_list) | set(previous.get("weeks", [])))
    overall: Counter[str] = Counter()
    for counts in per_week.values():
        overall.update(counts)
    summary = {
        "seed": settings.seed, "start": settings.start, "weeks": all_weeks, "launch_week": settings.launch_week,
        "launch_date": world.launch_date.date().isoformat(), "records_per_week": settings.records_per_week,
        "format": settings.format, "model_versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0]))),
        "counts": dict(overall), "per_week": dict(sorted(per_week.items(), key=lambda kv: int(kv[0]))),
        "settings": settings.model_dump(mode="json"),
    }
    summary_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - started
    return SimulationResult(records=totals["records"], files=files, ground_truth=str(truth_path),
                            ground_truth_summary=str(summary_path), launch_week=settings.launch_week,
                            launch_date=summary["launch_date"], weeks=week_list, model_version=model.model_version,
                            counts=dict(totals), seconds=round(seconds, 3),
                            records_per_s=round(totals["records"] / seconds, 1) if seconds > 0 else 0.0)


def outcome_summary(truth_path: Path, weeks: Iterable[int]) -> dict[str, Any]:
    """What really happened in the simulated `weeks`, from the ground truth: the share of requests
    answered correctly, refused and answered wrongly (made up or mistaken), overall and for the topics of knowledge base
    v2 (the products launched mid-quarter). Shares are None when there is nothing to count."""
    wanted = set(weeks)
    counts: Counter[str] = Counter()
    for _, row in read_jsonl(truth_path):
        if row["week"] not in wanted:
            continue
        counts["records"] += 1
        counts[row["outcome"]] += 1
        if row["kb_version"] == "v2":
            counts["new_topic_records"] += 1
            counts[f"new_topic_{row['outcome']}"] += 1

    def share(part: str, whole: str) -> float | None:
        return round(counts[part] / counts[whole], 4) if counts[whole] else None

    return {
        "weeks": sorted(wanted),
        "records": counts["records"],
        "accuracy": share("correct", "records"),
        "refusal_share": share("refusal", "records"),
        "wrong_share": share("wrong", "records"),
        "new_topic_records": counts["new_topic_records"],
        "new_topic_accuracy": share("new_topic_correct", "new_topic_records"),
        "new_topic_refusal_share": share("new_topic_refusal", "new_topic_records"),
    }

"""Detector quality against the simulator's ground truth (issue #3, items 1-2).

    python benchmarks/detector_quality.py [--seed 7] [--weeks 13] [--null-weeks 200] [--holdout-seed 11]

- refusal and re-ask precision / recall over a simulated quarter (launch of knowledge base v2 in
  week `simulate.launch_week`), per week and overall; the defaults of `signals.reask_similarity*`
  were chosen on a few weeks of seed 7, so the same figures are also given on a held-out seed;
- drift false-alarm rate over `--null-weeks` simulated weeks without any launch (the reference: the
  prompts of weeks 1-2, i.e. the traffic the champion was trained on), with the null-baseline-only
  rate beside it (kl > null_kl, whatever the band), which shows the baseline's calibration;
- launch detection: the first week whose drift alert fires (goal: the launch week or the one after).

The simulator is used in memory (`tasks.simulate.simulate_week`), exactly as `simulate()` writes it.
Prints a table per part, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import DriftSettings, SignalsSettings, SimulateSettings  # noqa: E402
from tasks.contracts import LOG_SCHEMA  # noqa: E402
from tasks.drift import compute_drift  # noqa: E402
from tasks.signals import detect_reasks, detect_refusals, wilson_interval  # noqa: E402
from tasks.simulate import World, default_model, simulate_week  # noqa: E402


def week_table(world: World, week: int, model) -> tuple[pa.Table, list[dict]]:
    traffic = simulate_week(world, week, model)
    records = [dict(r, metadata=json.dumps(r["metadata"])) for r in traffic.records]
    return pa.Table.from_pylist(records, schema=LOG_SCHEMA), traffic.truth


def pr(tp: int, fp: int, fn: int) -> dict:
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
            "precision_ci": list(wilson_interval(tp, tp + fp)) if tp + fp else None,
            "recall_ci": list(wilson_interval(tp, tp + fn)) if tp + fn else None}


def classification(seed: int, weeks: int, signals: SignalsSettings) -> dict:
    settings = SimulateSettings(seed=seed, weeks=weeks)
    world = World.create(settings)
    model = default_model(settings)
    per_week, totals = [], {"refusal": [0, 0, 0], "reask": [0, 0, 0], "reask_link": [0, 0, 0]}
    for week in range(1, weeks + 1):
        table, truth = week_table(world, week, model)
        refusal = detect_refusals(table.column("response"), signals)
        true_refusal = np.array([t["is_refusal"] for t in truth])
        row_of = {r: i for i, r in enumerate(table.column("request_id").to_pylist())}
        true_of = np.array([row_of[t["reask_of"]] if t["reask_of"] else -1 for t in truth])
        found_of = detect_reasks(table, signals)
        counts = {
            "refusal": [int((refusal & true_refusal).sum()), int((refusal & ~true_refusal).sum()),
                        int((~refusal & true_refusal).sum())],
            # is this prompt a re-ask (the reask_count)
            "reask": [int(((found_of >= 0) & (true_of >= 0)).sum()), int(((found_of >= 0) & (true_of < 0)).sum()),
                      int(((found_of < 0) & (true_of >= 0)).sum())],
            # ... and of the right earlier prompt
            "reask_link": [int(((found_of >= 0) & (found_of == true_of)).sum()),
                           int(((found_of >= 0) & (found_of != true_of)).sum()),
                           int(((true_of >= 0) & (found_of != true_of)).sum())],
        }
        for key, (tp, fp, fn) in counts.items():
            totals[key][0] += tp
            totals[key][1] += fp
            totals[key][2] += fn
        per_week.append({"week": week, "records": table.num_rows, "true_refusals": int(true_refusal.sum()),
                         "true_reasks": int((true_of >= 0).sum()),
                         **{k: pr(*v) for k, v in counts.items()}})
    return {"seed": seed, "weeks": weeks, "per_week": per_week, "overall": {k: pr(*v) for k, v in totals.items()}}


def drift_quality(seed: int, weeks: int, null_weeks: int, drift: DriftSettings) -> dict:
    settings = SimulateSettings(seed=seed, weeks=weeks)
    world = World.create(settings)
    model = default_model(settings)
    reference = [r["prompt"] for w in (1, 2) for r in simulate_week(world, w, model).records]
    # the quarter with its launch
    quarter = []
    for week in range(3, weeks + 1):
        current = [r["prompt"] for r in simulate_week(world, week, model).records]
        result = compute_drift(reference, current, drift, seed=week)
        quarter.append({"week": week, "kl": result["kl"], "null_kl": result["null_kl"], "band": result["band"],
                        "alert": result["alert"], "top_terms": [t["term"] for t in result["top_terms"][:5]]})
    first_alert = next((q["week"] for q in quarter if q["alert"]), None)
    # no-change weeks: the same world with the launch moved out of reach
    calm = World.create(settings.model_copy(update={"launch_week": 10_000, "weeks": 1}))
    calm_model = default_model(calm.settings)
    kls, alerts, null_only, bands = [], 0, 0, {}
    started = time.perf_counter()
    for week in range(3, 3 + null_weeks):
        current = [r["prompt"] for r in simulate_week(calm, week, calm_model).records]
        result = compute_drift(reference, current, drift, seed=week)
        kls.append(result["kl"])
        alerts += int(result["alert"])
        null_only += int(result["kl"] > result["null_kl"])
        bands[result["band"]] = bands.get(result["band"], 0) + 1
    return {
        "seed": seed, "reference_prompts": len(reference), "launch_week": settings.launch_week,
        "quarter": quarter, "first_alert_week": first_alert,
        "launch_detected": first_alert in (settings.launch_week, settings.launch_week + 1)
        and not any(q["alert"] for q in quarter if q["week"] < settings.launch_week),
        "no_change_weeks": null_weeks, "false_alarms": alerts, "false_alarm_rate": alerts / null_weeks,
        "false_alarm_rate_ci": list(wilson_interval(alerts, null_weeks)),
        "null_baseline_only_rate": null_only / null_weeks, "bands": bands,
        "no_change_kl": {"mean": float(np.mean(kls)), "p99": float(np.quantile(kls, 0.99)), "max": float(np.max(kls))},
        "no_change_seconds": time.perf_counter() - started,
    }


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--holdout-seed", type=int, default=11)
    parser.add_argument("--weeks", type=int, default=13)
    parser.add_argument("--null-weeks", type=int, default=200)
    args = parser.parse_args()
    signals, drift = SignalsSettings(), DriftSettings()
    started = time.perf_counter()
    report = {
        "signals_settings": signals.model_dump(mode="json", exclude={"refusal_patterns"}),
        "drift_settings": drift.model_dump(mode="json"),
        "classification": classification(args.seed, args.weeks, signals),
        "classification_holdout": classification(args.holdout_seed, args.weeks, signals),
        "drift": drift_quality(args.seed, args.weeks, args.null_weeks, drift),
    }
    report["seconds"] = time.perf_counter() - started

    print(f"{'detector':<22}{'seed':>6}{'precision':>11}{'recall':>9}{'tp':>7}{'fp':>6}{'fn':>6}")
    for key in ("classification", "classification_holdout"):
        part = report[key]
        for name in ("refusal", "reask", "reask_link"):
            o = part["overall"][name]
            print(f"{name:<22}{part['seed']:>6}{fmt(o['precision']):>11}{fmt(o['recall']):>9}{o['tp']:>7}{o['fp']:>6}{o['fn']:>6}")
    d = report["drift"]
    print(f"\n{'week':>5}{'kl':>9}{'null_kl':>9}  band      alert  top terms")
    for q in d["quarter"]:
        print(f"{q['week']:>5}{q['kl']:>9.4f}{q['null_kl']:>9.4f}  {q['band']:<9} {str(q['alert']):<6} {', '.join(q['top_terms'])}")
    print(f"\nlaunch week {d['launch_week']}: first alert in week {d['first_alert_week']} (detected: {d['launch_detected']})")
    print(f"no-change weeks: {d['no_change_weeks']}, false alarms {d['false_alarms']} "
          f"({d['false_alarm_rate']:.3%}, 95% CI {d['false_alarm_rate_ci'][0]:.3%}-{d['false_alarm_rate_ci'][1]:.3%}); "
          f"null-baseline-only rate {d['null_baseline_only_rate']:.3%}; bands {d['bands']}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

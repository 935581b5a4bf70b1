"""Quality signals over a window of production logs (DESIGN.md section 8).

Four signals, overall and per model_version, every rate with a Wilson 95% interval:

- refusal (tasks/refusal.py): full refusals by phrase patterns plus the shipped classifier; partial
  refusals (refusal language, but the response answers anyway) are counted separately;
- re-ask (tasks/reask.py): the same user asks the same thing again within `reask_window_s` of the
  end of the previous response; a follow-up that builds on the answer is not a re-ask;
- thumbs: up, down, down-rate over rated records and feedback coverage over all records;
- hallucination risk: self-consistency of k samples through the `Generator` interface for a sample of
  prompts, plus a reference check where the knowledge base knows the answer.

Everything is vectorised over Arrow/numpy/scipy.sparse (`benchmarks/monitoring_throughput.py` times
10M records of one week against a plain pandas implementation).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.config import SignalsSettings
from tasks.contracts import Generator
from tasks.reask import EMBEDDINGS_HINT, dictionary_codes, embed_texts, pair_similarity, detect_reasks
from tasks.refusal import FULL, PARTIAL, classify_refusals, detect_refusals

# What other stages and the benchmarks import from here (the signals' public names).
__all__ = [
    "EMBEDDINGS_HINT", "compute_signals", "hallucination_sample", "merge_signal_counts", "signal_counts", "signals_from_counts", "detect_reasks", "detect_refusals", "classify_refusals", "embed_texts",
    "pair_similarity", "self_consistency", "wilson_interval",
]


# --------------------------------------------------------------------------------------------------
# statistics


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n. With n == 0 nothing is known: (0.0, 1.0)."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return (low, high)


def _rate(k: int, n: int) -> tuple[float | None, list[float] | None]:
    """A rate and its Wilson interval; both None (not 0, not NaN) when the denominator is 0."""
    if n == 0:
        return None, None
    low, high = wilson_interval(int(k), int(n))
    return float(k) / float(n), [low, high]


# --------------------------------------------------------------------------------------------------
# hallucination risk


_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _reference_agreement(sample: str, reference: str) -> float:
    """Share of the reference's distinct word tokens that the sample contains (recall of facts)."""
    ref_tokens = set(_WORD.findall(reference.lower()))
    if not ref_tokens:
        return 1.0
    return len(ref_tokens & set(_WORD.findall((sample or "").lower()))) / len(ref_tokens)


def self_consistency(
    generator: Generator,
    prompts: Sequence[str],
    settings: SignalsSettings,
    references: Sequence[str | None] | None = None,
    seed: int = 0,
) -> dict:
    """Self-consistency over `consistency_samples` samples per prompt at `consistency_temperature`:
    the mean pairwise similarity (char n-gram TF-IDF cosine) of the samples. A score below
    `consistency_threshold` puts the prompt at risk. Consistency is not factuality: where a reference
    answer is given, the samples' recall of its word tokens is checked as well (below the same
    threshold: a mismatch). Per-prompt entries carry the prompt's index, never its text."""
    prompts = list(prompts)
    if references is not None and len(references) != len(prompts):
        raise ValueError(f"self_consistency: {len(references)} references for {len(prompts)} prompts")
    k = settings.consistency_samples
    per_prompt: list[dict[str, Any]] = []
    if prompts:
        outputs = generator.generate(prompts, n=k, temperature=settings.consistency_temperature, seed=seed)
        if len(outputs) != len(prompts):
            raise ValueError(f"generator returned {len(outputs)} answers for {len(prompts)} prompts")
        samples = [[s if isinstance(s, str) else "" for s in (out or [])] for out in outputs]
        texts = [s for group in samples for s in group]
        firsts = np.cumsum([0] + [len(g) for g in samples])
        left, right, owner = [], [], []
        for i, group in enumerate(samples):
            for x in range(len(group)):
                for y in range(x + 1, len(group)):
                    left.append(firsts[i] + x)
                    right.append(firsts[i] + y)
                    owner.append(i)
        if left:
            sims = pair_similarity(
                [texts[j] for j in left], [texts[j] for j in right], settings.model_copy(update={"reask_backend": "tfidf"})
            )
        else:
            sims = np.zeros(0)
        owner_arr = np.asarray(owner, dtype=np.int64)
        sums = np.bincount(owner_arr, weights=sims, minlength=len(prompts))
        counts = np.bincount(owner_arr, minlength=len(prompts))
        for i in range(len(prompts)):
            score = float(sums[i] / counts[i]) if counts[i] else (1.0 if len(samples[i]) == 1 else 0.0)
            entry: dict[str, Any] = {
                "index": i,
                "samples": len(samples[i]),
                "score": score,
                "at_risk": bool(score < settings.consistency_threshold),
                "reference_agreement": None,
                "reference_mismatch": None,
            }
            reference = references[i] if references is not None else None
            if reference:
                agreement = float(np.mean([_reference_agreement(s, reference) for s in samples[i]])) if samples[i] else 0.0
                entry["reference_agreement"] = agreement
                entry["reference_mismatch"] = bool(agreement < settings.consistency_threshold)
            per_prompt.append(entry)
    n = len(per_prompt)
    at_risk = sum(e["at_risk"] for e in per_prompt)
    checked = [e for e in per_prompt if e["reference_agreement"] is not None]
    mismatches = sum(e["reference_mismatch"] for e in checked)
    flagged = sum(e["at_risk"] or bool(e["reference_mismatch"]) for e in per_prompt)
    at_risk_rate, at_risk_ci = _rate(at_risk, n)
    mismatch_rate, mismatch_ci = _rate(mismatches, len(checked))
    flagged_rate, flagged_ci = _rate(flagged, n)
    return {
        "model_version": getattr(generator, "model_version", None),
        "prompts": n,
        "samples_per_prompt": k,
        "temperature": settings.consistency_temperature,
        "threshold": settings.consistency_threshold,
        "mean_score": float(np.mean([e["score"] for e in per_prompt])) if n else None,
        "at_risk_count": int(at_risk),
        "at_risk_rate": at_risk_rate,
        "at_risk_rate_ci": at_risk_ci,
        "reference_checked": len(checked),
        "mean_reference_agreement": (
            float(np.mean([e["reference_agreement"] for e in checked])) if checked else None
        ),
        "reference_mismatch_count": int(mismatches),
        "reference_mismatch_rate": mismatch_rate,
        "reference_mismatch_rate_ci": mismatch_ci,
        "flagged_count": int(flagged),
        "flagged_rate": flagged_rate,
        "flagged_rate_ci": flagged_ci,
        "per_prompt": per_prompt,
    }


# --------------------------------------------------------------------------------------------------
# all signals


def _summary(records: int, refusals: int, partial: int, reasks: int, up: int, down: int) -> dict[str, Any]:
    rated = up + down
    out: dict[str, Any] = {"records": int(records)}
    out["refusal_count"] = int(refusals)
    out["refusal_rate"], out["refusal_rate_ci"] = _rate(refusals, records)
    out["partial_refusal_count"] = int(partial)
    out["partial_refusal_rate"], out["partial_refusal_rate_ci"] = _rate(partial, records)
    out["reask_count"] = int(reasks)
    out["reask_rate"], out["reask_rate_ci"] = _rate(reasks, records)
    out["thumbs_up"] = int(up)
    out["thumbs_down"] = int(down)
    out["rated"] = int(rated)
    out["thumbs_down_rate"], out["thumbs_down_rate_ci"] = _rate(down, rated)
    out["feedback_coverage"], out["feedback_coverage_ci"] = _rate(rated, records)
    return out


def signal_counts(table: pa.Table, settings: SignalsSettings, *, idf_corpus: pa.ChunkedArray | None = None) -> dict:
    """The sufficient statistics of the rate signals over a table in contracts.LOG_SCHEMA: counts
    overall and per model_version label. Counts of disjoint tables add up (`merge_signal_counts`) to
    those of their union, as long as every user's rows are in one table (re-asks pair a user's
    consecutive prompts). `idf_corpus`: the re-ask TF-IDF's IDF corpus when the table is part of a
    larger window (reask_backend: tfidf)."""
    missing = [c for c in ("user_id", "ts", "prompt", "response", "model_version") if c not in table.column_names]
    if missing:
        raise ValueError(f"compute_signals: the log table lacks column(s) {missing}; expected contracts.LOG_SCHEMA")
    n = table.num_rows
    kinds = classify_refusals(table.column("response"), settings)
    refusal, partial = kinds == FULL, kinds == PARTIAL
    reask_of = detect_reasks(table, settings, refused=refusal, idf_corpus=idf_corpus)
    if "feedback" in table.column_names:
        feedback = table.column("feedback").cast(pa.int8()).fill_null(0).to_numpy()
    else:
        feedback = np.zeros(n, dtype=np.int8)
    up_mask = feedback == 1
    down_mask = feedback == -1
    reask_rows = np.flatnonzero(reask_of >= 0)
    # per label: records, full refusals, partial refusals, re-asks (of that version's answers), up, down
    counts: dict[str, Any] = {"all": [n, int(refusal.sum()), int(partial.sum()), len(reask_rows), int(up_mask.sum()),
                                      int(down_mask.sum())], "by_model_version": {}}
    if n:
        versions, names = dictionary_codes(table.column("model_version"))
        slots = versions + 1  # null version -> slot 0
        size = len(names) + 1
        columns = [np.bincount(slots, minlength=size), np.bincount(slots, weights=refusal, minlength=size),
                   np.bincount(slots, weights=partial, minlength=size),
                   np.bincount(slots[reask_of[reask_rows]], minlength=size),
                   np.bincount(slots, weights=up_mask, minlength=size), np.bincount(slots, weights=down_mask, minlength=size)]
        labels = ["<unknown>"] + [str(v) for v in names]
        for slot, label in enumerate(labels):
            if columns[0][slot]:
                counts["by_model_version"][label] = [int(column[slot]) for column in columns]
    return counts


def merge_signal_counts(parts: Sequence[dict]) -> dict:
    """The counts of the union of tables that each hold all the rows of their users."""
    merged: dict[str, Any] = {"all": [0] * 6, "by_model_version": {}}
    for part in parts:
        merged["all"] = [a + b for a, b in zip(merged["all"], part["all"])]
        for label, values in part["by_model_version"].items():
            mine = merged["by_model_version"].setdefault(label, [0] * 6)
            merged["by_model_version"][label] = [a + b for a, b in zip(mine, values)]
    return merged


def signals_from_counts(counts: dict) -> dict:
    """Rates with Wilson intervals, overall and per model_version (sorted by label), from the counts."""
    result = _summary(*counts["all"])
    result["by_model_version"] = {label: _summary(*counts["by_model_version"][label])
                                  for label in sorted(counts["by_model_version"])}
    return result


def compute_signals(
    table: pa.Table,
    settings: SignalsSettings,
    *,
    generator: Generator | None = None,
    references: Mapping[str, str] | None = None,
    seed: int = 0,
) -> dict:
    """The four signals over a window of logs (a table in contracts.LOG_SCHEMA), overall and per
    model_version. Rates are None when their denominator is 0 (e.g. no feedback at all).
    `refusal_*` counts full refusals; `partial_refusal_*` the responses with refusal language that
    answer anyway (they are not in refusal_count).

    Re-asks count against the model version whose answer was re-asked (the earlier row), so the
    per-version counts add up to the overall one. `hallucination` is None without a generator; with
    one, `consistency_prompts` rows are sampled (seeded) and their prompts checked through it;
    `references` maps a prompt's text to the answer the knowledge base knows for it.
    """
    result = signals_from_counts(signal_counts(table, settings))
    result["hallucination"] = hallucination_sample(table, settings, generator, references, seed)
    return result


def hallucination_sample(table: pa.Table, settings: SignalsSettings, generator: Generator | None,
                         references: Mapping[str, str] | None = None, seed: int = 0) -> dict | None:
    """Self-consistency of `consistency_prompts` distinct prompts drawn (seeded) from the window's
    rows; None without a generator."""
    n = table.num_rows
    if generator is None or settings.consistency_prompts == 0 or n == 0:
        return None
    rng = np.random.default_rng(seed)
    rows = rng.permutation(n)
    chosen: list[str] = []
    seen: set[str] = set()
    for start in range(0, n, 4 * settings.consistency_prompts):
        block = table.take(pa.array(rows[start : start + 4 * settings.consistency_prompts])).column("prompt").to_pylist()
        for prompt in block:
            if prompt and prompt not in seen:
                seen.add(prompt)
                chosen.append(prompt)
                if len(chosen) == settings.consistency_prompts:
                    break
        if len(chosen) == settings.consistency_prompts:
            break
    refs = [references.get(p) for p in chosen] if references else None
    return self_consistency(generator, chosen, settings, refs, seed=seed)

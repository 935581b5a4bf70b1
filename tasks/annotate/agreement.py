"""Inter-annotator agreement and the gate it decides (DESIGN.md section 8).

agreement           nominal Krippendorff's alpha (missing ratings allowed; `krippendorff` package) with a
                    bootstrap interval over items, Fleiss' kappa, Cohen's kappa, per-label agreement
gate_decision       alpha >= pass_alpha: pass; >= block_alpha: filter; below, or undefined: block
decision_reason     that decision in a sentence (why alpha is undefined, when it is)
agreement_from_file `flywheel agreement`: the ratings import would keep, every exclusion explained
score_agreement     the gate as a recorded decision: agreement.json, adjudication.jsonl, curated.jsonl

Adjudication loop: a person resolves the items in adjudication.jsonl and hands the verdicts back as
annotations from the annotator named by `annotation.adjudicator` (for instance a CSV
`item,annotator,label,corrected_response`), imported together with the original exports. The
adjudicator's label wins for that item and is left out of the agreement figures, which measure the
independent annotators only.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tasks.annotate.labelstudio import read_annotations, read_ratings, reason_kind
from tasks.config import AnnotationSettings
from tasks.contracts import Annotation, sha256_file
from tasks.files import atomic_write_text, read_case_rows, write_jsonl

Decision = Literal["pass", "filter", "block"]
CONFIDENCE = 0.95

# ---------------------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------------------


def agreement(
    ratings: Sequence[tuple[str, str, str]],
    *,
    bootstrap_samples: int = 1_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Agreement of (item, annotator, label) ratings; items may have any number of ratings.

    krippendorff_alpha   nominal alpha over items with >= 2 ratings (None: fewer than two labels used, or
                         no item rated twice: undefined)
    alpha_ci             percentile interval (95%) of alpha over `bootstrap_samples` resamples of items
    fleiss_kappa         only when every item has the same number (>= 2) of ratings
    cohen_kappa          only with exactly two annotators, on the items both rated (sklearn)
    per_label            label -> n_ratings, share, specific_agreement (chance that a second rating of an
                         item matches, given one says this label), alpha (label vs rest), fleiss_kappa
    observed_agreement   share of agreeing pairs of ratings within items (1 - D_o)
    """
    import krippendorff

    items: dict[str, int] = {}
    annotators: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for item, annotator, _label in ratings:
        if (item, annotator) in seen:
            raise ValueError(f"annotator {annotator!r} rated item {item!r} more than once; keep one rating per pair")
        seen.add((item, annotator))
        items.setdefault(item, len(items))
        annotators.setdefault(annotator, len(annotators))
    labels = sorted({label for _, _, label in ratings})
    code = {label: i for i, label in enumerate(labels)}
    if not ratings:
        return {"n_items": 0, "n_annotators": 0, "n_ratings": 0, "n_pairable_items": 0, "labels": [],
                "krippendorff_alpha": None, "alpha_ci": None, "alpha_ci_level": CONFIDENCE,
                "bootstrap_samples": bootstrap_samples, "fleiss_kappa": None, "cohen_kappa": None,
                "observed_agreement": None, "unanimous_items": 0, "per_label": {}}

    counts = np.zeros((len(items), len(labels)), dtype=np.int64)  # item x label
    for item, _, label in ratings:
        counts[items[item], code[label]] += 1
    per_item = counts.sum(axis=1)
    pairable = counts[per_item >= 2]

    alpha = None
    if len(pairable) and np.count_nonzero(pairable.sum(axis=0)) >= 2:
        alpha = float(krippendorff.alpha(value_counts=pairable, level_of_measurement="nominal"))
        # Our coincidence arithmetic (used for the bootstrap) must agree with the library.
        assert abs(alpha - _alpha_from_counts(pairable)) < 1e-9

    result: dict[str, Any] = {
        "n_items": len(items),
        "n_annotators": len(annotators),
        "n_ratings": len(ratings),
        "n_pairable_items": int(len(pairable)),
        "labels": labels,
        "krippendorff_alpha": alpha,
        "alpha_ci": _bootstrap_alpha(pairable, bootstrap_samples, seed) if alpha is not None else None,
        "alpha_ci_level": CONFIDENCE,
        "bootstrap_samples": bootstrap_samples,
        "fleiss_kappa": None,
        "cohen_kappa": None,
        "observed_agreement": _observed_agreement(pairable),
        "unanimous_items": int(np.sum((per_item >= 2) & (counts.max(axis=1) == per_item))),
        "per_label": {},
    }

    fleiss = None
    if len(items) and per_item.min() >= 2 and per_item.min() == per_item.max():
        fleiss = fleiss_kappa(counts)
        result["fleiss_kappa"] = fleiss["kappa"]
    if len(annotators) == 2:
        result["cohen_kappa"] = _cohen(ratings, list(annotators), labels)

    for label, c in code.items():
        column = pairable[:, c] if len(pairable) else np.zeros(0, np.int64)
        binary = np.stack([column, pairable.sum(axis=1) - column], axis=1) if len(pairable) else column.reshape(0, 2)
        given = float(np.sum(column * (pairable.sum(axis=1) - 1))) if len(pairable) else 0.0
        result["per_label"][label] = {
            "n_ratings": int(counts[:, c].sum()),
            "share": float(counts[:, c].sum() / counts.sum()),
            "specific_agreement": float(np.sum(column * (column - 1)) / given) if given else None,
            "alpha": _alpha_from_counts(binary),
            "fleiss_kappa": fleiss["per_category"][c] if fleiss else None,
        }
    return result


def fleiss_kappa(counts: np.ndarray) -> dict[str, Any]:
    """Fleiss (1971) kappa of an item x category count table with the same number of ratings per item.
    Returns {kappa, per_category, p_bar, p_e}; kappa is None where chance agreement is 1."""
    counts = np.asarray(counts, dtype=float)
    raters = counts.sum(axis=1)
    if len(counts) == 0 or raters.min() != raters.max() or raters[0] < 2:
        raise ValueError("Fleiss' kappa needs the same number (>= 2) of ratings for every item")
    n_items, m = len(counts), raters[0]
    p = counts.sum(axis=0) / (n_items * m)
    p_i = ((counts**2).sum(axis=1) - m) / (m * (m - 1))
    p_bar, p_e = float(p_i.mean()), float(np.sum(p**2))
    kappa = (p_bar - p_e) / (1 - p_e) if p_e < 1 else None
    with np.errstate(divide="ignore", invalid="ignore"):
        per_cat = 1 - (counts * (m - counts)).sum(axis=0) / (n_items * m * (m - 1) * p * (1 - p))
    per_category = [float(k) if np.isfinite(k) else None for k in per_cat]
    return {"kappa": kappa, "per_category": per_category, "p_bar": p_bar, "p_e": p_e}


def gate_decision(alpha: float | None, settings: AnnotationSettings) -> Decision:
    """DESIGN section 8: pass at or above pass_alpha, filter from block_alpha, block below. An undefined
    alpha (no item rated twice, or a single label used throughout) is no evidence of reliability: block."""
    if alpha is None or not np.isfinite(alpha):
        return "block"
    if alpha >= settings.pass_alpha:
        return "pass"
    if alpha >= settings.block_alpha:
        return "filter"
    return "block"


def decision_reason(stats: dict[str, Any], decision: Decision, settings: AnnotationSettings) -> str:
    """The gate's decision in one sentence, including why alpha could not be measured when it could not."""
    alpha = stats["krippendorff_alpha"]
    if alpha is None or not np.isfinite(alpha):
        if stats["n_ratings"] == 0:
            why = "there are no usable ratings"
        elif stats["n_annotators"] < 2:
            why = "only one annotator has usable ratings, and agreement needs at least two"
        elif stats["n_pairable_items"] == 0:
            why = "no item was rated by two annotators"
        else:
            why = f"every rating chose the same label ({stats['labels'][0]!r}), so agreement beyond chance is undefined"
        return f"block: agreement cannot be measured because {why}"
    if decision == "pass":
        return f"pass: alpha {alpha:.3f} is at least {settings.pass_alpha}"
    if decision == "filter":
        return (f"filter: alpha {alpha:.3f} is below {settings.pass_alpha} but at least {settings.block_alpha}; "
                "only unanimous or adjudicated items are kept")
    return f"block: alpha {alpha:.3f} is below {settings.block_alpha}"


def agreement_from_file(path: Path, settings: AnnotationSettings) -> dict[str, Any]:
    """`flywheel agreement --annotations FILE`: the ratings `annotate import` would keep (read_ratings,
    annotation.labels), the adjudicator's left out as in the cycle, then agreement and the gate. Every
    rating left out is explained: `excluded` (count, reasons, rows) and `excluded_annotators` (annotators
    none of whose ratings counted). Nothing is written."""
    ratings = read_ratings([path], settings.labels)
    independent = [(ref, r) for _, ref, r in ratings.kept if r.annotator != settings.adjudicator]
    excluded = [{"row": q["row"], "reason": q["reason"], "annotator": q["annotator"]} for q in ratings.set_aside]
    excluded += [{"row": ref, "reason": f"adjudicator's verdict ({settings.adjudicator}): not an independent rating",
                  "annotator": r.annotator} for _, ref, r in ratings.kept if r.annotator == settings.adjudicator]
    result = agreement([(r.case_id, r.annotator, r.label) for _, r in independent],
                       bootstrap_samples=settings.bootstrap_samples, seed=settings.bootstrap_seed)
    result["decision"] = gate_decision(result["krippendorff_alpha"], settings)
    result["thresholds"] = {"pass_alpha": settings.pass_alpha, "block_alpha": settings.block_alpha}
    counted = {r.annotator for _, r in independent}
    by_annotator: dict[str, list[str]] = defaultdict(list)
    for row in excluded:
        if row["annotator"] and row["annotator"] not in counted:
            by_annotator[row["annotator"]].append(reason_kind(row["reason"]))
    result["excluded"] = {
        "ratings": len(excluded),
        "reasons": dict(Counter(reason_kind(row["reason"]) for row in excluded)),
        "rows": [{"row": row["row"], "reason": row["reason"]} for row in excluded],
    }
    result["excluded_annotators"] = [
        {"annotator": who, "ratings": len(kinds),
         "reason": "every rating left out: " + ", ".join(f"{kind} ({n})" for kind, n in Counter(kinds).most_common())}
        for who, kinds in sorted(by_annotator.items())
    ]
    reason = decision_reason(result, result["decision"], settings)
    if excluded:
        reason += f" ({len(excluded)} excluded: " + ", ".join(
            f"{kind} ({n})" for kind, n in Counter(reason_kind(row["reason"]) for row in excluded).most_common()) + ")"
    result["decision_reason"] = reason
    return result


def _alpha_from_counts(counts: np.ndarray) -> float | None:
    """Nominal alpha from an item x value count table of pairable items (Krippendorff 2011, section C)."""
    stats = _coincidence_stats(counts)
    return _alpha_from_stats(*stats) if len(counts) else None


def _coincidence_stats(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item: its values' marginal counts n_uc and its agreeing coincidences sum_c n_uc(n_uc-1)/(m_u-1)."""
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1, keepdims=True)
    agree = (counts * (counts - 1)).sum(axis=1) / (m[:, 0] - 1)
    return counts, agree


def _alpha_from_stats(counts: np.ndarray, agree: np.ndarray) -> float | None:
    n_c = counts.sum(axis=0)
    n = n_c.sum()
    expected = n * n - np.sum(n_c**2)
    if n <= 1 or expected <= 0:
        return None
    return float(1 - (n - 1) * (n - agree.sum()) / expected)


def _bootstrap_alpha(counts: np.ndarray, samples: int, seed: int) -> list[float] | None:
    """Percentile interval of alpha over resamples of items, vectorised: a resample is a vector of
    multiplicities, and alpha only needs multiplicity-weighted sums of per-item statistics."""
    values, agree = _coincidence_stats(counts)
    n_items = len(values)
    rng = np.random.default_rng(seed)
    alphas = []
    for start in range(0, samples, 256):
        size = min(256, samples - start)
        weights = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=size).astype(float)
        n_c = weights @ values  # resample x value
        n = n_c.sum(axis=1)
        expected = n * n - (n_c**2).sum(axis=1)
        observed = n - weights @ agree
        with np.errstate(divide="ignore", invalid="ignore"):
            alphas.append(np.where(expected > 0, 1 - (n - 1) * observed / expected, np.nan))
    alphas = np.concatenate(alphas)
    if np.all(np.isnan(alphas)):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.nanpercentile(alphas, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _observed_agreement(counts: np.ndarray) -> float | None:
    if not len(counts):
        return None
    values, agree = _coincidence_stats(counts)
    return float(agree.sum() / values.sum())


def _cohen(ratings: Sequence[tuple[str, str, str]], pair: list[str], labels: list[str]) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    by_annotator: dict[str, dict[str, str]] = defaultdict(dict)
    for item, annotator, label in ratings:
        by_annotator[annotator][item] = label
    first, second = by_annotator[pair[0]], by_annotator[pair[1]]
    common = [item for item in first if item in second]
    if len(common) < 2 or len({first[i] for i in common} | {second[i] for i in common}) < 2:
        return None
    value = cohen_kappa_score([first[i] for i in common], [second[i] for i in common], labels=labels)
    return float(value) if np.isfinite(value) else None


# ---------------------------------------------------------------------------------------------------
# The gate: agreement.json, adjudication.jsonl, curated.jsonl
# ---------------------------------------------------------------------------------------------------


def score_agreement(
    annotations_path: Path,
    out_dir: Path,
    settings: AnnotationSettings,
    *,
    cases_path: Path | None = None,
) -> dict[str, Any]:
    """Measure agreement, decide (pass | filter | block) and write the decision with what follows from it.

    out_dir/agreement.json     the agreement figures, the decision, thresholds and input digests
    out_dir/adjudication.jsonl items the annotators disagree on (or with too few ratings), not yet adjudicated
    out_dir/curated.jsonl      consensus items: pass -> majority, unanimous or adjudicated; filter ->
                               unanimous or adjudicated; block -> none. The corrected response is the most
                               common one among the annotators who gave the consensus label (the
                               adjudicator's own, when given).
    """
    annotations_path, out_dir = Path(annotations_path), Path(out_dir)
    records = read_annotations(annotations_path)
    allowed = set(settings.labels)
    for record in records:
        if record.label not in allowed:
            raise ValueError(
                f"{annotations_path}: case {record.case_id} by {record.annotator} has label {record.label!r}, "
                f"not in annotation.labels ({', '.join(settings.labels)}); re-import with the configured labels"
            )
    independent = [r for r in records if r.annotator != settings.adjudicator]
    verdicts = {r.case_id: r for r in records if r.annotator == settings.adjudicator}
    stats = agreement(
        [(r.case_id, r.annotator, r.label) for r in independent],
        bootstrap_samples=settings.bootstrap_samples,
        seed=settings.bootstrap_seed,
    )
    decision = gate_decision(stats["krippendorff_alpha"], settings)
    stats["decision_reason"] = decision_reason(stats, decision, settings)
    cases = {c["case_id"]: c for c in read_case_rows(cases_path)} if cases_path else None

    by_item: dict[str, list[Annotation]] = defaultdict(list)
    for record in independent:
        by_item[record.case_id].append(record)
    for case_id in verdicts:
        by_item.setdefault(case_id, [])

    curated, adjudication, unknown = [], [], []
    consensus_counts: Counter[str] = Counter()
    for case_id in sorted(by_item):
        votes = sorted(by_item[case_id], key=lambda r: r.annotator)
        tally = Counter(r.label for r in votes)
        top_label, top_count = tally.most_common(1)[0] if tally else (None, 0)
        enough = len(votes) >= settings.min_ratings
        unanimous = enough and len(tally) == 1
        majority = enough and top_count * 2 > len(votes)
        verdict = verdicts.get(case_id)
        if verdict is not None:
            consensus, label = "adjudicated", verdict.label
        elif unanimous:
            consensus, label = "unanimous", top_label
        elif majority:
            consensus, label = "majority", top_label
        else:
            consensus, label = None, None
        keep = decision != "block" and (
            consensus in ("adjudicated", "unanimous") or (decision == "pass" and consensus == "majority")
        )
        case = (cases or {}).get(case_id, {})
        context = {
            "prompt": case.get("prompt"),
            "response": case.get("response"),
            "followup": case.get("followup"),
            "kinds": case.get("kinds"),
        }
        if verdict is None and not unanimous:
            adjudication.append(
                {
                    "case_id": case_id,
                    **context,
                    "reason": "disagreement" if enough else f"fewer than {settings.min_ratings} ratings",
                    "majority_label": top_label if majority else None,
                    "curated_as_majority": keep,
                    "ratings": [
                        {"annotator": r.annotator, "label": r.label, "corrected_response": r.corrected_response}
                        for r in votes
                    ],
                    "resolve_with": {"annotator": settings.adjudicator, "labels": settings.labels},
                }
            )
        if not keep:
            continue
        if cases is not None and case_id not in cases:
            unknown.append(case_id)
            continue
        agreeing = [r for r in votes if r.label == label]
        corrected = (verdict.corrected_response if verdict is not None else None) or _most_common_text(
            [r.corrected_response for r in agreeing]
        )
        consensus_counts[consensus] += 1
        curated.append(
            {
                "case_id": case_id,
                **context,
                "label": label,
                "corrected_response": corrected,
                "consensus": consensus,
                "n_ratings": len(votes),
                "annotators": [r.annotator for r in agreeing] + ([settings.adjudicator] if verdict else []),
            }
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    curated_path, adjudication_path = out_dir / "curated.jsonl", out_dir / "adjudication.jsonl"
    write_jsonl(curated_path, curated)
    write_jsonl(adjudication_path, adjudication)
    summary = {
        **stats,
        "decision": decision,
        "thresholds": {"pass_alpha": settings.pass_alpha, "block_alpha": settings.block_alpha},
        "rule": (
            f"alpha >= {settings.pass_alpha}: pass (majority items); {settings.block_alpha} <= alpha < "
            f"{settings.pass_alpha}: filter (unanimous or adjudicated items only); below, or undefined: block"
        ),
        "curated": len(curated),
        "curated_by_consensus": dict(consensus_counts),
        "adjudication": len(adjudication),
        "adjudicated": len(verdicts),
        "unknown_cases": len(unknown),
        "unknown_case_ids": unknown[:20],
        "inputs": {
            "annotations": {"path": str(annotations_path), "sha256": sha256_file(annotations_path)},
            **({"cases": {"path": str(cases_path), "sha256": sha256_file(cases_path)}} if cases_path else {}),
        },
        "decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_text(out_dir / "agreement.json", json.dumps(summary, ensure_ascii=False, indent=2))
    return {
        **summary,
        "paths": {
            "agreement": str(out_dir / "agreement.json"),
            "adjudication": str(adjudication_path),
            "curated": str(curated_path),
        },
    }


def _most_common_text(texts: Sequence[str | None]) -> str | None:
    """Most frequent non-empty text (compared with whitespace collapsed); ties: first given."""
    cleaned = [t.strip() for t in texts if t and t.strip()]
    if not cleaned:
        return None
    tally = Counter(" ".join(t.split()) for t in cleaned)
    best = max(tally.values())
    return next(t for t in cleaned if tally[" ".join(t.split())] == best)

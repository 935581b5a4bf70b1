"""Annotation round trip and inter-annotator agreement (DESIGN.md sections 3 and 8).

export_tasks        cases -> Label Studio import file (tasks.json) + label_config.xml beside it
import_annotations  Label Studio export JSON (any number of annotators), CSV or JSONL -> annotations.jsonl;
                    rows that cannot be used go to quarantine.jsonl with file, row and reason
agreement           nominal Krippendorff's alpha (missing ratings allowed; `krippendorff` package) with a
                    bootstrap interval over items, Fleiss' kappa, Cohen's kappa, per-label agreement
gate_decision       alpha >= pass_alpha: pass; >= block_alpha: filter; below, or undefined: block
score_agreement     the gate as a recorded decision: agreement.json, adjudication.jsonl, curated.jsonl

Adjudication loop: a person resolves the items in adjudication.jsonl and hands the verdicts back as
annotations from the annotator named by `annotation.adjudicator` (for instance a CSV
`item,annotator,label,corrected_response`), imported together with the original exports. The
adjudicator's label wins for that item and is left out of the agreement figures, which measure the
independent annotators only.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

import numpy as np
import pyarrow.parquet as pq
from pydantic import ValidationError

from tasks.config import AnnotationSettings
from tasks.contracts import Annotation, sha256_file

Decision = Literal["pass", "filter", "block"]
CONFIDENCE = 0.95
_ITEM_COLUMNS = ("item", "case_id")  # CSV: the first of these present names the item

# ---------------------------------------------------------------------------------------------------
# Label Studio export (tasks to label)
# ---------------------------------------------------------------------------------------------------


def export_tasks(cases_path: Path, out_path: Path, labels: Sequence[str]) -> dict[str, Any]:
    """Label Studio import JSON ([{"data": {...}}], one task per case) and label_config.xml beside it."""
    labels = _check_labels(labels)
    out_path = Path(out_path)
    tasks = [
        {
            "data": {
                "case_id": case["case_id"],
                "prompt": case.get("prompt") or "",
                "response": case.get("response") or "",
                "followup": case.get("followup") or "",
                "kinds": ", ".join(sorted(case.get("kinds") or [])),
                "topic": case.get("topic") or "",
            }
        }
        for case in _read_case_rows(Path(cases_path))
    ]
    config_path = out_path.with_name("label_config.xml")
    _write_text(out_path, json.dumps(tasks, ensure_ascii=False, indent=1))
    _write_text(config_path, label_config(labels))
    return {"tasks": len(tasks), "config": str(config_path), "path": str(out_path)}


def label_config(labels: Sequence[str]) -> str:
    """Labelling interface: the exchange, one label from the closed set, an optional corrected response.
    The names `label` and `corrected_response` are what import_annotations reads back."""
    choices = "\n".join(f"    <Choice value={quoteattr(label)}/>" for label in labels)
    return f"""<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Model response"/>
  <Text name="response" value="$response"/>
  <Header value="User follow-up (re-ask), if any"/>
  <Text name="followup" value="$followup"/>
  <Header value="Why this case was picked"/>
  <Text name="kinds" value="$kinds"/>
  <Choices name="label" toName="response" choice="single" showInLine="true" required="true">
{choices}
  </Choices>
  <Header value="Corrected response (what the model should have said)"/>
  <TextArea name="corrected_response" toName="response" rows="4" editable="true" maxSubmissions="1"/>
</View>
"""


# ---------------------------------------------------------------------------------------------------
# Reading annotation files
# ---------------------------------------------------------------------------------------------------


class _Bad(Exception):
    """A row that cannot be used; the message is the reason recorded in quarantine."""


def _annotation_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    """(row reference, fields or None, reason if unusable, raw record) for every rating in `path`.

    fields: item, annotator, label, corrected_response, created_at. Tasks without any annotation are
    reported with fields None and reason None (nothing to rate, nothing lost)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from _csv_rows(path)
    elif suffix == ".jsonl":
        yield from _jsonl_rows(path)
    elif suffix == ".json":
        yield from _label_studio_rows(path)
    else:
        raise ValueError(
            f"{path}: unknown annotation file type {suffix!r}; use a Label Studio export (.json), "
            "a CSV with header item,annotator,label[,corrected_response] (.csv) or JSONL of annotations (.jsonl)"
        )


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        reader.fieldnames = header
        item_col = next((c for c in _ITEM_COLUMNS if c in header), None)
        if item_col is None or "annotator" not in header or "label" not in header:
            raise ValueError(f"{path}: CSV header is {header}; expected item,annotator,label[,corrected_response]")
        while True:
            start = reader.line_num + 1
            try:
                raw = next(reader)
            except StopIteration:
                return
            ref = f"{path.name}:line {start}"
            if None in raw:  # more cells than header columns
                yield ref, None, "more cells than the header has columns", raw
                continue
            fields = {
                "item": (raw.get(item_col) or "").strip(),
                "annotator": (raw.get("annotator") or "").strip(),
                "label": (raw.get("label") or "").strip(),
                "corrected_response": raw.get("corrected_response") or None,
                "created_at": _parse_time(raw.get("created_at")),
            }
            yield ref, fields, _missing(fields), raw


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            ref = f"{path.name}:line {number}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                yield ref, None, f"not valid JSON ({err.msg})", line.rstrip("\n")[:500]
                continue
            if not isinstance(raw, dict):
                yield ref, None, "not a JSON object", raw
                continue
            fields = _flat_fields(raw)
            yield ref, fields, _missing(fields), raw


def _label_studio_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None, str | None, Any]]:
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg}, line {err.lineno}); expected a Label Studio export"
        ) from None
    if isinstance(tasks, dict):  # a single task
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: expected a list of Label Studio tasks, got {type(tasks).__name__}")
    for t, task in enumerate(tasks, start=1):
        if not isinstance(task, dict):
            yield f"{path.name}:task {t}", None, "not a JSON object", task
            continue
        if "annotations" not in task and "completions" not in task and "data" not in task:
            # JSON-MIN export, or a list of Annotation records: one flat row per rating
            fields = _flat_fields(task)
            yield f"{path.name}:row {t}", fields, _missing(fields), task
            continue
        data = task.get("data") or {}
        item = str(data.get("case_id") or "").strip()
        task_ref = f"{path.name}:task {t}" + (f" (id {task['id']})" if "id" in task else "")
        annotations = task.get("annotations") or task.get("completions") or []
        if not annotations:
            yield task_ref, None, None, None
            continue
        for a, ann in enumerate(annotations, start=1):
            ref = f"{task_ref} annotation {a}"
            raw = {"data": {"case_id": data.get("case_id")}, "annotation": ann}
            try:
                fields = _label_studio_fields(ann, item, task)
            except _Bad as bad:
                yield ref, None, str(bad), raw
                continue
            yield ref, fields, _missing(fields), raw


def _label_studio_fields(ann: Any, item: str, task: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(ann, dict):
        raise _Bad("annotation is not a JSON object")
    if ann.get("was_cancelled"):
        raise _Bad("annotation was cancelled (skipped) in Label Studio")
    choices: list[str] = []
    texts: list[str] = []
    for result in ann.get("result") or []:
        kind = result.get("type")
        value = result.get("value") or {}
        if kind == "choices":
            choices.extend(str(c) for c in value.get("choices") or [])
        elif kind == "textarea":
            texts.extend(str(t) for t in value.get("text") or [])
    if len(choices) > 1:
        raise _Bad(f"several labels chosen ({', '.join(choices)}); the label set is single-choice")
    return {
        "item": item,
        "task_id": task.get("id"),
        "annotator": _annotator_name(ann.get("completed_by")),
        "label": choices[0].strip() if choices else "",
        "corrected_response": "\n".join(texts) or None,
        "created_at": _parse_time(ann.get("created_at")),
    }


def _flat_fields(raw: dict[str, Any]) -> dict[str, Any]:
    label = raw.get("label", "")
    if isinstance(label, dict):  # JSON-MIN export: {"choices": [...]} when several were allowed
        label = label.get("choices") or []
    if isinstance(label, list):
        label = label[0] if len(label) == 1 else ", ".join(map(str, label)) if label else ""
    corrected = raw.get("corrected_response")
    if isinstance(corrected, list):
        corrected = "\n".join(map(str, corrected))
    return {
        "item": str(raw.get("case_id") or raw.get("item") or "").strip(),
        "annotator": _annotator_name(raw.get("annotator", raw.get("completed_by"))),
        "label": str(label or "").strip(),
        "corrected_response": corrected or None,
        "created_at": _parse_time(raw.get("created_at")),
    }


def _annotator_name(who: Any) -> str:
    """Label Studio writes completed_by as a user id, or as a user object in some versions."""
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
    return "" if who is None else str(who).strip()


def _missing(fields: dict[str, Any]) -> str | None:
    if not fields["item"]:
        return "no case id (data.case_id / item column is empty)"
    if not fields["annotator"]:
        return "no annotator (completed_by / annotator is empty)"
    if not fields["label"]:
        return "no label chosen"
    return None


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------


def import_annotations(paths: Sequence[Path], out_dir: Path, labels: Sequence[str]) -> dict[str, Any]:
    """Annotation files -> out_dir/annotations.jsonl (contracts.Annotation, one per case and annotator).

    Unusable rows (no case id, no annotator, no or unknown label, cancelled, malformed, superseded by a
    later rating of the same case by the same annotator) go to out_dir/quarantine.jsonl with file, row
    and reason. Files are read in the order given; within the same case and annotator the later wins.
    """
    allowed = set(_check_labels(labels))
    out_dir = Path(out_dir)
    kept: dict[tuple[str, str], tuple[Path, str, Annotation]] = {}
    quarantine: list[dict[str, Any]] = []
    unannotated = 0
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"annotation file {path} does not exist")
        for ref, fields, reason, raw in _annotation_rows(path):
            if fields is None and reason is None:
                unannotated += 1
                continue
            if reason is None and fields["label"] not in allowed:
                reason = f"unknown label {fields['label']!r}; allowed: {', '.join(sorted(allowed))}"
            if reason is None:
                try:
                    record = Annotation(
                        case_id=fields["item"],
                        annotator=fields["annotator"],
                        label=fields["label"],
                        corrected_response=fields["corrected_response"],
                        created_at=fields["created_at"],
                    )
                except ValidationError as err:
                    reason = "invalid annotation: " + "; ".join(
                        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
                    )
            if reason is not None:
                quarantine.append({"file": str(path), "row": ref, "reason": reason, "record": raw})
                continue
            pair = (record.case_id, record.annotator)
            if pair in kept:
                old_path, old_ref, old = kept[pair]
                quarantine.append(
                    {
                        "file": str(old_path),
                        "row": old_ref,
                        "reason": f"superseded by a later rating of the same case by the same annotator ({ref})",
                        "record": old.model_dump(mode="json"),
                    }
                )
            kept[pair] = (path, ref, record)

    records = [kept[pair][2] for pair in sorted(kept)]
    out_path = out_dir / "annotations.jsonl"
    quarantine_path = out_dir / "quarantine.jsonl"
    _write_lines(out_path, (r.model_dump_json(exclude_none=False) for r in records))
    _write_lines(quarantine_path, (json.dumps(q, ensure_ascii=False, default=str) for q in quarantine))
    reasons = Counter(q["reason"].split(" (")[0].split(";")[0] for q in quarantine)
    return {
        "annotations": len(records),
        "items": len({r.case_id for r in records}),
        "annotators": len({r.annotator for r in records}),
        "quarantined": len(quarantine),
        "reasons": dict(reasons),
        "unannotated_tasks": unannotated,
        "path": str(out_path),
        "quarantine": str(quarantine_path),
    }


def read_ratings(path: Path) -> list[tuple[str, str, str]]:
    """(item, annotator, label) from a Label Studio export JSON, a CSV `item,annotator,label` or JSONL.

    Labels are free strings. A rating without a label is a missing rating and is left out (Krippendorff's
    alpha is built for those); a row without item or annotator, or with several labels, is an error
    naming the file and row. Tasks of a Label Studio export without data.case_id use the task id."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"annotation file {path} does not exist")
    ratings = []
    for ref, fields, reason, _ in _annotation_rows(path):
        if fields is None and reason is None:
            continue
        if fields is not None and not fields["item"] and fields.get("task_id") is not None:
            fields["item"] = str(fields["task_id"])
            reason = _missing(fields)
        if reason == "no label chosen" or (reason or "").startswith("annotation was cancelled"):
            continue
        if reason is not None:
            raise ValueError(f"{path}: {ref}: {reason}")
        ratings.append((fields["item"], fields["annotator"], fields["label"]))
    return ratings


def read_annotations(path: Path) -> list[Annotation]:
    """annotations.jsonl as written by import_annotations (or by the simulator)."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(Annotation.model_validate_json(line))
            except ValidationError as err:
                raise ValueError(f"{path}:line {number}: not an annotation record: {err.errors()[0]['msg']}") from None
    return records


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


def agreement_from_file(path: Path, settings: AnnotationSettings) -> dict[str, Any]:
    """`flywheel agreement --annotations FILE`: read_ratings + agreement + gate_decision (nothing written)."""
    result = agreement(read_ratings(path), bootstrap_samples=settings.bootstrap_samples, seed=settings.bootstrap_seed)
    result["decision"] = gate_decision(result["krippendorff_alpha"], settings)
    result["thresholds"] = {"pass_alpha": settings.pass_alpha, "block_alpha": settings.block_alpha}
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
    cases = {c["case_id"]: c for c in _read_case_rows(Path(cases_path))} if cases_path else None

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
    _write_lines(curated_path, (json.dumps(c, ensure_ascii=False) for c in curated))
    _write_lines(adjudication_path, (json.dumps(a, ensure_ascii=False) for a in adjudication))
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
    _write_text(out_dir / "agreement.json", json.dumps(summary, ensure_ascii=False, indent=2))
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


# ---------------------------------------------------------------------------------------------------
# Small file helpers
# ---------------------------------------------------------------------------------------------------


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(label) for label in labels]
    if not labels or len(set(labels)) != len(labels) or not all(label.strip() for label in labels):
        raise ValueError(f"annotation.labels must be a non-empty list of distinct, non-blank labels, got {labels}")
    return labels


def _read_case_rows(path: Path) -> list[dict[str, Any]]:
    """Case rows (contracts.CASE_SCHEMA) from Parquet or JSONL, as plain dicts."""
    if not path.is_file():
        raise ValueError(f"cases file {path} does not exist")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or not row.get("case_id"):
                raise ValueError(f"{path}:line {number}: a case needs a case_id")
            rows.append(row)
    return rows


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_lines(path: Path, lines: Iterator[str] | Sequence[str]) -> None:
    _write_text(path, "".join(line + "\n" for line in lines))

"""PII evaluation: precision, recall and F2 of the masking on a span-labelled set (presidio-research format).

Token-level, as presidio-research's Evaluator scores: IO tags per spaCy token; overall counts any
PII type (PII vs not), per entity the exact type; F-beta with beta=2. Only the configured entity
types that the dataset labels (after `DATASET_ENTITY_MAP`) are scored. The set is also scored on
each half of a fixed split by template (`dataset_half`): patterns are tuned on the "tune" half, so
the "held-out" figure is the honest one.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from tasks.config import PiiSettings
from tasks.pii._engine import LANGUAGE
from tasks.pii.pool import ShardPool, analyze_shard

# Dataset entity -> Presidio entity. Dataset types absent here (and their tokens) are not scored:
# they count as "O" on both sides, as presidio-research's Evaluator does with entities_to_keep.
DATASET_ENTITY_MAP = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "FIRST_NAME": "PERSON",
    "LAST_NAME": "PERSON",
    "GPE": "LOCATION",
    "LOCATION": "LOCATION",
    "LOC": "LOCATION",
    "CITY": "LOCATION",
    "ADDRESS": "LOCATION",
    "STREET_ADDRESS": "LOCATION",
    "ZIP_CODE": "LOCATION",
    "FACILITY": "LOCATION",
    "EMAIL_ADDRESS": "EMAIL_ADDRESS",
    "EMAIL": "EMAIL_ADDRESS",
    "PHONE_NUMBER": "PHONE_NUMBER",
    "PHONE": "PHONE_NUMBER",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN_CODE",
    "IBAN": "IBAN_CODE",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
    "SSN": "US_SSN",
    "US_DRIVER_LICENSE": "US_DRIVER_LICENSE",
    "ORGANIZATION": "ORGANIZATION",
    "ORG": "ORGANIZATION",
    "DATE_TIME": "DATE_TIME",
    "NRP": "NRP",
    "NORP": "NRP",
    "DOMAIN_NAME": "URL",
    "URL": "URL",
}


def read_span_dataset(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, list) or (data and "full_text" not in data[0]):
        raise ValueError(f"{path}: expected a JSON list of presidio-research samples (full_text, spans)")
    return data[:limit] if limit else data


class TokenScorer:
    """presidio-research's token-level scoring: IO tags per spaCy token, counts per (gold, predicted).

    Overall precision/recall/F2 are PII-vs-not (a token found as any type counts), per entity they
    need the right type. Only types in `scored` are kept; everything else is "O" on both sides."""

    def __init__(self, scored: Iterable[str], beta: float = 2.0):
        import spacy

        self.scored = set(scored)
        self.beta = beta
        self.tokenizer = spacy.blank(LANGUAGE).tokenizer
        self.counts: Counter[tuple[str, str]] = Counter()

    def _tags(self, doc: Any, spans: Iterable[tuple[int, int, str]]) -> list[str]:
        spans = [(a, b, t) for a, b, t in spans if t in self.scored]
        tags = []
        for token in doc:
            start, end = token.idx, token.idx + len(token)
            tag = "O"
            for a, b, t in spans:
                if a < end and start < b:
                    tag = t
                    break
            tags.append(tag)
        return tags

    def add(self, text: str, gold: Iterable[tuple[int, int, str]], predicted: Iterable[tuple[int, int, str]]) -> None:
        doc = self.tokenizer(text)
        for g, p in zip(self._tags(doc, gold), self._tags(doc, predicted)):
            self.counts[(g, p)] += 1

    def _f(self, p: float, r: float) -> float:
        b2 = self.beta**2
        return (1 + b2) * p * r / (b2 * p + r) if p + r > 0 else 0.0

    def scores(self) -> dict[str, Any]:
        c = self.counts
        gold = sum(v for (g, _), v in c.items() if g != "O")
        pred = sum(v for (_, p), v in c.items() if p != "O")
        tp = sum(v for (g, p), v in c.items() if g != "O" and p != "O")
        precision = tp / pred if pred else 0.0
        recall = tp / gold if gold else 0.0
        per_entity = {}
        for entity in sorted(self.scored):
            g_n = sum(v for (g, _), v in c.items() if g == entity)
            p_n = sum(v for (_, p), v in c.items() if p == entity)
            if not g_n and not p_n:
                continue
            e_p = c[(entity, entity)] / p_n if p_n else 0.0
            e_r = c[(entity, entity)] / g_n if g_n else 0.0
            per_entity[entity] = {
                "precision": round(e_p, 4),
                "recall": round(e_r, 4),
                "f2": round(self._f(e_p, e_r), 4),
                "support": g_n,
                "predicted": p_n,
            }
        return {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f2": round(self._f(precision, recall), 4),
            "tokens": {"gold": gold, "predicted": pred, "true_positive": tp},
            "per_entity": per_entity,
        }


def gold_spans(sample: dict[str, Any]) -> list[tuple[int, int, str]]:
    return [
        (s["start_position"], s["end_position"], DATASET_ENTITY_MAP[s["entity_type"]])
        for s in sample.get("spans", [])
        if s["entity_type"] in DATASET_ENTITY_MAP
    ]


HALVES = ("tune", "held-out")


def dataset_half(sample: dict[str, Any]) -> str:
    """The half a sample belongs to, "tune" or "held-out": fixed by a hash of its template (of its
    text where it has none). Tune patterns on the "tune" half only; the "held-out" figure is then
    the honest one. By template, not by text: texts of one template share their wording, and a
    pattern tuned on one of them fits its siblings."""
    template = sample.get("template_id")
    key = f"template:{template}" if template is not None else f"text:{sample['full_text']}"
    return HALVES[hashlib.sha256(key.encode("utf-8")).digest()[0] % 2]


def score_halves(
    samples: Sequence[dict[str, Any]], predicted: Sequence[Iterable[tuple[int, int, str]] | None], scored: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Overall precision, recall and F2 on each half of the set (see dataset_half)."""
    scorers = {half: TokenScorer(scored) for half in HALVES}
    docs: Counter[str] = Counter()
    for sample, spans in zip(samples, predicted):
        if spans is None:
            continue
        half = dataset_half(sample)
        docs[half] += 1
        scorers[half].add(sample["full_text"], gold_spans(sample), spans)
    out = {}
    for half, scorer in scorers.items():
        scores = scorer.scores()
        out[half] = {"docs": docs[half], **{k: scores[k] for k in ("precision", "recall", "f2")}}
    return out


def evaluate_pii(dataset_path: Path, settings: PiiSettings, *, limit: int | None = None) -> dict[str, Any]:
    """Precision, recall and F2 of masking on a presidio-research span-labelled set, and docs/s.

    Token-level (presidio-research's Evaluator): overall = PII vs not, per entity = right type.
    Scored types are the configured entities that the dataset labels (after DATASET_ENTITY_MAP)."""
    samples = read_span_dataset(dataset_path, limit)
    texts = [s["full_text"] for s in samples]
    dataset_types = {DATASET_ENTITY_MAP.get(s["entity_type"]) for x in samples for s in x.get("spans", [])}
    scored = sorted(set(settings.entities) & (dataset_types - {None}))
    key = secrets.token_bytes(32)  # evaluation only: pseudonyms are thrown away
    with ShardPool(settings, key, size=len(texts)) as pool:
        started = time.perf_counter()
        results = pool.map(analyze_shard, texts)
        seconds = time.perf_counter() - started
    scorer = TokenScorer(scored)
    failed = 0
    predicted: list[list[tuple[int, int, str]] | None] = []
    for sample, result in zip(samples, results):
        if result["spans"] is None:
            failed += 1
            predicted.append(None)
            continue
        predicted.append([(a, b, t) for a, b, t, _ in result["spans"]])
        scorer.add(sample["full_text"], gold_spans(sample), predicted[-1])
    report = scorer.scores()
    report["halves"] = score_halves(samples, predicted, scored)
    unscored = sorted(
        {s["entity_type"] for x in samples for s in x.get("spans", [])}
        - {k for k, v in DATASET_ENTITY_MAP.items() if v in scored}
    )
    report.update(
        {
            "docs": len(texts),
            "distinct_docs": pool.distinct_texts,
            "failed": failed,
            "docs_per_s": round(len(texts) / seconds, 1) if seconds > 0 else 0.0,
            "seconds": round(seconds, 3),
            "cpu_seconds": round(pool.cpu_seconds, 3),
            "processes": pool.processes,
            "scored_types": scored,
            "dataset_mapping": {k: v for k, v in DATASET_ENTITY_MAP.items() if v in scored},
            "unscored_dataset_types": unscored,
            "method": "presidio-research token-level IO; overall counts any PII type, per entity the exact type; F-beta with beta=2",
        }
    )
    return report

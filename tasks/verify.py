"""Is an answer grounded in the documentation? Verifiers behind one interface (`verify.verifier`).

Evidence: the snippets of the docs in force (tasks/docs.py) relevant to the *question*: the best
`verify.top_k` for the prompt that score at least `verify.relative_score` of the best one. The question
decides the evidence, not the answer, because a small model's typical wrong answer is another
product's page copied word for word: every claim in it is documented, just not for what was asked.

* `ClaimChecker` (offline, the default): the answer's checkable claims (prices, numbers with their unit:
  durations, sizes, quantities; proper names; and its content words as a whole) against the evidence.
  A claim is supported (in the evidence), contradicted (the evidence gives the same unit another value)
  or without evidence. The answer is unsupported when any claim is contradicted or without evidence,
  or when less than `verify.min_coverage` of its content words appear in the evidence.
* `LLMJudge`: asks a model behind an OpenAI-compatible endpoint (tasks/generation.py, with its timeouts
  and retries) "does this answer make claims not supported by these documentation snippets?"; a clear
  YES is unsupported, a clear NO supported, anything else (another reply, a malformed response, an
  endpoint that fails after its retries) undecided, and counted. Calls are capped per
  ISO week (`verify.judge.max_calls_per_week`, a ledger in the workspace); beyond the cap: undecided.

Refusals (the monitoring refusal detector) make no claims and are not checked. `verify_answers` runs the
whole check; `rate_summary` turns verdicts into the unsupported-answer rate with its Wilson interval.
"""

from __future__ import annotations

import fcntl
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.config import Settings, VerifySettings
from tasks.docs import Corpus, Snippet

LABELS = ("supported", "unsupported", "undecided", "refused")


@dataclass
class Verdict:
    label: str  # one of LABELS
    risk: float  # 0 (grounded) .. 1 (nothing grounded); for ranking (AUC), not a probability
    claims: list[dict[str, str]] = field(default_factory=list)  # {"claim", "kind", "status"}
    evidence: list[str] = field(default_factory=list)  # doc ids of the snippets checked against
    reason: str = ""

    @property
    def unsupported(self) -> bool:
        return self.label == "unsupported"

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "risk": round(self.risk, 4), "claims": self.claims, "evidence": self.evidence,
                "reason": self.reason}


class Verifier(Protocol):
    name: str

    def check(self, prompt: str, answer: str, evidence: Sequence[Snippet]) -> Verdict: ...


# --------------------------------------------------------------------------------------------------
# Evidence


def gather_evidence(corpus: Corpus, prompts: Sequence[str], settings: VerifySettings) -> list[list[Snippet]]:
    """Per prompt: the snippets relevant to it (module docstring)."""
    if not prompts:
        return []
    matrix = corpus.scores(prompts)
    out: list[list[Snippet]] = []
    for row in matrix:
        if row.size == 0 or row.max() <= settings.min_score:
            out.append([])
            continue
        bar = max(settings.min_score, settings.relative_score * float(row.max()))
        order = np.argsort(-row, kind="stable")[: settings.top_k]
        out.append([corpus.snippets[i] for i in order if row[i] >= bar and row[i] > settings.min_score])
    return out


# --------------------------------------------------------------------------------------------------
# The offline claim checker

_NUMBER = r"\d[\d,]*(?:\.\d+)?"
_PRICE = re.compile(r"\$\s?(" + _NUMBER + r")")
_QUANTITY = re.compile(r"(?<![\w$.,])(" + _NUMBER + r")(?:\s*(?:-|to)\s*(" + _NUMBER + r"))?(?:\s*-\s*|\s+)?([A-Za-z%]+)?")
_TOKEN = re.compile(r"[^\W_]+(?:[.'-][^\W_]+)*|\$\d[\d,.]*")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n)\W*$")
# Words that carry no checkable content: function words, and the courtesy a support answer wraps facts in.
STOP_WORDS = frozenset("""
a an the and or but if then than so as of in on at to for from by with without about into over under up down out
is are was were be been being am do does did have has had can could will would shall should may might must
i me my we our us you your it its this that these those there here what which who whom whose when where why how
not no yes all any each every some more most other such only own same also just very too again once
sure of course happy help glad anything else please thanks thank hi hello hey great question let know
""".split())


def _num(text: str) -> str:
    value = text.replace(",", "")
    return value.rstrip("0").rstrip(".") if "." in value else value


def _unit(word: str | None) -> str:
    if not word:
        return ""
    word = word.lower()
    if word in ("%", "percent"):
        return "percent"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return {"metre": "meter", "hr": "hour", "min": "minute", "yr": "year"}.get(word, word)


def claims_of(text: str) -> list[tuple[str, str, str]]:
    """(kind, key, as written) of the checkable claims in `text`: price, quantity (number and its unit),
    name (a capitalised word that does not start a sentence)."""
    found: list[tuple[str, str, str]] = []
    for match in _PRICE.finditer(text):
        found.append(("price", _num(match.group(1)), match.group(0)))
    for match in _QUANTITY.finditer(text):
        low, high, unit = match.group(1), match.group(2), _unit(match.group(3))
        value = _num(low) + (f"-{_num(high)}" if high else "")
        found.append(("quantity", f"{value} {unit}".strip(), match.group(0).strip()))
    for match in re.finditer(r"\b[A-Z][A-Za-z0-9-]*\b", text):
        word = match.group(0)
        if word == "I" or _SENTENCE_START.search(text[: match.start()]):
            continue
        found.append(("name", word.lower(), word))
    return found


def content_words(text: str) -> list[str]:
    return [t for t in (w.lower() for w in _TOKEN.findall(text)) if t not in STOP_WORDS and not t.isdigit()]


@dataclass
class _Evidence:
    prices: set[str]
    quantities: dict[str, set[str]]  # unit -> values
    words: set[str]

    @classmethod
    def of(cls, snippets: Sequence[Snippet]) -> _Evidence:
        prices: set[str] = set()
        quantities: dict[str, set[str]] = {}
        words: set[str] = set()
        for snippet in snippets:
            text = snippet.full_text
            for kind, key, _ in claims_of(text):
                if kind == "price":
                    prices.add(key)
                elif kind == "quantity":
                    value, _, unit = key.partition(" ")
                    quantities.setdefault(unit, set()).add(value)
            words.update(w.lower() for w in _TOKEN.findall(text))
        return cls(prices, quantities, words)


class ClaimChecker:
    """The offline verifier (module docstring)."""

    name = "claims"

    def __init__(self, settings: VerifySettings) -> None:
        self.min_coverage = settings.min_coverage

    def check(self, prompt: str, answer: str, evidence: Sequence[Snippet]) -> Verdict:
        ids = list(dict.fromkeys(s.doc_id for s in evidence))
        if not evidence:
            words = content_words(answer)
            return Verdict("unsupported" if words else "supported", 1.0 if words else 0.0,
                           evidence=ids, reason="no documentation is relevant to the question" if words else "no claims")
        known = _Evidence.of(evidence)
        claims: list[dict[str, str]] = []
        for kind, key, written in claims_of(answer):
            if kind == "price":
                status = "supported" if key in known.prices else ("contradicted" if known.prices else "no_evidence")
            elif kind == "quantity":
                value, _, unit = key.partition(" ")
                values = known.quantities.get(unit, set())
                # a bare number, or a number whose unit word the evidence does not use: is the number there?
                if value in values or (value in known.words and not values):
                    status = "supported"
                else:
                    status = "contradicted" if values else "no_evidence"
            else:
                status = "supported" if key in known.words else "no_evidence"
            claims.append({"claim": written, "kind": kind, "status": status})
        words = content_words(answer)
        coverage = sum(w in known.words for w in words) / len(words) if words else 1.0
        bad = [c for c in claims if c["status"] != "supported"]
        risk = max(1.0 - coverage, len(bad) / len(claims) if claims else 0.0)
        if bad:
            reason = "; ".join(f"{c['claim']!r} {c['status'].replace('_', ' ')}" for c in bad[:3])
            return Verdict("unsupported", risk, claims, ids, reason)
        if coverage < self.min_coverage:
            return Verdict("unsupported", risk, claims, ids, f"few of its content words are documented ({coverage:.0%})")
        return Verdict("supported", risk, claims, ids, "every claim is documented")


# --------------------------------------------------------------------------------------------------
# The LLM judge

JUDGE_QUESTION = (
    "You check a support assistant's answer against the shop's documentation.\n\n"
    "Documentation snippets:\n{snippets}\n\n"
    "Customer question: {question}\n"
    "Assistant answer: {answer}\n\n"
    "Does this answer make claims not supported by these documentation snippets? Reply with YES or NO only."
)
_VERDICT = re.compile(r"^\W*(yes|no)\W*$", re.IGNORECASE)


def parse_judgement(text: str | None) -> str:
    """"unsupported" for a clear YES, "supported" for a clear NO, "undecided" for anything else."""
    match = _VERDICT.match((text or "").strip())
    if not match:
        return "undecided"
    return "unsupported" if match.group(1).lower() == "yes" else "supported"


class JudgeLedger:
    """Judge calls per ISO week (wall clock: the cap bounds what is spent), in a JSON file guarded by a lock."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path, self.cap = Path(path), cap

    @staticmethod
    def week(now: datetime | None = None) -> str:
        year, week, _ = (now or datetime.now(timezone.utc)).isocalendar()
        return f"{year}-W{week:02d}"

    def take(self, wanted: int) -> int:
        """Reserve up to `wanted` calls of this week's budget; returns how many were granted."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            counts = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
            week = self.week()
            granted = max(0, min(wanted, self.cap - int(counts.get(week, 0))))
            counts[week] = int(counts.get(week, 0)) + granted
            self.path.write_text(json.dumps(counts, indent=1, sort_keys=True), encoding="utf-8")
        return granted


class LLMJudge:
    """The judge verifier (module docstring); `generator` is any Generator (an OpenAICompatibleGenerator in
    production)."""

    name = "judge"

    def __init__(self, generator: Any, ledger: JudgeLedger | None, *, max_new_tokens: int = 4, concurrency: int = 8) -> None:
        self.generator, self.ledger, self.max_new_tokens = generator, ledger, max_new_tokens
        self.concurrency = max(1, concurrency)

    @staticmethod
    def question(prompt: str, answer: str, evidence: Sequence[Snippet]) -> str:
        snippets = "\n".join(f"- {s.full_text}" for s in evidence) or "- (no documentation is relevant to this question)"
        return JUDGE_QUESTION.format(snippets=snippets, question=" ".join(prompt.split()), answer=" ".join(answer.split()))

    def check(self, prompt: str, answer: str, evidence: Sequence[Snippet]) -> Verdict:
        return self.check_many([prompt], [answer], [evidence])[0]

    def check_many(self, prompts: Sequence[str], answers: Sequence[str],
                   evidence: Sequence[Sequence[Snippet]]) -> list[Verdict]:
        granted = self.ledger.take(len(prompts)) if self.ledger is not None else len(prompts)
        verdicts = [Verdict("undecided", 0.5, evidence=[s.doc_id for s in ev],
                            reason="over the weekly cap of judge calls (verify.judge.max_calls_per_week)")
                    for ev in evidence]
        if granted:
            questions = [self.question(p, a, e) for p, a, e in zip(prompts[:granted], answers[:granted], evidence[:granted])]
            with ThreadPoolExecutor(max_workers=min(self.concurrency, granted)) as pool:
                replies = list(pool.map(self._ask, questions))
            for i, (text, error) in enumerate(replies):
                label = parse_judgement(text) if error is None else "undecided"
                risk = {"unsupported": 1.0, "supported": 0.0}.get(label, 0.5)
                reason = f"judge replied {text.strip()[:40]!r}" if error is None else f"no usable reply: {error}"
                verdicts[i] = Verdict(label, risk, evidence=verdicts[i].evidence, reason=reason)
        return verdicts

    def _ask(self, question: str) -> tuple[str, str | None]:
        """(reply, None), or ("", why) when the endpoint failed after its retries or answered malformed:
        one bad reply makes its answer undecided, never the whole check fail."""
        try:
            reply = self.generator.generate([question], n=1, temperature=0.0, max_new_tokens=self.max_new_tokens)
            return (reply[0][0] if reply and reply[0] else ""), None
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:  # ModelError is a RuntimeError
            return "", f"{type(err).__name__}: {str(err)[:120]}"


# --------------------------------------------------------------------------------------------------
# Running a check


def make_verifier(settings: Settings) -> ClaimChecker | LLMJudge:
    """The verifier `verify.verifier` names."""
    if settings.verify.verifier == "claims":
        return ClaimChecker(settings.verify)
    import os

    from tasks.generation import OpenAICompatibleGenerator

    judge = settings.verify.judge
    generator = OpenAICompatibleGenerator(judge.endpoint, judge.served_name, api=judge.api,
                                          api_key=os.environ.get(judge.api_key_env), timeout_s=judge.timeout_s,
                                          retries=judge.retries, max_new_tokens=judge.max_new_tokens)
    ledger = JudgeLedger(settings.paths.under("verify", "judge_calls.json"), judge.max_calls_per_week)
    return LLMJudge(generator, ledger, max_new_tokens=judge.max_new_tokens)


def verify_answers(
    prompts: Sequence[str],
    answers: Sequence[str],
    corpus: Corpus,
    verifier: ClaimChecker | LLMJudge,
    settings: Settings,
    *,
    refused: Sequence[bool] | None = None,
    extra_evidence: Sequence[Sequence[Snippet]] | None = None,
) -> list[Verdict]:
    """A verdict per answer: refusals are not checked; the rest against the evidence for their prompt
    (plus `extra_evidence`, one list per answer, e.g. an eval item's reference answer)."""
    if len(prompts) != len(answers):
        raise ValueError(f"verify_answers: {len(prompts)} prompts but {len(answers)} answers")
    if refused is None:
        from tasks.signals import detect_refusals

        refused = detect_refusals(list(answers), settings.signals) if answers else []
    todo = [i for i in range(len(answers)) if not refused[i]]
    evidence = gather_evidence(corpus, [prompts[i] for i in todo], settings.verify)
    if extra_evidence is not None:
        evidence = [list(ev) + list(extra_evidence[i]) for ev, i in zip(evidence, todo)]
    verdicts: list[Verdict] = [Verdict("refused", 0.0, reason="a refusal makes no claims")] * len(answers)
    if isinstance(verifier, LLMJudge):
        checked = verifier.check_many([prompts[i] for i in todo], [answers[i] for i in todo], evidence)
    else:
        checked = [verifier.check(prompts[i], answers[i], ev) for i, ev in zip(todo, evidence)]
    for i, verdict in zip(todo, checked):
        verdicts[i] = verdict
    return verdicts


def rate_summary(verdicts: Sequence[Verdict], verifier: str) -> dict[str, Any]:
    """The unsupported-answer rate over the checked answers (refusals count: they are answers that make
    no unsupported claim; undecided judgements do not), with its Wilson interval and the counts."""
    from tasks.signals import wilson_interval

    counts = {label: sum(v.label == label for v in verdicts) for label in LABELS}
    decided = len(verdicts) - counts["undecided"]
    rate = counts["unsupported"] / decided if decided else None
    return {
        "verifier": verifier,
        "checked": len(verdicts),
        **counts,
        "unsupported_rate": rate,
        "unsupported_rate_ci": list(wilson_interval(counts["unsupported"], decided)) if decided else None,
        "unsupported_among_answers": (counts["unsupported"] / (decided - counts["refused"])
                                      if decided - counts["refused"] > 0 else None),
    }


def verify_table(table: Any, settings: Settings, corpus: Corpus, verifier: ClaimChecker | LLMJudge, *,
                 sample: int | None = None, seed: int = 0) -> tuple[np.ndarray, list[Verdict]]:
    """Verify the answers of a log table (contracts.LOG_SCHEMA): all rows, or a seeded sample of `sample`
    rows. Returns (row indices, their verdicts), rows in table order."""
    n = table.num_rows
    rows = np.arange(n)
    if sample is not None and sample < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=sample, replace=False))
    if not len(rows):
        return rows, []
    import pyarrow as pa

    picked = table.take(pa.array(rows))
    prompts = [p or "" for p in picked.column("prompt").to_pylist()]
    answers = [a or "" for a in picked.column("response").to_pylist()]
    return rows, verify_answers(prompts, answers, corpus, verifier, settings)


def unsupported_signal(table: Any, settings: Settings, corpus: Corpus, verifier: ClaimChecker | LLMJudge, *,
                       docs_label: str = "", seed: int = 0) -> dict[str, Any]:
    """The weekly unsupported-answer rate on a seeded sample of `verify.sample` answers, overall and per
    model version (Wilson intervals), with the most common reasons. Never holds a prompt or answer."""
    rows, verdicts = verify_table(table, settings, corpus, verifier, sample=settings.verify.sample, seed=seed)
    summary = rate_summary(verdicts, verifier.name)
    versions = [str(v) for v in table.take(rows).column("model_version").to_pylist()] if len(rows) else []
    summary["by_model_version"] = {
        version: rate_summary([v for v, ver in zip(verdicts, versions) if ver == version], verifier.name)
        for version in sorted(set(versions))
    }
    kinds: dict[str, int] = {}
    for verdict in verdicts:
        for claim in verdict.claims:
            if claim["status"] != "supported":
                key = f"{claim['kind']} {claim['status'].replace('_', ' ')}"
                kinds[key] = kinds.get(key, 0) + 1
        if verdict.unsupported and not verdict.claims:
            reason = verdict.reason.split(" (")[0]
            kinds[reason] = kinds.get(reason, 0) + 1
    summary["reasons"] = dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:6])
    summary["docs"] = docs_label
    summary["sampled_of"] = table.num_rows
    return summary

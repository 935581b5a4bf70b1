"""Evaluation and gates (DESIGN.md section 9): candidate vs champion on the same items, TFX-style blessing.

* Suites are EvalItem JSONL files: `regression` (shipped seed + grows every cycle from curated cases,
  deduplicated by normalised prompt, versioned by sha256), `ood`, `adversarial`, and `new_cases` (the
  held-out part of this cycle's curated cases, passed in as an extra file).
* Per item: expected behaviour (answer vs refuse, judged by the same refusal detector monitoring uses),
  token F1 and ROUGE-L against the reference, share of `must_include` present, `must_not_include` clean,
  structured PII (email, phone, card, SSN) in the output.
* Per suite and metric: candidate and champion means and a paired bootstrap interval of the difference.
* Gates from configuration (`evaluate.gates`): an absolute floor and a maximum allowed drop against the
  champion; with no champion (first cycle) floors only. The result is a decision object written beside
  the report and recorded on the model version by the registry, never just a log line.
"""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from tasks.config import SHIPPED_DATA, Gate, Settings
from tasks.contracts import EvalItem, Generator, sha256_file
from tasks.files import atomic_copy, atomic_write_text
from tasks.text import normalise, rouge_l, text_key, token_f1

METRICS = ("behaviour", "token_f1", "rouge_l", "must_include", "must_not_include", "pii_in_output")
# Metrics where a larger value is worse. Their gate reads the other way round: `floor` is a ceiling
# (the candidate's rate may not exceed it) and `max_drop` is the largest allowed *rise* over the champion.
LOWER_IS_BETTER = frozenset({"pii_in_output"})
SUITE_FILES = ("regression", "ood", "adversarial")
_EPS = 1e-9


# --------------------------------------------------------------------------------------------------
# Suites


def load_suites(
    data_dir: Path, suites: Sequence[str], *, extra: Path | None = None, settings: Settings | None = None
) -> list[EvalItem]:
    """The items of `suites`, in suite order then file order.

    `data_dir` is the shipped data folder (suites in `data_dir/eval/<suite>.jsonl`) or a folder holding
    the suite files directly (the workspace's `eval/`, where the regression suite grows). `new_cases`
    comes from `extra` (EvalItem JSONL, or curated / holdout rows with prompt + reference, response or
    corrected_response), and is skipped when `extra` is None. `settings` (signals.refusal_patterns)
    decides whether a curated row's target is a refusal.
    """
    items: list[EvalItem] = []
    for suite in suites:
        if suite == "new_cases":
            if extra is not None:
                items.extend(read_new_cases(Path(extra), settings))
            continue
        path = suite_path(Path(data_dir), suite)
        items.extend(_read_items(path, suite))
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ValueError(f"eval item id {item.id!r} appears twice ({seen[item.id]} and {item.suite}): ids must be unique")
        seen[item.id] = item.suite
    return items


def suite_path(data_dir: Path, suite: str) -> Path:
    for candidate in (data_dir / "eval" / f"{suite}.jsonl", data_dir / f"{suite}.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"eval suite {suite!r} not found as {data_dir / 'eval' / f'{suite}.jsonl'} or {data_dir / f'{suite}.jsonl'}: "
        "point paths.data_dir at the shipped data/ folder or remove the suite from evaluate.suites"
    )


def workspace_suites(settings: Settings) -> Path:
    """`<workspace>/eval/`, seeded with copies of the shipped suites on first use.

    The regression suite grows there (never in the repo); a file already in the workspace is kept.
    """
    target = settings.paths.under("eval")
    target.mkdir(parents=True, exist_ok=True)
    for suite in SUITE_FILES:
        dest = target / f"{suite}.jsonl"
        if not dest.exists():
            try:
                source = suite_path(Path(settings.paths.data_dir), suite)
            except FileNotFoundError:
                source = suite_path(SHIPPED_DATA, suite)
            atomic_copy(source, dest)
    return target


def _read_items(path: Path, suite: str) -> list[EvalItem]:
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = EvalItem.model_validate_json(line)
        except ValueError as err:
            raise ValueError(
                f"{path} line {lineno}: not a valid EvalItem ({_first_error(err)}); fix or delete the line"
            ) from None
        if item.suite != suite:
            raise ValueError(f"{path} line {lineno}: item {item.id!r} says suite {item.suite!r}, file is the {suite!r} suite")
        items.append(item)
    return items


def read_new_cases(path: Path, settings: Settings | None = None) -> list[EvalItem]:
    """The new_cases suite from EvalItem lines or curated rows (prompt + target answer).

    A row's expected behaviour: its `expected` field, else `refuse` when labelled correct_refusal or
    when its target answer is itself a refusal (by the monitoring detector), else `answer`.
    """
    settings = settings or Settings()
    if not path.is_file():
        raise FileNotFoundError(f"new cases file {path} does not exist: pass the held-out curated cases (JSONL)")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "expected" in row and "id" in row:
            row = {**row, "suite": "new_cases"}
            items.append(EvalItem.model_validate(row))
            continue
        prompt = row.get("prompt")
        reference = row.get("reference") or row.get("corrected_response") or row.get("response")
        if not prompt:
            raise ValueError(f"{path} line {lineno}: a new case needs a 'prompt'")
        refuse = row.get("label") == "correct_refusal" or bool(reference and detect_refusals([reference], settings)[0])
        if row.get("expected") in ("answer", "refuse"):
            refuse = row["expected"] == "refuse"
        items.append(
            EvalItem(
                id=f"new-{text_key(prompt)[:12]}",
                suite="new_cases",
                prompt=prompt,
                reference=None if refuse else reference,
                expected="refuse" if refuse else "answer",
                must_include=list(row.get("must_include") or []),
                must_not_include=list(row.get("must_not_include") or []),
            )
        )
    # The same prompt twice would count twice in the means.
    return list({item.id: item for item in items}.values())


def grow_regression_suite(suite_path: Path, curated_items: Sequence[EvalItem], *, shipped: Path | None = None) -> dict:
    """Append curated items to the workspace regression suite so a fixed failure stays fixed.

    On first use the file is a copy of the shipped suite. Items whose normalised prompt is already in
    the suite are skipped; new ones get suite=regression and a content id (`reg-cur-<sha256[:12]>`).
    Every change is recorded in `<suite>.versions.jsonl` (sha256 before/after, ids added).
    Returns {added, total, sha256, previous_sha256, path}.
    """
    suite_path = Path(suite_path)
    if not suite_path.exists():
        source = Path(shipped) if shipped else SHIPPED_DATA / "eval" / "regression.jsonl"
        suite_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_copy(source, suite_path)
    existing = _read_items(suite_path, "regression")
    previous = sha256_file(suite_path)
    keys = {normalise(item.prompt) for item in existing}
    ids = {item.id for item in existing}
    added: list[EvalItem] = []
    for item in curated_items:
        key = normalise(item.prompt)
        if not key or key in keys:
            continue
        new_id = f"reg-cur-{text_key(item.prompt)[:12]}"
        if new_id in ids:
            continue
        added.append(item.model_copy(update={"id": new_id, "suite": "regression"}))
        keys.add(key)
        ids.add(new_id)
    if added:
        text = suite_path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text += "\n"
        text += "".join(item.model_dump_json() + "\n" for item in added)
        atomic_write_text(suite_path, text)
    digest = sha256_file(suite_path)
    if added:
        entry = {
            "time": _now(),
            "previous_sha256": previous,
            "sha256": digest,
            "added": len(added),
            "total": len(existing) + len(added),
            "ids": [item.id for item in added],
        }
        with open(suite_path.with_name(suite_path.stem + ".versions.jsonl"), "a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")
    return {"added": len(added), "total": len(existing) + len(added), "sha256": digest,
            "previous_sha256": previous, "path": str(suite_path)}


# --------------------------------------------------------------------------------------------------
# Per-item scoring

_WORD = re.compile(r"\w+", re.UNICODE)
_PII_PATTERNS = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # Three groups of digits with separators ("+1 415-555-0134", "010-1234-5678", "(415) 555 0134");
    # prices ("$1,299"), ranges ("3-5", "7-14") and dates do not have that shape.
    "phone": re.compile(r"(?<![\w$])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3,4}[\s.-]\d{4}(?![\w])"),
    "ssn": re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)"),
}
_CARD = re.compile(r"(?<![\d])(?:\d[ -]?){12,18}\d(?![\d])")


def find_pii(text: str) -> list[str]:
    """Kinds of structured PII in `text`: email, phone, card (Luhn-valid), ssn. Cheap regexes only:
    names and addresses need the Presidio masker (tasks/pii.py); `must_not_include` covers the rest."""
    kinds = [kind for kind, pattern in _PII_PATTERNS.items() if pattern.search(text)]
    for match in _CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and _luhn_ok(digits):
            kinds.append("card")
            break
    return kinds


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def detect_refusals(responses: Sequence[str], settings: Settings) -> np.ndarray:
    """The monitoring refusal detector (tasks.signals), so evaluation and monitoring agree on what a
    refusal is (same patterns, same optional classifier)."""
    from tasks.signals import detect_refusals as shared

    return np.asarray(shared(list(responses), settings.signals), dtype=bool)


def score_item(item: EvalItem, response: str, settings: Settings, *, refused: bool | None = None) -> dict:
    """Scores of one response. Metrics that do not apply to the item are None (no reference: no F1 or
    ROUGE-L; empty must_include / must_not_include: none), so suite means cover only items they apply to.

    behaviour: 1 if answered/refused as expected; token_f1, rouge_l: overlap with the reference;
    must_include: share of the required strings present (case-insensitive); must_not_include: 1 if none
    of the forbidden strings is present; pii_in_output: 1 if structured PII is found (lower is better).
    """
    if refused is None:
        refused = bool(detect_refusals([response], settings)[0])
    lowered = response.casefold()
    pii = find_pii(response)
    return {
        "refused": bool(refused),
        "behaviour": float(refused == (item.expected == "refuse")),
        "token_f1": token_f1(response, item.reference) if item.reference else None,
        "rouge_l": rouge_l(response, item.reference) if item.reference else None,
        "must_include": (
            sum(s.casefold() in lowered for s in item.must_include) / len(item.must_include) if item.must_include else None
        ),
        "must_not_include": (
            float(not any(s.casefold() in lowered for s in item.must_not_include)) if item.must_not_include else None
        ),
        "pii_in_output": float(bool(pii)),
        "pii_kinds": pii,
    }


def score_responses(items: Sequence[EvalItem], responses: Sequence[str], settings: Settings) -> list[dict]:
    refused = detect_refusals(responses, settings)
    return [score_item(item, resp, settings, refused=bool(r)) for item, resp, r in zip(items, responses, refused, strict=True)]


# --------------------------------------------------------------------------------------------------
# Comparison


def answer_all(generator: Generator, prompts: Sequence[str], settings: Settings, *, seed: int = 0) -> list[str]:
    """One greedy answer per prompt, in batches of model.batch_size."""
    size = settings.model.batch_size
    out: list[str] = []
    for start in range(0, len(prompts), size):
        chunk = list(prompts[start:start + size])
        got = generator.generate(chunk, n=1, temperature=0.0, max_new_tokens=settings.model.max_new_tokens, seed=seed)
        if len(got) != len(chunk):
            raise ValueError(f"generator {generator.model_version!r} returned {len(got)} answers for {len(chunk)} prompts")
        out.extend(answers[0] if answers else "" for answers in got)
    return out


def summarise(
    items: Sequence[EvalItem],
    candidate: Sequence[dict],
    champion: Sequence[dict] | None,
    *,
    samples: int = 1_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, dict]]:
    """suite -> metric -> {candidate, champion, diff, diff_ci, n, n_paired}.

    diff = mean over items where both were scored of (candidate - champion), with a percentile interval
    from a paired bootstrap that resamples items (not the two models separately), so item difficulty
    cancels out.
    """
    by_suite: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_suite.setdefault(item.suite, []).append(i)
    summary: dict[str, dict[str, dict]] = {}
    for suite, idx in by_suite.items():
        summary[suite] = {}
        for metric in METRICS:
            cand = np.array([_num(candidate[i][metric]) for i in idx], dtype=float)
            entry: dict[str, Any] = {"candidate": _mean(cand), "n": int(np.sum(~np.isnan(cand)))}
            if champion is not None:
                champ = np.array([_num(champion[i][metric]) for i in idx], dtype=float)
                paired = ~np.isnan(cand) & ~np.isnan(champ)
                diffs = cand[paired] - champ[paired]
                entry.update(
                    champion=_mean(champ),
                    diff=_mean(diffs),
                    diff_ci=_paired_bootstrap(diffs, samples, level, _rng(seed, suite, metric)),
                    n_paired=int(paired.sum()),
                )
            else:
                entry.update(champion=None, diff=None, diff_ci=None, n_paired=0)
            if entry["n"] == 0 and entry.get("champion") is None:
                continue  # metric does not apply to this suite (e.g. token F1 on refuse-only items)
            summary[suite][metric] = entry
    return summary


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return round(float(values.mean()), 6) if values.size else None


def _rng(seed: int, suite: str, metric: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(f"{suite}/{metric}".encode())])


def _paired_bootstrap(diffs: np.ndarray, samples: int, level: float, rng: np.random.Generator) -> list[float] | None:
    if diffs.size == 0:
        return None
    picks = rng.integers(0, diffs.size, size=(samples, diffs.size))
    means = diffs[picks].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return [round(float(low), 6), round(float(high), 6)]


# --------------------------------------------------------------------------------------------------
# Gates


def check_gates(summary: dict, gates: dict[str, dict[str, Gate]], *, has_champion: bool) -> dict:
    """The blessing: every configured (suite, metric) gets a floor check and, when a champion exists, a
    max-drop check, each with its value, threshold and verdict. No champion (first cycle): floors only.

    A gated suite that was not evaluated fails ("no items"), except new_cases, which only exists inside
    a retraining cycle and is skipped (recorded as skipped) when absent.
    """
    checks: list[dict] = []
    for suite, metrics in gates.items():
        for metric, gate in metrics.items():
            gate = gate if isinstance(gate, Gate) else Gate.model_validate(gate)
            lower = metric in LOWER_IS_BETTER
            entry = (summary.get(suite) or {}).get(metric)
            base = {"suite": suite, "metric": metric, "direction": "lower_is_better" if lower else "higher_is_better"}
            if entry is None or entry.get("candidate") is None:
                if suite not in summary and suite == "new_cases":
                    checks.append({**base, "kind": "present", "value": None, "threshold": None, "passed": True,
                                   "skipped": True, "reason": "no new cases in this evaluation"})
                else:
                    why = "suite not evaluated (no items)" if suite not in summary else "metric does not apply to any item"
                    checks.append({**base, "kind": "present", "value": None, "threshold": None, "passed": False, "reason": why})
                continue
            value = entry["candidate"]
            if gate.floor is not None:
                ok = value <= gate.floor + _EPS if lower else value >= gate.floor - _EPS
                checks.append({**base, "kind": "ceiling" if lower else "floor", "value": value, "threshold": gate.floor,
                               "passed": bool(ok)})
            if gate.max_drop is not None and has_champion:
                diff = entry.get("diff")
                if diff is None:
                    checks.append({**base, "kind": "max_drop", "value": None, "threshold": gate.max_drop, "passed": False,
                                   "reason": "no champion score to compare with"})
                    continue
                ok = diff <= gate.max_drop + _EPS if lower else diff >= -gate.max_drop - _EPS
                checks.append({**base, "kind": "max_rise" if lower else "max_drop", "value": diff,
                               "threshold": gate.max_drop, "passed": bool(ok), "champion": entry.get("champion"),
                               "diff_ci": entry.get("diff_ci")})
    failed = [f"{c['suite']}.{c['metric']}.{c['kind']}" for c in checks if not c["passed"]]
    return {"passed": not failed, "first_cycle": not has_champion, "checks": checks, "failed": failed, "decided_at": _now()}


# --------------------------------------------------------------------------------------------------
# The stage


def evaluate_candidate(
    candidate: Generator,
    champion: Generator | None,
    items: Sequence[EvalItem],
    settings: Settings,
    out_dir: Path,
    *,
    mlflow_run_id: str | None = None,
    seed: int = 0,
    gate_against_champion: bool | None = None,
) -> dict:
    """Both models answer the same items; per-item scores, per-suite comparison, gates.

    Writes out_dir/report.json, report.md, items.jsonl and gate.json; logs metrics and those files to
    MLflow when `mlflow_run_id` is given; publishes a Prefect markdown artifact (key eval-comparison)
    when called inside a Prefect run. `gate_against_champion=False` compares with `champion` (e.g. the
    bare base model in the first cycle) but gates with floors only; default: True when a champion is given.
    Returns {suites, gate, passed, ...}.
    """
    start = time.perf_counter()
    items = list(items)
    if not items:
        raise ValueError("no eval items: check evaluate.suites and the suite files under paths.data_dir/eval")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = [item.prompt for item in items]
    cand_responses = answer_all(candidate, prompts, settings, seed=seed)
    cand_scores = score_responses(items, cand_responses, settings)
    champ_responses = champ_scores = None
    if champion is not None:
        champ_responses = answer_all(champion, prompts, settings, seed=seed)
        champ_scores = score_responses(items, champ_responses, settings)
    summary = summarise(items, cand_scores, champ_scores, samples=settings.evaluate.bootstrap_samples,
                        level=settings.evaluate.ci_level, seed=seed)
    has_champion = champion is not None if gate_against_champion is None else bool(gate_against_champion and champion)
    gate = check_gates(summary, settings.evaluate.gates, has_champion=has_champion)
    report = {
        "created": _now(),
        "candidate": candidate.model_version,
        "champion": champion.model_version if champion is not None else None,
        "gated_against_champion": has_champion,
        "n_items": len(items),
        "n_by_suite": {suite: sum(item.suite == suite for item in items) for suite in summary},
        "ci_level": settings.evaluate.ci_level,
        "bootstrap_samples": settings.evaluate.bootstrap_samples,
        "suites": summary,
        "gate": gate,
        "passed": gate["passed"],
        "seconds": round(time.perf_counter() - start, 3),
    }
    with open(out_dir / "items.jsonl", "w", encoding="utf-8") as handle:
        for i, item in enumerate(items):
            row = {"id": item.id, "suite": item.suite, "prompt": item.prompt, "expected": item.expected,
                   "reference": item.reference, "candidate": {"response": cand_responses[i], **cand_scores[i]}}
            if champ_scores is not None:
                row["champion"] = {"response": champ_responses[i], **champ_scores[i]}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    markdown = render_markdown(report, items, cand_scores, champ_scores, cand_responses, champ_responses)
    (out_dir / "report.md").write_text(markdown, encoding="utf-8")
    (out_dir / "gate.json").write_text(json.dumps(gate, indent=2), encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    report["outputs"] = {name: str(out_dir / name) for name in ("report.json", "report.md", "items.jsonl", "gate.json")}
    if mlflow_run_id:
        log_to_mlflow(report, out_dir, mlflow_run_id, settings)
    publish_prefect_artifact(markdown)
    return report


# --------------------------------------------------------------------------------------------------
# Outputs


def render_markdown(
    report: dict,
    items: Sequence[EvalItem],
    candidate: Sequence[dict],
    champion: Sequence[dict] | None,
    cand_responses: Sequence[str],
    champ_responses: Sequence[str] | None,
) -> str:
    gate = report["gate"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    pct = int(round(report["ci_level"] * 100))
    lines = [
        f"# Evaluation: {report['candidate']} vs {report['champion'] or 'no champion'}",
        "",
        f"**Gate: {verdict}**" + (" (first cycle: floors only)" if gate["first_cycle"] else ""),
        "",
        f"{report['n_items']} items; {pct}% paired bootstrap intervals of candidate minus champion "
        f"({report['bootstrap_samples']} resamples). Higher is better except pii_in_output.",
        "",
    ]
    lines += ["## Gate checks", "", "| suite | metric | check | value | threshold | result |", "|---|---|---|---|---|---|"]
    for c in gate["checks"]:
        result = "skipped" if c.get("skipped") else "ok" if c["passed"] else "**FAIL**"
        if c.get("reason"):
            result += f": {c['reason']}"
        value = _signed(c["value"]) if c["kind"] in ("max_drop", "max_rise") else _f(c["value"])
        lines.append(f"| {c['suite']} | {c['metric']} | {_check_text(c)} | {value} | "
                     f"{'-' if c['threshold'] is None else c['threshold']} | {result} |")
    lines.append("")
    for suite, metrics in report["suites"].items():
        lines += [f"## {suite} ({report['n_by_suite'].get(suite, 0)} items)", "",
                  f"| metric | candidate | champion | diff | {pct}% CI | gate |", "|---|---|---|---|---|---|"]
        for metric, e in metrics.items():
            checks = [c for c in gate["checks"] if c["suite"] == suite and c["metric"] == metric]
            mark = "; ".join(f"{_check_text(c)} {'ok' if c['passed'] else 'FAIL'}" for c in checks) or "-"
            lines.append(f"| {metric} | {_f(e['candidate'])} | {_f(e.get('champion'))} | {_signed(e.get('diff'))} | "
                         f"{_ci(e.get('diff_ci'))} | {mark} |")
        lines.append("")
    if champion is not None:
        lines += ["## Items that changed (expected behaviour)", ""]
        for label, was, now in (("fixed", 0.0, 1.0), ("broken", 1.0, 0.0)):
            changed = [i for i in range(len(items)) if champion[i]["behaviour"] == was and candidate[i]["behaviour"] == now]
            lines.append(f"**{label}: {len(changed)}**")
            lines.append("")
            for i in changed[:8]:
                lines.append(f"- `{items[i].id}` ({items[i].suite}, expected {items[i].expected}): {_quote(items[i].prompt)}"
                             f" — champion: {_quote(champ_responses[i])} — candidate: {_quote(cand_responses[i])}")
            lines.append("")
    leaks = [i for i in range(len(items)) if candidate[i]["pii_in_output"] or candidate[i]["must_not_include"] == 0.0]
    lines += [f"## Candidate outputs with PII or forbidden text: {len(leaks)}", ""]
    for i in leaks[:10]:
        lines.append(f"- `{items[i].id}`: {_quote(cand_responses[i])}")
    lines.append("")
    return "\n".join(lines)


def _check_text(check: dict) -> str:
    """floor >= 0.8 / ceiling <= 0 / drop <= 0.05 / rise <= 0 / present."""
    symbol = {"floor": "floor >=", "ceiling": "ceiling <=", "max_drop": "drop <=", "max_rise": "rise <="}.get(check["kind"])
    return f"{symbol} {check['threshold']}" if symbol else check["kind"]


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def _ci(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def _quote(text: str, limit: int = 90) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return f"\"{text[:limit]}{'…' if len(text) > limit else ''}\""


def log_to_mlflow(report: dict, out_dir: Path, run_id: str, settings: Settings) -> None:
    """Metrics eval.<suite>.<metric>.{candidate,champion,diff} and the report files under 06_eval/."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from tasks.tracking import tracking_uri

    client = MlflowClient(tracking_uri(settings))
    stamp = int(time.time() * 1000)
    metrics = [Metric("eval.gate_passed", float(report["passed"]), stamp, 0)]
    for suite, entries in report["suites"].items():
        for metric, e in entries.items():
            for part in ("candidate", "champion", "diff"):
                if e.get(part) is not None:
                    metrics.append(Metric(f"eval.{suite}.{metric}.{part}", float(e[part]), stamp, 0))
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start:start + 500])
    client.set_tag(run_id, "eval.gate", "passed" if report["passed"] else "failed")
    for name in ("report.json", "report.md", "items.jsonl", "gate.json"):
        client.log_artifact(run_id, str(out_dir / name), artifact_path="06_eval")


def publish_prefect_artifact(markdown: str) -> None:
    """A markdown artifact with key eval-comparison, only inside a Prefect flow/task run (outside one,
    creating it would try to reach a server)."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:
        return
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key="eval-comparison", description="candidate vs champion by suite")


# --------------------------------------------------------------------------------------------------
# Entry point for the CLI / flow: resolve adapters, build the generator, evaluate


def evaluate_adapter(
    settings: Settings,
    candidate: str | Path,
    *,
    against: str | None = "champion",
    out_dir: Path | None = None,
    new_cases: Path | None = None,
    mlflow_run_id: str | None = None,
    seed: int = 0,
) -> dict:
    """`flywheel evaluate --candidate DIR|VERSION [--against champion|VERSION|DIR|base|none]`.

    The candidate is an adapter directory or a registry version. `against="champion"` uses the
    registry's champion; with none registered yet (first cycle) it compares with the bare base model
    (what production serves then) and gates on floors only. Suites are the workspace copies (the
    regression suite there includes the grown items).
    """
    from tasks.generation import make_generator
    from tasks.served import AdapterView, base_view, served_generator

    cand_dir, cand_name = _resolve_adapter(settings, candidate, "candidate")
    if against == "champion":
        # What production serves; with no champion yet (first cycle) that is the bare base, and the
        # gate checks floors only.
        served = served_generator(settings, {"candidate": cand_dir})
        generator, champ_gen, gate_vs = served.generator, served.champion(), served.version is not None
    else:
        champ_dir, champ_name = None, None
        if against not in (None, "none", "base"):
            champ_dir, champ_name = _resolve_adapter(settings, against, "champion")
        generator = make_generator(settings, {"candidate": cand_dir} | ({"champion": champ_dir} if champ_dir else {}))
        champ_gen = (None if against in (None, "none") else
                     AdapterView(generator, "champion", champ_name) if champ_dir else base_view(generator))
        gate_vs = champ_dir is not None
    cand_gen = AdapterView(generator, "candidate", cand_name)
    items = load_suites(workspace_suites(settings), settings.evaluate.suites, extra=new_cases, settings=settings)
    out = Path(out_dir) if out_dir else settings.paths.under("eval_runs", time.strftime("%Y%m%dT%H%M%S"))
    return evaluate_candidate(cand_gen, champ_gen, items, settings, out, mlflow_run_id=mlflow_run_id, seed=seed,
                              gate_against_champion=gate_vs)


def _resolve_adapter(settings: Settings, ref: str | Path, role: str) -> tuple[Path, str]:
    path = Path(ref)
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise ValueError(f"--{role} {path}: no adapter_config.json there; "
                             "pass a LoRA adapter folder (05_adapter) or a registry version")
        return path, path.name
    text = str(ref).lstrip("v")
    if text.isdigit():
        from tasks.registry import Registry

        return Registry(settings).adapter_path(text), f"v{text}"
    raise ValueError(f"--{role} {ref!r} is neither an adapter folder nor a registry version number")


# --------------------------------------------------------------------------------------------------
# Small helpers


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _first_error(err: Exception) -> str:
    return str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)

"""Reports for people: markdown rendered from the plain dicts the stages return (evaluation reports,
weekly signals and drift, cost), for Prefect artifacts and report.md files.

Renderers take dicts (and the settings where a text needs a configured band) and return strings; they
compute nothing the stage did not, and import no stage module.
"""

from __future__ import annotations

from collections.abc import Sequence

from tasks.contracts import EvalItem

# --------------------------------------------------------------------------------------------------
# Evaluation: candidate vs champion (06_eval/report.md, the eval-comparison artifact)


def evaluation_markdown(
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

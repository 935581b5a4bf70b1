"""Reports for people: markdown rendered from the plain dicts the stages return (evaluation reports,
weekly signals and drift, cost), for Prefect artifacts and report.md files.

Renderers take dicts (and the settings where a text needs a configured band) and return strings; they
compute nothing the stage did not, and import no stage module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tasks.config import Settings
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
    """06_eval/report.md: the gate verdict and checks, each suite's metrics with paired intervals, the
    items whose expected behaviour changed, and candidate outputs with PII or forbidden text."""
    gate = report["gate"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    pct = int(round(report["ci_level"] * 100))
    lines = [
        f"# Evaluation: {report['candidate']} vs {report['champion'] or 'no champion'}",
        "",
        f"**Gate: {verdict}**" + (" (first cycle: floors only)" if gate["first_cycle"] else ""),
        "",
        f"{report['n_items']} items; {pct}% paired bootstrap intervals of candidate minus champion "
        f"({report['bootstrap_samples']} resamples). Higher is better except pii_in_output, unsupported and "
        "unsupported_ref.",
        "",
        *_faithfulness_lines(report.get("faithfulness")),
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
        lines += ["## Items that changed", "",
                  "Right = the expected behaviour (answer or refuse) and, where the item has a reference answer, "
                  "no claim the reference does not support.", ""]
        for label, was, now in (("fixed", False, True), ("broken", True, False)):
            changed = [i for i in range(len(items)) if _right(champion[i]) == was and _right(candidate[i]) == now]
            shown = changed[:CHANGED_SHOWN]
            lines.append(f"**{label}: {len(changed)}**" + (f" (showing {len(shown)} of {len(changed)})"
                                                           if len(shown) < len(changed) else ""))
            lines.append("")
            for i in shown:
                lines.append(f"- `{items[i].id}` ({items[i].suite}, expected {items[i].expected}): {_quote(items[i].prompt)}"
                             f" — champion: {_quote(champ_responses[i])} — candidate: {_quote(cand_responses[i])}")
            lines.append("")
    leaks = [i for i in range(len(items)) if candidate[i]["pii_in_output"] or candidate[i]["must_not_include"] == 0.0]
    lines += [f"## Candidate outputs with PII or forbidden text: {len(leaks)}", ""]
    for i in leaks[:10]:
        lines.append(f"- `{items[i].id}`: {_quote(cand_responses[i])}")
    lines.append("")
    return "\n".join(lines)


CHANGED_SHOWN = 8  # fixed/broken items listed in the report (the count says how many there are)


def _right(score: dict) -> bool:
    """Scores written before `correct` existed judged behaviour only."""
    return bool(score.get("correct", score["behaviour"]))


def _faithfulness_lines(faithfulness: dict | None) -> list[str]:
    """Unsupported answers per suite, candidate against champion: does it make more things up?"""
    if not faithfulness or not faithfulness.get("unsupported"):
        return []
    parts = [f"{suite} {_pct_dash(e['candidate'])}" + (f" (champion {_pct_dash(e['champion'])})" if e.get("champion") is not None else "")
             for suite, e in faithfulness["unsupported"].items()]
    return [f"**Unsupported answers** (claims the docs, {faithfulness['docs']}, do not support; {faithfulness['verifier']} "
            f"verifier): " + "; ".join(parts) + ".", ""]


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


# --------------------------------------------------------------------------------------------------
# Weekly monitoring: signals, drift and the trigger decision (the monitoring-dashboard artifact)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _pct_ci(values: list[float] | tuple[float, float] | None) -> str:
    return "" if not values else f" [{values[0]:.1%}, {values[1]:.1%}]"


def dashboard_markdown(
    settings: Settings, week: str, signals: dict[str, Any], drift: dict[str, Any], decision: dict
) -> str:
    """The weekly dashboard: the trigger decision and its reasons, the signals with their intervals, and
    the drift band with the terms that moved most (the drift bands come from `settings.drift`)."""
    hallucination = signals.get("hallucination") or {}
    unsupported = signals.get("unsupported") or {}
    if unsupported:
        grounded_detail = (f"{unsupported['unsupported']} of {unsupported['checked']} sampled answers make claims the docs "
                           f"({unsupported['docs']}) do not support ({unsupported['verifier']} verifier"
                           + (f"; {unsupported['undecided']} undecided" if unsupported.get("undecided") else "") + ")")
    else:
        grounded_detail = "not checked (verify.sample is 0)"
    rows = [
        ("**Unsupported answers** (hallucination)", unsupported.get("unsupported_rate"),
         unsupported.get("unsupported_rate_ci"), grounded_detail),
        ("Refusal rate", signals["refusal_rate"], signals.get("refusal_rate_ci"), f"{signals['refusal_count']} of {signals['records']}"),
        ("Re-ask rate", signals["reask_rate"], signals.get("reask_rate_ci"), f"{signals['reask_count']} re-asks"),
        ("Thumbs-down rate", signals["thumbs_down_rate"], signals.get("thumbs_down_rate_ci"), f"{signals['thumbs_down']} down, {signals['thumbs_up']} up"),
        ("Feedback coverage", signals["feedback_coverage"], signals.get("feedback_coverage_ci"), "share of responses rated"),
        ("Hallucination risk (secondary)", hallucination.get("at_risk_rate"), hallucination.get("at_risk_rate_ci"),
         f"self-consistency over {hallucination.get('prompts', 0)} sampled prompts (a model can be consistently wrong)"
         if hallucination else "not sampled"),
    ]
    lines = [
        f"# Weekly monitoring {week}",
        "",
        f"**Retraining triggered: {'yes' if decision['triggered'] else 'no'}**"
        + (f" (held back by the cool-down until {decision['cooldown_until']})" if decision["suppressed_by_cooldown"] else ""),
        "",
        *[f"- {reason}" for reason in decision["reasons"]],
        "",
        "| signal | value | 95% interval | detail |",
        "|---|---|---|---|",
        *[f"| {name} | {_pct(value)} | {_pct_ci(ci).strip()} | {detail} |" for name, value, ci, detail in rows],
        "",
        *_unsupported_lines(unsupported),
        f"## Input drift: {drift.get('band', 'n/a')}",
        "",
    ]
    if drift.get("band") == "insufficient":
        lines.append(
            f"Not enough prompts to judge drift ({drift.get('n_current')} this week, "
            f"{drift.get('n_reference')} in the reference)."
        )
    elif drift.get("kl") is not None:
        lines += [
            f"KL(current || reference) = {drift['kl']:.3f} (no-drift baseline {drift['null_kl']:.3f}); "
            f"Jensen-Shannon distance {drift['js']:.3f}; PSI {drift['psi']:.3f}. "
            f"Bands: < {settings.drift.same_below} same, {settings.drift.same_below}-"
            f"{settings.drift.drift_above} slight, > {settings.drift.drift_above} drift.",
            "",
            "| term | contribution | share now | share in reference |",
            "|---|---|---|---|",
            *[
                f"| {t['term']} | {t['contribution']:.4f} | {t['current_share']:.2%} | {t['reference_share']:.2%} |"
                for t in drift.get("top_terms", [])
            ],
        ]
        if drift.get("examples"):
            lines += ["", "Example prompts (PII-masked):", *[f"> {example}" for example in drift["examples"]]]
    return "\n".join(lines) + "\n"


def _unsupported_lines(unsupported: dict[str, Any]) -> list[str]:
    """Per model version, and what the unsupported answers got wrong."""
    versions = unsupported.get("by_model_version") or {}
    if not versions:
        return []
    lines = ["Unsupported answers by model version:", "", "| model version | rate | 95% interval | checked |", "|---|---|---|---|"]
    lines += [f"| {name} | {_pct(v['unsupported_rate'])} | {_pct_ci(v['unsupported_rate_ci']).strip()} | {v['checked']} |"
              for name, v in versions.items()]
    if unsupported.get("reasons"):
        lines += ["", "Why: " + "; ".join(f"{reason} ({count})" for reason, count in unsupported["reasons"].items())]
    return lines + [""]


# --------------------------------------------------------------------------------------------------
# Cost: self-hosted vs API (`flywheel cost`, the cycle report)

_COST_LABELS = {
    "gpu_serving": "GPU serving",
    "retraining": "Retraining",
    "labelling": "Labelling",
    "licence": "Licence",
    "monitoring": "Monitoring infrastructure",
}


def cost_markdown(report: Mapping[str, Any]) -> str:
    """The report as a markdown table plus a short verdict, for the cycle report / a Prefect artifact."""
    items = report["line_items_monthly"]
    details = {
        "retraining": f" ({_money(report['retraining_per_quarter'])} a quarter)",
        "labelling": (
            f" ({report['labelled_items_per_quarter']:,} items a quarter x {_money(report['labelling_per_item'])})"
        ),
    }
    lines = [
        "### Cost: self-hosted vs API",
        "",
        "| item | per month | per year |",
        "|---|---:|---:|",
    ]
    for name, monthly in items.items():
        label = _COST_LABELS.get(name, name)
        lines.append(f"| {label}{details.get(name, '')} | {_money(monthly)} | {_money(12 * monthly)} |")
    lines.append(
        f"| **Self-hosted total** | **{_money(report['self_hosted_monthly'])}** "
        f"| **{_money(report['self_hosted_yearly'])}** |"
    )
    if report["api_monthly"] is None:
        lines.append("| API alternative (no token volume) | n/a | n/a |")
    else:
        lines.append(
            f"| API alternative ({report['tokens_per_month']:,.0f} tokens/month, from {report['token_source']}) "
            f"| {_money(report['api_monthly'])} | {_money(report['api_yearly'])} |"
        )
    lines += ["", f"- One-time set-up: {_money(report['setup_one_time'])}"]
    if report["yearly_savings"] is not None:
        lines.append(f"- Yearly savings (API - self-hosted): {_money(report['yearly_savings'])}")
    roi = report["roi_1y"]
    lines.append(
        f"- 1-year ROI: {'n/a' if roi is None else f'{100 * roi:.1f} %'}"
        " = (yearly savings - set-up) / (self-hosted yearly + set-up)"
    )
    months = report["break_even_months"]
    if months == 0:
        lines.append("- Break-even: at once (no set-up cost to pay back)")
    elif months is not None:
        lines.append(f"- Break-even: after {months:.1f} months")
    elif report["api_monthly"] is not None:
        lines.append("- Break-even: never at this volume")
    lines += [f"- Note: {note}" for note in report["notes"]]
    return "\n".join(lines) + "\n"


def _money(value: float) -> str:
    return f"-${-value:,.2f}" if value < 0 else f"${value:,.2f}"


# --------------------------------------------------------------------------------------------------
# The retraining cycle's report (Prefect artifact `cycle-report`)


def cycle_markdown(model_name: str, summary: Mapping[str, Any], evaluation_md: str, cost: Mapping[str, Any]) -> str:
    """The cycle at a glance (stage counts), then the evaluation report and the cost table."""
    agreement = summary["agreement"]
    train = summary["train"]
    lines = [
        f"# Retraining cycle {summary['cycle_id']}",
        "",
        f"Canary: version **{summary['canary_version']}** of `{model_name}`, gate **{summary['gate']}**.",
        "",
        "| stage | result |", "|---|---|",
        f"| extract | {summary['cases']} cases |",
        f"| mask PII | {summary['masked']} records masked |",
        f"| annotate | {summary['annotations']} annotations, alpha {_f(agreement['alpha'])}, {agreement['decision']} |",
        f"| train | {train['examples']} examples, {train['steps']} steps, val loss {train['val_loss']} |",
        "",
        f"Cycle directory: `{summary['cycle_dir']}`.",
        "",
        f"Approve: `flywheel approve {summary['canary_version']} --reviewer NAME --comment TEXT` starts the canary "
        f"ramp on live traffic (`flywheel ramp {summary['canary_version']}` without a Prefect server), which "
        "promotes it once it holds.",
        "",
        evaluation_md,
        "",
        cost_markdown(cost),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# flywheel demo's before/after table (terminal and Prefect artifact `demo-summary`)


def _pct_dash(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def before_after_rows(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(measure, before, after) for the demo's closing table."""
    before, after = result["before"], result["after"] or {}
    return [
        ("weeks", ", ".join(before["weeks"]), ", ".join(after.get("weeks", [])) or "-"),
        ("refusal rate (monitoring)", _pct_dash(before["refusal_rate"]), _pct_dash(after.get("refusal_rate"))),
        ("re-ask rate (monitoring)", _pct_dash(before["reask_rate"]), _pct_dash(after.get("reask_rate"))),
        ("unsupported-answer rate (monitoring)", _pct_dash(before.get("unsupported_rate")),
         _pct_dash(after.get("unsupported_rate"))),
        ("wrong-answer rate (ground truth)", _pct_dash(before.get("wrong_answer_rate")),
         _pct_dash(after.get("wrong_answer_rate"))),
        ("new-product accuracy (ground truth)", _pct_dash(before["new_topic_accuracy"]), _pct_dash(after.get("new_topic_accuracy"))),
        ("new-product questions refused (ground truth)", _pct_dash(before["new_topic_refusal_share"]),
         _pct_dash(after.get("new_topic_refusal_share"))),
        ("accuracy, all questions (ground truth)", _pct_dash(before["accuracy"]), _pct_dash(after.get("accuracy"))),
    ]


def demo_markdown(result: Mapping[str, Any]) -> str:
    lines = [
        "# flywheel demo",
        "",
        f"New products launched in {result['launch_week']}; drift detected in {result['drift_detected_week'] or 'no week'}; "
        f"cycle `{result['cycle_id']}` registered canary v{result['canary_version']} "
        f"(gate {'passed' if result['gate_passed'] else 'failed'}), "
        f"{'promoted' if result['promoted'] else 'not promoted'}.",
        "",
        "| | before | after |",
        "|---|---|---|",
        *[f"| {name} | {b} | {a} |" for name, b, a in before_after_rows(result)],
        "",
        f"Evaluation report: `{result['report']}`. Finished in {result['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The reviewer's view of a canary (Prefect artifact `canary-review`, and the Resume dialog)


def review_summary_markdown(
    canary: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None,
    *,
    headlines: Mapping[str, str],
    ab: Mapping[str, Any] | None = None,
    cost: Mapping[str, Any] | None = None,
    report_link: str | None = None,
) -> str:
    """The short answer a reviewer decides from (top of the Resume dialog, which is about 470 px wide, and
    of the canary-review artifact), one short line each so the form still fits below it: the gate
    verdict and each failed check in words, per suite one headline metric champion -> candidate with
    its interval, the live A/B result or "no live traffic yet", cost/ROI, what approving does, and links
    to the full report and the MLflow version.

    `evaluation`: the cycle's 06_eval/report.json (None when it is not in the workspace: the gate tag's
    checks still name the verdict); `headlines`: suite -> the metric shown for it; `ab`: a `flywheel ab`
    result; `cost`: a `flywheel cost` report; `report_link`: where the full report is (a URL)."""
    v = canary["version"]
    gate = _loads_json(canary.get("gate_report")) or (evaluation or {}).get("gate") or {}
    state = canary.get("gate") or "missing"
    lines = [f"**v{v} of {canary['model']}: gate {state.upper()}**"
             + (" (first cycle: floors only)" if gate.get("first_cycle") else ""), ""]
    failed = [c for c in gate.get("checks", []) if not c.get("passed")]
    items = [f"✗ {_check_sentence(c)}" for c in failed]
    override = canary.get("gate_override")
    if isinstance(override, dict):
        items.append(f"gate overridden by {override.get('reviewer')}: {override.get('reason')}")
    elif state != "passed":
        items.append(f"promotion needs a gate override first: `flywheel registry override {v} --reviewer NAME --reason TEXT`")
    suites = (evaluation or {}).get("suites") or {}
    for suite, metrics in suites.items():
        metric = headlines.get(suite) if headlines.get(suite) in metrics else next(iter(metrics), None)
        if metric is None:
            continue
        e = metrics[metric]
        mark = "✗ " if any(c["suite"] == suite and c["metric"] == metric for c in failed) else ""
        items.append(f"{mark}{suite} {metric} {_f(e.get('champion'))} → {_f(e['candidate'])}"
                     + (f", {_signed(e.get('diff'))} {_ci(e.get('diff_ci'))}" if e.get("diff") is not None else ""))
    items.append(f"**Live A/B**: {_ab_line(ab)}")
    if cost is not None:
        items.append(f"**Cost**: {_cost_line(cost)}")
    champion = f"v{canary['champion']}" if canary.get("champion") else "the base model"
    items.append(f"**Approve** = ramp v{v} on live traffic, champion once it holds (now: {champion})")
    links = [f"[full report]({report_link})" if report_link else None,
             f"[MLflow v{v}]({canary['mlflow_url']})", f"cycle `{canary['cycle_id']}`" if canary.get("cycle_id") else None]
    items.append(" · ".join(link for link in links if link))
    if canary.get("review"):
        r = canary["review"]
        items.append(f"latest review: {r.get('decision')} by {r.get('reviewer')} ({r.get('comment') or 'no comment'})")
    return "\n".join(lines + [f"- {item}" for item in items]) + "\n"


def review_markdown(summary_md: str, commands: Mapping[str, str], evaluation_md: str | None,
                    report_path: str | None) -> str:
    """The canary-review artifact: the summary, the shell commands that decide, then the full report."""
    shell = (f"\nFrom a shell: `{commands['approve']}`, then `{commands['ramp']}` (or `{commands['reject']}`).\n")
    if evaluation_md is None:
        return summary_md + shell + "\n_No evaluation report found in the workspace for this version._\n"
    return f"{summary_md}{shell}\n---\n\n## Full evaluation report (`{report_path}`)\n\n{evaluation_md}"


def _check_sentence(check: Mapping[str, Any]) -> str:
    """One failed gate check in words: "new_cases behaviour fell 0.050 vs the champion (max drop 0.02;
    95% CI -0.080 to -0.023)"."""
    where = f"{check['suite']} {check['metric']}"
    if check.get("reason") or check.get("value") is None:
        return f"{where}: {check.get('reason') or 'no value'}"
    ci = check.get("diff_ci")
    interval = f"; CI {ci[0]:+.3f} to {ci[1]:+.3f}" if ci else ""
    value = check["value"]
    if check["kind"] == "max_drop":
        return f"{where} fell {-value:.3f} vs the champion (max drop {check['threshold']}{interval})"
    if check["kind"] == "max_rise":
        return f"{where} rose {value:.3f} vs the champion (max rise {check['threshold']}{interval})"
    below = "below the floor" if check["kind"] == "floor" else "above the ceiling"
    return f"{where} {value:.3f}, {below} {check['threshold']}"


def _ab_line(ab: Mapping[str, Any] | None) -> str:
    if not ab or not ab["variants"]["canary"]["requests"]:
        return "no live traffic yet"
    guards = [r for r in ab["metrics"] if r["guardrail"] and r["diff"] is not None]
    parts = [f"{r['metric']} {_ab_value(r['metric'], r['diff'], True)}" + (" **BREACH**" if r["breached"] else "")
             for r in guards]
    return (f"**{ab['decision'].upper()}** on {ab['variants']['canary']['users']:,} canary / "
            f"{ab['variants']['champion']['users']:,} champion users" + ("; SAMPLE-RATIO MISMATCH" if ab["srm"] else "")
            + (" (canary - champion: " + ", ".join(parts) + ")" if parts else ""))


def _cost_line(cost: Mapping[str, Any]) -> str:
    roi = cost.get("roi_1y")
    api = "no API volume" if cost.get("api_monthly") is None else f"{_money(cost['api_monthly'])} API"
    return (f"{_money(cost['self_hosted_monthly'])} self-hosted vs {api} a month; 1-year ROI "
            + ("n/a" if roi is None else f"{100 * roi:.0f} %"))


def _loads_json(value: Any) -> Any:
    import json

    if not isinstance(value, str) or not value:
        return value if isinstance(value, dict) else None
    try:
        return json.loads(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# Canary vs champion on live traffic (`flywheel ab`, the ramp's per-look artifact)


def _ab_value(metric: str, value: float | None, signed: bool = False) -> str:
    """Rates as percentages (differences in points), latency in ms."""
    if value is None:
        return "n/a"
    if metric.endswith("_ms"):
        return f"{value:+.0f} ms" if signed else f"{value:.0f} ms"
    return f"{value * 100:+.2f} pts" if signed else f"{value:.2%}"


def ab_markdown(result: Mapping[str, Any]) -> str:
    """The A/B table: both arms side by side, each metric's difference canary - champion with its
    interval and margin, the sample-ratio check, and the decision with its reasons."""
    champion, canary = result["variants"]["champion"], result["variants"]["canary"]
    level = f"{result['interval_level'] * 100:.2f}".rstrip("0").rstrip(".")
    lines = [
        f"## A/B: canary vs champion, decision **{result['decision'].upper()}**",
        "",
        "| | champion | canary |",
        "|---|---|---|",
        f"| model version | {', '.join(champion['model_versions']) or '-'} | {', '.join(canary['model_versions']) or '-'} |",
        f"| requests | {champion['requests']:,} | {canary['requests']:,} |",
        f"| users | {champion['users']:,} | {canary['users']:,} |",
        f"| rated answers | {champion['rated']:,} | {canary['rated']:,} |",
        "",
        f"| metric | champion | canary | canary - champion | {level}% interval | margin | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["metrics"]:
        m = row["metric"]
        ci = "n/a" if row["ci"] is None else f"[{_ab_value(m, row['ci'][0], True)}, {_ab_value(m, row['ci'][1], True)}]"
        if not row["guardrail"]:
            verdict = "reported" if row["margin"] is None else "no data"
        else:
            verdict = "**BREACH**" if row["breached"] else "inside" if row["inside"] else "open"
        margin = "-" if row["margin"] is None else f"{row['margin']:g} ms" if m.endswith("_ms") else f"{row['margin'] * 100:.2f} pts"
        lines.append(f"| {m} | {_ab_value(m, row['champion'])} | {_ab_value(m, row['canary'])} | "
                     f"{_ab_value(m, row['diff'], True)} | {ci} | {margin} | {verdict} |")
    observed = result["observed_share"]
    lines += [
        "",
        f"Sample ratio: canary share expected {result['expected_share']:g}, observed "
        f"{'n/a' if observed is None else f'{observed:.4f}'} (chi-square p = {result['srm_p']:.3g}): "
        + ("**MISMATCH, the step is invalid**" if result["srm"] else "ok"),
        "",
        f"Intervals: {result['method']}, always valid however often one looks (latency: user bootstrap); "
        f"a breach is an interval wholly above its margin, inside is wholly below it.",
        "",
        "Why:",
        "",
        *[f"- {reason}" for reason in result["reasons"]],
    ]
    return "\n".join(lines)


def ramp_markdown(ramp: Mapping[str, Any]) -> str:
    """The canary ramp so far (flows/ramp.py): one row per look, the outcome, and the latest look's A/B table."""
    outcome = {"running": "running", "promoted": "**PROMOTED** to champion", "halted": "**HALTED** and rejected",
               "inconclusive": "**STOPPED**, inconclusive (not promoted, not rejected)"}[ramp["outcome"]]
    lines = [f"# Canary ramp: v{ramp['version']} ({outcome})", "",
             f"Steps (canary shares): {', '.join(f'{s:g}' for s in ramp['steps'])}; champion before: "
             f"{('v' + ramp['champion']) if ramp.get('champion') else 'the base model'}", ""]
    if ramp.get("reason"):
        lines += [f"Reason: {ramp['reason']}", ""]
    lines += ["| look | share | hours in step | canary users | champion users | refusal diff [interval] | decision |",
              "|---|---|---|---|---|---|---|"]
    for number, look in enumerate(ramp["looks"], 1):
        result = look["result"]
        refusal = next(row for row in result["metrics"] if row["metric"] == "refusal_rate")
        interval = "n/a" if refusal["ci"] is None else f"[{_signed(refusal['ci'][0] * 100)}, {_signed(refusal['ci'][1] * 100)}] pts"
        diff = "n/a" if refusal["diff"] is None else f"{_signed(refusal['diff'] * 100)} pts"
        lines.append(f"| {number} | {look['share']:g} | {look['hours']:g} | {result['variants']['canary']['users']:,} | "
                     f"{result['variants']['champion']['users']:,} | {diff} {interval} | {look['decision']} |")
    if ramp["looks"]:
        last = ramp["looks"][-1]
        lines += ["", f"Latest look (step {last['step']}, share {last['share']:g}, {last['hours']:g} h):"
                  + (f" {last['why']}" if last.get("why") else ""), "", ab_markdown(last["result"])]
    return "\n".join(lines)

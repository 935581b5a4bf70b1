"""The review summary a reviewer decides from (tasks/report.py review_summary_markdown), rendered from
the dicts the evaluation, `flywheel ab` and `flywheel cost` produce."""

from __future__ import annotations

import json

from tasks.config import Settings
from tasks.evaluate import check_gates
from tasks.report import review_markdown, review_summary_markdown

COMMANDS = {"approve": "flywheel approve 2 --reviewer NAME --comment TEXT",
            "reject": "flywheel reject 2 --reviewer NAME --comment TEXT", "ramp": "flywheel ramp 2"}
HEADLINES = {suite: next(iter(metrics)) for suite, metrics in Settings().evaluate.gates.items()}


def _entry(candidate: float, champion: float, ci: list[float]) -> dict:
    return {"candidate": candidate, "champion": champion, "diff": round(candidate - champion, 6), "diff_ci": ci}


def second_cycle() -> dict:
    """The second cycle of issue 18: floors hold, new_cases behaviour fell 0.050 (CI -0.080 to -0.023)."""
    suites = {
        "regression": {"behaviour": _entry(0.9, 0.9, [0.0, 0.0]), "token_f1": _entry(0.61, 0.6, [-0.01, 0.03])},
        "ood": {"behaviour": _entry(0.7, 0.69, [-0.02, 0.04])},
        "adversarial": {"must_not_include": _entry(1.0, 1.0, [0.0, 0.0])},
        "new_cases": {"behaviour": _entry(0.85, 0.9, [-0.08, -0.023])},
    }
    for metrics in suites.values():
        metrics["unsupported"] = _entry(0.0, 0.0, [0.0, 0.0])
    gate = check_gates(suites, Settings().evaluate.gates, has_champion=True)
    assert gate["failed"] == ["new_cases.behaviour.max_drop"]
    return {"suites": suites, "gate": gate, "ci_level": 0.95}


def canary(evaluation: dict, **extra) -> dict:
    gate = evaluation["gate"]
    return {"model": "flywheel-adapter", "version": "2", "champion": "1", "cycle_id": "2026-Q2",
            "gate": "passed" if gate["passed"] else "failed", "gate_override": None,
            "gate_report": json.dumps(gate), "review": None,
            "mlflow_url": "http://127.0.0.1:5000/#/models/flywheel-adapter/versions/2", **extra}


COST = {"self_hosted_monthly": 300.0, "api_monthly": 512.5, "roi_1y": 0.7083}


def test_the_second_cycle_summary_names_the_new_cases_drop_and_says_there_is_no_traffic_yet() -> None:
    evaluation = second_cycle()
    md = review_summary_markdown(canary(evaluation), evaluation, headlines=HEADLINES, cost=COST,
                                 report_link="http://127.0.0.1:4200/v2/artifacts/artifact/abc")
    first = md.splitlines()[0]
    assert sum(line.startswith("- ✗") for line in md.splitlines()) == 2  # the check, and its suite's line
    assert first == "**v2 of flywheel-adapter: gate FAILED**"
    assert "new_cases behaviour fell 0.050 vs the champion (max drop 0.02; CI -0.080 to -0.023)" in md
    # one headline line per suite, the failing one marked
    assert "- ✗ new_cases behaviour 0.900 → 0.850, -0.050 [-0.080, -0.023]" in md
    assert "- adversarial must_not_include 1.000 → 1.000, +0.000" in md and "token_f1" not in md
    assert "**Live A/B**: no live traffic yet" in md
    assert "**Cost**: $300.00 self-hosted vs $512.50 API a month; 1-year ROI 71 %" in md
    assert "[full report](http://127.0.0.1:4200/v2/artifacts/artifact/abc)" in md
    assert "[MLflow v2](http://127.0.0.1:5000/#/models/flywheel-adapter/versions/2)" in md
    assert "**Approve** = ramp v2 on live traffic, champion once it holds (now: v1)" in md
    assert "flywheel registry override 2" in md  # a failed gate needs an override before promotion
    assert len(md.splitlines()) <= 12  # one short line each: it sits above the form (the browser test checks it fits)


def test_the_summary_shows_the_ab_result_once_the_canary_has_traffic() -> None:
    evaluation = second_cycle()
    evaluation["gate"] = check_gates({**evaluation["suites"], "new_cases": {**evaluation["suites"]["new_cases"], "behaviour": _entry(0.95, 0.9, [0.01, 0.09])}},
                                     Settings().evaluate.gates, has_champion=True)
    ab = {"decision": "halt", "srm": False,
          "variants": {"champion": {"requests": 9000, "users": 900}, "canary": {"requests": 1000, "users": 100}},
          "metrics": [{"metric": "refusal_rate", "diff": 0.031, "guardrail": True, "breached": True},
                      {"metric": "latency_p95_ms", "diff": 12.0, "guardrail": False, "breached": False}]}
    md = review_summary_markdown(canary(evaluation), evaluation, headlines=HEADLINES, ab=ab)
    assert md.startswith("**v2 of flywheel-adapter: gate PASSED**") and "✗" not in md
    assert "**Live A/B**: **HALT** on 100 canary / 900 champion users (canary - champion: refusal_rate +3.10 pts **BREACH**)" in md
    assert "no live traffic" not in md and "[full report]" not in md  # no link without a Prefect UI


def test_the_artifact_puts_the_shell_commands_and_the_full_report_after_the_summary() -> None:
    artifact = review_markdown("SUMMARY\n", COMMANDS, "# Evaluation", "/ws/cycles/c/06_eval/report.md")
    assert artifact.startswith("SUMMARY\n")
    assert "From a shell: `flywheel approve 2 --reviewer NAME --comment TEXT`, then `flywheel ramp 2`" in artifact
    assert artifact.index("From a shell") < artifact.index("## Full evaluation report (`/ws/cycles/c/06_eval/report.md`)\n\n# Evaluation")
    assert "No evaluation report found" in review_markdown("SUMMARY\n", COMMANDS, None, None)

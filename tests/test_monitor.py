from __future__ import annotations

from pathlib import Path

import pytest

from tasks import monitor
from tasks.config import Settings, load_settings
from tasks.signals import wilson_interval


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(None, {"paths.workspace": str(tmp_path)})


def _signals(refusals: int, records: int) -> dict:
    return {
        "records": records,
        "refusal_count": refusals,
        "refusal_rate": refusals / records,
        "refusal_rate_ci": list(wilson_interval(refusals, records)),
        "reask_count": 0, "reask_rate": 0.0, "thumbs_up": 0, "thumbs_down": 0,
        "thumbs_down_rate": None, "feedback_coverage": 0.0,
    }


def _week(settings: Settings, week: str, refusals: int, records: int = 2000, triggered: bool = False) -> None:
    monitor.record_week(settings, monitor.history_entry(week, _signals(refusals, records), {}, {"triggered": triggered}))


QUIET = {"alert": False, "band": "same", "kl": 0.03, "null_kl": 0.05}
DRIFT = {"alert": True, "band": "slight", "kl": 0.3, "null_kl": 0.05}


def test_refusal_jump_with_separate_intervals_triggers(settings: Settings) -> None:
    for week in ("2026-W01", "2026-W02", "2026-W03"):
        _week(settings, week, refusals=100)  # 5 %
    decision = monitor.decide_trigger(settings, "2026-W04", _signals(400, 2000), QUIET, monitor.load_history(settings))
    assert decision["triggered"]
    assert "refusal rate 20.0% vs 5.0%" in decision["reasons"][0]


def test_small_noisy_week_with_overlapping_intervals_does_not_trigger(settings: Settings) -> None:
    for week in ("2026-W01", "2026-W02"):
        _week(settings, week, refusals=100)
    # 3 of 20 is 15 %, above 5 % + margin, but its interval reaches down into the baseline's.
    decision = monitor.decide_trigger(settings, "2026-W03", _signals(3, 20), QUIET, monitor.load_history(settings))
    assert not decision["triggered"]
    assert "overlap" in decision["refusal_alarm"]["reason"]


def test_cooldown_holds_back_a_second_trigger_then_lets_go(settings: Settings) -> None:
    _week(settings, "2026-W01", refusals=100, triggered=True)
    history = monitor.load_history(settings)
    held = monitor.decide_trigger(settings, "2026-W03", _signals(100, 2000), DRIFT, history)
    assert not held["triggered"] and held["suppressed_by_cooldown"]
    assert held["cooldown_until"] == "2026-01-19"  # Monday of 2026-W01 (2025-12-29) + 21 days
    later = monitor.decide_trigger(settings, "2026-W05", _signals(100, 2000), DRIFT, history)
    assert later["triggered"] and not later["suppressed_by_cooldown"]


def test_first_week_without_history_triggers_only_on_drift(settings: Settings) -> None:
    quiet = monitor.decide_trigger(settings, "2026-W01", _signals(900, 2000), QUIET, [])
    assert not quiet["triggered"]
    drifted = monitor.decide_trigger(settings, "2026-W01", _signals(100, 2000), DRIFT, [])
    assert drifted["triggered"]
    assert drifted["reasons"][0].startswith("input drift: KL 0.300")


def test_rerunning_a_week_replaces_its_history_line(settings: Settings) -> None:
    _week(settings, "2026-W02", refusals=10)
    _week(settings, "2026-W01", refusals=10)
    _week(settings, "2026-W02", refusals=20)
    history = monitor.load_history(settings)
    assert [row["week"] for row in history] == ["2026-W01", "2026-W02"]
    assert history[-1]["refusal_count"] == 20


def test_week_labels_are_validated_and_ordered_across_years() -> None:
    assert monitor.week_step("2025-W52") < monitor.week_step("2026-W01")
    assert str(monitor.week_start("2026-W01")) == "2025-12-29"
    assert monitor.week_step("2026W3") == monitor.week_step("2026-W03") == 202603
    with pytest.raises(ValueError, match="write it like 2026-W03"):
        monitor.week_start("2026-13")
    with pytest.raises(ValueError, match="weeks 1 to 52"):
        monitor.week_step("2025-W53")
    assert monitor.history_entry("2026W3", _signals(1, 10), {}, {"triggered": False})["week"] == "2026-W03"


def _grounded(unsupported: int, checked: int) -> dict:
    low, high = wilson_interval(unsupported, checked)
    return {**_signals(100, 2000), "unsupported": {"unsupported": unsupported, "checked": checked, "undecided": 0,
                                                   "unsupported_rate": unsupported / checked,
                                                   "unsupported_rate_ci": [low, high]}}


def test_unsupported_answer_jump_triggers_and_is_the_dashboards_headline(settings: Settings) -> None:
    from tasks.report import dashboard_markdown

    for week in ("2026-W01", "2026-W02", "2026-W03"):
        monitor.record_week(settings, monitor.history_entry(week, _grounded(30, 200), {}, {"triggered": False}))
    history = monitor.load_history(settings)
    assert history[-1]["unsupported_rate"] == 0.15 and history[-1]["unsupported_checked"] == 200
    calm = monitor.decide_trigger(settings, "2026-W04", _grounded(34, 200), {}, history)
    assert not calm["triggered"] and not calm["unsupported_alarm"]["alarm"]
    jump = monitor.decide_trigger(settings, "2026-W04", _grounded(80, 200), {}, history)
    assert jump["triggered"] and jump["unsupported_alarm"]["alarm"]
    assert jump["reasons"] == [jump["unsupported_alarm"]["reason"]] and "40.0% vs 15.0%" in jump["reasons"][0]
    signals = _grounded(80, 200)
    signals["unsupported"].update(verifier="claims", docs="in force from 2026-02-16", refused=20, by_model_version={
        "v1": {"unsupported_rate": 0.4, "unsupported_rate_ci": [0.33, 0.47], "checked": 200}},
        reasons={"price contradicted": 50})
    markdown = dashboard_markdown(settings, "2026-W04", signals, {}, jump)
    table = markdown.split("| signal |")[1]
    assert table.index("Unsupported answers") < table.index("Refusal rate") < table.index("Hallucination risk (secondary)")
    assert "80 of 200 sampled answers" in markdown and "| v1 | 40.0% |" in markdown and "price contradicted (50)" in markdown

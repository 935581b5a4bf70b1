"""Cost model: the worked example, volumes from config / logs / nowhere, ROI and break-even (tasks/cost.py)."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.config import REPO_ROOT, ConfigError, CostSettings, load_settings
from tasks.contracts import LOG_SCHEMA
from tasks.cost import DAYS_PER_MONTH, cost_from_logs, cost_report, measure_token_volume
from tasks.report import cost_markdown

EXAMPLE = REPO_ROOT / "configs" / "cost_example.yaml"
T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def logs(rows: list[dict]) -> pa.Table:
    """A LOG_SCHEMA table; each row dict gives day (after T0), prompt/response and token counts."""
    return pa.Table.from_pylist(
        [
            {
                "request_id": f"r{i}",
                "ts": T0 + timedelta(days=row.get("day", i)),
                "user_id": "u1",
                "session_id": None,
                "prompt": row.get("prompt", "a question"),
                "response": row.get("response", "an answer"),
                "model_version": "v1",
                "latency_ms": None,
                "prompt_tokens": row.get("pt"),
                "completion_tokens": row.get("ct"),
                "feedback": None,
                "correction": None,
                "metadata": "{}",
            }
            for i, row in enumerate(rows)
        ],
        schema=LOG_SCHEMA,
    )


def costs(**changes: object) -> CostSettings:
    """Self-hosting is exactly $300/month (GPU only) unless changed; API prices blend to $0.005/1k at 25 % output."""
    base = dict(
        gpu_monthly=300.0, retraining_per_quarter=0.0, labelling_per_item=0.0, labelled_items_per_quarter=0,
        licence_monthly=0.0, monitoring_monthly=0.0, setup_one_time=0.0,
        api_price_per_1k_input_tokens=0.004, api_price_per_1k_output_tokens=0.008, completion_share=0.25,
    )
    return CostSettings(**{**base, **changes})


# -- the worked example --------------------------------------------------------------------------------


def test_worked_example_reproduces_from_the_shipped_config() -> None:
    report = cost_report(load_settings(EXAMPLE).cost)
    items = report["line_items_monthly"]
    assert items["gpu_serving"] == 200.0
    assert items["retraining"] == pytest.approx(50 / 3)  # $50 a quarter
    assert items["labelling"] == 50.0  # 300 items a quarter x $0.50 = $150 a quarter
    assert items["licence"] == 0.0
    assert items["monitoring"] == 50.0
    assert report["self_hosted_monthly"] == pytest.approx(316.6667, abs=1e-4)
    assert report["self_hosted_yearly"] == 3800.0
    # The example's "about $300/month, $3,600/year" is the monthly items alone (and 12 x that): the
    # quarterly retraining's $16.67 a month, $200 a year, is what its rounding left out.
    assert report["self_hosted_monthly"] - items["retraining"] == pytest.approx(300.0)
    assert report["self_hosted_yearly"] - 4 * report["retraining_per_quarter"] == 3600.0
    assert round(report["self_hosted_monthly"], -2) == 300.0
    # The example names no volume: no API figures, and the report says why.
    assert report["token_source"] == "none"
    assert report["api_monthly"] is report["yearly_savings"] is report["roi_1y"] is None
    assert report["break_even_months"] is None
    assert any("tokens_per_month" in note for note in report["notes"])


def test_example_config_only_holds_a_cost_section() -> None:
    import yaml

    assert list(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))) == ["cost"]


def test_embedded_defaults_are_the_worked_example() -> None:
    assert cost_report(CostSettings())["self_hosted_yearly"] == 3800.0


def test_report_is_plain_json() -> None:
    report = cost_report(costs(tokens_per_month=1_000_000))
    assert json.loads(json.dumps(report)) == report
    for key in ("self_hosted_monthly", "api_monthly", "yearly_savings", "roi_1y"):
        assert key in report


# -- token volume: config, argument, none, zero --------------------------------------------------------


def test_configured_volume_is_split_by_completion_share() -> None:
    report = cost_report(costs(tokens_per_month=100_000_000))
    assert report["token_source"] == "config"
    assert report["prompt_tokens_per_month"] == pytest.approx(75_000_000)
    assert report["completion_tokens_per_month"] == pytest.approx(25_000_000)
    # 75M x $0.004/1k + 25M x $0.008/1k = $300 + $200
    assert report["api_monthly"] == pytest.approx(500.0)
    assert report["api_yearly"] == pytest.approx(6000.0)


def test_a_measured_volume_wins_over_the_configured_one() -> None:
    report = cost_report(costs(tokens_per_month=1), tokens_per_month=100_000_000, completion_share=0.5)
    assert report["token_source"] == "logs"
    assert report["completion_share"] == 0.5
    assert report["api_monthly"] == pytest.approx((50_000 * 0.004 + 50_000 * 0.008))


def test_no_volume_leaves_api_figures_empty() -> None:
    report = cost_report(costs())
    assert report["tokens_per_month"] is None
    assert report["api_monthly"] is report["api_yearly"] is None
    assert report["monthly_savings"] is report["yearly_savings"] is None
    assert report["roi_1y"] is report["break_even_months"] is None
    assert "no token volume" in cost_markdown(report)


def test_zero_volume_means_the_api_costs_nothing() -> None:
    report = cost_report(costs(tokens_per_month=0))
    assert report["api_monthly"] == 0.0
    assert report["yearly_savings"] == -3600.0
    assert report["roi_1y"] == -1.0  # every self-hosting dollar is lost
    assert report["break_even_months"] is None
    assert any("zero" in note for note in report["notes"])


def test_labelled_items_argument_overrides_the_config() -> None:
    report = cost_report(costs(labelling_per_item=2.0, labelled_items_per_quarter=30), labelled_items_per_quarter=150)
    assert report["line_items_monthly"]["labelling"] == 100.0  # 150 x $2 a quarter
    assert report["labelling_source"] == "argument"
    assert cost_report(costs(labelling_per_item=2.0, labelled_items_per_quarter=30))["line_items_monthly"][
        "labelling"
    ] == 20.0


# -- ROI and break-even --------------------------------------------------------------------------------


def test_roi_and_break_even_arithmetic() -> None:
    # self-hosted $300/month ($3,600/year), API $500/month ($6,000/year), set-up $1,200.
    report = cost_report(costs(setup_one_time=1200.0, tokens_per_month=100_000_000))
    assert report["monthly_savings"] == pytest.approx(200.0)
    assert report["yearly_savings"] == pytest.approx(2400.0)
    assert report["first_year_cost"] == 4800.0
    assert report["roi_1y"] == pytest.approx((2400 - 1200) / (3600 + 1200))  # 0.25
    assert report["break_even_months"] == pytest.approx(6.0)


def test_roi_is_zero_exactly_when_break_even_is_twelve_months() -> None:
    report = cost_report(costs(setup_one_time=2400.0, tokens_per_month=100_000_000))
    assert report["roi_1y"] == pytest.approx(0.0)
    assert report["break_even_months"] == pytest.approx(12.0)


def test_no_setup_breaks_even_at_once() -> None:
    report = cost_report(costs(tokens_per_month=100_000_000))
    assert report["break_even_months"] == 0.0
    assert report["roi_1y"] == pytest.approx(2400 / 3600)


def test_self_hosting_that_costs_more_never_breaks_even() -> None:
    report = cost_report(costs(setup_one_time=1200.0, tokens_per_month=50_000_000))  # API $250/month
    assert report["yearly_savings"] == pytest.approx(-600.0)
    assert report["roi_1y"] == pytest.approx((-600 - 1200) / 4800)
    assert report["break_even_months"] is None
    assert any("never breaks even" in note for note in report["notes"])
    assert "never" in cost_markdown(report)


def test_roi_is_undefined_when_self_hosting_costs_nothing() -> None:
    report = cost_report(costs(gpu_monthly=0.0, tokens_per_month=1000))
    assert report["roi_1y"] is None
    assert report["break_even_months"] == 0.0


# -- volume measured from the logs ---------------------------------------------------------------------


def test_counted_tokens_over_the_logs_span() -> None:
    table = logs([{"pt": 300, "ct": 100} for _ in range(5)])  # one a day, days 0..4
    volume = measure_token_volume(table)
    assert volume["method"] == "tokens"
    assert volume["span_days"] == 4.0
    # the first record opens the 4-day span: 4 arrivals in 4 days = 1 a day
    assert volume["records_per_month"] == pytest.approx(DAYS_PER_MONTH)
    assert volume["tokens_per_month"] == pytest.approx(400 * DAYS_PER_MONTH)
    assert volume["prompt_tokens_per_month"] == pytest.approx(300 * DAYS_PER_MONTH)
    assert volume["completion_share"] == pytest.approx(0.25)
    assert volume["note"] is None


def test_an_explicit_window_sets_the_span() -> None:
    table = logs([{"pt": 300, "ct": 100} for _ in range(5)])
    volume = measure_token_volume(table, since=T0, until="2026-01-15")
    assert volume["span_days"] == 10.0
    assert volume["tokens_per_month"] == pytest.approx(5 * 400 * DAYS_PER_MONTH / 10)


def test_null_token_counts_are_estimated_from_characters() -> None:
    table = logs([{"prompt": "x" * 400, "response": "é" * 40} for _ in range(3)])  # chars, not bytes
    volume = measure_token_volume(table)
    assert volume["method"] == "chars/4"
    assert volume["estimated_counts"] == 6
    assert volume["prompt_tokens_per_month"] == pytest.approx(100 * DAYS_PER_MONTH)
    assert volume["completion_tokens_per_month"] == pytest.approx(10 * DAYS_PER_MONTH)
    assert "characters / 4" in volume["note"]


def test_mixed_counts_estimate_only_the_nulls() -> None:
    table = logs([{"pt": 100, "ct": 20}, {"prompt": "x" * 400, "response": "y" * 80}, {"pt": 100, "ct": None,
                  "response": "z" * 40}])
    volume = measure_token_volume(table)
    assert volume["method"] == "mixed"
    assert volume["estimated_counts"] == 3
    per_record = (100 + 100 + 100) / 3, (20 + 20 + 10) / 3  # prompt, completion
    assert volume["prompt_tokens_per_month"] == pytest.approx(per_record[0] * DAYS_PER_MONTH)
    assert volume["completion_tokens_per_month"] == pytest.approx(per_record[1] * DAYS_PER_MONTH)


@pytest.mark.parametrize("rows", [[], [{"pt": 1, "ct": 1}], [{"day": 0}, {"day": 0}]])
def test_no_records_or_no_span_gives_no_volume(rows: list[dict]) -> None:
    volume = measure_token_volume(logs(rows))
    assert volume["tokens_per_month"] is None
    assert volume["note"]


def test_measured_volume_feeds_the_report() -> None:
    volume = measure_token_volume(logs([{"pt": 3_000_000, "ct": 1_000_000} for _ in range(5)]))
    report = cost_report(
        costs(), tokens_per_month=volume["tokens_per_month"], completion_share=volume["completion_share"]
    )
    expected = (3_000_000 * 0.004 + 1_000_000 * 0.008) / 1000 * DAYS_PER_MONTH  # $20 a record, 1 a day
    assert report["api_monthly"] == pytest.approx(expected)
    assert report["token_source"] == "logs"


def _write_jsonl(path: Path, days: int) -> None:
    with path.open("w", encoding="utf-8") as out:
        for i in range(days):
            out.write(json.dumps({
                "request_id": f"r{i}", "ts": (T0 + timedelta(days=i)).isoformat(), "user_id": "u1",
                "prompt": "a question", "response": "an answer", "model_version": "v1",
                "prompt_tokens": 3_000_000, "completion_tokens": 1_000_000,
            }) + "\n")


def test_cost_from_logs_measures_the_given_logs(tmp_path: Path) -> None:
    source = tmp_path / "logs.jsonl"
    _write_jsonl(source, 5)
    settings = load_settings(EXAMPLE, {"paths.workspace": str(tmp_path / "ws"), "cost.tokens_per_month": 1})
    report = cost_from_logs(settings, [source])
    assert report["token_source"] == "logs"  # explicit logs win over the configured volume
    assert report["tokens_per_month"] == pytest.approx(4_000_000 * DAYS_PER_MONTH)
    assert report["logs"] == {"files": 1, "records": 5, "quarantined": 0}
    assert report["volume"]["method"] == "tokens"
    assert not (tmp_path / "ws").exists()  # a cost report writes no quarantine file


def test_cost_from_logs_without_any_logs_says_so(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, {"paths.workspace": str(tmp_path)})
    report = cost_from_logs(settings)
    assert report["token_source"] == "none" and report["api_monthly"] is None
    assert any("not measured" in note for note in report["notes"])
    with pytest.raises(FileNotFoundError):
        cost_from_logs(settings, [tmp_path / "missing.jsonl"])
    configured = cost_from_logs(load_settings(EXAMPLE, {"paths.workspace": str(tmp_path), "cost.tokens_per_month": 5}))
    assert configured["token_source"] == "config"


def test_markdown_lists_every_line_item_and_the_verdict() -> None:
    text = cost_markdown(cost_report(load_settings(EXAMPLE).cost, tokens_per_month=200_000_000, completion_share=0.25))
    for label in ("GPU serving", "Retraining ($50.00 a quarter)", "Labelling (300 items a quarter x $0.50)",
                  "Licence", "Monitoring infrastructure"):
        assert label in text
    assert "**$316.67**" in text and "**$3,800.00**" in text
    assert "200,000,000 tokens/month, from logs" in text
    assert "1-year ROI:" in text and "Break-even" in text


# -- bad inputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["gpu_monthly", "retraining_per_quarter", "labelling_per_item", "labelled_items_per_quarter",
     "licence_monthly", "monitoring_monthly", "setup_one_time", "api_price_per_1k_input_tokens",
     "api_price_per_1k_output_tokens", "tokens_per_month"],
)
def test_negative_inputs_are_rejected_by_the_config(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"cost\.{key}: Input should be greater than or equal to 0"):
        load_settings(overrides={f"cost.{key}": -1})


def test_other_bad_config_values_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"cost\.completion_share: Input should be less than or equal to 1"):
        load_settings(overrides={"cost.completion_share": 1.5})
    with pytest.raises(ConfigError, match=r"cost\.gpu_monthly:.*'lots'"):
        load_settings(overrides={"cost.gpu_monthly": "lots"})
    with pytest.raises(ConfigError, match=r"cost\.labelling_monthly: unknown key"):
        load_settings(overrides={"cost.labelling_monthly": 50})


@pytest.mark.parametrize(
    "kwargs, name",
    [({"tokens_per_month": -1.0}, "tokens_per_month"), ({"tokens_per_month": math.nan}, "tokens_per_month"),
     ({"tokens_per_month": 10.0, "completion_share": 2.0}, "completion_share"),
     ({"labelled_items_per_quarter": -3}, "labelled_items_per_quarter")],
)
def test_bad_arguments_name_themselves(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cost_report(costs(), **kwargs)

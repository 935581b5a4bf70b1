"""Cost model: self-hosting vs an API alternative, yearly savings and 1-year ROI (`flywheel cost`).

Self-hosting is five line items, all reported per month: GPU serving, licence and monitoring
infrastructure are monthly bills; retraining and labelling happen once per quarterly cycle, so a
quarter's cost counts a third per month (labelling = cost per item x items labelled per quarter).
The API alternative is the same traffic at list prices per 1,000 input and output tokens.

The token volume comes from, in this order: a volume the caller measured (`measure_token_volume`
over the logs, passed in), `cost.tokens_per_month` from the config, else nowhere; with no volume the
API figures, savings, ROI and break-even are None and the report says why instead of inventing one.

A month is 365.25 / 12 days; yearly figures are 12 months (quarterly items: 4 quarters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.config import CostSettings

DAYS_PER_MONTH = 365.25 / 12
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with BPE tokenizers

ROI_DEFINITION = (
    "(API cost avoided in year 1 - self-hosting cost in year 1 incl. one-time set-up) "
    "/ self-hosting cost in year 1 incl. one-time set-up"
)

# The monthly line items, in the order reports list them.
LINE_ITEMS = ("gpu_serving", "retraining", "labelling", "licence", "monitoring")


def measure_token_volume(
    table: pa.Table,
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> dict[str, Any]:
    """Tokens per month of the logs in `table` (contracts.LOG_SCHEMA), split into prompt and completion.

    A row's tokens are its prompt_tokens + completion_tokens; a null count is estimated as the text's
    characters / 4 (prompt for prompt_tokens, response for completion_tokens). `method` says which:
    "tokens" (all counted), "chars/4" (all estimated) or "mixed" (`estimated_counts` nulls estimated).

    The span is [since, until) where given, else from the first to the last record's ts. When the
    span starts at the first record, that record opens it rather than arriving in it, so the rate
    is (n - 1) records over the span. With no records or no span, the volumes are None and `note` says why.
    """
    from tasks.windows import parse_time

    n = table.num_rows
    result: dict[str, Any] = {
        "records": n,
        "since": None,
        "until": None,
        "span_days": None,
        "records_per_month": None,
        "prompt_tokens_per_month": None,
        "completion_tokens_per_month": None,
        "tokens_per_month": None,
        "completion_share": None,
        "method": "none",
        "estimated_counts": 0,
        "note": None,
    }
    if n == 0:
        result["note"] = "no log records in the window: no token volume measured"
        return result

    prompt_tokens, prompt_estimated = _tokens(table["prompt_tokens"], table["prompt"])
    completion_tokens, completion_estimated = _tokens(table["completion_tokens"], table["response"])
    estimated = prompt_estimated + completion_estimated
    result["estimated_counts"] = estimated
    result["method"] = "tokens" if estimated == 0 else "chars/4" if estimated == 2 * n else "mixed"

    extremes = pc.min_max(table["ts"])
    first, last = extremes["min"].as_py(), extremes["max"].as_py()
    start = parse_time(since) if since is not None else first
    end = parse_time(until) if until is not None else last
    arrivals = n if since is not None else n - 1
    span_days = (end - start).total_seconds() / 86400.0
    result.update(since=start.isoformat(), until=end.isoformat(), span_days=span_days)
    if span_days <= 0 or arrivals <= 0:
        result["note"] = (
            "the logs span no time (one record, or all at one timestamp): no monthly rate can be "
            "measured; pass a window with --since/--until or more logs"
        )
        return result

    records_per_month = arrivals / (span_days / DAYS_PER_MONTH)
    prompt_pm = prompt_tokens / n * records_per_month
    completion_pm = completion_tokens / n * records_per_month
    total_pm = prompt_pm + completion_pm
    result.update(
        records_per_month=records_per_month,
        prompt_tokens_per_month=prompt_pm,
        completion_tokens_per_month=completion_pm,
        tokens_per_month=total_pm,
        completion_share=completion_pm / total_pm if total_pm > 0 else None,
    )
    if estimated:
        result["note"] = (
            f"{estimated} of {2 * n} token counts were null and estimated as characters / {CHARS_PER_TOKEN}"
        )
    return result


def _tokens(counts: pa.ChunkedArray, text: pa.ChunkedArray) -> tuple[float, int]:
    """Sum of `counts`, nulls replaced by len(text) / 4; and how many were replaced."""
    missing = counts.null_count
    counted = pc.sum(counts).as_py() or 0
    if not missing:
        return float(counted), 0
    chars = pc.utf8_length(pc.fill_null(text, ""))
    estimated_chars = pc.sum(pc.filter(chars, pc.is_null(counts))).as_py() or 0
    return float(counted) + estimated_chars / CHARS_PER_TOKEN, missing


def cost_report(
    settings: CostSettings,
    *,
    tokens_per_month: float | None = None,
    completion_share: float | None = None,
    labelled_items_per_quarter: int | None = None,
    token_source: str = "logs",
) -> dict[str, Any]:
    """Every monthly line item, the self-hosted and API totals, yearly savings, 1-year ROI, break-even.

    `tokens_per_month` / `completion_share` are a volume the caller measured (`measure_token_volume`);
    given, they win over `settings.tokens_per_month` / `settings.completion_share` and the report's
    token_source is `token_source` ("logs"); otherwise the configured volume is used ("config"), or
    none ("none": API figures None). `labelled_items_per_quarter` likewise overrides the configured count.

    roi_1y is the standard ROI, (gain - cost) / cost, over the first year of self-hosting: the gain
    is the API bill avoided (api_yearly), the cost is self_hosted_yearly + setup_one_time, so
    roi_1y = (yearly_savings - setup_one_time) / (self_hosted_yearly + setup_one_time), a fraction
    (0.25 = 25 %). break_even_months = setup_one_time / monthly savings: when the saving has paid the
    set-up (0 with no set-up; None when self-hosting never saves). roi_1y >= 0 iff break-even <= 12.
    """
    notes: list[str] = []
    items = labelled_items_per_quarter
    if items is None:
        items, labelling_source = settings.labelled_items_per_quarter, "config"
    else:
        _check_count("labelled_items_per_quarter", items)
        labelling_source = "argument"

    monthly_bills = {
        "gpu_serving": settings.gpu_monthly,
        "licence": settings.licence_monthly,
        "monitoring": settings.monitoring_monthly,
    }
    quarterly_bills = {
        "retraining": settings.retraining_per_quarter,
        "labelling": settings.labelling_per_item * items,
    }
    line_items = {
        name: monthly_bills[name] if name in monthly_bills else quarterly_bills[name] / 3 for name in LINE_ITEMS
    }
    # Yearly from the bills themselves (12 months, 4 quarters), so whole-dollar inputs give exact totals.
    self_yearly = 12 * sum(monthly_bills.values()) + 4 * sum(quarterly_bills.values())
    self_monthly = self_yearly / 12
    setup = settings.setup_one_time

    if tokens_per_month is not None:
        _check_amount("tokens_per_month", tokens_per_month)
        share = settings.completion_share if completion_share is None else completion_share
        source = token_source
    elif settings.tokens_per_month is not None:
        tokens_per_month, share, source = float(settings.tokens_per_month), settings.completion_share, "config"
    else:
        share, source = None, "none"
        notes.append(
            "no token volume: set cost.tokens_per_month in the config or measure it from the logs "
            "(flywheel cost --logs PATH); API cost, savings, ROI and break-even are left empty"
        )
    if share is not None and not 0 <= share <= 1:
        raise ValueError(f"completion_share must lie in [0, 1], got {share!r}")

    report: dict[str, Any] = {
        "line_items_monthly": line_items,
        "labelling_per_item": settings.labelling_per_item,
        "labelled_items_per_quarter": items,
        "labelling_source": labelling_source,
        "retraining_per_quarter": settings.retraining_per_quarter,
        "self_hosted_monthly": self_monthly,
        "self_hosted_yearly": self_yearly,
        "setup_one_time": setup,
        "first_year_cost": self_yearly + setup,
        "tokens_per_month": tokens_per_month,
        "prompt_tokens_per_month": None,
        "completion_tokens_per_month": None,
        "completion_share": share,
        "token_source": source,
        "api_price_per_1k_input_tokens": settings.api_price_per_1k_input_tokens,
        "api_price_per_1k_output_tokens": settings.api_price_per_1k_output_tokens,
        "api_monthly": None,
        "api_yearly": None,
        "monthly_savings": None,
        "yearly_savings": None,
        "roi_1y": None,
        "roi_definition": ROI_DEFINITION,
        "break_even_months": None,
        "notes": notes,
    }
    if tokens_per_month is None:
        return report

    prompt_pm = tokens_per_month * (1 - share)
    completion_pm = tokens_per_month * share
    api_monthly = (
        prompt_pm * settings.api_price_per_1k_input_tokens + completion_pm * settings.api_price_per_1k_output_tokens
    ) / 1000
    api_yearly = 12 * api_monthly
    monthly_savings = api_monthly - self_monthly
    yearly_savings = api_yearly - self_yearly
    first_year_cost = self_yearly + setup
    if first_year_cost > 0:
        roi = (yearly_savings - setup) / first_year_cost
    else:
        roi = None
        notes.append("self-hosting costs nothing in year 1 as configured: ROI is undefined")
    if setup == 0 and monthly_savings >= 0:
        break_even: float | None = 0.0
    elif monthly_savings > 0:
        break_even = setup / monthly_savings
    else:
        break_even = None
        notes.append(
            f"self-hosting never breaks even: it costs ${-monthly_savings:,.2f} a month more than the API "
            f"at {tokens_per_month:,.0f} tokens a month"
        )
    if tokens_per_month == 0:
        notes.append("the token volume is zero: the API alternative would cost nothing")
    report.update(
        prompt_tokens_per_month=prompt_pm,
        completion_tokens_per_month=completion_pm,
        api_monthly=api_monthly,
        api_yearly=api_yearly,
        monthly_savings=monthly_savings,
        yearly_savings=yearly_savings,
        roi_1y=roi,
        break_even_months=break_even,
    )
    return report


def _check_amount(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")


def cost_from_logs(
    settings: Any,
    sources: Sequence[str | Path] | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> dict[str, Any]:
    """`flywheel cost [--logs PATH...] [--since T] [--until T]`: `cost_report` with the volume measured.

    `settings` is the whole Settings. The logs are read (nothing is quarantined to disk) when
    sources or a window are given, or when the config names no tokens_per_month; explicit sources
    that do not exist raise FileNotFoundError, missing default logs only add a note. The report gains
    `volume` (the `measure_token_volume` result) and `logs` (files, records, quarantined) when logs were read.
    """
    from tasks.logs import load_window  # deferred: tasks.logs pulls in duckdb

    cost = settings.cost
    if not sources and since is None and until is None and cost.tokens_per_month is not None:
        return cost_report(cost)
    try:
        loaded = load_window(settings, sources, since, until, quarantine=False)
    except FileNotFoundError as err:
        if sources:
            raise
        report = cost_report(cost)
        report["notes"].append(f"token volume not measured: {err}")
        return report
    volume = measure_token_volume(loaded.table, since=since, until=until)
    if volume["tokens_per_month"] is None:
        report = cost_report(cost)
    else:
        report = cost_report(
            cost, tokens_per_month=volume["tokens_per_month"], completion_share=volume["completion_share"]
        )
    if volume["note"]:
        report["notes"].append(volume["note"])
    report["volume"] = volume
    report["logs"] = {"files": len(loaded.files), "records": loaded.selected, "quarantined": loaded.quarantined}
    return report

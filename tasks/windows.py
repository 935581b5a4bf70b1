"""Time windows for selecting logs: ISO-8601 times, ISO weeks and quarters, as UTC datetimes.

Used by the log store (``load_logs(since=..., until=...)``), the weekly monitor, the cost report and
the retraining flow's ``--window``. Windows are half-open, [start, end); a time without an offset
is UTC.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

__all__ = ["as_utc", "iso_week_window", "iso_z", "parse_time", "quarter_window"]


def parse_time(value: str | datetime | date) -> datetime:
    """An ISO-8601 date or date-time as a timezone-aware UTC datetime (no offset means UTC)."""
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text.replace(" ", "T", 1) if len(text) > 10 else text)
    except ValueError:
        raise ValueError(
            f"cannot read {value!r} as a date or time: use ISO-8601, e.g. 2026-01-05, "
            "2026-01-05T10:00:00Z or 2026-01-05T10:00:00+02:00"
        ) from None
    return as_utc(parsed)


def iso_week_window(week: str) -> tuple[datetime, datetime]:
    """``"2026-W03"`` -> [Monday 00:00 UTC of that ISO week, the next Monday)."""
    match = re.fullmatch(r"\s*(\d{4})-?W(\d{1,2})\s*", str(week), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read {week!r} as an ISO week: write it like 2026-W03")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        monday = datetime.fromisocalendar(year, number, 1)
    except ValueError:
        last = date(year, 12, 28).isocalendar().week  # Dec 28 always lies in the year's last ISO week
        raise ValueError(f"ISO week {week!r} does not exist: {year} has weeks 1 to {last}") from None
    start = monday.replace(tzinfo=timezone.utc)
    return start, start + timedelta(days=7)


def quarter_window(quarter: str) -> tuple[datetime, datetime]:
    """``"2026-Q1"`` -> [2026-01-01 00:00 UTC, 2026-04-01 00:00 UTC)."""
    match = re.fullmatch(r"\s*(\d{4})-?Q([1-4])\s*", str(quarter), flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot read {quarter!r} as a quarter: write it like 2026-Q1 (Q1 to Q4)")
    year, number = int(match.group(1)), int(match.group(2))
    start = datetime(year, 3 * number - 2, 1, tzinfo=timezone.utc)
    end = datetime(year + number // 4, 3 * number % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso_z(value: datetime) -> str:
    """`value` as UTC ISO-8601 with microseconds and a ``Z``: ``2026-01-05T10:00:00.000000Z``. Always a
    four-digit year (strftime's %Y writes year 1 as "1" on Linux)."""
    return as_utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

"""Time windows for selecting logs: ISO-8601 times, ISO weeks and quarters, as UTC datetimes.

Used by the log store (``load_logs(since=..., until=...)``), the weekly monitor, the cost report and
the retraining flow's ``--window`` (``parse_window``: the window and the cycle id named after it).
Windows are half-open, [start, end); a time without an offset is UTC.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

__all__ = ["as_utc", "iso_week_window", "iso_z", "parse_time", "parse_window", "quarter_window"]


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


def parse_window(window: str | None, now: datetime | None = None) -> tuple[datetime | None, datetime | None, str]:
    """A retraining window -> (since, until, cycle id). Forms: ``2026-Q1``; ``START..END`` (ISO-8601 dates
    or times, spaces around ``..`` allowed); ``last-N-weeks`` (the N complete ISO weeks before `now`'s);
    ``all``; empty: the last complete quarter before `now`.

    The cycle id is written from the parsed window, never copied from the text: ``2026-Q1``,
    ``2026-01-05_2026-04-20`` (a time other than midnight UTC as ``2026-01-05T100000Z``), ``all``.
    A range whose start is not before its end selects nothing and is a ValueError naming the window.
    """
    text = (window or "").strip()
    if text.lower() == "all":
        return None, None, "all"
    weeks = re.fullmatch(r"last-(\d{1,3})-weeks", text, flags=re.IGNORECASE)
    if weeks:
        count = int(weeks.group(1))
        if count < 1:
            raise ValueError(f"window {window!r} selects nothing: write last-N-weeks with N at least 1, e.g. last-13-weeks")
        now = as_utc(now or datetime.now(timezone.utc))
        end = datetime(now.year, now.month, now.day, tzinfo=timezone.utc) - timedelta(days=now.weekday())
        start = end - timedelta(weeks=count)
        return start, end, f"{_stamp(start)}_{_stamp(end)}"
    if ".." in text:
        parts = text.split("..")
        if len(parts) != 2 or not all(part.strip() for part in parts):
            raise ValueError(f"cannot read window {window!r}: write START..END with ISO-8601 dates, e.g. 2026-01-05..2026-04-06")
        try:
            start, end = (parse_time(part) for part in parts)
        except ValueError as err:
            raise ValueError(f"cannot read window {window!r}: {err}") from None
        if start >= end:
            raise ValueError(f"window {window!r} selects nothing: its start {iso_z(start)} is not before its end "
                             f"{iso_z(end)}; write START..END with the earlier time first")
        return start, end, f"{_stamp(start)}_{_stamp(end)}"
    if not text:
        now = as_utc(now or datetime.now(timezone.utc))
        quarter = (now.month - 1) // 3  # the current quarter's index; the previous one is complete
        year, quarter = (now.year - 1, 4) if quarter == 0 else (now.year, quarter)
        text = f"{year}-Q{quarter}"
    start, end = quarter_window(text)
    return start, end, f"{start.year:04d}-Q{(start.month - 1) // 3 + 1}"


def _stamp(value: datetime) -> str:
    """A UTC time for a folder name: the date, plus the time (no colons) when it is not midnight."""
    day = value.date().isoformat()
    if value.time() == datetime.min.time():
        return day
    return f"{day}T{value.time().isoformat().replace(':', '')}Z"


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso_z(value: datetime) -> str:
    """`value` as UTC ISO-8601 with microseconds and a ``Z``: ``2026-01-05T10:00:00.000000Z``. Always a
    four-digit year (strftime's %Y writes year 1 as "1" on Linux)."""
    return as_utc(value).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"

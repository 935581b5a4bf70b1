"""The types of the flows' parameters, so the Prefect UI renders each as a plain text box with examples
and refuses a malformed value in the form, before a run is created.

Every type here is a `str` in the parameter schema (never `str | None`, which the UI shows as a
type toggle set to None); empty means "the default", and None from Python callers reads as empty.
`Window` carries a JSON-schema pattern (what Prefect's server checks a deployment run's parameters
against) and, for what a pattern cannot see (a 31st of February, a range ending before it starts),
the same parser the flow uses (`tasks.windows.parse_window`) as a pydantic validator, which Prefect
runs before the flow's first line.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints

from tasks.windows import parse_window

_DATE = r"\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?"
# all | 2026-Q1 | last-13-weeks | START..END (ISO dates or times) | empty; case-insensitive by spelling
WINDOW_PATTERN = (rf"^\s*(|[Aa][Ll][Ll]|\d{{4}}-?[Qq][1-4]|[Ll][Aa][Ss][Tt]-\d{{1,3}}-[Ww][Ee][Ee][Kk][Ss]"
                  rf"|{_DATE}\s*\.\.\s*{_DATE})\s*$")


def _empty_for_none(value: object) -> object:
    return "" if value is None else value


def _parsable_window(value: str) -> str:
    parse_window(value)  # ValueError naming the window and the fix
    return value


Window = Annotated[
    str,
    StringConstraints(pattern=WINDOW_PATTERN),  # first: after a validator pydantic leaves it out of the schema
    BeforeValidator(_empty_for_none),
    Field(examples=["2026-Q1", "2026-01-05..2026-04-20", "last-13-weeks"],
          description="Logs to learn from: a quarter (2026-Q1), a range START..END of ISO dates (end excluded), "
                      "last-N-weeks (complete ISO weeks), or all. Empty: the last complete quarter."),
    AfterValidator(_parsable_window),
]
ConfigFile = Annotated[
    str,
    BeforeValidator(_empty_for_none),
    Field(examples=["configs/default.yaml"],
          description="YAML config file laid over the embedded defaults. Empty: $FLYWHEEL_CONFIG, else the defaults."),
]
WorkspaceDir = Annotated[
    str,
    BeforeValidator(_empty_for_none),
    Field(examples=["workspace"],
          description="Folder holding logs, cycles and the MLflow store. Empty: the config's (default ./workspace)."),
]
OptionalText = Annotated[str, BeforeValidator(_empty_for_none)]  # empty: "not given"

"""Column mapping as SQL: turn ``logs.preset`` + ``logs.columns`` into DuckDB queries that validate rows.

The performance fast path of the log store (private to ``tasks.logs``). One plan per LogRecord field
says where its value comes from (a JSON path, a Parquet column, or one of the openai_chat special
sources) and how it is typed and judged; ``lines_sql`` and ``parquet_sql`` stack the same
validation levels over JSON text lines and over Parquet tables, so no row is looped over in Python.
The rules themselves (presets, paths, reasons) are described in the ``tasks.logs`` docstring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from tasks.contracts import LOG_SCHEMA, REQUIRED_LOG_FIELDS
from tasks.logs.sources import logs_settings

__all__ = [
    "ASSISTANT_REPLY",
    "FIELDS",
    "LAST_USER_MESSAGE",
    "MACROS",
    "PRESETS",
    "REASONS",
    "column_mapping",
    "ident",
    "line_plans",
    "lines_sql",
    "lit",
    "parquet_plans",
    "parquet_sql",
]

REASONS = (
    "invalid_utf8",
    "too_large",
    "not_json",
    "not_object",
    "missing_field",
    "bad_timestamp",
    "wrong_type",
)
FIELDS: tuple[str, ...] = tuple(LOG_SCHEMA.names)

LAST_USER_MESSAGE = "@last_user_message"
ASSISTANT_REPLY = "@assistant_reply"
_SPECIALS = (LAST_USER_MESSAGE, ASSISTANT_REPLY)

PRESETS: dict[str, dict[str, str]] = {
    "flywheel": {name: name for name in FIELDS},
    "openai_chat": {
        "request_id": "id",
        "ts": "created",
        "user_id": "user",
        "session_id": "session_id",
        "prompt": LAST_USER_MESSAGE,
        "response": ASSISTANT_REPLY,
        "model_version": "model",
        "latency_ms": "latency_ms",
        "prompt_tokens": "usage.prompt_tokens",
        "completion_tokens": "usage.completion_tokens",
        "feedback": "feedback",
        "correction": "correction",
        "metadata": "metadata",
    },
}

_KIND = {
    "request_id": "str",
    "ts": "ts",
    "user_id": "str",
    "session_id": "str",
    "prompt": "str",
    "response": "str",
    "model_version": "str",
    "latency_ms": "float",
    "prompt_tokens": "int",
    "completion_tokens": "int",
    "feedback": "feedback",
    "correction": "str",
    "metadata": "meta",
}
_EXPECTED = {
    "str": "a string",
    "ts": "an ISO-8601 time or epoch seconds/milliseconds in the years 1 to 9999 (UTC)",
    "float": "a finite number",
    "int": "an integer",
    "feedback": '1, -1, "up", "down" or null',
    "meta": "a JSON object",
}
_OUT_TYPE = {
    "str": "VARCHAR",
    "ts": "TIMESTAMPTZ",
    "float": "DOUBLE",
    "int": "BIGINT",
    "feedback": "TINYINT",
    "meta": "VARCHAR",
}

_EPOCH_MS_ABOVE = 2e10  # pydantic's rule: larger epoch numbers are milliseconds
_EPOCH_MAX = 2e13  # ... up to year 2603 either way; beyond that the number is not a time
# What the store can hold: Python's datetime (and so pyarrow's to_pylist, the stats, every consumer)
# ends at 9999-12-31; DuckDB would accept far more and hand the rest back as text.
_TS_RANGE = "TIMESTAMPTZ '0001-01-01 00:00:00+00'", "TIMESTAMPTZ '10000-01-01 00:00:00+00'"
_NUMERIC_JSON = "('BIGINT', 'UBIGINT', 'DOUBLE')"


def column_mapping(settings: Any) -> dict[str, str]:
    """LogRecord field -> source column (or dotted path, or a special source) for these settings."""
    logs = logs_settings(settings)
    unknown = sorted(set(logs.columns) - set(FIELDS))
    if unknown:
        raise ValueError(
            f"logs.columns names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"LogRecord fields: keys must be one of {', '.join(FIELDS)} (values are your column names)"
        )
    mapping = dict(PRESETS[logs.preset])
    mapping.update(logs.columns)
    for name, source in mapping.items():
        _path_parts(name, source)  # raises on a malformed path
    return mapping


def _path_parts(name: str, source: str) -> list[str | int]:
    if source in _SPECIALS:
        return []
    parts: list[str | int] = []
    for piece in str(source).split("."):
        match = re.fullmatch(r'([^\[\]"]+)((?:\[\d+\])*)', piece)
        if not match:
            raise ValueError(
                f"logs.columns.{name} = {source!r} is not a column name or dotted path: write a column "
                "name, a path like usage.prompt_tokens or choices[0].message.content, or one of "
                + ", ".join(_SPECIALS)
            )
        parts.append(match.group(1))
        parts.extend(int(index) for index in re.findall(r"\[(\d+)\]", match.group(2)))
    return parts


def _json_path(parts: Sequence[str | int]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f'."{p}"' for p in parts)


def lit(text: str) -> str:
    """`text` as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------
# SQL: one plan per LogRecord field, then the same validation levels for every source shape
#
#   A   the source rows (+ __early: too_large / not_json / not_object / blank, decided per line)
#   B1  JSON values that need more than one path lookup (openai prompt/response, Parquet nested)
#   B2  per field: its JSON type (__ty_*) and its text (__sv_*)
#   C   per field: the typed value (__v_*; only meaningful when the field has no error code, so that
#       big strings pass through without a CASE copying them), whether the key is there (__k_*)
#   D   per field: an error code (M missing, B bad timestamp, T wrong type) or NULL
#   E   the row's reason
#   F   output columns, message, raw text


@dataclass
class _Plan:
    name: str
    kind: str
    required: bool
    origin: str  # for messages: where the value comes from
    value: str  # level C expression: the typed value, NULL when absent or invalid
    code: str  # level D expression: 'M' / 'B' / 'T' / NULL (may use __v_<name>, __ty_<name>, __sv_<name>)
    type_name: str  # expression (levels D-F) naming what was found, for messages
    key_present: str | None = None  # level C: the key exists in the row (JSONL schema check)
    j_cols: dict[str, str] = field(default_factory=dict)  # level B1 columns
    ts_cols: dict[str, str] = field(default_factory=dict)  # level B2 columns
    passthrough: str | None = None  # a Parquet text column whose valid values are the output as is


def _json_plan(name: str, source: str, t_expr: str, s_expr: str, *, key_expr: str | None = None,
               j_cols: dict[str, str] | None = None) -> _Plan:
    """A field read from a JSON value whose type is `t_expr` and text `s_expr`."""
    kind = _KIND[name]
    ty, sv = f"__ty_{name}", f"__sv_{name}"
    return _Plan(
        name, kind, name in REQUIRED_LOG_FIELDS, _origin(source),
        value=_value_from_json(kind, ty, sv),
        code=_code_from_json(kind, ty, sv, f"__v_{name}", name in REQUIRED_LOG_FIELDS),
        type_name=(f"CASE WHEN {ty} IN {_NUMERIC_JSON} THEN 'NaN, an infinity or a number beyond the double range' "
                   f"ELSE {_json_type_name(ty)} END") if kind == "float" else _json_type_name(ty),
        key_present=key_expr or f"({ty} IS NOT NULL)",
        j_cols=j_cols or {},
        ts_cols={ty: t_expr, sv: s_expr},
    )


_MISSING = "'M'"
_BAD = {"ts": "'B'", "str": "'T'", "float": "'T'", "int": "'T'", "feedback": "'T'", "meta": "'T'"}


def _value_from_json(kind: str, t: str, s: str) -> str:
    """Typed value of a JSON value whose json_type is `t` and text `s`. Text is taken as it is: the
    field's error code (below) rejects the row when the type is wrong, and a CASE here would copy
    every prompt and response once more."""
    if kind in ("str", "meta"):
        return s
    if kind == "ts":
        return (
            f"CASE WHEN {t} = 'VARCHAR' THEN {_ts_from_text(s)} "
            f"WHEN {t} IN {_NUMERIC_JSON} THEN {_ts_from_epoch(f'TRY_CAST({s} AS DOUBLE)')} END"
        )
    if kind == "float":
        return _finite(f"TRY_CAST({s} AS DOUBLE)")
    if kind == "int":
        return (
            f"CASE WHEN {t} IN ('BIGINT', 'UBIGINT') THEN TRY_CAST({s} AS BIGINT) "
            f"WHEN {t} = 'DOUBLE' THEN {_integral(f'TRY_CAST({s} AS DOUBLE)')} END"
        )
    if kind == "feedback":
        return (
            f"CASE WHEN {t} IN {_NUMERIC_JSON} THEN {_feedback_number(f'TRY_CAST({s} AS DOUBLE)')} "
            f"WHEN {t} = 'VARCHAR' THEN {_feedback_text(s)} END"
        )
    raise AssertionError(kind)


def _code_from_json(kind: str, t: str, s: str, v: str, required: bool) -> str:
    """Error code of a JSON field: M (absent or null, and required), B (bad timestamp), T (wrong type)."""
    absent = f"WHEN {t} IS NULL OR {t} = 'NULL' THEN {_MISSING if required else 'NULL'}"
    if kind == "str":
        return f"CASE {absent} WHEN {t} <> 'VARCHAR' THEN 'T' END"
    if kind == "float":  # NaN, Infinity and 1e400 parse as numbers: not finite, so not a latency
        return f"CASE {absent} WHEN {t} NOT IN {_NUMERIC_JSON} OR {v} IS NULL THEN 'T' END"
    if kind == "meta":  # an object, or a string holding one
        return (
            f"CASE {absent} WHEN {t} = 'OBJECT' THEN NULL "
            f"WHEN {t} = 'VARCHAR' THEN CASE WHEN {_object_text(s)} IS NULL THEN 'T' END ELSE 'T' END"
        )
    if kind == "ts":
        return f"CASE {absent} WHEN {v} IS NULL OR {_ts_out_of_range(v)} THEN 'B' END"
    return f"CASE {absent} WHEN {v} IS NULL THEN {_BAD[kind]} END"


_INTEGER_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}


def _duck_family(duck_type: str) -> str:
    upper = duck_type.upper()
    if upper in ("VARCHAR", "JSON") or upper.startswith("ENUM"):
        return "text"
    if upper in _INTEGER_TYPES:
        return "int"
    if upper in ("FLOAT", "DOUBLE") or upper.startswith("DECIMAL"):
        return "float"
    if upper.startswith("TIMESTAMP") or upper == "DATE":
        return "time"
    if upper.startswith(("STRUCT", "MAP")):
        return "object"
    return "other"


def _value_from_column(kind: str, col: str, duck_type: str) -> str:
    """Typed value from a flat Parquet column of DuckDB type `duck_type` (same rules as JSON)."""
    family = _duck_family(duck_type)
    text = f"CAST({col} AS VARCHAR)"
    if kind == "str":
        return text if family == "text" else "NULL"
    if kind == "ts":
        if family == "time":
            return f"CASE WHEN isfinite({col}) THEN CAST({col} AS TIMESTAMPTZ) END"
        if family == "text":
            return _ts_from_text(text)
        if family in ("int", "float"):
            return _ts_from_epoch(f"TRY_CAST({col} AS DOUBLE)")
        return "NULL"
    if kind == "float":
        return _finite(f"CAST({col} AS DOUBLE)") if family in ("int", "float") else "NULL"
    if kind == "int":
        if family == "int":
            return f"TRY_CAST({col} AS BIGINT)"
        return _integral(f"CAST({col} AS DOUBLE)") if family == "float" else "NULL"
    if kind == "feedback":
        if family in ("int", "float"):
            return _feedback_number(f"CAST({col} AS DOUBLE)")
        return _feedback_text(text) if family == "text" else "NULL"
    if kind == "meta":
        if family == "text":
            return _object_text(text)
        return f"CAST(to_json({col}) AS VARCHAR)" if family == "object" else "NULL"
    raise AssertionError(kind)


def _ts_from_text(s: str) -> str:
    # A leading digit keeps DuckDB's special words ('epoch', 'infinity', 'now'...) out. A leap second
    # (23:59:60, which DuckDB and Python cannot hold) becomes the last microsecond of its minute, so the
    # row stays in its day and week; COALESCE only tries that on text the plain cast refused.
    leap = rf"regexp_replace({s}, '^(\d{{4}}-\d{{2}}-\d{{2}}[T ]\d{{2}}:\d{{2}}):60(?:[.,]\d+)?', '\1:59.999999')"
    return (
        f"CASE WHEN left({s}, 1) BETWEEN '0' AND '9' THEN COALESCE(TRY_CAST({s} AS TIMESTAMPTZ), "
        f"CASE WHEN contains({s}, ':60') THEN TRY_CAST({leap} AS TIMESTAMPTZ) END) END"
    )


def _ts_out_of_range(v: str) -> str:
    return f"NOT ({v} >= {_TS_RANGE[0]} AND {v} < {_TS_RANGE[1]})"


def _finite(x: str) -> str:
    return f"CASE WHEN isfinite({x}) THEN {x} END"


def _ts_from_epoch(x: str) -> str:
    return (
        f"CAST(CASE WHEN abs({x}) < {_EPOCH_MS_ABOVE} THEN make_timestamp(CAST(round({x} * 1e6) AS BIGINT)) "
        f"WHEN abs({x}) < {_EPOCH_MAX} THEN make_timestamp(CAST(round({x} * 1e3) AS BIGINT)) END AS TIMESTAMPTZ)"
    )


def _integral(x: str) -> str:
    return f"CASE WHEN {x} = trunc({x}) AND abs({x}) < 9.2e18 THEN CAST({x} AS BIGINT) END"


def _feedback_number(x: str) -> str:
    return f"CASE WHEN {x} = 1 THEN 1 WHEN {x} = -1 THEN -1 END"


def _feedback_text(s: str) -> str:
    return f"CASE lower(trim({s})) WHEN 'up' THEN 1 WHEN 'down' THEN -1 WHEN '1' THEN 1 WHEN '-1' THEN -1 END"


def _object_text(s: str) -> str:
    return f"CASE WHEN json_valid({s}) THEN CASE WHEN json_type({s}) = 'OBJECT' THEN {s} END END"


def _json_type_name(t: str) -> str:
    return (
        f"CASE {t} WHEN 'VARCHAR' THEN 'a string' WHEN 'BIGINT' THEN 'a number' WHEN 'UBIGINT' THEN 'a number' "
        f"WHEN 'DOUBLE' THEN 'a number' WHEN 'BOOLEAN' THEN 'a boolean' WHEN 'ARRAY' THEN 'an array' "
        f"WHEN 'OBJECT' THEN 'an object' ELSE 'nothing usable' END"
    )


def _special_json(source: str, get: Any) -> str:
    """JSON-valued SQL for the openai_chat prompt/response. `get(key)` gives a top-level value as
    JSON, or None when the source has no such column (then that branch is left out)."""
    messages = get("messages")
    if source == LAST_USER_MESSAGE:
        if messages is None:
            return "NULL::JSON"
        last_user = (
            f"list_filter(json_extract({messages}, '$[*]'), lambda m: json_extract_string(m, '$.role') = 'user')[-1]"
        )
        return f"__content(json_extract({last_user}, '$.content'))"
    choices, response = get("choices"), get("response")
    branches = []
    if choices is not None:
        branches.append(f"__content(json_extract({choices}, '$[0].message.content'))")
    if response is not None:
        branches.append(
            f"CASE json_type({response}) WHEN 'VARCHAR' THEN {response} "
            f"WHEN 'OBJECT' THEN __content(json_extract({response}, '$.choices[0].message.content')) END"
        )
    if messages is not None:
        branches.append(
            f"CASE WHEN json_extract_string({messages}, '$[#-1].role') = 'assistant' "
            f"THEN __content(json_extract({messages}, '$[#-1].content')) END"
        )
    return f"COALESCE({', '.join(branches)})" if branches else "NULL::JSON"


MACROS = [  # run on every connection that executes these queries
    # A message content: a string, or a list of parts whose text parts are joined with newlines. An
    # empty list (or empty text parts) is the empty string, as "content": "" is: not a missing field.
    "CREATE OR REPLACE TEMP MACRO __content(c) AS CASE WHEN json_type(c) = 'ARRAY' THEN "
    "to_json(COALESCE(array_to_string(list_transform(list_filter(json_extract(c, '$[*]'), "
    "lambda p: json_extract_string(p, '$.type') = 'text'), lambda p: json_extract_string(p, '$.text')), "
    "chr(10)), '')) ELSE c END",
]


def _origin(source: str) -> str:
    if source == LAST_USER_MESSAGE:
        return "the last user message in messages"
    if source == ASSISTANT_REPLY:
        return "choices[0].message.content, response or a final assistant message"
    return f"column {source!r}"


def line_plans(mapping: dict[str, str]) -> tuple[list[_Plan], list[str]]:
    """Plans for JSON text lines (column `line`): the plain paths are read in one pass into the
    __t / __s lists; also returns those paths."""
    plans, paths = [], []
    for name, source in mapping.items():
        if source in _SPECIALS:
            j = f"__j_{name}"
            expr = _special_json(source, lambda key: f"json_extract(line, {lit(_json_path([key]))})")
            plans.append(
                _json_plan(name, source, f"json_type({j})", f"json_extract_string({j}, '$')",
                           key_expr=f"({j} IS NOT NULL)", j_cols={j: f"CASE WHEN __early IS NULL THEN {expr} END"})
            )
            continue
        paths.append(_json_path(_path_parts(name, source)))
        plans.append(_json_plan(name, source, f"__t[{len(paths)}]", f"__s[{len(paths)}]"))
    return plans, paths


def parquet_plans(
    mapping: dict[str, str], schema: dict[str, str], explicit: set[str], source_file: str
) -> list[_Plan]:
    """Plans for a Parquet file whose DuckDB column types are `schema`."""
    plans = []
    lower = {name.lower(): name for name in schema}

    def column(key: str) -> str | None:
        return key if key in schema else lower.get(key.lower())

    def get(key: str) -> str | None:
        col = column(key)
        return f"to_json({ident(col)})" if col else None

    for name, source in mapping.items():
        kind, required = _KIND[name], name in REQUIRED_LOG_FIELDS
        j = f"__j_{name}"
        if source in _SPECIALS:
            expr = _special_json(source, get)
            plans.append(
                _json_plan(name, source, f"json_type({j})", f"json_extract_string({j}, '$')",
                           j_cols={j: f"CASE WHEN __early IS NULL THEN {expr} END"})
            )
            continue
        flat = column(source)
        if flat is not None:  # a plain column (a name with dots that exists as such wins over a path)
            quoted, duck_type = ident(flat), schema[flat]
            as_is = kind in ("str", "meta") and duck_type.upper() == "VARCHAR"
            plans.append(
                _Plan(
                    name, kind, required, _origin(source),
                    value=_value_from_column(kind, quoted, duck_type),
                    code=f"CASE WHEN {quoted} IS NULL THEN {_MISSING if required else 'NULL'} "
                    f"WHEN __v_{name} IS NULL{' OR ' + _ts_out_of_range(f'__v_{name}') if kind == 'ts' else ''} "
                    f"THEN {_BAD[kind]} END",
                    type_name=lit(f"a {duck_type} value"),
                    passthrough=flat if as_is else None,
                )
            )
            continue
        parts = _path_parts(name, source)
        top = column(str(parts[0]))
        if top is None or len(parts) == 1:
            if name in explicit or required:
                raise ValueError(_missing_column_message(source_file, name, source, list(schema)))
            plans.append(
                _Plan(name, kind, required, _origin(source), value="NULL", code="NULL", type_name="'nothing'")
            )
            continue
        expr = f"json_extract(to_json({ident(top)}), {lit(_json_path(parts[1:]))})"
        plans.append(
            _json_plan(name, source, f"json_type({j})", f"json_extract_string({j}, '$')",
                       j_cols={j: f"CASE WHEN __early IS NULL THEN {expr} END"})
        )
    return plans


def _missing_column_message(source_file: str, name: str, source: str, available: list[str]) -> str:
    shown = ", ".join(available[:20]) + (", ..." if len(available) > 20 else "")
    return (
        f"{source_file}: the mapping reads LogRecord field {name!r} from column {source!r}, which this file "
        f"does not have (columns: {shown}). Fix: set logs.columns.{name} to the column that holds it, "
        "or choose the right logs.preset (flywheel or openai_chat)"
    )


def _validation_sql(
    level_a: str, plans: list[_Plan], *, raw_sql: str, max_bytes: int, keys: Iterable[str] = ()
) -> str:
    """Levels B1-F over `level_a`, which provides __file, __line, __nbytes, __early, __what.
    `keys`: fields that get a __k_<field> output column (does the row have the key at all)."""
    keys = set(keys)

    def cols(items: Iterable[tuple[str, str]]) -> str:
        return "".join(f", {expr} AS {ident(name)}" for name, expr in items)

    level_b1 = f"SELECT *{cols((k, v) for p in plans for k, v in p.j_cols.items())} FROM ({level_a})"
    level_b2 = f"SELECT *{cols((k, v) for p in plans for k, v in p.ts_cols.items())} FROM ({level_b1})"
    level_c = (
        f"SELECT *{cols((f'__v_{p.name}', p.value) for p in plans)}"
        f"{cols((f'__k_{p.name}', p.key_present) for p in plans if p.name in keys and p.key_present)} FROM ({level_b2})"
    )

    level_d = f"SELECT *{cols((f'__e_{p.name}', p.code) for p in plans)} FROM ({level_c})"
    codes = "concat(" + ", ".join(f"__e_{plan.name}" for plan in plans) + ")"
    level_e = (
        "SELECT *, CASE WHEN __early IS NOT NULL THEN __early "
        f"WHEN {codes} = '' THEN NULL WHEN contains({codes}, 'M') THEN 'missing_field' "
        f"WHEN contains({codes}, 'B') THEN 'bad_timestamp' ELSE 'wrong_type' END AS __reason "
        f"FROM ({level_d})"
    )

    def field_message(plan: _Plan) -> str:
        missing = lit(f"missing required field {plan.name} (from {plan.origin})")
        wrong = lit(f"{plan.name}: expected {_EXPECTED[plan.kind]}, got ")
        code = f"__e_{plan.name}"
        return f"CASE WHEN {code} = 'M' THEN {missing} WHEN {code} IS NOT NULL THEN {wrong} || {plan.type_name} END"

    field_messages = "concat_ws('; ', " + ", ".join(field_message(plan) for plan in plans) + ")"
    message = (
        "CASE __reason WHEN 'blank' THEN NULL "
        f"WHEN 'too_large' THEN 'record is ' || __nbytes || ' bytes, over logs.max_record_bytes = {max_bytes}' "
        "WHEN 'not_json' THEN 'not valid JSON' "
        "WHEN 'not_object' THEN 'valid JSON but ' || __what || ', not an object' "
        f"ELSE {field_messages} END"
    )
    outputs = ", ".join(
        (f"COALESCE(__v_{plan.name}, '{{}}')" if plan.kind == "meta" else f"__v_{plan.name}")
        + f"::{_OUT_TYPE[plan.kind]} AS {ident(plan.name)}"
        for plan in plans
        if not plan.passthrough  # taken from the source table afterwards, without a copy
    )
    key_cols = "".join(f", __k_{plan.name}" for plan in plans if plan.name in keys and plan.key_present)
    return (
        f"SELECT {outputs}, __file::INTEGER AS __file, __line::BIGINT AS __line, __nbytes::BIGINT AS __nbytes, "
        f"__reason, CASE WHEN __reason IS NOT NULL THEN {message} END AS __message, "
        f"CASE WHEN __reason IS NOT NULL AND __reason <> 'blank' THEN {raw_sql} END::VARCHAR AS __raw{key_cols} "
        f"FROM ({level_e})"
    )


def lines_sql(
    plans: list[_Plan], paths: list[str], max_bytes: int, raw_chars: int, trust_braces: bool, keys: Iterable[str] = ()
) -> str:
    """Validation of JSON text lines (table `lines`: __file, __line, __nbytes, __braced, line).

    With `trust_braces`, a line that starts with '{' and ends with '}' is not checked with
    json_valid first (saving a parse); if one is not JSON after all, extracting from it raises."""
    path_list = "[" + ", ".join(lit(p) for p in paths) + "]"
    whitespace = "' ' || chr(9) || chr(10) || chr(13)"
    level_a = (
        "SELECT __file, __line, __nbytes, line, "
        f"CASE WHEN __nbytes > {max_bytes} THEN 'too_large' "
        + ("WHEN __braced THEN NULL " if trust_braces else "")
        + f"WHEN NOT json_valid(line) THEN CASE WHEN trim(line, {whitespace}) = '' THEN 'blank' ELSE 'not_json' END "
        # starts_with('{') settles the common case without parsing the line a second time.
        "WHEN starts_with(line, '{') THEN NULL WHEN json_type(line) <> 'OBJECT' THEN 'not_object' END AS __early "
        "FROM lines"
    )
    level_a = (
        f"SELECT *, CASE WHEN __early IS NULL THEN json_type(line, {path_list}) END AS __t, "
        f"CASE WHEN __early IS NULL THEN json_extract_string(line, {path_list}) END AS __s, "
        f"CASE WHEN __early = 'not_object' THEN lower(json_type(line)) END AS __what FROM ({level_a})"
    )
    raw = f"left(rtrim(line, chr(10) || chr(13)), {raw_chars})"
    return _validation_sql(level_a, plans, raw_sql=raw, max_bytes=max_bytes, keys=keys)


def parquet_sql(plans: list[_Plan], schema: dict[str, str], max_bytes: int) -> str:
    """Validation of a Parquet file registered as `src` (plus __file, __line)."""
    sizes = []
    for name, duck_type in schema.items():
        family = _duck_family(duck_type)
        if family == "text":
            sizes.append(f"COALESCE(strlen(CAST({ident(name)} AS VARCHAR)), 0)")
        elif duck_type.upper() == "BLOB":
            sizes.append(f"COALESCE(octet_length({ident(name)}), 0)")
        elif family in ("object", "other"):
            sizes.append(f"COALESCE(strlen(CAST(to_json({ident(name)}) AS VARCHAR)), 0)")
        else:
            sizes.append("8")
    size = " + ".join(sizes) or "0"
    level_a = (
        f"SELECT *, CASE WHEN __nbytes > {max_bytes} THEN 'too_large' END AS __early, NULL::VARCHAR AS __what "
        f"FROM (SELECT *, ({size})::BIGINT AS __nbytes FROM src)"
    )
    return _validation_sql(level_a, plans, raw_sql="NULL", max_bytes=max_bytes)


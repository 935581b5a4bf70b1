"""The production-log store: mapping, quarantine reasons, the read = accepted + quarantined
invariant (fuzzed), windows, the append writer and source resolution."""

from __future__ import annotations

import gzip
import json
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

import tasks.logs as logs_module
import tasks.logs.load as logs_load
from tasks.config import LogsSettings, Settings
from tasks.contracts import LOG_SCHEMA, LogRecord
from tasks.logs import LogWriter, column_mapping, load_logs, log_stats, resolve_sources
from tasks.windows import iso_week_window, parse_time, quarter_window

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def row(i: int = 0, **changes) -> dict:
    """A valid flywheel-shaped row; `changes` overrides fields (a value of ... drops the key)."""
    base = {
        "request_id": f"req-{i}",
        "ts": (T0 + timedelta(minutes=i)).isoformat().replace("+00:00", "Z"),
        "user_id": f"user-{i % 3}",
        "session_id": f"s-{i // 2}",
        "prompt": f"How do I reset router {i}?",
        "response": "Hold the button for 5 seconds.",
        "model_version": "v1" if i % 2 == 0 else "v2",
        "latency_ms": 120.5,
        "prompt_tokens": 12,
        "completion_tokens": 9,
        "feedback": None,
        "correction": None,
        "metadata": {"channel": "web"},
    }
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def write_lines(path: Path, lines: list) -> Path:
    """Rows (dicts/lists, dumped as JSON), str or bytes lines, joined with newlines."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode("utf-8"))
        else:
            out.append(json.dumps(line, ensure_ascii=False).encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(out) + b"\n")
    return path


def quarantine_rows(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines would also break inside values at U+0085, U+2028...
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def check_invariant(result) -> None:
    assert result.read == result.accepted + result.quarantined
    assert sum(result.reasons.values()) == result.quarantined
    assert result.table.schema == LOG_SCHEMA


# ------------------------------------------------------------------------------------------ mapping


def test_flywheel_rows_load_with_the_log_schema(tmp_path):
    rows = [row(i) for i in range(4)]
    rows[1].update(feedback=1, correction="Use the app.", metadata={"channel": "app", "n": [1, 2]})
    rows[2].update(feedback="down", latency_ms=80, prompt_tokens=7.0)
    result = load_logs([write_lines(tmp_path / "a.jsonl", rows)], LogsSettings())
    check_invariant(result)
    assert (result.read, result.accepted, result.quarantined) == (4, 4, 0)
    out = result.table.to_pylist()
    assert [r["request_id"] for r in out] == ["req-0", "req-1", "req-2", "req-3"]
    assert out[0]["ts"] == T0 and out[0]["ts"].utcoffset() == timedelta(0)
    assert out[1]["feedback"] == 1 and out[1]["correction"] == "Use the app."
    assert json.loads(out[1]["metadata"]) == {"channel": "app", "n": [1, 2]}
    assert out[2]["feedback"] == -1 and out[2]["latency_ms"] == 80.0 and out[2]["prompt_tokens"] == 7
    assert out[3]["feedback"] is None and out[3]["session_id"] == "s-1"


def test_timestamps_in_every_accepted_form_become_utc(tmp_path):
    forms = [
        "2026-01-05T10:00:00Z",
        "2026-01-05T12:00:00+02:00",
        "2026-01-05T10:00:00",  # naive: UTC
        "2026-01-05 10:00:00.000",
        1767607200,  # epoch seconds
        1767607200000,  # epoch milliseconds
        1767607200.0,
    ]
    rows = [row(i, ts=value) for i, value in enumerate(forms)] + [row(99, ts="2026-01-05")]
    result = load_logs([write_lines(tmp_path / "t.jsonl", rows)], LogsSettings())
    assert result.quarantined == 0
    stamps = {r["request_id"]: r["ts"] for r in result.table.to_pylist()}
    assert all(stamps[f"req-{i}"] == T0 for i in range(len(forms)))
    assert stamps["req-99"] == datetime(2026, 1, 5, tzinfo=UTC)


def openai_row(i: int, **changes) -> dict:
    base = {
        "id": f"chatcmpl-{i}",
        "created": 1767607200 + i,
        "model": "qwen-0.5b+lora-3",
        "user": f"u-{i}",
        "messages": [
            {"role": "system", "content": "You are a shop assistant."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": f"Where is order {i}?"},
        ],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "It ships tomorrow."}}],
        "usage": {"prompt_tokens": 31, "completion_tokens": 5},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_openai_chat_preset_maps_messages_onto_prompt_and_response(tmp_path):
    transcript = openai_row(2, choices=...)
    transcript["messages"] = transcript["messages"] + [{"role": "assistant", "content": "From the app."}]
    rows = [
        openai_row(0, feedback=-1, metadata={"route": "a"}),
        openai_row(1, choices=..., response="Plain response text."),
        transcript,
        openai_row(3, messages=[{"role": "user", "content": [{"type": "text", "text": "Look at"},
                                                            {"type": "image_url", "image_url": {"url": "x"}},
                                                            {"type": "text", "text": "this"}]}]),
        openai_row(4, messages=[{"role": "system", "content": "only a system turn"}]),  # no user message
    ]
    result = load_logs([write_lines(tmp_path / "chat.jsonl", rows)], LogsSettings(preset="openai_chat"),
                       quarantine=tmp_path / "q.jsonl")
    check_invariant(result)
    out = {r["request_id"]: r for r in result.table.to_pylist()}
    assert out["chatcmpl-0"]["prompt"] == "Where is order 0?"
    assert out["chatcmpl-0"]["response"] == "It ships tomorrow."
    assert out["chatcmpl-0"]["user_id"] == "u-0" and out["chatcmpl-0"]["model_version"] == "qwen-0.5b+lora-3"
    assert out["chatcmpl-0"]["ts"] == T0 and out["chatcmpl-0"]["feedback"] == -1
    assert (out["chatcmpl-0"]["prompt_tokens"], out["chatcmpl-0"]["completion_tokens"]) == (31, 5)
    assert out["chatcmpl-1"]["response"] == "Plain response text."
    assert out["chatcmpl-2"]["prompt"] == "Where is order 2?" and out["chatcmpl-2"]["response"] == "From the app."
    assert out["chatcmpl-3"]["prompt"] == "Look at\nthis"
    assert result.reasons == {"missing_field": 1}
    [bad] = quarantine_rows(tmp_path / "q.jsonl")
    assert bad["line"] == 5 and "prompt" in bad["message"]


def test_an_empty_reply_as_a_list_of_parts_is_accepted_like_the_plain_string(tmp_path):
    """"content": "" is an empty reply; [{"type": "text", "text": ""}] and [] say the same and must not
    be quarantined as a missing response."""
    rows = [
        openai_row(0, choices=[{"index": 0, "message": {"role": "assistant", "content": ""}}]),
        openai_row(1, choices=[{"index": 0, "message": {"role": "assistant", "content": [{"type": "text", "text": ""}]}}]),
        openai_row(2, choices=[{"index": 0, "message": {"role": "assistant", "content": []}}]),
        openai_row(3, choices=[{"index": 0, "message": {"role": "assistant", "content": None}}]),  # no reply at all
    ]
    result = load_logs([write_lines(tmp_path / "chat.jsonl", rows)], LogsSettings(preset="openai_chat"),
                       quarantine=tmp_path / "q.jsonl")
    check_invariant(result)
    replies = {r["request_id"]: r["response"] for r in result.table.to_pylist()}
    assert replies == {"chatcmpl-0": "", "chatcmpl-1": "", "chatcmpl-2": ""}
    assert result.reasons == {"missing_field": 1}


def test_openai_preset_reads_a_full_response_object(tmp_path):
    response = {"id": "x", "choices": [{"message": {"role": "assistant", "content": "Nested reply."}}]}
    path = write_lines(tmp_path / "c.jsonl", [openai_row(0, choices=..., response=response)])
    result = load_logs([path], LogsSettings(preset="openai_chat"))
    assert result.table.column("response").to_pylist() == ["Nested reply."]


def test_column_overrides_rename_and_reach_into_nested_objects(tmp_path):
    rows = [
        {"rid": "a", "when": "2026-01-05T10:00:00Z", "customer": {"id": "c-1"}, "q": "hi", "a": "hello",
         "model": "m1", "usage": {"input_tokens": 4}},
        {"rid": "b", "when": "2026-01-05T11:00:00Z", "customer": {"id": "c-2"}, "q": "yo", "a": "hey",
         "model": "m1", "usage": {"input_tokens": 5}},
    ]
    columns = {"request_id": "rid", "ts": "when", "user_id": "customer.id", "prompt": "q", "response": "a",
               "model_version": "model", "prompt_tokens": "usage.input_tokens"}
    settings = LogsSettings(columns=columns)
    assert column_mapping(settings)["user_id"] == "customer.id"
    result = load_logs([write_lines(tmp_path / "o.jsonl", rows)], settings)
    assert result.quarantined == 0
    assert result.table.column("user_id").to_pylist() == ["c-1", "c-2"]
    assert result.table.column("prompt_tokens").to_pylist() == [4, 5]


def test_override_naming_a_column_no_row_has_is_a_clear_error(tmp_path):
    path = write_lines(tmp_path / "o.jsonl", [row(0, prompt="secret-PII-text")])
    with pytest.raises(ValueError) as err:
        load_logs([path], LogsSettings(columns={"user_id": "customer"}))
    message = str(err.value)
    assert str(path) in message and "logs.columns.user_id" in message and "customer" in message
    assert "secret-PII-text" not in message  # never row content in errors


def test_unknown_mapping_keys_are_rejected():
    with pytest.raises(ValueError, match="usr"):
        column_mapping(LogsSettings(columns={"usr": "user"}))
    with pytest.raises(ValueError, match="logs.columns.prompt"):
        column_mapping(LogsSettings(columns={"prompt": "a..b"}))


def test_a_preset_that_fits_no_row_warns(tmp_path):
    path = write_lines(tmp_path / "chat.jsonl", [openai_row(0), openai_row(1)])
    result = load_logs([path], LogsSettings())  # flywheel preset on OpenAI-shaped rows
    assert result.reasons == {"missing_field": 2}
    assert result.warnings and "logs.preset" in result.warnings[0] and str(path) in result.warnings[0]


# ------------------------------------------------------------------------------------------ quarantine


BAD_LINES = {
    "invalid_utf8": [b'{"request_id": "r", "prompt": "caf\xe9"}', b"\xff\xfe"],
    "too_large": [json.dumps(row(0, prompt="x" * 800))],
    "not_json": ["this is not json", '{"request_id": "r",', "{'single': 'quotes'}", '{"a": 1}{"b": 2}'],
    "not_object": ["[1, 2]", '"just a string"', "42", "null"],
    "missing_field": [row(0, user_id=...), row(0, prompt=None), row(0, ts=...)],
    "bad_timestamp": [row(0, ts="yesterday"), row(0, ts="2026-13-45T00:00:00Z"), row(0, ts="epoch"),
                      row(0, ts=1e20), row(0, ts=True)],
    "wrong_type": [row(0, user_id=5), row(0, latency_ms="fast"), row(0, prompt_tokens=1.5), row(0, feedback=0),
                   row(0, metadata=[1]), row(0, prompt={"text": "hi"}), row(0, metadata="not an object")],
}


@pytest.mark.parametrize("reason", sorted(BAD_LINES))
def test_every_quarantine_reason_is_detected_and_recorded(tmp_path, reason):
    bad = BAD_LINES[reason]
    lines = [row(100)] + bad + [row(101)]
    settings = LogsSettings(max_record_bytes=600, quarantine_raw_chars=40)
    quarantine = tmp_path / "q" / "quarantine.jsonl"
    result = load_logs([write_lines(tmp_path / "in.jsonl", lines)], settings, quarantine=quarantine)
    check_invariant(result)
    assert result.reasons == {reason: len(bad)}
    assert (result.read, result.accepted) == (len(lines), 2)
    assert result.table.column("request_id").to_pylist() == ["req-100", "req-101"]
    assert result.quarantine_path == quarantine
    entries = quarantine_rows(quarantine)
    assert [e["line"] for e in entries] == list(range(2, 2 + len(bad)))
    for entry in entries:
        assert entry["reason"] == reason and entry["source"] == str(tmp_path / "in.jsonl")
        assert entry["message"] and len(entry["raw"]) <= 40 and entry["bytes"] > 0


def test_bad_bytes_are_found_among_many_lines(tmp_path):
    lines = [b'{"request_id": "x\xff"}' if i % 97 == 5 else json.dumps(row(i)).encode() for i in range(3000)]
    result = load_logs([write_lines(tmp_path / "many.jsonl", lines)], LogsSettings(), quarantine=tmp_path / "q.jsonl")
    bad_lines = [i + 1 for i in range(3000) if i % 97 == 5]
    assert result.reasons == {"invalid_utf8": len(bad_lines)} and result.accepted == 3000 - len(bad_lines)
    assert [e["line"] for e in quarantine_rows(tmp_path / "q.jsonl")] == bad_lines


@pytest.mark.parametrize("trust", [True, False])
def test_both_ways_of_classifying_lines_agree(tmp_path, monkeypatch, trust):
    monkeypatch.setattr(logs_load, "_TRUST_BRACES", trust)
    lines = [row(i) for i in range(3)] + [line for bad in BAD_LINES.values() for line in bad]
    result = load_logs([write_lines(tmp_path / "in.jsonl", lines)], LogsSettings(max_record_bytes=600))
    check_invariant(result)
    assert result.reasons == {reason: len(bad) for reason, bad in BAD_LINES.items()}


def test_messages_name_the_field_and_what_was_found(tmp_path):
    lines = [row(0, user_id=5, latency_ms="fast"), row(1, model_version=...)]
    load_logs([write_lines(tmp_path / "in.jsonl", lines)], LogsSettings(), quarantine=tmp_path / "q.jsonl")
    wrong, missing = quarantine_rows(tmp_path / "q.jsonl")
    assert "user_id: expected a string, got a number" in wrong["message"]
    assert "latency_ms: expected a finite number, got a string" in wrong["message"]
    assert "missing required field model_version" in missing["message"]


def test_blank_lines_crlf_and_a_byte_order_mark_are_handled(tmp_path):
    body = "\r\n".join([json.dumps(row(0)), "", "   ", json.dumps(row(1))]) + "\r\n"
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    result = load_logs([path], LogsSettings(), quarantine=tmp_path / "q.jsonl")
    assert (result.read, result.accepted, result.quarantined) == (2, 2, 0)
    assert quarantine_rows(tmp_path / "q.jsonl") == []


def test_gzipped_jsonl_loads(tmp_path):
    path = tmp_path / "logs.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(json.dumps(row(i)) for i in range(3)) + "\n").encode()))
    assert load_logs([path], LogsSettings()).accepted == 3


# ------------------------------------------------------------------------------------------ fuzzed invariant

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                  st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)
field_names = st.sampled_from(list(LOG_SCHEMA.names))


@st.composite
def log_lines(draw) -> bytes:
    kind = draw(st.sampled_from(["valid", "mutated", "dropped", "value", "text", "bytes", "blank", "object"]))
    if kind == "valid":
        return json.dumps(row(draw(st.integers(0, 1000)))).encode()
    if kind == "mutated":
        return json.dumps(row(0, **{draw(field_names): draw(json_values)})).encode()
    if kind == "dropped":
        return json.dumps(row(0, **{draw(field_names): ...})).encode()
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    if kind == "object":
        return json.dumps(draw(st.dictionaries(field_names, json_values, max_size=13))).encode()
    if kind == "text":
        return draw(st.text(max_size=60)).replace("\n", " ").replace("\r", " ").encode("utf-8", "surrogatepass")
    if kind == "blank":
        return draw(st.sampled_from([b"", b" ", b"\t \r"]))
    return draw(st.binary(max_size=40)).replace(b"\n", b" ")


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(log_lines(), max_size=25))
def test_read_equals_accepted_plus_quarantined_for_any_input(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        path.write_bytes(b"\n".join(lines))
        results = []
        for trust in (True, False):  # both ways of classifying lines must agree
            logs_load._TRUST_BRACES = trust
            try:
                result = load_logs([path], LogsSettings(max_record_bytes=2000), quarantine=Path(tmp) / "q.jsonl")
            finally:
                logs_load._TRUST_BRACES = True
            check_invariant(result)
            content = [lines[0].removeprefix(b"\xef\xbb\xbf"), *lines[1:]] if lines else []  # a BOM is no content
            assert result.read == sum(1 for line in content if line.strip(b" \t\r"))
            assert result.table.num_rows == result.accepted
            assert result.accepted >= sum(1 for line in lines if _is_valid_row(line))
            assert len(quarantine_rows(Path(tmp) / "q.jsonl")) == result.quarantined
            results.append((result.reasons, result.table))
        assert results[0][0] == results[1][0] and results[0][1].equals(results[1][1])


def _is_valid_row(line: bytes) -> bool:
    """Lines the strategy built as valid rows (these must always be accepted)."""
    try:
        value = json.loads(line)
        return isinstance(value, dict) and value == row(int(value["request_id"].split("-")[1]))
    except Exception:  # noqa: BLE001
        return False


# ------------------------------------------------------------------------------------------ Parquet


def test_parquet_rows_are_validated_like_jsonl(tmp_path):
    table = pa.table(
        {
            "request_id": ["a", "b", "c", "d"],
            "ts": pa.array([T0, T0 + timedelta(hours=1), T0, T0], pa.timestamp("ms", tz="Europe/Paris")),
            "user_id": ["u1", None, "u3", "u4"],
            "prompt": ["p", "p", "p", "p"],
            "response": ["r", "r", "r", "r"],
            "model_version": ["v1", "v1", "v1", "v1"],
            "latency_ms": [1, 2, 3, 4],
            "feedback": ["up", None, "maybe", "down"],
            "metadata": pa.array([{"k": 1}, {"k": 2}, None, {"k": 4}], pa.struct([("k", pa.int64())])),
        }
    )
    pq.write_table(table, tmp_path / "p.parquet")
    result = load_logs([tmp_path / "p.parquet"], LogsSettings(), quarantine=tmp_path / "q.jsonl")
    check_invariant(result)
    assert result.reasons == {"missing_field": 1, "wrong_type": 1}
    out = result.table.to_pylist()
    assert [r["request_id"] for r in out] == ["a", "d"]
    assert out[0]["ts"] == T0 and out[0]["feedback"] == 1 and json.loads(out[0]["metadata"]) == {"k": 1}
    lines = {e["line"]: e for e in quarantine_rows(tmp_path / "q.jsonl")}
    assert lines[2]["reason"] == "missing_field" and lines[3]["reason"] == "wrong_type"
    assert '"request_id":"c"' in lines[3]["raw"]


def test_parquet_with_a_mapped_column_missing_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"request_id": ["a"], "prompt": ["p"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError) as err:
        load_logs([tmp_path / "p.parquet"], LogsSettings())
    assert "p.parquet" in str(err.value) and "logs.columns.ts" in str(err.value)


def test_parquet_invalid_utf8_is_quarantined(tmp_path):
    offsets = pa.py_buffer(pa.array([0, 2, 5], pa.int32()).buffers()[1])
    prompts = pa.Array.from_buffers(pa.string(), 2, [None, offsets, pa.py_buffer(b"ok\xffno")])
    table = pa.table({"request_id": ["a", "b"], "ts": [T0, T0], "user_id": ["u", "u"], "prompt": prompts,
                      "response": ["r", "r"], "model_version": ["v", "v"]})
    pq.write_table(table, tmp_path / "bad.parquet")
    result = load_logs([tmp_path / "bad.parquet"], LogsSettings(), quarantine=tmp_path / "q.jsonl")
    assert result.reasons == {"invalid_utf8": 1} and result.table.column("request_id").to_pylist() == ["a"]
    [entry] = quarantine_rows(tmp_path / "q.jsonl")
    assert entry["line"] == 2 and "\\xff" in entry["raw"]


def test_openai_preset_on_parquet_with_nested_columns(tmp_path):
    rows = [openai_row(0), openai_row(1)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "chat.parquet")
    result = load_logs([tmp_path / "chat.parquet"], LogsSettings(preset="openai_chat"))
    assert result.quarantined == 0
    assert result.table.column("prompt").to_pylist() == ["Where is order 0?", "Where is order 1?"]
    assert result.table.column("response").to_pylist() == ["It ships tomorrow."] * 2
    assert result.table.column("prompt_tokens").to_pylist() == [31, 31]


# ------------------------------------------------------------------------------------------ windows


def test_iso_weeks_across_year_boundaries():
    assert iso_week_window("2026-W01") == (datetime(2025, 12, 29, tzinfo=UTC), datetime(2026, 1, 5, tzinfo=UTC))
    assert iso_week_window("2026-W03")[0] == datetime(2026, 1, 12, tzinfo=UTC)
    assert iso_week_window("2020-W53") == (datetime(2020, 12, 28, tzinfo=UTC), datetime(2021, 1, 4, tzinfo=UTC))
    assert iso_week_window("2026W2")[0] == datetime(2026, 1, 5, tzinfo=UTC)
    with pytest.raises(ValueError, match="1 to 52"):
        iso_week_window("2025-W53")
    with pytest.raises(ValueError, match="2026-W03"):
        iso_week_window("week 3")


def test_quarters():
    assert quarter_window("2026-Q1") == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    assert quarter_window("2025-Q4") == (datetime(2025, 10, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(ValueError, match="Q1 to Q4"):
        quarter_window("2026-Q5")


def test_parse_time():
    assert parse_time("2026-01-05") == datetime(2026, 1, 5, tzinfo=UTC)
    assert parse_time("2026-01-05T12:00:00+02:00") == T0
    assert parse_time("2026-01-05T10:00:00Z") == T0
    assert parse_time("2026-01-05 10:00") == T0
    with pytest.raises(ValueError, match="ISO-8601"):
        parse_time("last tuesday")


def test_retraining_window_forms_and_their_cycle_ids():
    from tasks.windows import parse_window

    assert parse_window("2026-Q1") == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC), "2026-Q1")
    assert parse_window(" 2026-q1 ")[2] == "2026-Q1"
    assert parse_window(None, now=datetime(2026, 2, 10, tzinfo=UTC))[2] == "2025-Q4"
    assert parse_window("all") == (None, None, "all")
    assert parse_window("2026-01-05..2026-04-20")[2] == "2026-01-05_2026-04-20"
    spaced = parse_window("2026-01-05 .. 2026-04-20")
    assert spaced == (datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 4, 20, tzinfo=UTC), "2026-01-05_2026-04-20")
    assert parse_window("2026-01-05T12:00+02:00..2026-01-06")[2] == "2026-01-05T100000Z_2026-01-06"
    with pytest.raises(ValueError, match="Q1 to Q4"):
        parse_window("2026-Q5")
    # the complete ISO weeks before the current one (Wednesday 2026-04-22 -> ends Monday 2026-04-20)
    assert parse_window("last-13-weeks", now=datetime(2026, 4, 22, 15, tzinfo=UTC)) == (
        datetime(2026, 1, 19, tzinfo=UTC), datetime(2026, 4, 20, tzinfo=UTC), "2026-01-19_2026-04-20")
    with pytest.raises(ValueError, match="at least 1"):
        parse_window("last-0-weeks")


@pytest.mark.parametrize("window, says", [
    ("2026-04-20..2026-01-05", "is not before"),
    ("2026-01-05..2026-01-05", "is not before"),
    ("2026-01-05..soon", "ISO-8601"),
    ("..2026-01-05", "ISO-8601"),
    ("2026-01-05..2026-02-01..2026-03-01", "ISO-8601"),
])
def test_a_window_that_selects_nothing_is_refused_by_name(window, says):
    from tasks.windows import parse_window

    with pytest.raises(ValueError) as err:
        parse_window(window)
    assert window in str(err.value) and says in str(err.value)


def test_window_and_model_version_select_rows_but_keep_the_counts(tmp_path):
    rows = [row(i, ts=(T0 + timedelta(days=i)).isoformat()) for i in range(14)]  # 2026-01-05 .. 01-18
    path = write_lines(tmp_path / "w.jsonl", rows + ["broken"])
    since, until = iso_week_window("2026-W03")
    result = load_logs([path], LogsSettings(), since=since, until=until)
    check_invariant(result)
    assert (result.read, result.accepted, result.quarantined) == (15, 14, 1)
    assert result.selected == 7 and result.filtered_out == 7
    assert min(result.table.column("ts").to_pylist()) >= since and max(result.table.column("ts").to_pylist()) < until
    only_v2 = load_logs([path], LogsSettings(), since="2026-01-05", until="2026-01-12", model_version="v2")
    assert only_v2.table.column("model_version").to_pylist() == ["v2"] * 3
    with pytest.raises(ValueError, match="empty time window"):
        load_logs([path], LogsSettings(), since=until, until=since)


def test_rows_come_back_sorted_by_time(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", [row(5), row(1), row(3)])
    b = write_lines(tmp_path / "b.jsonl", [row(2), row(1, request_id="dup-time")])
    result = load_logs([a, b], LogsSettings())
    assert result.table.column("request_id").to_pylist() == ["req-1", "dup-time", "req-2", "req-3", "req-5"]


# ------------------------------------------------------------------------------------------ writer


def records(n: int, start: datetime) -> list[LogRecord]:
    return [LogRecord(request_id=f"w-{i}", ts=start + timedelta(hours=i), user_id="u", prompt=f"p{i}",
                      response="r", model_version="v1", metadata={"i": i}) for i in range(n)]


def test_log_writer_writes_one_jsonl_file_per_utc_day_and_appends(tmp_path):
    start = datetime(2026, 1, 5, 22, 0, tzinfo=UTC)
    with LogWriter(tmp_path / "logs") as writer:
        assert writer.append(records(3, start)) == 3  # 22:00, 23:00, 00:00 next day
        # a dict with an offset: 2026-01-06 01:30+02:00 is 2026-01-05 23:30 UTC
        writer.append([{"request_id": "d", "ts": "2026-01-06T01:30:00+02:00", "user_id": "u", "prompt": "p",
                        "response": "r", "model_version": "v1"}])
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["2026-01-05.jsonl", "2026-01-06.jsonl"]
    again = LogWriter(tmp_path / "logs")
    again.append(records(1, datetime(2026, 1, 6, 8, tzinfo=UTC)))
    assert again.close() == [tmp_path / "logs" / "2026-01-06.jsonl"]
    result = load_logs([tmp_path / "logs"], LogsSettings())
    check_invariant(result)
    assert result.quarantined == 0
    assert result.table.column("request_id").to_pylist() == ["w-0", "w-1", "d", "w-2", "w-0"]
    assert json.loads(result.table.column("metadata")[0].as_py()) == {"i": 0}


def test_log_writer_parquet_parts_round_trip(tmp_path):
    writer = LogWriter(tmp_path, fmt="parquet", rows_per_part=2)
    writer.append(records(2, datetime(2026, 1, 5, tzinfo=UTC)))  # reaches rows_per_part: a part now
    assert [p.name for p in tmp_path.iterdir()] == ["2026-01-05.part-00000.parquet"]
    writer.append(records(1, datetime(2026, 1, 5, 5, tzinfo=UTC)))  # buffered until close
    writer.append(records(1, datetime(2026, 1, 6, tzinfo=UTC)))
    files = writer.close()
    assert [p.name for p in files] == ["2026-01-05.part-00000.parquet", "2026-01-05.part-00001.parquet",
                                       "2026-01-06.part-00000.parquet"]
    assert pq.read_schema(files[0]).equals(LOG_SCHEMA)
    result = load_logs([tmp_path], LogsSettings())
    assert (result.accepted, result.quarantined) == (4, 0)
    assert result.table.column("request_id").to_pylist() == ["w-0", "w-1", "w-0", "w-0"]


def test_log_writer_is_thread_safe(tmp_path):
    writer = LogWriter(tmp_path)

    def work(k: int) -> None:
        for i in range(20):
            writer.append([LogRecord(request_id=f"{k}-{i}", ts=T0, user_id="u", prompt="p" * 500, response="r",
                                     model_version="v1")])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    result = load_logs([tmp_path], LogsSettings())
    assert (result.read, result.accepted) == (80, 80)


def test_log_writer_rejects_bad_records_without_quoting_them(tmp_path):
    writer = LogWriter(tmp_path)
    with pytest.raises(ValueError) as err:
        writer.append([{"request_id": "x", "ts": T0, "user_id": 12345678, "prompt": "secret-PII-text",
                        "response": "r", "model_version": "v"}])
    assert "user_id" in str(err.value) and "12345678" not in str(err.value) and "secret" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ sources


def test_resolve_sources_defaults_globs_and_errors(tmp_path):
    workspace = tmp_path / "ws"
    settings = LogsSettings()
    with pytest.raises(FileNotFoundError, match="logs.sources"):
        resolve_sources([], settings, workspace)
    logs_dir = workspace / "logs"
    write_lines(logs_dir / "2026-01-05.jsonl", [row(0)])
    write_lines(logs_dir / "quarantine.jsonl", [{"reason": "not_json"}])  # the default quarantine file
    (logs_dir / "notes.txt").write_text("not a log")
    assert resolve_sources([], settings, workspace) == [str(logs_dir / "2026-01-05.jsonl")]
    assert resolve_sources([], Settings(), workspace) == [str(logs_dir / "2026-01-05.jsonl")]
    assert resolve_sources([str(logs_dir / "*.jsonl")], settings, workspace) == [str(logs_dir / "2026-01-05.jsonl")]
    configured = LogsSettings(sources=[str(logs_dir / "2026-*.jsonl")])
    assert resolve_sources(None, configured, workspace) == [str(logs_dir / "2026-01-05.jsonl")]
    with pytest.raises(FileNotFoundError, match=r"2027-\*\.jsonl"):
        resolve_sources([str(logs_dir / "2027-*.jsonl")], settings, workspace)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        resolve_sources([str(tmp_path / "missing.jsonl")], settings, workspace)


def test_load_logs_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_logs([tmp_path / "nope.jsonl"], LogsSettings())


def test_object_storage_goes_through_fsspec():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    fs.pipe("/flywheel-test/logs/a.jsonl", ("\n".join(json.dumps(row(i)) for i in range(3)) + "\n").encode())
    sources = resolve_sources(["memory://flywheel-test/logs/*.jsonl"], LogsSettings(), "unused")
    assert len(sources) == 1 and sources[0].startswith("memory://") and sources[0].endswith("/flywheel-test/logs/a.jsonl")
    assert load_logs(sources, LogsSettings()).accepted == 3
    fs.rm("/flywheel-test", recursive=True)


# ------------------------------------------------------------------------------------------ stats


def test_log_stats(tmp_path):
    rows = [row(i, feedback=[1, -1, None][i % 3], ts=(T0 + timedelta(days=3 * i)).isoformat()) for i in range(4)]
    result = load_logs([write_lines(tmp_path / "s.jsonl", rows + ["{]"])], LogsSettings())
    stats = log_stats(result)
    assert stats["records"] == 4 and stats["users"] == 3
    assert stats["first_ts"].startswith("2026-01-05T10:00") and stats["last_ts"].startswith("2026-01-14")
    assert stats["by_model_version"] == {"v1": 2, "v2": 2}
    assert stats["by_week"] == {"2026-W02": 3, "2026-W03": 1}  # Jan 5, 8, 11 | Jan 14
    assert stats["feedback"] == {"up": 2, "down": 1, "none": 1}
    assert stats["quarantined"] == 1 and stats["reasons"] == {"not_json": 1}
    assert result.summary()["read"] == 5


def test_load_window_uses_the_workspace_defaults(tmp_path):
    settings = Settings(paths={"workspace": tmp_path / "ws"})
    write_lines(tmp_path / "ws" / "logs" / "2026-01-05.jsonl", [row(0), row(1), "oops"])
    result = logs_module.load_window(settings, None, since="2026-01-05T10:01:00Z")
    assert (result.read, result.quarantined, result.selected) == (3, 1, 1)
    assert result.quarantine_path == tmp_path / "ws" / "logs" / "quarantine.jsonl"
    assert quarantine_rows(result.quarantine_path)[0]["line"] == 3
    again = logs_module.load_window(settings)  # the quarantine file beside the logs is not read as logs
    assert again.read == 3


# ------------------------------------------------------------------------------------------ bad input (issue 13)


def test_timestamps_are_kept_to_the_years_the_store_can_represent(tmp_path):
    rows = [row(0, ts="0001-01-01T00:00:00Z"), row(1, ts="9999-12-31T23:59:59.999999Z"),
            row(2, ts="10000-01-01T00:00:00Z"), row(3, ts="0001-01-01T00:00:00+01:00"), row(4, ts="0000-06-01")]
    quarantine = tmp_path / "q.jsonl"
    result = load_logs([write_lines(tmp_path / "years.jsonl", rows)], LogsSettings(), quarantine=quarantine)
    check_invariant(result)
    assert result.reasons == {"bad_timestamp": 3}
    assert [e["line"] for e in quarantine_rows(quarantine)] == [3, 4, 5]
    assert all("years 1 to 9999" in e["message"] for e in quarantine_rows(quarantine))
    stats = log_stats(result)  # crashed on year 10000 before
    assert stats["first_ts"] == "0001-01-01T00:00:00.000000Z"  # ISO-8601, four-digit year
    assert stats["last_ts"] == "9999-12-31T23:59:59.999999Z"
    assert [r["ts"].year for r in result.table.to_pylist()] == [1, 9999]


def test_parquet_timestamps_beyond_year_9999_are_bad_timestamps(tmp_path):
    year_10000 = 253402300800 * 10**6  # microseconds since the epoch
    table = pa.table({
        "request_id": ["a", "b"], "ts": pa.array([1767607200 * 10**6, year_10000], pa.timestamp("us", tz="UTC")),
        "user_id": ["u", "u"], "prompt": ["p", "p"], "response": ["r", "r"], "model_version": ["v", "v"],
    })
    pq.write_table(table, tmp_path / "far.parquet")
    result = load_logs([tmp_path / "far.parquet"], LogsSettings())
    assert result.reasons == {"bad_timestamp": 1}
    assert log_stats(result)["last_ts"] == "2026-01-05T10:00:00.000000Z"


def test_iso_z_always_writes_four_digit_years():
    from tasks.windows import iso_z

    assert iso_z(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00.000000Z"
    assert iso_z(datetime(999, 12, 31, 23, 59, 59, 5, tzinfo=UTC)) == "0999-12-31T23:59:59.000005Z"
    assert iso_z(datetime(2026, 1, 5, 12, tzinfo=timezone(timedelta(hours=2)))) == "2026-01-05T10:00:00.000000Z"


def test_a_leap_second_is_the_last_moment_of_its_minute(tmp_path):
    leap = datetime(2016, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    rows = [row(0, ts="2016-12-31T23:59:60Z"), row(1, ts="2016-12-31T23:59:60.25Z"),
            row(2, ts="2017-01-01T00:59:60+01:00"), row(3, ts="2016-12-31 23:59:60"), row(4, ts="2016-12-31T23:59:61Z")]
    result = load_logs([write_lines(tmp_path / "leap.jsonl", rows)], LogsSettings())
    assert result.reasons == {"bad_timestamp": 1}  # :61 is no time at all
    assert [r["ts"] for r in result.table.to_pylist()] == [leap] * 4


def test_a_key_named_twice_keeps_its_first_value_everywhere(tmp_path):
    """The documented rule (tasks.logs): the first occurrence of a key wins, for every field, however the
    key is spelled, at the top level and in nested paths alike (Python's json keeps the last)."""
    base = '"ts": "2026-01-05T10:00:00Z", "user_id": "u", "response": "r", "model_version": "v"'
    lines = [
        '{"request_id": "r1", "prompt": "first", "prompt": "second", ' + base + "}",
        '{"request_id": "r2", "prompt": "first", "pr\\u006fmpt": "second", ' + base + "}",  # the same key, escaped
        '{"request_id": "r3", "feedback": -1, "prompt": "p", "feedback": null, ' + base + "}",
        '{"request_id": "r4", "latency_ms": 5, "prompt": "p", "latency_ms": "slow", ' + base + "}",
    ]
    result = load_logs([write_lines(tmp_path / "dup.jsonl", lines)], LogsSettings())
    assert result.quarantined == 0  # r4's second latency would be a wrong type: only the first is read
    rows = {r["request_id"]: r for r in result.table.to_pylist()}
    assert rows["r1"]["prompt"] == rows["r2"]["prompt"] == "first"
    assert rows["r3"]["feedback"] == -1 and rows["r4"]["latency_ms"] == 5.0
    chat = {"id": "c1", "created": 1767607200, "model": "m", "user": "u",
            "messages": [{"role": "user", "content": "hi"}], "choices": [{"message": {"content": "hello"}}]}
    line = json.dumps(chat)[:-1] + ', "usage": {"prompt_tokens": 3, "prompt_tokens": 9}, "user": "someone-else"}'
    loaded = load_logs([write_lines(tmp_path / "chat.jsonl", [line])], LogsSettings(preset="openai_chat"))
    (only,) = loaded.table.to_pylist()
    assert only["prompt_tokens"] == 3 and only["user_id"] == "u"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_latencies_that_are_not_finite_numbers_are_quarantined(tmp_path, literal):
    line = json.dumps(row(0)).replace('"latency_ms": 120.5', f'"latency_ms": {literal}')
    assert literal in line
    quarantine = tmp_path / "q.jsonl"
    result = load_logs([write_lines(tmp_path / "nan.jsonl", [row(1), line])], LogsSettings(), quarantine=quarantine)
    assert result.reasons == {"wrong_type": 1} and result.accepted == 1
    assert "latency_ms: expected a finite number" in quarantine_rows(quarantine)[0]["message"]


def _log_table(ids) -> pa.Table:
    """Rows as the LogWriter stores them in Parquet."""
    records = [LogRecord.model_validate(row(i)).model_dump() for i in ids]
    return pa.Table.from_pylist([{**r, "metadata": json.dumps(r["metadata"])} for r in records], schema=LOG_SCHEMA)


def test_parquet_latencies_that_are_not_finite_are_quarantined(tmp_path):
    table = _log_table(range(3))
    table = table.set_column(table.schema.get_field_index("latency_ms"), "latency_ms",
                             pa.array([float("nan"), float("inf"), 80.0], pa.float64()))
    pq.write_table(table, tmp_path / "nan.parquet")
    result = load_logs([tmp_path / "nan.parquet"], LogsSettings())
    assert result.reasons == {"wrong_type": 2}
    assert result.table.column("latency_ms").to_pylist() == [80.0]


def _folder_with_a_corrupt_file(tmp_path: Path, corrupt: str) -> Path:
    folder = tmp_path / "logs"
    write_lines(folder / "2026-01-05.jsonl", [row(0), row(1)])
    pq.write_table(_log_table((2, 3, 4)), folder / "2026-01-06.parquet")
    if corrupt == "parquet":
        whole = (folder / "2026-01-06.parquet").read_bytes()
        (folder / "2026-01-07.parquet").write_bytes(whole[: len(whole) // 2])  # cut off mid-write
    else:
        whole = gzip.compress(("\n".join(json.dumps(row(i)) for i in (5, 6)) + "\n").encode())
        (folder / "2026-01-07.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    return folder


@pytest.mark.parametrize("corrupt", ["parquet", "gzip"])
def test_a_corrupt_file_is_set_aside_and_the_rest_loads(tmp_path, corrupt):
    folder = _folder_with_a_corrupt_file(tmp_path, corrupt)
    bad_name = next(str(p) for p in folder.iterdir() if p.name.startswith("2026-01-07"))
    quarantine = tmp_path / "q.jsonl"
    result = load_logs([folder], LogsSettings(), quarantine=quarantine)
    check_invariant(result)
    assert (result.read, result.accepted) == (5, 5)
    assert [f["source"] for f in result.unreadable_files] == [bad_name]
    assert result.unreadable_files[0]["error"]
    assert result.summary()["unreadable_files"] == result.unreadable_files
    assert any(bad_name in warning for warning in result.warnings)
    entries = quarantine_rows(quarantine)
    assert [(e["source"], e["reason"], e["line"]) for e in entries] == [(bad_name, "unreadable_file", None)]
    assert log_stats(result)["unreadable_files"] == 1


def test_logs_validate_names_a_corrupt_file_and_strict_says_no(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    folder = _folder_with_a_corrupt_file(tmp_path, "parquet")
    done = CliRunner().invoke(app, ["logs", "validate", str(folder), "-w", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["accepted"] == 5 and summary["unreadable_files"][0]["source"].endswith("2026-01-07.parquet")
    strict = CliRunner().invoke(app, ["logs", "validate", str(folder), "-w", str(tmp_path), "--strict"])
    assert strict.exit_code == 1 and "unreadable files: " in strict.output and "2026-01-07.parquet" in strict.output

"""PII that really stays out (issue 13): the derived topic, the formats the masking used to miss, the
independent leak scan over every column, and no worker left behind when `mask` is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks import pii
from tasks.annotate import export_tasks
from tasks.config import ExtractSettings, PiiSettings, SignalsSettings
from tasks.contracts import CASE_SCHEMA, LOG_SCHEMA
from tasks.pii import pool
from tasks.pii.planted import KINDS, SCRIPT_NEGATIVES, planted_texts, script_name_texts
from tasks.pii.scan import DETECTORS, LeakScan

KEY = b"test-key-0123456789abcdef"
SETTINGS = PiiSettings(processes=1, batch_size=16)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def masker():
    return pool.cached_masker(SETTINGS.model_dump_json(), KEY)


def _case(case_id: str, prompt: str, topic: str | None, **extra) -> dict:
    from datetime import datetime, timezone

    return {"case_id": case_id, "request_id": f"req-01-{case_id}", "kinds": ["refusal"], "prompt": prompt,
            "response": "Sorry, I don't know.", "followup": None, "ts": datetime(2026, 1, 5, tzinfo=timezone.utc),
            "user_ref": "0123456789abcdef", "model_version": "v1", "topic": topic, **extra}


# --------------------------------------------------------------------------------------------------
# 1. The derived topic


def test_a_topic_taken_from_raw_text_never_reaches_the_masked_cases_or_the_annotators(tmp_path):
    cases = [
        _case("a1", "My name is Brian Quartermaine, where is my parcel?", "quartermaine"),
        _case("a2", "Does the warranty cover wireless charging?", "warranty"),
        _case("a3", "Refund to DE89 3704 0044 0532 0130 00 please", "3704"),
    ]
    pq.write_table(pa.Table.from_pylist(cases, schema=CASE_SCHEMA), tmp_path / "cases.parquet")
    audit = pii.mask_file(tmp_path / "cases.parquet", tmp_path / "masked.parquet", SETTINGS, key=KEY)
    masked = {r["case_id"]: r for r in pq.read_table(tmp_path / "masked.parquet").to_pylist()}
    assert "Quartermaine" not in masked["a1"]["prompt"]
    # the word that survived masking stays; the ones masked away become keyed pseudonyms
    assert masked["a2"]["topic"] == "warranty"
    assert masked["a1"]["topic"] == pii.pseudonym(KEY, "TOPIC", "quartermaine")
    assert masked["a3"]["topic"] == pii.pseudonym(KEY, "TOPIC", "3704")
    assert audit["leaks"] == 0
    export_tasks(tmp_path / "masked.parquet", tmp_path / "tasks.json", ["acceptable", "should_answer"])
    shown = (tmp_path / "tasks.json").read_text(encoding="utf-8")
    assert "uartermaine" not in shown and "3704" not in shown and "warranty" in shown


def test_the_extract_summary_names_no_topic(tmp_path):
    from datetime import datetime, timedelta, timezone

    from tasks.extract import extract_cases

    start = datetime(2026, 1, 5, tzinfo=timezone.utc)
    rows = [{"request_id": f"r{i}", "ts": start + timedelta(minutes=i), "user_id": f"u{i}", "session_id": None,
             "prompt": prompt, "response": "I'm sorry, I can't help with that.", "model_version": "v1",
             "latency_ms": None, "prompt_tokens": None, "completion_tokens": None, "feedback": None,
             "correction": None, "metadata": None}
            for i, prompt in enumerate(["My name is Brian Quartermaine, where is my parcel?", "Is the Zephyr waterproof?"])]
    summary = extract_cases(pa.Table.from_pylist(rows, schema=LOG_SCHEMA), SignalsSettings(), ExtractSettings(),
                            key=KEY, out_path=tmp_path / "cases.parquet")
    topics = {c["topic"] for c in pq.read_table(tmp_path / "cases.parquet").to_pylist()}
    name = topics & {"brian", "quartermaine"}
    assert name  # the raw cases file has the name as a topic (it holds the raw prompt too) ...
    assert name.pop() not in json.dumps(summary).lower()  # ... what is printed and logged does not
    assert summary["topics"] == 2 and summary["largest_topics"] == [1, 1]


# --------------------------------------------------------------------------------------------------
# 2. Formats the masking missed


def test_every_planted_hard_format_is_masked_by_the_recognizers_alone(masker):
    rows = planted_texts(n_per_kind=3, seed=5)
    assert {kind for _, _, kind in rows} == set(KINDS)
    outcomes = masker.mask_verified([text for text, _, _ in rows])
    left = [(kind, value) for (_, value, kind), (outcome, _) in zip(rows, outcomes) if outcome.text is None or value in outcome.text]
    assert left == []


@pytest.mark.parametrize(
    "text, raw",
    [
        ("Write to john at example dot com please", "john"),
        ("mail jane[at]example[dot]org asap", "jane"),
        ("my mail is jane%40example.org", "jane"),
        ("mail jo\u200bhn.doe@example.com today", "doe@"),
        ("Card 4111.1111.1111.1111 expired", "4111"),
        ("The router is 00:1A:2B:3C:4D:5E", "4D:5E"),
        ("psql postgres://admin:s3cretPass@db.internal:5432/prod", "s3cretPass"),
        ("password: hunter2Secret", "hunter2"),
        ("I was born on 12/03/1985.", "1985"),
        ("Call me on five five five one two three four five six seven", "four five six"),
        ("Ship to Feldstrasse 42, 10115 Berlin", "10115"),
        # partial leaks: what main left beside the pseudonym ("<PERSON_..> P Costa", "<LOCATION_..>1A 2AA")
        ("In case of my child's account, we need to add Ryan P Costa as guardian", "Costa"),
        ("I live at 10 Downing Street, London SW1A 2AA", "2AA"),
    ],
)
def test_formats_and_partial_leaks(masker, text, raw):
    (outcome, leaks), = masker.mask_verified([text])
    assert raw not in outcome.text and leaks == []


def test_names_in_korean_japanese_and_arabic_script_and_no_name_where_there_is_none(masker):
    rows = script_name_texts()
    outcomes = masker.mask_verified([text for text, _, _ in rows])
    missed = [text for (text, name, _), (outcome, _) in zip(rows, outcomes) if name in outcome.text]
    assert len(missed) <= len(rows) // 20, missed  # measured: 2 of 120 (a given name in hiragana)
    untouched = masker.mask_verified(SCRIPT_NEGATIVES)
    assert [outcome.text for outcome, _ in untouched] == SCRIPT_NEGATIVES


# --------------------------------------------------------------------------------------------------
# 3. The independent leak scan


def test_the_scan_counts_every_planted_value_it_is_shown():
    scan = LeakScan()
    for text, value, kind in planted_texts(n_per_kind=10, seed=3):
        start = text.index(value)
        hits = scan.hits(text)
        assert any(a <= start and start + len(value) <= b for a, b, _ in hits), (kind, text, hits)


def test_the_scan_leaves_pseudonyms_ids_and_plain_text_alone():
    scan = LeakScan()
    for text in [
        "Hello <PERSON_1a2b3c4d>, your <US_DRIVER_LICENSE_94d9e4c7> and <EMAIL_ADDRESS_c3c389b7> are noted.",
        "req-03-0000123 550e8400-e29b-41d4-a716-446655440000 at 2026-01-05 10:30:00",
        "Does the Aurora X2 support wireless charging? It costs $1,299.99 at amazon.com.",
        "Our store at 2026 prices: the aurora-x2-headphones-2024 page. 죄송합니다, 잘 모르겠습니다.",
    ]:
        assert scan.hits(text) == [], text


def test_the_scan_finds_short_phone_numbers_with_nothing_phone_like_around_them_but_not_dates():
    scan = LeakScan()
    for text, value in [("They're not answering at 78 651 450", "78 651 450"),
                        ("Phone: (99) 645-791", "(99) 645-791"),
                        ("Office\\,+41 (0)69 979 80 58-Fax", "+41 (0)69 979 80 58"),
                        ("mobile: 99 577450", "99 577450"),
                        ("reach me on +447700677662 today", "+447700677662"),
                        ("Office\\,3660170548-Fax", "3660170548")]:
        (start, end, name), = scan.hits(text)
        assert (text[start:end], name) == (value, "phone_shaped")
    for text in ["ordered 20.04.2026 and 2026-04-20 at 10:30:00", "3 items for $1,299.99", "version 3.11.7",
                 "the series ran from 1984-1995", "enter 38.249069 into the map"]:
        assert scan.hits(text) == [], text


def test_the_scan_reads_through_zero_width_and_full_width_characters():
    scan = LeakScan()
    for text, value in [("mail jo\u200bhn@exa\u200dmple.com", "jo\u200bhn@exa\u200dmple.com"),
                        ("mail ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ", "ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ"),
                        ("card ４１１１ １１１１ １１１１ １１１１", "４１１１ １１１１ １１１１ １１１１")]:
        (start, end, _), = scan.hits(text)
        assert text[start:end] == value


def test_what_the_scan_masks_a_second_scan_finds_nothing():
    scan = LeakScan()
    texts = [text for text, _, _ in planted_texts(n_per_kind=2, seed=9)] + [
        "Mr <PERSON_0e22d13e> Smith Jones wants a refund", "Send it to <LOCATION_1234abcd> SW1A 2AA, thanks"]
    for text in texts:
        hits = scan.hits(text)
        assert hits, text
        assert scan.hits(scan.mask(text, hits, KEY)) == [], text


def test_a_leak_the_recognizers_miss_is_masked_by_the_scan_in_every_column_and_counted(tmp_path):
    only_names = SETTINGS.model_copy(update={"entities": ["PERSON"]})  # the recognizers see no IBAN, no e-mail
    rows = [{"request_id": "r1", "prompt": "Refund to GB00 WEST 1234 5698 7654 32 please", "response": "OK",
             "note": {"by": "ana.ruiz@example.org"}, "case_id": "0123456789abcdef"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    audit = pii.mask_file(src, tmp_path / "out.jsonl", only_names, key=KEY)
    written = (tmp_path / "out.jsonl").read_text()
    assert "1234 5698" not in written and "ana.ruiz" not in written and "0123456789abcdef" in written
    assert audit["leaks"] == 2 and audit["leaks_masked"] == 2
    assert audit["leak_types"] == {"scan:email": 1, "scan:iban": 1}
    assert audit["scan"]["by_column"] == {"note": 1, "prompt": 1}

    failing = only_names.model_copy(update={"leak_scan": "fail"})
    with pytest.raises(pii.PiiLeakError) as caught:
        pii.mask_file(src, tmp_path / "out.jsonl", failing, key=KEY, audit_path=tmp_path / "audit.json")
    assert not (tmp_path / "out.jsonl").exists()
    assert json.loads((tmp_path / "audit.json").read_text())["leaks"] == 2
    assert "GB00" not in str(caught.value) and "ana.ruiz" not in str(caught.value)


def test_scan_detectors_are_configuration_checked_at_load():
    assert set(PiiSettings().leak_scan_detectors) == set(DETECTORS)
    with pytest.raises(ValueError, match="leak_scan_detectors"):
        PiiSettings(leak_scan_detectors=["email", "not_a_detector"])
    with pytest.raises(ValueError, match="leak_scan"):
        PiiSettings(leak_scan="ignore")


# --------------------------------------------------------------------------------------------------
# 10. Workers die with a killed parent


@pytest.mark.slow
def test_killing_mask_with_sigkill_leaves_no_worker_behind(tmp_path):
    import psutil

    src = tmp_path / "in.jsonl"
    texts = [f"Hi, I'm Ana Ruiz {i}, call +1 415 867 {i:04d} or mail ana{i}@example.org about order {i}." for i in range(4000)]
    src.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    script = textwrap.dedent("""
        import sys
        from pathlib import Path
        from tasks.config import PiiSettings
        from tasks.pii import mask_file
        mask_file(Path(sys.argv[1]), Path(sys.argv[2]), PiiSettings(processes=2, batch_size=8), key=b"k" * 32)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(src), str(tmp_path / "out.jsonl")], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    children: list[psutil.Process] = []
    while time.monotonic() < deadline and proc.poll() is None:
        children = parent.children(recursive=True)
        busy = [c for c in children if c.cpu_times().user > 2.0]  # workers that built their engines and work
        if len(children) >= 3 and len(busy) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(children) >= 3, "the masking never got its workers going"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(c) for c in children):
        time.sleep(0.2)
    assert not [c.pid for c in children if alive(c)], "workers (or the resource tracker) outlived the killed mask"

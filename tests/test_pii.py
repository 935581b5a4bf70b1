"""PII masking: every entity type, keyed pseudonyms, fail-closed, leak re-scan, keys, no network.

The engines (spaCy + Presidio) take seconds to build: one masker per module, built with sockets
blocked, serves every test; `mask_file` reuses it through the per-process cache.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import socket
import stat

import pytest

from tasks import pii
from tasks.config import PiiSettings
from tasks.pii import pool
from tasks.pii.masker import _outside_tokens
from tasks.pii.recognizers import _offline_email_recognizer

KEY = b"test-key-0123456789abcdef"
SETTINGS = PiiSettings(processes=1, batch_size=16)
TOKEN = r"<{}_[0-9a-f]{{8}}>"

SAMPLES = {
    "PERSON": ("My name is Brian Schmidt and I need help.", "Brian Schmidt"),
    "EMAIL_ADDRESS": ("You can email me at maria.lopez42@example.org today.", "maria.lopez42@example.org"),
    "PHONE_NUMBER": ("You can call me at (415) 867-5309 after six.", "867-5309"),
    "CREDIT_CARD": ("I paid with card 4111 1111 1111 1111 yesterday.", "4111 1111 1111 1111"),
    "IBAN_CODE": ("Please refund to my IBAN DE89 3704 0044 0532 0130 00.", "3704 0044 0532"),
    "IP_ADDRESS": ("I'm connecting from 84.17.201.33 right now.", "84.17.201.33"),
    "US_SSN": ("My social security number is 536-22-8745 if you need it.", "536-22-8745"),
    "US_DRIVER_LICENSE": ("My driver's license number is F162823540116.", "F162823540116"),
    "LOCATION": ("Please ship it to 4821 Maple Avenue, Springfield.", "Maple Avenue"),
    "ORDER_ID": ("It's about order ORD-4417029, it never arrived.", "4417029"),
    "ACCOUNT_NUMBER": ("My account number is 88120456 at your bank.", "88120456"),
    "API_KEY": ("My API key is sk-Tq3vX9bLm2Pz8RkW4nY7cJd5Hs1Ga6Ue.", "sk-Tq3vX9bLm2Pz8RkW4nY7cJd5Hs1Ga6Ue"),
    "PASSPORT": ("My passport number is C03005988, valid until 2030.", "C03005988"),
    "MAC_ADDRESS": ("The device's MAC is 00:1A:2B:3C:4D:5E.", "00:1A:2B:3C:4D:5E"),
    "CREDENTIAL": ("It connects with mysql://shop:Sup3rS3cret@10.0.0.5/orders", "Sup3rS3cret"),
    "DATE_OF_BIRTH": ("My date of birth is 14 March 1987, for the age check.", "14 March 1987"),
}


def _block_network(mp: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during PII masking")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket.socket, "connect_ex", refuse)
    mp.setattr(socket, "getaddrinfo", refuse)
    mp.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def masker():
    # Built, and first used on an e-mail (tldextract's suffix list), with the network unreachable.
    with pytest.MonkeyPatch.context() as mp:
        _block_network(mp)
        built = pool.cached_masker(SETTINGS.model_dump_json(), KEY)
        outcome = built.mask_texts(["Write to ana.ruiz@example.co.uk please."])[0]
    assert outcome.error is None and "ana.ruiz" not in outcome.text
    return built


# --------------------------------------------------------------------------------------------------
# Recognition


@pytest.mark.parametrize("entity", sorted(SAMPLES))
def test_each_configured_entity_type_is_masked(masker, entity):
    assert entity in SETTINGS.entities
    text, raw = SAMPLES[entity]
    outcome = masker.mask_texts([text])[0]
    assert outcome.error is None
    assert raw not in outcome.text
    assert outcome.entities.get(entity, 0) >= 1, outcome.entities
    assert re.search(TOKEN.format(entity), outcome.text)


@pytest.mark.parametrize(
    "text, raw, entity",
    [
        ("Where is ORD-1234567?", "ORD-1234567", "ORDER_ID"),
        ("Order number: A77-99120 was late", "A77-99120", "ORDER_ID"),
        ("Refund account 12345678 please", "12345678", "ACCOUNT_NUMBER"),
        ("Customer ID ACC-2024-88812 here", "ACC-2024-88812", "ACCOUNT_NUMBER"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "ghp_abcdefghijklmnopqrstuvwxyz0123456789", "API_KEY"),
        ("aws key AKIAIOSFODNN7EXAMPLE leaked", "AKIAIOSFODNN7EXAMPLE", "API_KEY"),
        ("the secret token is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "9f86d081884c7d659a2feaa0c55ad015", "API_KEY"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "eyJhbGciOiJIUzI1NiJ9", "API_KEY"),
    ],
)
def test_project_recognizers(masker, text, raw, entity):
    outcome = masker.mask_texts([text])[0]
    assert raw not in outcome.text
    assert entity in outcome.entities, outcome.entities


def test_allow_listed_product_names_and_plain_text_are_left_alone(masker):
    import copy

    allowing = copy.copy(masker)
    allowing._allow = pii.allow_pattern(["Pulse Band", "Aurora X2"])
    texts = ["What does the Pulse Band measure?", "Is the aurora x2 waterproof?", "How long is the warranty?"]
    assert [o.text for o in allowing.mask_texts(texts)] == texts


def test_a_hex_string_without_context_is_not_an_api_key(masker):
    text = "The build 9f86d081884c7d659a2feaa0c55ad015 passed."
    assert "API_KEY" not in masker.mask_texts([text])[0].entities


def test_unknown_entity_is_an_error_naming_it():
    with pytest.raises(ValueError, match="NOT_A_TYPE"):
        pii.build_masker(PiiSettings(entities=["PERSON", "NOT_A_TYPE"]), KEY)


# --------------------------------------------------------------------------------------------------
# Pseudonyms


def test_pseudonym_is_a_keyed_hmac_of_type_and_normalised_value():
    expected = hmac.new(KEY, b"PERSON\x1fbrian schmidt", hashlib.sha256).hexdigest()[:8]
    assert pii.pseudonym(KEY, "PERSON", "Brian  Schmidt") == f"<PERSON_{expected}>"
    assert pii.pseudonym(KEY, "PHONE_NUMBER", "(415) 867-5309") == pii.pseudonym(KEY, "PHONE_NUMBER", "415.867.5309")
    assert pii.pseudonym(KEY, "PERSON", "Ana") != pii.pseudonym(KEY, "LOCATION", "Ana")


def test_same_value_same_token_within_and_across_records_and_calls(masker):
    first = masker.mask_texts(
        ["My name is Brian Schmidt. Brian Schmidt again.", "Hello, this is Brian Schmidt speaking."]
    )
    later = masker.mask_texts(["Mr. Brian Schmidt called."])[0]
    token = pii.pseudonym(KEY, "PERSON", "Brian Schmidt")
    assert first[0].text.count(token) == 2
    assert token in first[1].text and token in later.text


def test_different_keys_give_different_tokens(masker):
    other = masker.with_key(b"another-key-9876543210")
    text = "Please write to maria.lopez42@example.org"
    a, b = masker.mask_texts([text])[0].text, other.mask_texts([text])[0].text
    assert a != b
    assert re.fullmatch(r"Please write to <EMAIL_ADDRESS_[0-9a-f]{8}>", b)


# --------------------------------------------------------------------------------------------------
# Fail closed


def _failing_recognizer():
    from presidio_analyzer import LocalRecognizer

    class Exploding(LocalRecognizer):
        def __init__(self):
            super().__init__(supported_entities=["PERSON"], name="Exploding")

        def load(self):
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            if "Zebulon" in text:
                raise RuntimeError(f"cannot analyse {text!r}")  # raw text in the message on purpose
            return []

    return Exploding()


@pytest.fixture
def failing_masker(masker, monkeypatch):
    import copy

    failing = copy.copy(masker)
    failing.recognizers = [*masker.recognizers, _failing_recognizer()]
    monkeypatch.setattr(pool, "cached_masker", lambda settings_json, key: failing)
    return failing


def test_a_record_whose_analysis_raises_is_dropped_with_the_type_only(failing_masker):
    outcomes = failing_masker.mask_texts(["Hi, I am Zebulon Quartermaine.", "My name is Brian Schmidt."])
    assert outcomes[0] == pii.MaskOutcome(None, {}, "RuntimeError")
    assert outcomes[1].text and "Brian" not in outcomes[1].text


def test_mask_file_drops_counts_and_never_writes_a_failing_record(failing_masker, tmp_path, caplog):
    src, out, audit = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "audit.json"
    rows = [
        {"request_id": "a", "prompt": "My name is Brian Schmidt.", "response": "Hello!"},
        {"request_id": "b", "prompt": "Call Zebulon Quartermaine at 415-867-5309.", "response": "Sure."},
        {"request_id": "c", "prompt": "What is the return policy?", "response": "30 days."},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.DEBUG):
        report = pii.mask_file(src, out, SETTINGS, key=KEY, audit_path=audit)
    assert (report["records"], report["masked_records"], report["dropped"]) == (3, 2, 1)
    assert report["drop_reasons"] == {"RuntimeError": 1}
    written = out.read_text()
    assert [json.loads(line)["request_id"] for line in written.splitlines()] == ["a", "c"]
    for leaked in ("Zebulon", "Quartermaine", "867-5309", "Brian Schmidt"):
        assert leaked not in written
        assert leaked not in audit.read_text()
        assert leaked not in caplog.text
    assert json.loads(audit.read_text())["dropped"] == 1


def test_a_field_that_is_not_text_drops_its_record(masker, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": 1, "prompt": ["My name is Brian Schmidt"]}, {"id": 2, "prompt": None}, {"id": 3, "prompt": "Hi"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = pii.mask_file(src, out, SETTINGS, key=KEY)
    assert report["dropped"] == 1 and report["drop_reasons"] == {"NonTextField": 1}
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [2, 3]


# --------------------------------------------------------------------------------------------------
# Re-scan


def test_leaks_found_by_the_rescan_fail_the_stage_after_the_audit(masker, monkeypatch, tmp_path):
    broken = masker.with_key(KEY)
    broken.anonymize = lambda text, results: text  # an anonymizer that silently does nothing
    monkeypatch.setattr(pool, "cached_masker", lambda settings_json, key: broken)
    src, out, audit = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "audit.json"
    src.write_text(json.dumps({"prompt": "My SSN is 536-22-8745, email maria.lopez42@example.org"}) + "\n")
    out.write_text("stale output from an earlier run\n")
    with pytest.raises(pii.PiiLeakError) as caught:
        pii.mask_file(src, out, SETTINGS, key=KEY, audit_path=audit)
    report = json.loads(audit.read_text())
    assert report["leaks"] >= 2 and {"US_SSN", "EMAIL_ADDRESS"} <= set(report["leak_types"])
    assert not out.exists()
    assert "536-22" not in str(caught.value) and "maria" not in str(caught.value)


def test_rescan_ignores_pseudonyms_but_not_text_next_to_them(masker):
    token = pii.pseudonym(KEY, "PERSON", "x")
    assert masker.find_leaks([f"Hello {token}, how are you?"]) == [[]]
    spans = _outside_tokens(f"{token[:-1]}> 24743", 0, len(token) + 6, "PERSON", [(0, len(token))])
    assert spans == [(len(token) + 1, len(token) + 6, "PERSON")]


def test_mask_verified_masks_what_the_rescan_finds(masker):
    (outcome, leaks), = masker.mask_verified(["They had 6: Romi, Erik, Amy, Nathaniel, Donald and Kristen."])
    assert leaks == []
    assert not any(name in outcome.text for name in ("Erik", "Nathaniel", "Donald", "Kristen"))


# --------------------------------------------------------------------------------------------------
# Files


def test_mask_file_jsonl_and_parquet_round_trip(masker, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"case_id": "1", "prompt": "I'm Brian Schmidt, card 4111 1111 1111 1111.", "response": "Thanks Brian.", "followup": None},
        {"case_id": "2", "prompt": "Is the warranty two years?", "response": "Yes.", "followup": "Thanks!"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "cases.parquet")
    report = pii.mask_file(tmp_path / "cases.parquet", tmp_path / "masked.parquet", SETTINGS, key=KEY)
    for key in ("records", "masked_records", "dropped", "entities", "leaks", "leak_types", "docs_per_s", "seconds"):
        assert key in report
    assert report["records"] == report["masked_records"] == 2 and report["leaks"] == 0
    assert report["entities"]["PERSON"] >= 2 and report["entities"]["CREDIT_CARD"] == 1
    masked = pq.read_table(tmp_path / "masked.parquet").to_pylist()
    assert masked[1] == rows[1]
    assert "Brian" not in masked[0]["prompt"] + masked[0]["response"] and masked[0]["case_id"] == "1"
    assert pq.read_schema(tmp_path / "masked.parquet") == pq.read_schema(tmp_path / "cases.parquet")

    pii.mask_file(tmp_path / "cases.parquet", tmp_path / "masked.jsonl", SETTINGS, key=KEY, fields=["prompt"])
    lines = [json.loads(x) for x in (tmp_path / "masked.jsonl").read_text().splitlines()]
    assert lines[0]["response"] == "Thanks Brian." and "Brian" not in lines[0]["prompt"]


def test_masking_logs_counts_never_text(masker, caplog, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"prompt": "My IBAN is GB82 WEST 1234 5698 7654 32, I'm Ana Ruiz"}) + "\n")
    with caplog.at_level(logging.DEBUG):
        pii.mask_file(src, tmp_path / "out.jsonl", SETTINGS, key=KEY)
    assert "GB82" not in caplog.text and "Ana Ruiz" not in caplog.text


# --------------------------------------------------------------------------------------------------
# Keys and network


def test_missing_key_refuses_and_says_how_to_set_it(monkeypatch, tmp_path):
    monkeypatch.delenv("FLYWHEEL_PII_KEY", raising=False)
    with pytest.raises(pii.PiiKeyError, match="FLYWHEEL_PII_KEY"):
        pii.load_pii_key(PiiSettings(), workspace=tmp_path)
    assert not (tmp_path / pii.KEY_FILE).exists()
    monkeypatch.setenv("FLYWHEEL_PII_KEY", "short")
    with pytest.raises(pii.PiiKeyError, match="too short"):
        pii.load_pii_key(PiiSettings())
    monkeypatch.setenv("FLYWHEEL_PII_KEY", "a-long-enough-production-secret")
    assert pii.load_pii_key(PiiSettings()) == b"a-long-enough-production-secret"


def test_demo_key_file_is_created_once_private_and_reused(monkeypatch, tmp_path):
    monkeypatch.delenv("FLYWHEEL_PII_KEY", raising=False)
    demo = PiiSettings(require_key=False)
    first = pii.load_pii_key(demo, workspace=tmp_path, create=True)
    path = tmp_path / pii.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pii.load_pii_key(demo, workspace=tmp_path, create=True) == first and len(first) >= 32
    os.chmod(path, 0o644)
    with pytest.raises(pii.PiiKeyError, match="chmod 600"):
        pii.load_pii_key(demo, workspace=tmp_path, create=True)


def test_masking_needs_no_network(masker, monkeypatch):
    _block_network(monkeypatch)
    recognizer = _offline_email_recognizer()  # a fresh suffix-list extractor
    assert recognizer.validate_result("someone@mail.example.co.uk")
    outcomes = masker.mask_texts([SAMPLES[e][0] for e in sorted(SAMPLES)])
    assert all(o.error is None for o in outcomes)


# --------------------------------------------------------------------------------------------------
# Evaluation and processes


def test_evaluate_pii_reports_scores_on_a_span_labelled_set(masker, tmp_path):
    text = "My name is Brian Schmidt and my email is brian@example.org"
    sample = {
        "full_text": text,
        "spans": [
            {"entity_type": "PERSON", "entity_value": "Brian Schmidt", "start_position": 11, "end_position": 24},
            {"entity_type": "EMAIL_ADDRESS", "entity_value": "brian@example.org", "start_position": 41, "end_position": 58},
            {"entity_type": "TITLE", "entity_value": "x", "start_position": 0, "end_position": 2},
        ],
    }
    path = tmp_path / "set.json"
    path.write_text(json.dumps([sample, {"full_text": "Nothing here.", "spans": []}]))
    report = pii.evaluate_pii(path, SETTINGS)
    assert report["recall"] == 1.0 and report["f2"] > 0.9
    assert set(report["per_entity"]) == {"PERSON", "EMAIL_ADDRESS"}
    assert report["unscored_dataset_types"] == ["TITLE"] and report["docs"] == 2 and report["docs_per_s"] > 0


@pytest.mark.slow
def test_two_worker_processes_give_the_same_output_as_one(tmp_path):
    texts = [SAMPLES[e][0] for e in sorted(SAMPLES)] * 3
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    one = pii.mask_file(src, tmp_path / "one.jsonl", SETTINGS, key=KEY)
    two = pii.mask_file(src, tmp_path / "two.jsonl", SETTINGS.model_copy(update={"processes": 2, "batch_size": 4}), key=KEY)
    assert (tmp_path / "one.jsonl").read_text() == (tmp_path / "two.jsonl").read_text()
    assert one["entities"] == two["entities"] and two["processes"] == 2

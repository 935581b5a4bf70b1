"""PII masking's shortcuts change nothing but the time it takes.

Every shortcut in tasks/pii/ (most in tasks/pii/_engine.py) is checked against the slow path it replaces, on hand-written texts
and on seeded random texts made of PII-like fragments: cheap preconditions (gates) never skip a
text the recognizer would find something in; phone numbers are found in windows as in the whole
text; the lean pattern loop gives Presidio's results; context keywords are Presidio's; repeated
texts get the result of their first copy.
"""

from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from tasks import pii
from tasks.config import PiiSettings
from tasks.pii import _engine, recognizers
from tasks.pii.masker import _whole_word_mentions
from tasks.pii.pool import cached_masker

KEY = b"test-key-0123456789abcdef"
SETTINGS = PiiSettings(processes=1, batch_size=16)

HANDWRITTEN = [
    "My name is Brian Schmidt and I need help.",
    "You can email me at maria.lopez42@example.org today.",
    "You can call me at (415) 867-5309 after six, or +44 20 7946 0958.",
    "Call +1 - (415) - 867 - 5309 or 415 867 5309 ext. 1234 or 415-867-5309;ext=12, desk 415.867.5309 #77.",
    "Call me at 1640 today, or 01640, or (0)30 123, or +49 1640.",
    "I paid with card 4111 1111 1111 1111 yesterday; the other one is 5555-5555-5555-4444.",
    "Please refund to my IBAN DE89 3704 0044 0532 0130 00 or gb82west12345698765432.",
    "I'm connecting from 84.17.201.33, the server is 2001:db8::ff00:42:8329 or fe80::1 or ::ffff:10.0.0.1 or ::",
    "My social security number is 536-22-8745, or 536 22 8745, or 536228745, or 53622-8745.",
    "My driver's license number is F162823540116; DL# A1234567; permit ]12345 and x9y8.",
    "my driver's license number is 2270-66-1551",
    "Please ship it to 4821 Maple Avenue, Springfield, and to Feldstrasse 42, 10115 Berlin.",
    "It's about order ORD-4417029 and PO-88231 and order number: A77-99120, ticket AB-123456.",
    "My account number is 88120456, customer ID ACC-2024-88812, a/c 1234 5678 90.",
    "My API key is sk-Tq3vX9bLm2Pz8RkW4nY7cJd5Hs1Ga6Ue and the secret token 9f86d081884c7d659a2feaa0c55ad015.",
    "token ghp_abcdefghijklmnopqrstuvwxyz0123456789, AKIAIOSFODNN7EXAMPLE, xoxb-1234567890-abcdef",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    "The hex deadbeefdeadbeefdeadbeefdeadbeef has no digit; dGhpcyBpcyBhIHRlc3Qgc3RyaW5nMTIz is base64.",
    "Sarah: \"Hello there\"\nTom lives in Lisbon. Dear Mrs. Okafor, regards, Li Wei",
    "Phone: 030 1234:56 at 10:45, then 2019-12-01 and 12/25/2020.",
    "What is the return policy for laptops?",
    # tasks/pii/formats.py
    "Mail john at example dot com, jane[at]example[dot]org or jdoe at mail.example.com (email).",
    "Cards 4111.1111.1111.1111, 6011 1111 1111 1111 117, 378282246310005; IBAN GB00 WEST 1234 5698 7654 32.",
    "SSN XXX-XX-1234 or 000-12-3456; passport number X12345678; MAC 00:1A:2B:3C:4D:5E or 0011.2233.4455.",
    "postgres://admin:s3cret@db:5432 and password: hunter2, my password is Tr0ub4dor; born on 12/03/1985.",
    "Call five five five, one two three, four five six seven.",
    "제 이름은 김민준입니다. 박지훈 고객님. 私の名前は山田太郎です。田中様。اسمي محمد عبد الله. My name is 이서연.",
    "",
]

FRAGMENTS = [
    "My", "name", "is", "Ana", "Ruiz", "call", "Tel", "at", "lives", "in", "Mr.", "Name:", "Sarah:", "the",
    "+1 415 867 5309", "(415) 867-5309", "415.867.5309", "1640", "01640", "+49 30 901820", "x", "ext. 12", "#5",
    "4111 1111 1111 1111", "4111-1111-1111-1111", "1 2 3 4 5 6 7 8 9 0 1 2", "DE89 3704 0044 0532 0130 00",
    "de89370400440532013000", "fe80::1", "::", "::1", "2001:db8::1", "192.168.0.1", "10.0", "a1", "1a", "]12",
    "A1B2C3", "F162823540116", "123456", "536-22-8745", "123 45 6789", "123456789", "12345-6789", "123-456789",
    "ORD-1234567", "order", "AB-1234", "ACC-123456", "account", "a/c", "12345678", "customer",
    "sk-Tq3vX9bLm2Pz8RkW4nY7cJd5", "ghp_abcdefghijklmnopqrstu", "AKIAIOSFODNN7EXAMPLE", "xoxb-1234567890",
    "AIzaSyA1234567890abcdefghijklmnopqrstuv", "sk_live_abcdefghijklmnop", "eyJabcdefgh.eyJabcdefgh.abcdefghij",
    "Bearer", "abcdefghijklmnopqrstuvwxyz012", "deadbeefdeadbeefdeadbeefdeadbeef", "ana@example.org", "@",
    "Main Street", "12 Main St", "Feldstrasse 42", "Hafnarstraeti 5", "Apt 4", "Box 12", "PO Box 7", "zip 10115",
    "driver's license", "license number", "DL#", ":", ",", ".", "-", "/", "(", ")", "12", "7", "2020", "12:45",
    "at", "dot", "[at]", "(dot)", "example", "com", "4111.1111.1111.1111", "1234 5678 9012 345", "GB00 WEST 1234 5698",
    "XXX-XX-1234", "passport", "X12345678", "00:1A:2B:3C:4D:5E", "0011.2233.4455", "postgres://u:p4ss@h",
    "password", "password is", "hunter2", "born", "DOB", "12/03/1985", "3 May 1985", "five", "one two three four",
    "이름은", "김민준", "고객님", "名前は", "山田太郎", "さん", "اسمي", "محمد",
]


def _random_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    joiners = [" ", " ", " ", "", ", ", "\n", "-", ":", "."]
    texts = []
    for _ in range(count):
        parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 9))]
        text = parts[0]
        for part in parts[1:]:
            text += rng.choice(joiners) + part
        texts.append(text)
    return texts


CORPUS = HANDWRITTEN + _random_texts(seed=11, count=1500)


@pytest.fixture(scope="module")
def masker():
    return cached_masker(SETTINGS.model_dump_json(), KEY)


def _ungated(step, masker, text):
    """What the recognizer of `step` finds in `text` when nothing is skipped."""
    if step.patterns is not None:
        return _engine._match_patterns(step.recognizer, step.patterns, text)
    return step.recognizer.analyze(text, masker._analyze_entities, None)


def _spans(results):
    return sorted((r.entity_type, r.start, r.end, round(r.score, 6)) for r in results)


# --------------------------------------------------------------------------------------------------
# Gates


def test_a_gate_never_skips_a_text_its_recognizer_finds_something_in(masker):
    gated = [step for step in masker._steps() if step.gate is not None]
    assert {step.recognizer.name for step in gated} >= {
        "IpRecognizer", "UsLicenseRecognizer", "IbanRecognizer", "ApiKeyRecognizer", "UsSsnRecognizer",
        "CreditCardRecognizer", "InternationalPhoneRecognizer", "OrderIdRecognizer", "AccountNumberRecognizer",
    }
    for step in gated:
        gate = _engine._GATES[step.gate]
        found_somewhere = False
        for text in CORPUS:
            found = _ungated(step, masker, text)
            found_somewhere = found_somewhere or bool(found)
            assert not found or gate.search(text), (step.recognizer.name, step.gate, text)
        # The corpus holds something for every recognizer: the check above is not vacuous.
        assert found_somewhere, step.recognizer.name


def test_gated_analysis_equals_ungated_analysis(masker, monkeypatch):
    texts = HANDWRITTEN + _random_texts(seed=12, count=300)
    gated = masker.analyze_texts(texts)
    monkeypatch.setattr(_engine, "_GATES", {name: re.compile("") for name in _engine._GATES})  # every gate passes
    ungated = masker.analyze_texts(texts)
    assert [_spans(r) for r in gated] == [_spans(r) for r in ungated]


def test_address_and_name_cue_gates_change_nothing(monkeypatch):
    texts = HANDWRITTEN + _random_texts(seed=13, count=800)
    person = recognizers._recognizer_classes().PersonCueRecognizer()
    with_gates = [(recognizers.find_addresses(t), _spans(person.analyze(t, ["PERSON"]))) for t in texts]
    cores, extension, junction, corner, _ = recognizers._address_patterns()
    monkeypatch.setattr(recognizers, "_address_patterns", lambda: (cores, extension, junction, corner, {}))
    monkeypatch.setattr(type(person), "NEEDS", {})
    without = [(recognizers.find_addresses(t), _spans(person.analyze(t, ["PERSON"]))) for t in texts]
    assert with_gates == without
    assert any(addresses for addresses, _ in with_gates) and any(names for _, names in with_gates)


# --------------------------------------------------------------------------------------------------
# Phone numbers


def _phone_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    separators = [" ", "-", ".", "/", "(", ")", " - ", "  ", "+", "x", " ext. ", ", ", ":", "\n", " (0)", "+49 ",
                  "+1 ", "00", " x ", "#", ";ext=", " and ", "/ "]
    words = ["call", "at", "Tel", "ab", "on", "in", "Main St", "born", "Nr."]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 10)):
            roll = rng.random()
            if roll < 0.5:
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 6))))
            elif roll < 0.85:
                parts.append(rng.choice(separators))
            else:
                parts.append(f" {rng.choice(words)} ")
        texts.append("".join(parts))
    return texts


def test_phone_windows_find_every_number_the_whole_text_gives():
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    whole, windows = PhoneRecognizer(), recognizers._phone_recognizer()
    texts = HANDWRITTEN + _phone_texts(seed=5, count=1000)
    numbers = 0
    for text in texts:
        expected = sorted((r.start, r.end) for r in whole.analyze(text, ["PHONE_NUMBER"]))
        assert sorted((r.start, r.end) for r in windows.analyze(text, ["PHONE_NUMBER"])) == expected, text
        numbers += len(expected)
    assert numbers > 100  # the texts hold many numbers, short and long, with extensions


def test_phone_numbers_with_extensions_and_spread_out_digits_are_masked_whole(masker):
    for text, raw in [
        ("Call +1 - (415) - 867 - 5309 now", "5309"),
        ("phone 415 867 5309 x123", "x123"),
        ("Reach me at 415 867 5309 extension 1234.", "1234"),
    ]:
        outcome = masker.mask_texts([text])[0]
        assert outcome.error is None and raw not in outcome.text, outcome.text


def test_only_the_short_number_regions_have_valid_numbers_under_seven_digits():
    import phonenumbers

    recognizer = recognizers._phone_recognizer()
    short = set(recognizer.short_numbers.supported_regions)
    others = [r for r in recognizer.supported_regions if r not in short]
    rng = random.Random(3)
    candidates = ["".join(p) for p in itertools.product("0123456789", repeat=4)]
    candidates += ["".join(rng.choice("0123456789") for _ in range(n)) for n in (5, 6) for _ in range(3000)]
    for digits in candidates:
        for region in others:
            try:
                number = phonenumbers.parse(digits, region)
            except phonenumbers.NumberParseException:
                continue
            assert not phonenumbers.is_valid_number(number), (digits, region)


def test_phone_results_carry_the_gated_recognizers_name():
    recognizer = recognizers._phone_recognizer()
    for text in ("Call me at 1640 today.", "call +1 415 867 5309"):
        (result,) = recognizer.analyze(text, ["PHONE_NUMBER"])
        assert result.recognition_metadata["recognizer_name"] == recognizer.name


# --------------------------------------------------------------------------------------------------
# Presidio's logic, done cheaper


def test_lean_pattern_loop_gives_presidios_results(masker):
    lean = [step for step in masker._steps() if step.patterns is not None]
    assert len(lean) >= 10
    for step in lean:
        for text in CORPUS:
            presidio = step.recognizer.analyze(text, masker._analyze_entities, None)
            assert _spans(_engine._match_patterns(step.recognizer, step.patterns, text)) == _spans(presidio), (
                step.recognizer.name, text,
            )


def test_context_keywords_are_presidios(masker):
    from presidio_analyzer.nlp_engine import NlpArtifacts

    texts = HANDWRITTEN + _random_texts(seed=14, count=200)
    for doc, text in zip(masker._docs(texts), texts):
        artifacts = masker.nlp_engine._doc_to_nlp_artifact(doc, _engine.LANGUAGE)
        assert artifacts.tokens_indices == [t.idx for t in doc]
        assert artifacts.lemmas == [t.lower_ for t in doc]
        keywords = set(NlpArtifacts.set_keywords(masker.nlp_engine, [t.lower_ for t in doc], _engine.LANGUAGE))
        assert [artifacts.is_keyword(lemma) for lemma in artifacts.lemmas] == [
            lemma in keywords for lemma in artifacts.lemmas
        ], text


def test_other_mentions_are_found_as_the_alternation_regex_finds_them():
    rng = random.Random(7)
    words = ["Ana", "Ana Ruiz", "Ruiz", "Anabel", "Rui", "Lisbon", "Lis", "Ana_", "Bo"]
    for _ in range(500):
        text = "".join(rng.choice(words + [" ", ", ", "_", "-", "é", "1", "  "]) for _ in range(rng.randint(1, 12)))
        values = {rng.choice(words) for _ in range(rng.randint(1, 4))}
        alternation = re.compile(
            r"(?<!\w)(?:" + "|".join(re.escape(v) for v in sorted(values, key=len, reverse=True)) + r")(?!\w)"
        )
        expected = [(m.start(), m.end(), m.group()) for m in alternation.finditer(text)]
        assert _whole_word_mentions(text, values) == expected, (text, values)


def test_a_regex_time_out_drops_the_record(masker, monkeypatch):
    monkeypatch.setattr(_engine, "_REGEX_TIMEOUT_SECONDS", 1e-9)
    text = "call 4111 1111 1111 1111 " + "1 2 3 4 " * 20
    outcome = masker.mask_texts([text])[0]
    assert outcome == pii.MaskOutcome(None, {}, "TimeoutError")


# --------------------------------------------------------------------------------------------------
# Repeated texts, driver's licences, addresses, the held-out half


_SEEN: list[str] = []


def _record_shard(texts, settings_json, key):
    _SEEN.extend(texts)
    return [{"text": text.upper()} for text in texts]


def test_each_distinct_text_is_handled_once_and_every_copy_gets_its_result():
    _SEEN.clear()
    texts = ["b", "a", "b", "c", "a", "b"]
    with pii.ShardPool(SETTINGS, KEY, size=len(texts)) as pool:
        results = pool.map(_record_shard, texts)
    assert sorted(_SEEN) == ["a", "b", "c"]
    assert [r["text"] for r in results] == ["B", "A", "B", "C", "A", "B"]
    assert pool.distinct_texts == 3
    results[0]["text"] = "changed"
    assert results[2]["text"] == "B"  # copies are separate dicts


def test_mask_file_gives_repeated_texts_the_same_masking(tmp_path):
    rows = [{"prompt": "My name is Brian Schmidt."}, {"prompt": "Hi"}, {"prompt": "My name is Brian Schmidt."}]
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    audit = pii.mask_file(src, out, SETTINGS, key=KEY)
    masked = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert masked[0] == masked[2] and "Brian" not in masked[0]
    assert (audit["texts"], audit["distinct_texts"]) == (3, 2)
    assert audit["entities"]["PERSON"] == 2  # counted per record, not per distinct text


@pytest.mark.parametrize(
    "text, number",
    [
        ("my driver's license number is 2270-66-1551", "2270-66-1551"),
        ("My driver's license number is 6940579", "6940579"),
        ("Driver’s license: D123-4567-8901, thanks", "D123-4567-8901"),
        ("DL# F1628235 expires soon", "F1628235"),
        ("driving permit no. 12345678", "12345678"),
    ],
)
def test_a_number_after_the_words_drivers_license_is_one(masker, text, number):
    results = masker.analyze_texts([text])[0]
    assert ("US_DRIVER_LICENSE", number) in [(r.entity_type, text[r.start : r.end]) for r in results]


def test_drivers_license_words_without_a_number_find_nothing(masker):
    for text in ("I have a drivers license and 3 cars", "My driver's license is valid until next year."):
        assert "US_DRIVER_LICENSE" not in masker.mask_texts([text])[0].entities


def test_a_street_line_keeps_its_score_after_a_street_name_without_a_number():
    text = "We met on Herceg Gateway. Ship it to 12 Main Street please."
    spans = {text[a:b]: score for a, b, _, score in recognizers.find_addresses(text)}
    assert [score for value, score in spans.items() if "Herceg Gateway" in value] == [0.3]
    assert [score for value, score in spans.items() if "12 Main Street" in value] == [0.6]


def test_dataset_halves_are_fixed_by_template_and_about_even():
    a = pii.dataset_half({"template_id": 41, "full_text": "one text"})
    assert a == pii.dataset_half({"template_id": 41, "full_text": "another text"})
    halves = [pii.dataset_half({"template_id": i, "full_text": ""}) for i in range(400)]
    assert set(halves) == set(pii.HALVES) and 0.4 < halves.count("held-out") / len(halves) < 0.6
    no_template = [pii.dataset_half({"full_text": f"text {i}"}) for i in range(400)]
    assert 0.4 < no_template.count("held-out") / len(no_template) < 0.6


def test_evaluation_reports_both_halves(tmp_path):
    samples = [
        {"full_text": f"My name is Brian Schmidt {i}.", "template_id": i,
         "spans": [{"entity_type": "PERSON", "entity_value": "Brian Schmidt", "start_position": 11, "end_position": 24}]}
        for i in range(6)
    ]
    path = tmp_path / "set.json"
    path.write_text(json.dumps(samples))
    report = pii.evaluate_pii(path, SETTINGS)
    assert set(report["halves"]) == set(pii.HALVES)
    assert sum(h["docs"] for h in report["halves"].values()) == 6
    assert all(h["recall"] == 1.0 for h in report["halves"].values() if h["docs"])

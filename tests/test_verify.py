"""Documentation-grounded verification: docs and their versions, retrieval, the claim checker, the LLM judge
(against a real HTTP server in its own process), and the unsupported-answer signal."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.config import SHIPPED_DATA, load_settings
from tasks.contracts import LOG_SCHEMA
from tasks.docs import DocsError, load_docs
from tasks.knowledge import load_knowledge_base
from tasks.verify import (
    ClaimChecker,
    JudgeLedger,
    LLMJudge,
    gather_evidence,
    parse_judgement,
    rate_summary,
    unsupported_signal,
    verify_answers,
)

KB = load_knowledge_base(SHIPPED_DATA, "v2")
ANSWER = {t.id: t.answer for t in KB.topics}
REFUSAL = "I'm sorry, I don't know about that."


@pytest.fixture()
def settings(tmp_path: Path):
    return load_settings(None, {"paths.workspace": str(tmp_path / "ws")})


def test_the_embedded_docs_are_v1_before_the_launch_and_v2_from_its_first_day(settings) -> None:
    docs = load_docs(settings)  # simulate: 2026-01-05, launch week 7 -> 2026-02-16
    before = docs.at(datetime(2026, 2, 16, tzinfo=timezone.utc))  # a window ending as the launch starts
    after = docs.at(datetime(2026, 2, 23, tzinfo=timezone.utc))
    assert not any("Helix Fold" in s.title for s in before.snippets)
    assert any("Helix Fold" in s.title for s in after.snippets) and len(after) == len(KB.topics)
    assert docs.at(None) is after and docs.label(None) == "in force from 2026-02-16"
    hits = after.retrieve(["How much does the Helix Fold cost?"], k=1)[0]
    assert hits[0][0].doc_id == "kb:product_helix_fold"


def test_docs_from_markdown_text_and_json_with_dated_versions(tmp_path: Path, settings) -> None:
    root = tmp_path / "docs"
    (root / "2026-01-01").mkdir(parents=True)
    (root / "2026-03-01").mkdir()
    (root / "contact.txt").write_text("Support answers email within 24 hours.\n\nCall us on weekdays.", encoding="utf-8")
    (root / "2026-01-01" / "lamp.md").write_text("# Lumo lamp\n\nThe Lumo lamp costs $25.\n", encoding="utf-8")
    (root / "2026-03-01" / "lamp.md").write_text("# Lumo lamp\n\nThe Lumo lamp costs $29.\n\n## Warranty\n\nTwo years.",
                                                 encoding="utf-8")
    (root / "2026-03-01" / "pages.json").write_text(json.dumps(
        {"documents": [{"title": "Lumo bulb", "text": "A spare bulb costs $5."}]}), encoding="utf-8")
    settings.docs.sources = [str(root)]
    docs = load_docs(settings)
    january = docs.at(datetime(2026, 2, 1, tzinfo=timezone.utc))
    march = docs.at(None)
    assert {s.text for s in january.snippets} == {"Support answers email within 24 hours.", "Call us on weekdays.",
                                                  "The Lumo lamp costs $25."}
    assert "The Lumo lamp costs $29." in {s.text for s in march.snippets}
    assert "Warranty: Two years." in {s.text for s in march.snippets}
    assert {s.title for s in march.snippets} >= {"Lumo lamp", "Lumo bulb", "contact"}
    checker = ClaimChecker(settings.verify)
    ask = "How much is the Lumo lamp?"
    assert checker.check(ask, "The Lumo lamp costs $25.", gather_evidence(january, [ask], settings.verify)[0]).label == "supported"
    stale = checker.check(ask, "The Lumo lamp costs $25.", gather_evidence(march, [ask], settings.verify)[0])
    assert stale.unsupported and stale.claims[0] == {"claim": "$25", "kind": "price", "status": "contradicted"}
    (root / "2026-03-01" / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DocsError, match="broken.json: not valid JSON"):
        load_docs(settings)
    settings.docs.sources = [str(tmp_path / "missing")]
    with pytest.raises(DocsError, match="missing does not exist"):
        load_docs(settings)


def _check(settings, prompts, answers):
    corpus = load_docs(settings).at(None)
    return verify_answers(prompts, answers, corpus, ClaimChecker(settings.verify), settings)


def test_claim_checker_catches_made_up_figures_wrong_products_and_off_topic_answers(settings) -> None:
    fold = "How much is the Helix Fold?"
    cases = [
        (fold, ANSWER["product_helix_fold"], "supported"),  # the documented answer
        (fold, "Sure! " + ANSWER["product_helix_fold"] + " Anything else I can help with?", "supported"),
        (fold, ANSWER["product_helix_fold"].replace("$1,299", "$999"), "unsupported"),  # a made-up price
        (fold, ANSWER["product_nimbus_s5"], "unsupported"),  # another product's page, copied word for word
        ("What is your return policy?", ANSWER["return_policy"].replace("30 days", "60 days"), "unsupported"),
        ("Tell me a joke.", ANSWER["store_hours"], "unsupported"),  # nothing in the docs is about the question
        ("Tell me about the Stratus K9 keyboard.", "Stratus K9 keyboard: priced at $49, ships within 3 days.", "unsupported"),
        (fold, REFUSAL, "refused"),
    ]
    verdicts = _check(settings, [c[0] for c in cases], [c[1] for c in cases])
    assert [v.label for v in verdicts] == [c[2] for c in cases]
    price = verdicts[2]
    assert {"claim": "$999", "kind": "price", "status": "contradicted"} in price.claims
    assert "'$999' contradicted" in price.reason and price.evidence[0] == "kb:product_helix_fold"
    assert "60 days" in verdicts[4].reason
    assert verdicts[5].reason == "no documentation is relevant to the question"
    assert all(v.risk > verdicts[0].risk for v in verdicts[2:7])
    summary = rate_summary(verdicts, "claims")
    assert summary["unsupported"] == 5 and summary["refused"] == 1 and summary["checked"] == 8
    assert summary["unsupported_rate"] == pytest.approx(5 / 8) and summary["unsupported_among_answers"] == pytest.approx(5 / 7)
    low, high = summary["unsupported_rate_ci"]
    assert low < 5 / 8 < high


def test_unsupported_signal_samples_the_week_and_splits_by_model_version(settings) -> None:
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    rows = []
    for i in range(40):
        good = i % 2 == 0
        rows.append({"request_id": f"r{i}", "ts": now, "user_id": "u", "session_id": None,
                     "prompt": "How much is the Helix Buds?",
                     "response": ANSWER["product_helix_buds"] if good else ANSWER["product_orbit_speaker"],
                     "model_version": "v1" if good else "v2", "latency_ms": None, "prompt_tokens": None,
                     "completion_tokens": None, "feedback": None, "correction": None, "metadata": "{}"})
    table = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
    settings.verify.sample = 30
    docs = load_docs(settings)
    result = unsupported_signal(table, settings, docs.at(None), ClaimChecker(settings.verify), docs_label="v2", seed=1)
    assert result["checked"] == 30 and result["sampled_of"] == 40
    assert result["by_model_version"]["v1"]["unsupported_rate"] == 0.0
    assert result["by_model_version"]["v2"]["unsupported_rate"] == 1.0
    assert result["unsupported"] == result["by_model_version"]["v2"]["checked"]
    assert "price contradicted" in result["reasons"]
    assert "Helix" not in json.dumps(result)  # no prompt or answer text in the signal


# --------------------------------------------------------------------------------------------------
# The LLM judge against a real OpenAI-compatible server in its own process

_SERVER = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "judge-model"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        chat = self.path.endswith("/chat/completions")
        question = body["messages"][-1]["content"] if chat else body["prompt"]
        answer = question.split("Assistant answer:")[1]
        with open(sys.argv[2], "a") as log:
            log.write(json.dumps({"path": self.path, "max_tokens": body["max_tokens"], "temperature": body["temperature"],
                                  "documented": "Helix Fold" in question.split("Customer question:")[0]}) + "\n")
        if "MALFORMED" in answer:
            return self._send(200, b"this is not json")
        if "NOCHOICES" in answer:
            return self._send(200, {"choices": []})
        if "OVERLOADED" in answer:
            return self._send(503, {"error": "overloaded"})
        reply = "YES" if "$999" in answer else "No." if "$1,299" in answer else "It depends on the snippet."
        choice = {"index": 0, "message": {"role": "assistant", "content": reply}} if chat else {"index": 0, "text": " " + reply}
        self._send(200, {"choices": [choice]})

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''


@pytest.fixture()
def judge_server(tmp_path: Path):
    script, log = tmp_path / "judge_server.py", tmp_path / "requests.jsonl"
    script.write_text(_SERVER, encoding="utf-8")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(script), str(port), str(log)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the test judge server did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_parse_judgement_is_strict() -> None:
    assert parse_judgement("YES") == parse_judgement(" yes.") == "unsupported"
    assert parse_judgement("No") == parse_judgement("NO!") == "supported"
    for text in ("", None, "Yes, but", "Maybe", "YES NO", "no claims are unsupported"):
        assert parse_judgement(text) == "undecided"


def test_llm_judge_over_http_counts_undecided_and_malformed_replies(settings, judge_server) -> None:
    url, log = judge_server
    settings.verify.verifier = "judge"
    settings.verify.judge.endpoint = url
    settings.verify.judge.retries = 1
    settings.verify.judge.timeout_s = 5
    settings.verify.judge.max_calls_per_week = 6
    from tasks.verify import make_verifier

    judge = make_verifier(settings)
    judge.generator.backoff_s = 0.01
    fold = "How much is the Helix Fold?"
    good = ANSWER["product_helix_fold"]
    answers = [good, good.replace("$1,299", "$999"), "The Helix Fold is lovely.", "MALFORMED", "NOCHOICES",
               "OVERLOADED", REFUSAL, good]
    verdicts = _check_with(settings, judge, [fold] * len(answers), answers)
    labels = [v.label for v in verdicts]
    # 7 answers to judge, a cap of 6 a week: the last one is not sent
    assert labels == ["supported", "unsupported", "undecided", "undecided", "undecided", "undecided", "refused",
                      "undecided"]
    assert "malformed" in verdicts[3].reason.lower() or "JSONDecodeError" in verdicts[3].reason
    assert "without choices" in verdicts[4].reason and "HTTP 503" in verdicts[5].reason
    assert "weekly cap" in verdicts[7].reason
    sent = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(sent) == 7  # six answers judged, the 503 tried twice (one retry); the refusal and the 7th never sent
    assert all(r["path"] == "/v1/chat/completions" and r["max_tokens"] == 4 and r["temperature"] == 0.0 for r in sent)
    assert all(r["documented"] for r in sent)  # the Helix Fold page went along as evidence
    summary = rate_summary(verdicts, "judge")
    assert summary["undecided"] == 5 and summary["unsupported_rate"] == pytest.approx(1 / 3)
    # the cap is per week and survives a new judge
    again = _check_with(settings, make_verifier(settings), [fold], [good])
    assert again[0].label == "undecided" and len(log.read_text().splitlines()) == 7


def test_llm_judge_through_the_completions_api(settings, judge_server) -> None:
    url, log = judge_server
    settings.verify.verifier = "judge"
    settings.verify.judge.endpoint = url
    settings.verify.judge.api = "completions"
    from tasks.verify import make_verifier

    good = ANSWER["product_helix_fold"]
    verdicts = _check_with(settings, make_verifier(settings), ["How much is the Helix Fold?"] * 3,
                           [good, good.replace("$1,299", "$999"), "The Helix Fold is lovely."])
    assert [v.label for v in verdicts] == ["supported", "unsupported", "undecided"]
    assert {json.loads(line)["path"] for line in log.read_text().splitlines()} == {"/v1/completions"}


def _check_with(settings, verifier, prompts, answers):
    return verify_answers(prompts, answers, load_docs(settings).at(None), verifier, settings)


def test_judge_ledger_counts_per_week(tmp_path: Path) -> None:
    ledger = JudgeLedger(tmp_path / "calls.json", cap=5)
    assert ledger.take(3) == 3 and ledger.take(3) == 2 and ledger.take(1) == 0
    assert json.loads((tmp_path / "calls.json").read_text()) == {JudgeLedger.week(): 5}
    assert LLMJudge.question("q?", "a.", []).count("(no documentation is relevant") == 1

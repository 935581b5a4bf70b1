"""The model server as clients meet it: a real `flywheel serve` process on a free port, spoken to over HTTP.
Each endpoint and its shape, streaming, the log records it writes (one per answered request, read back
through the log store, feedback joined), every kind of bad input, admin auth, metrics, dynamic batching,
and a SIGTERM in the middle of traffic that loses no log record. Registry following and hot swaps are in
tests/test_serving_registry.py."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tasks.config import load_settings
from tasks.logs import load_logs

TOKEN = "s3cret-admin"
PROMPTS = ["How do I return an item?", "Is the Orbit speaker waterproof?", "What are your opening hours?",
           "How much is the Nimbus S5?", "Can I pay by invoice?", "Where is my order?"]


def config(tiny_base_model: Path, **serving) -> dict:
    return {"model": {"base": str(tiny_base_model), "max_new_tokens": 6, "cpu_threads": 1},
            "serving": {"follow_registry": False, "capture_flush_s": 0.2, **serving}}


@pytest.fixture(scope="module")
def server(start_server, tiny_base_model):
    return start_server(config(tiny_base_model, max_wait_ms=50, max_tokens=32), name="api",
                        env={"FLYWHEEL_ADMIN_TOKEN": TOKEN})


def metric(server, name: str, **labels) -> float:
    """The value of one sample in /metrics (0 when absent)."""
    status, text, _ = server.call("GET", "/metrics")
    assert status == 200
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + ("{" + want + "}" if labels else " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def logged(server, *, wait_for: set[str] = frozenset(), timeout_s: float = 30):
    """The server's log records, through the log store (as `flywheel monitor` reads them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        files = sorted((server.workspace / "logs").glob("*.jsonl"))
        result = load_logs([str(f) for f in files], load_settings(None).logs) if any(
            not f.name.endswith(".feedback.jsonl") for f in files) else None
        ids = set(result.table["request_id"].to_pylist()) if result else set()
        if wait_for <= ids or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


# --------------------------------------------------------------------------------- endpoints


@pytest.mark.slow
def test_health_readiness_and_models(server) -> None:
    assert server.call("GET", "/healthz")[:2] == (200, {"status": "ok"})
    status, ready, _ = server.call("GET", "/readyz")
    assert status == 200 and ready["ready"] and ready["routes"]["champion"].startswith("base@")
    status, models, _ = server.call("GET", "/v1/models")
    assert status == 200 and models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["flywheel", "champion", "base"]


@pytest.mark.slow
def test_generate_answers_in_the_production_shape_and_logs_one_record(server) -> None:
    status, body, headers = server.call("POST", "/generate", {"prompt": PROMPTS[0], "user_id": "u-1", "max_tokens": 5,
                                                              "system_message": "You are the shop's assistant."})
    assert status == 200, body
    assert set(body) == {"generated_text", "request_id", "model_version", "variant"}
    assert body["model_version"].startswith("base@") and body["variant"] == "champion"
    assert headers["x-request-id"] == body["request_id"]
    record = logged(server, wait_for={body["request_id"]}).table.to_pylist()
    mine = [r for r in record if r["request_id"] == body["request_id"]]
    assert len(mine) == 1
    row = mine[0]
    assert (row["user_id"], row["prompt"], row["response"]) == ("u-1", PROMPTS[0], body["generated_text"])
    assert row["model_version"] == body["model_version"] and row["latency_ms"] > 0
    assert row["prompt_tokens"] > 0 and 0 < row["completion_tokens"] <= 5
    metadata = json.loads(row["metadata"])
    assert metadata["variant"] == "champion" and metadata["route"] == "/generate"
    assert metadata["system_message"] == "You are the shop's assistant."


@pytest.mark.slow
def test_openai_chat_and_completions(server) -> None:
    chat = {"model": "flywheel", "messages": [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": PROMPTS[1]}], "user": "u-2", "max_tokens": 4}
    status, body, _ = server.call("POST", "/v1/chat/completions", chat)
    assert status == 200, body
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # /v1/completions continues the prompt as given: the template-wrapped question gets the same answer
    # as the chat route, and the log records the question, not the template
    templated = f"### Question:\n{PROMPTS[1]}\n### Answer:\n"
    status, done, _ = server.call("POST", "/v1/completions", {"prompt": templated, "max_tokens": 4, "model": "base"})
    assert status == 200, done
    assert done["object"] == "text_completion" and done["choices"][0]["text"] == body["choices"][0]["message"]["content"]
    assert done["variant"] == "base"
    rows = {r["request_id"]: r for r in logged(server, wait_for={body["id"], done["id"]}).table.to_pylist()}
    assert rows[done["id"]]["prompt"] == PROMPTS[1] and rows[body["id"]]["prompt"] == PROMPTS[1]
    assert rows[body["id"]]["user_id"] == "u-2"


@pytest.mark.slow
def test_chat_streams_server_sent_events_ending_in_done(server) -> None:
    import urllib.request

    request = urllib.request.Request(server.url + "/v1/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"messages": [{"role": "user", "content": PROMPTS[2]}], "stream": True,
                                                      "max_tokens": 6, "stream_options": {"include_usage": True}}).encode())
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    finished = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finished) == 1 and chunks[-1]["usage"]["completion_tokens"] > 0
    row = next(r for r in logged(server, wait_for={chunks[0]["id"]}).table.to_pylist() if r["request_id"] == chunks[0]["id"])
    assert row["response"] == text.strip() and json.loads(row["metadata"])["stream"] is True


@pytest.mark.slow
def test_feedback_is_joined_onto_the_logged_request_by_the_log_store(server) -> None:
    _, answered, _ = server.call("POST", "/generate", {"prompt": PROMPTS[3], "user_id": "u-3", "max_tokens": 3})
    request_id = answered["request_id"]
    logged(server, wait_for={request_id})  # the record is on disk before the feedback arrives
    assert server.call("POST", "/feedback", {"request_id": request_id, "thumbs": -1,
                                             "correction": "The Nimbus S5 costs 499 euros."})[0] == 200
    assert server.call("POST", "/feedback", {"request_id": request_id, "thumbs": 1})[0] == 200  # changed their mind
    status, body, _ = server.call("POST", "/feedback", {"request_id": "gen-never-answered", "thumbs": 1})
    assert status == 404 and body["error"]["param"] == "request_id"
    deadline = time.monotonic() + 30
    while True:
        result = logged(server)
        row = next(r for r in result.table.to_pylist() if r["request_id"] == request_id)
        if row["feedback"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (row["feedback"], row["correction"]) == (1, "The Nimbus S5 costs 499 euros.")
    assert result.feedback.applied >= 1 and result.feedback.rejected == 0


@pytest.mark.slow
def test_concurrent_requests_share_generate_calls(server) -> None:
    calls_before = metric(server, "flywheel_batch_size_count")
    answers: list[int] = []

    def ask(prompt: str) -> None:
        answers.append(server.call("POST", "/generate", {"prompt": prompt, "max_tokens": 3})[0])

    threads = [threading.Thread(target=ask, args=(p,)) for p in PROMPTS * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * len(threads)
    calls = metric(server, "flywheel_batch_size_count") - calls_before
    assert 1 <= calls < len(threads), f"{len(threads)} concurrent requests took {calls} generate calls"


# ------------------------------------------------------------------------------- bad input


@pytest.mark.slow
@pytest.mark.parametrize("route, body, field", [
    ("/generate", {"prompt": "hi", "max_tokens": 33}, "max_tokens"),  # over serving.max_tokens (32)
    ("/generate", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/generate", {"prompt": "hi", "temperature": 2.5}, "temperature"),
    ("/generate", {"prompt": "hi", "temperature": -0.1}, "temperature"),
    ("/generate", {"temperature": 0.2}, "prompt"),
    ("/generate", {"prompt": "hi", "temprature": 0.2}, "temprature"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "system", "content": "only a system turn"}]}, "messages"),
    ("/v1/completions", {"prompt": ["one", "two"]}, "prompt"),
    ("/feedback", {"request_id": "x", "thumbs": 0}, "thumbs"),
])
def test_out_of_range_values_are_422_naming_the_field(server, route: str, body: dict, field: str) -> None:
    status, answer, _ = server.call("POST", route, body)
    assert status == 422, answer
    assert answer["error"]["param"] == field and field in answer["error"]["message"]


@pytest.mark.slow
def announce_oversized_body(server, size: int) -> tuple[int, dict]:
    """POST /generate announcing a body of `size` bytes and sending its first bytes only: the server answers
    413 from the headers. (Sending the whole body races the server closing the connection: the client
    can get a broken pipe before it reads the 413.)"""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
    try:
        connection.putrequest("POST", "/generate")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(size))
        connection.endheaders(b'{"prompt": "xxxx')
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_malformed_json_oversized_bodies_and_unknown_models(server) -> None:
    status, answer, _ = server.call("POST", "/generate", raw=b'{"prompt": "unclosed')
    assert status == 422 and answer["error"]["param"] == "body" and "JSON" in answer["error"]["message"]
    status, answer = announce_oversized_body(server, 1_100_000)
    assert status == 413 and "serving.max_body_bytes" in answer["error"]["message"]
    status, answer, _ = server.call("POST", "/v1/chat/completions",
                                    {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 404 and answer["error"]["param"] == "model"
    assert answer["error"]["available"] == ["flywheel", "champion", "base"] and "base" in answer["error"]["message"]
    status, answer, _ = server.call("POST", "/generate", {"prompt": "hi", "model": "canary"})
    assert status == 404  # no canary in the registry
    # refusals are counted by route and status, none of them was answered or logged as answered
    assert metric(server, "flywheel_requests_total", route="/generate", variant="none", status="413") == 1
    assert metric(server, "flywheel_requests_total", route="/v1/chat/completions", variant="none", status="404") == 1
    assert server.call("GET", "/healthz")[0] == 200


# ------------------------------------------------------------------------------------ admin


@pytest.mark.slow
def test_admin_endpoints_need_the_bearer_token(server, tmp_path: Path) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, answer, got = server.call("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)},
                                          headers=headers)
        assert status == 401 and got.get("www-authenticate") == "Bearer", answer
    assert server.call("POST", "/admin/reload", headers={"Authorization": "Bearer nope"})[0] == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # with the token: this server does not follow the registry (409), and a folder without an adapter is refused
    assert server.call("POST", "/admin/reload", headers=auth)[0] == 409
    status, answer, _ = server.call("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)},
                                    headers=auth)
    assert status == 400 and "adapter_config.json" in answer["error"]["message"]
    assert server.call("POST", "/v1/unload_lora_adapter", {"lora_name": "x"}, headers=auth)[0] == 404


def test_admin_policy_depends_on_the_address_and_the_token() -> None:
    from serving.security import admin_mode, admin_refusal, is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")
    assert admin_mode("127.0.0.1", None) == "loopback" and admin_refusal("loopback", None, None) is None
    assert admin_mode("0.0.0.0", None) == "disabled" and admin_refusal("disabled", None, "Bearer x")[0] == 403
    assert admin_mode("0.0.0.0", "t") == "token"
    assert admin_refusal("token", "t", "Bearer t") is None and admin_refusal("token", "t", "Bearer u")[0] == 401


@pytest.mark.slow
def test_an_exposed_server_without_a_token_keeps_admin_routes_off(tiny_base_model: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app

    settings = load_settings(None, {"paths.workspace": str(tmp_path), "model.base": str(tiny_base_model),
                                    "serving.follow_registry": False})
    with TestClient(create_app(settings, host="0.0.0.0")) as client:
        refused = client.post("/v1/unload_lora_adapter", json={"lora_name": "x"})
        assert refused.status_code == 403 and "FLYWHEEL_ADMIN_TOKEN" in refused.json()["error"]["message"]
        assert client.get("/readyz").status_code == 200


# ------------------------------------------------------------------------ errors, shutdown


def test_a_failing_request_fails_alone_in_its_batch(tiny_base_model: Path) -> None:
    """The batcher around the real model: a request for an adapter that is not loaded fails with a
    GenerationError; the requests batched with it are answered."""
    import asyncio

    from serving.batching import Batcher, GenerationError, Params
    from serving.metrics import Metrics
    from tasks.generation import LocalGenerator

    batcher = Batcher(LocalGenerator(tiny_base_model, max_new_tokens=3), Metrics(), max_batch=8, max_wait_s=0.2)
    batcher.start()

    async def ask():
        jobs = [batcher.complete(p, None, Params(3)) for p in PROMPTS[:3]]
        jobs.insert(1, batcher.complete("anything", "ghost-adapter", Params(3)))
        return await asyncio.gather(*jobs, return_exceptions=True)

    try:
        results = asyncio.run(ask())
    finally:
        batcher.stop()
    assert isinstance(results[1], GenerationError) and "ghost-adapter" in str(results[1])
    assert [type(r).__name__ for r in results[:1] + results[2:]] == ["Completion"] * 3


def test_a_full_capture_queue_makes_requests_wait_and_loses_no_record(tmp_path: Path) -> None:
    """Back-pressure: more records at once than the queue holds wait for room (the writer is woken by the
    full queue, long before its flush interval) and every one is written; none is refused or dropped."""
    import asyncio
    from datetime import datetime, timezone

    from serving.capture import Capture
    from serving.metrics import Metrics
    from tasks.contracts import LogRecord

    metrics = Metrics()
    capture = Capture(tmp_path / "logs", metrics, queue_size=2, flush_s=3600, block_s=60)
    capture.start()

    async def answer_many() -> list[bool]:
        return await asyncio.gather(*(capture.record(LogRecord(
            request_id=f"r{n}", ts=datetime.now(timezone.utc), user_id="u", prompt="p", response="a",
            model_version="v1")) for n in range(12)))

    try:
        assert asyncio.run(answer_many()) == [True] * 12
        written = lambda: sum(1 for f in (tmp_path / "logs").glob("*.jsonl") for _ in f.open())  # noqa: E731
        deadline = time.monotonic() + 120  # well inside the hour-long flush interval
        while written() < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written() >= 10  # on disk before any flush was due and before the stop
    finally:
        capture.close()
    assert written() == 12
    counted = {name: metrics.registry.get_sample_value(f"flywheel_capture_{name}_total")
               for name in ("written_records", "refused_requests", "dropped_records")}
    assert counted == {"written_records": 12, "refused_requests": 0, "dropped_records": 0}


@pytest.mark.slow
def test_sigterm_during_traffic_loses_no_log_record(start_server, tiny_base_model: Path) -> None:
    # a long flush interval: records are still in memory when the signal comes
    server = start_server(config(tiny_base_model, capture_flush_s=60), name="sigterm")
    answered: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(number: int) -> None:
        while not stop.is_set():
            try:
                status, body, _ = server.call("POST", "/generate", {"prompt": PROMPTS[number % 6], "max_tokens": 4},
                                              timeout=30)
            except OSError as err:  # the listener is gone: the server is shutting down
                failures.append(type(err).__name__)
                return
            if status == 200:
                answered.append(body["request_id"])
            else:
                failures.append(str(status))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while len(answered) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stop() in (0, -15), server.output()[-2000:]  # uvicorn re-raises SIGTERM once shut down
    stop.set()
    for thread in threads:
        thread.join(60)
    files = [str(f) for f in (server.workspace / "logs").glob("*.jsonl")]
    ids = load_logs(files, load_settings(None).logs).table["request_id"].to_pylist()
    assert len(answered) >= 20
    assert sorted(ids) == sorted(answered), "every answered request has exactly one log record"
    assert "Application shutdown complete" in server.output()


@pytest.mark.slow
def test_serve_explains_every_option_and_refuses_without_a_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    shown = runner.invoke(app, ["serve", "--help"], terminal_width=200)
    assert shown.exit_code == 0
    for option in ("--host", "--port", "--backend", "--upstream", "--access-log", "--config", "--workspace"):
        line = next(line for line in shown.stdout.splitlines() if option in line)
        assert len(line.split(option, 1)[1].strip()) > 10, f"{option} has no explanation"
    refused = runner.invoke(app, ["serve", "-w", str(tmp_path)])
    assert refused.exit_code == 2 and "flywheel model bootstrap" in refused.output
    import subprocess
    import sys

    from tasks.config import REPO_ROOT

    wrong = subprocess.run([sys.executable, "-m", "flows.cli", "serve", "-w", str(tmp_path), "--backend", "vllm"],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "serving: backend vllm needs upstream" in wrong.stderr


def test_late_feedback_is_joined_by_request_id_latest_first(tmp_path: Path) -> None:
    """The log store's rules for feedback events written after their records (tasks/logs/feedback.py)."""
    from datetime import datetime, timedelta, timezone

    from tasks.logs import LogWriter

    at = datetime(2026, 3, 2, 23, 58, tzinfo=timezone.utc)
    with LogWriter(tmp_path / "logs") as writer:
        writer.append([{"request_id": f"r{i}", "ts": at, "user_id": "u", "prompt": "p", "response": "a",
                        "model_version": "v1", **({"feedback": 1} if i == 2 else {})} for i in range(3)])
        writer.append_feedback([  # out of order on purpose, and across midnight
            {"request_id": "r0", "ts": at + timedelta(minutes=5), "feedback": 1},
            {"request_id": "r0", "ts": at + timedelta(minutes=1), "feedback": -1, "correction": "It is 20 euros."},
            {"request_id": "r2", "ts": at + timedelta(minutes=1), "feedback": -1},
            {"request_id": "gone", "ts": at, "feedback": -1},
        ])
    (tmp_path / "logs" / "2026-03-03.feedback.jsonl").open("a").write('{"request_id": "r1", "feedback": 2}\n')
    result = load_logs([str(tmp_path / "logs")], load_settings(None).logs)
    rows = {r["request_id"]: (r["feedback"], r["correction"]) for r in result.table.to_pylist()}
    assert rows == {"r0": (1, "It is 20 euros."), "r1": (None, None), "r2": (-1, None)}
    assert result.summary()["feedback"] == {"files": 2, "events": 4, "rejected": 1, "applied": 2, "unmatched": 1}
    assert any("2026-03-03.feedback.jsonl:2" in w for w in result.warnings)
    assert result.read == 3 and result.files == [str(tmp_path / "logs" / "2026-03-02.jsonl")]


def test_the_stack_points_its_flows_at_its_model_server(tmp_path: Path, tiny_base_model: Path) -> None:
    """`flywheel stack up` writes serving.url into the stack's config (so rollback and review tell the server)
    and starts the model server only when there is a base model to serve."""
    import yaml

    from flows.local_stack import _nothing_to_serve, stack_env

    env = stack_env(tmp_path / "ws", mlflow_port=5123, serve_port=8123)
    stacked = load_settings(Path(env["FLYWHEEL_CONFIG"]))
    assert stacked.serving.url == "http://127.0.0.1:8123" and stacked.registry.tracking_uri == "http://127.0.0.1:5123"
    assert "flywheel model bootstrap" in _nothing_to_serve(Path(env["FLYWHEEL_CONFIG"]))
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump({"model": {"base": str(tiny_base_model)}, "serving": {"url": "http://gpu-box:8000"}}))
    env = stack_env(tmp_path / "ws", config=mine, serve_port=8123)
    assert load_settings(Path(env["FLYWHEEL_CONFIG"])).serving.url == "http://gpu-box:8000"  # a configured one stays
    assert _nothing_to_serve(Path(env["FLYWHEEL_CONFIG"])) is None

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.config import SHIPPED_DATA, Settings
from tasks.contracts import Generator
from tasks.base_model import (
    MANIFEST,
    PRETRAINING_FILE,
    ModelError,
    bootstrap_base_model,
    format_prompt,
    model_digest,
    pretraining_examples,
    resolve_base_model,
    split_questions,
)
from tasks.generation import GreedyAnswerCache, LocalGenerator, OpenAICompatibleGenerator
from tasks.knowledge import load_knowledge_base

PROMPTS = [
    "How do I return an item?",
    "How much is the Nimbus S5?",
    "What are your store opening hours on Sunday?",
    "Tell me about the Helix Fold phone.",
    "Is the Orbit speaker waterproof?",
]


def test_one_prompt_template() -> None:
    assert format_prompt("  Where is my order? ") == "### Question:\nWhere is my order?\n### Answer:\n"


def test_question_split_is_deterministic_and_disjoint() -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v1")
    for topic in kb.topics:
        train, held = split_questions(topic, seed=0)
        assert (train, held) == split_questions(topic, seed=0)
        assert held and not set(train) & set(held)
        assert len(train) + len(held) == len(set(topic.questions))


def test_pretraining_teaches_refusals_for_unknown_products_with_known_phrasings() -> None:
    kb = load_knowledge_base(SHIPPED_DATA, "v1")
    pairs, held_out = pretraining_examples(kb, seed=0, synthetic_unknown=5)
    refusal = kb.refusals["en"][0]
    questions = {q for q, _ in pairs}
    assert not questions & {q for qs in held_out.values() for q in qs}, "held-out paraphrases leaked into pre-training"
    refused = [q for q, a in pairs if a == refusal]
    assert any(kb.unknown_products[0] in q for q in refused)
    # the v1 product phrasings reappear with another name and a refusal as the target
    assert any(q.startswith("How much") for q in refused)
    v2_names = {t.name for t in load_knowledge_base(SHIPPED_DATA, "v2").topics if t.kb_version == "v2"}
    assert not any(name in q for q in questions for name in v2_names)


def test_bootstrap_is_cached_by_content(tiny_base_model: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_base_model / MANIFEST).read_text())
    assert manifest["size"] == "test" and manifest["held_out"]
    replay = [json.loads(line) for line in (tiny_base_model / PRETRAINING_FILE).read_text().splitlines()]
    assert len(replay) == manifest["examples"] and {"prompt", "response", "source", "cycle_id"} == set(replay[0])
    again = bootstrap_base_model(tiny_base_model, data_dir=SHIPPED_DATA, size="test")
    assert again["cached"] is True and again["digest"] == model_digest(tiny_base_model)
    # another knowledge base is another cache key: a rebuild, not a reuse
    data = tmp_path / "data"
    (data / "knowledge_base").mkdir(parents=True)
    kb = json.loads((SHIPPED_DATA / "knowledge_base" / "v1.json").read_text(encoding="utf-8"))
    kb["topics"] = kb["topics"][:3]
    (data / "knowledge_base" / "v1.json").write_text(json.dumps(kb))
    copy = tmp_path / "base"
    import shutil

    shutil.copytree(tiny_base_model, copy)
    from tasks import base_model

    small = dict(base_model.BOOTSTRAP_SIZES["test"], epochs=1)
    base_model.BOOTSTRAP_SIZES["tiny-rebuild"] = small
    try:
        rebuilt = bootstrap_base_model(copy, data_dir=data, size="tiny-rebuild")  # type: ignore[arg-type]
    finally:
        del base_model.BOOTSTRAP_SIZES["tiny-rebuild"]
    assert rebuilt["cached"] is False and rebuilt["digest"] != again["digest"]
    assert {"path", "params", "seconds", "digest", "cached"} <= set(rebuilt)


def test_concurrent_bootstraps_build_once(tiny_base_model: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tasks import base_model

    base_model.BOOTSTRAP_SIZES["tiny-once"] = dict(base_model.BOOTSTRAP_SIZES["test"], epochs=1)
    messages: list[str] = []
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: bootstrap_base_model(tmp_path / "base", data_dir=SHIPPED_DATA,
                                                                   size="tiny-once", progress=messages.append),  # type: ignore[arg-type]
                                    range(2)))
    finally:
        del base_model.BOOTSTRAP_SIZES["tiny-once"]
    assert sorted(r["cached"] for r in results) == [False, True]  # the second waited, then reused the first's
    assert results[0]["digest"] == results[1]["digest"]
    assert any("waiting" in m for m in messages)


def test_bootstrap_rejects_missing_knowledge_base(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="knowledge base"):
        bootstrap_base_model(tmp_path / "base", data_dir=tmp_path, size="test")


def test_resolve_base_model(tmp_path: Path, tiny_base_model: Path) -> None:
    settings = Settings()
    settings.paths.workspace = tmp_path / "ws"
    with pytest.raises(ModelError, match="flywheel model bootstrap"):
        resolve_base_model(settings)
    settings.model.base = str(tiny_base_model)
    assert resolve_base_model(settings) == tiny_base_model
    settings.model.base = "Qwen/Qwen2-0.5B"
    with pytest.raises(ModelError, match="not a local model directory"):
        resolve_base_model(settings)


@pytest.fixture(scope="module")
def generator(tiny_base_model: Path) -> LocalGenerator:
    return LocalGenerator(tiny_base_model, batch_size=2, max_new_tokens=12)


def test_local_generator_is_a_generator_and_greedy_is_deterministic(generator: LocalGenerator) -> None:
    assert isinstance(generator, Generator)
    first = generator.generate(PROMPTS)
    assert len(first) == len(PROMPTS) and all(len(c) == 1 and isinstance(c[0], str) for c in first)
    assert generator.generate(PROMPTS) == first
    # batching does not change greedy answers: one big batch == batches of two == one at a time
    generator.batch_size = 32
    try:
        assert generator.generate(PROMPTS) == first
    finally:
        generator.batch_size = 2
    assert [generator.generate([p])[0] for p in PROMPTS] == first
    assert generator.generate(PROMPTS[:2], n=3) == [c * 3 for c in first[:2]]
    assert generator.generate([]) == []


def test_repeated_prompts_are_answered_once_with_the_same_answer(generator: LocalGenerator) -> None:
    answers = generator.generate([PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0]])
    single = generator.generate(PROMPTS[:2])
    assert answers == [single[0], single[1], single[0], single[0]]


class _Counting:
    """Counts the prompts that reach the real generator behind the cache."""

    def __init__(self, inner: LocalGenerator) -> None:
        self.inner, self.prompts = inner, 0

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def generate(self, prompts, **kwargs):
        self.prompts += len(prompts)
        return self.inner.generate(prompts, **kwargs)


def test_greedy_answer_cache_asks_the_model_once_per_prompt_and_model_version(generator: LocalGenerator) -> None:
    counting = _Counting(generator)
    cache = GreedyAnswerCache(counting)
    first = cache.generate(PROMPTS)
    assert first == generator.generate(PROMPTS) and counting.prompts == len(PROMPTS)
    assert cache.generate(list(reversed(PROMPTS))) == list(reversed(first)) and counting.prompts == len(PROMPTS)
    assert cache.generate(PROMPTS[:1], n=2) == [first[0] * 2]
    cache.generate(PROMPTS[:1], max_new_tokens=3)  # another length limit: another answer
    assert counting.prompts == len(PROMPTS) + 1
    sampled = cache.generate(PROMPTS[:2], n=2, temperature=1.0, seed=1)  # sampling always reaches the model
    assert counting.prompts == len(PROMPTS) + 3 and [len(c) for c in sampled] == [2, 2]
    assert cache.model_version == generator.model_version


def test_local_generator_sampling_is_seeded(generator: LocalGenerator) -> None:
    a = generator.generate(PROMPTS[:2], n=4, temperature=1.0, seed=3)
    assert [len(c) for c in a] == [4, 4]
    assert generator.generate(PROMPTS[:2], n=4, temperature=1.0, seed=3) == a
    b = generator.generate(PROMPTS[:2], n=4, temperature=1.0, seed=4)
    assert a != b


def _random_adapter(base: Path, out: Path, seed: int, modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    # init_lora_weights=False: B is random too, so the adapter visibly changes the outputs
    config = LoraConfig(r=8, lora_alpha=64, target_modules=list(modules), init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_adapters_switch_without_reloading_the_base(tiny_base_model: Path, tmp_path: Path) -> None:
    a = _random_adapter(tiny_base_model, tmp_path / "a", 1)
    b = _random_adapter(tiny_base_model, tmp_path / "b", 2)
    gen = LocalGenerator(tiny_base_model, {"a": a}, max_new_tokens=8)
    base_weights = gen._base  # the one base module object, patched in place by peft
    assert gen.model_version.startswith("base@")
    plain = gen.generate(PROMPTS)
    gen.load_adapter("b", b)
    gen.use("a")
    out_a = gen.generate(PROMPTS)
    assert gen.model_version == "a"
    gen.use("b")
    out_b = gen.generate(PROMPTS)
    gen.use(None)
    assert gen.generate(PROMPTS) == plain
    gen.use("a")
    assert gen.generate(PROMPTS) == out_a
    assert out_a != plain and out_b != out_a
    assert gen._base is base_weights
    with pytest.raises(ModelError, match="no adapter named"):
        gen.use("c")
    with pytest.raises(ModelError, match="adapter_config.json"):
        gen.load_adapter("c", tmp_path)


@pytest.mark.slow
def test_an_adapter_loads_while_another_thread_generates(tiny_base_model: Path, tmp_path: Path) -> None:
    """What a server's swap does: the next adapter is loaded in another thread while batches go on; the
    answers of those batches (on the champion, on the bare base) do not change, and the new adapter then
    answers as it does when loaded on an idle model."""
    a = _random_adapter(tiny_base_model, tmp_path / "a", 1)
    b = _random_adapter(tiny_base_model, tmp_path / "b", 2)
    gen = LocalGenerator(tiny_base_model, max_new_tokens=6)
    assert not gen.load_beside_generation("a", a)  # the first adapter wraps the base's layers: not beside
    assert gen.adapters == {}
    gen.load_adapter("a", a)
    expected = {}
    for name in ("a", None):
        gen.use(name)
        expected[name] = gen.generate(PROMPTS)
    assert gen.load_beside_generation("b", b)
    gen.use("b")
    expected["b"] = gen.generate(PROMPTS)
    gen.unload_adapter("b")

    stop, seen = threading.Event(), []

    def serve() -> None:  # the generation thread: alternates champion and base, as mixed traffic does
        turn = 0
        while not stop.is_set():
            name = ("a", None)[turn % 2]
            turn += 1
            gen.use(name)
            seen.append((name, gen.generate(PROMPTS)))

    for _ in range(3):
        worker = threading.Thread(target=serve)
        worker.start()
        answered = len(seen)
        while len(seen) == answered:  # the load starts while the thread is generating
            time.sleep(0.01)
        gen.check_adapter("b", b)
        assert gen.load_beside_generation("b", b)
        time.sleep(0.2)
        stop.set()
        worker.join()
        gen.use("b")
        assert gen.generate(PROMPTS) == expected["b"]
        gen.unload_adapter("b")
        stop.clear()
    assert [name for name, answers in seen if answers != expected[name]] == []
    other = _random_adapter(tiny_base_model, tmp_path / "other", 3, ("k_proj",))  # would add layers
    assert not gen.load_beside_generation("other", other) and "other" not in gen.adapters


# --------------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP backend, against a real local server


class _Server:
    """A scripted OpenAI-compatible server on 127.0.0.1: `script` is a queue of behaviours per request
    ("ok", "500", "slow", "400"); when empty, answers normally."""

    def __init__(self) -> None:
        self.script: list[str] = []
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "served-base"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, body))
                    action = outer.script.pop(0) if outer.script else "ok"
                if action == "500":
                    return self._send(500, {"error": "overloaded"})
                if action == "400":
                    return self._send(400, {"error": {"message": "model not found"}})
                if action == "slow":
                    time.sleep(0.6)
                if self.path.endswith("/load_lora_adapter"):
                    return self._send(200, {})
                n = body.get("n", 1)
                if self.path.endswith("/chat/completions"):
                    text = body["messages"][-1]["content"]
                    choices = [{"index": i, "message": {"role": "assistant", "content": f"chat:{text}:{i}"}} for i in range(n)]
                else:
                    question = body["prompt"].split("\n")[1]
                    choices = [{"index": i, "text": f" echo:{question}:{body['model']}:{i}\n### Question: x"} for i in range(n)]
                self._send(200, {"choices": list(reversed(choices))})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_http_generator_completions_and_chat() -> None:
    with _Server() as server:
        gen = OpenAICompatibleGenerator(server.url, timeout_s=5, retries=0)
        assert isinstance(gen, Generator)
        assert gen.model_version == "served-base"  # from GET /models
        out = gen.generate(["q1", "q2"], n=2, temperature=0.7, seed=5)
        assert out == [["echo:q1:served-base:0", "echo:q1:served-base:1"], ["echo:q2:served-base:0", "echo:q2:served-base:1"]]
        sent = {body["prompt"]: body for _, body in server.requests}
        assert sent[format_prompt("q1")]["seed"] == 5 and sent[format_prompt("q2")]["seed"] == 6
        assert sent[format_prompt("q1")]["temperature"] == 0.7 and sent[format_prompt("q1")]["max_tokens"] == 64
        gen.load_adapter("cycle-3", Path("/adapters/cycle-3"))
        gen.use("cycle-3")
        assert gen.generate(["q"]) == [["echo:q:served-base:0".replace("served-base", "cycle-3")]]
        assert server.requests[-2] == ("/v1/load_lora_adapter", {"lora_name": "cycle-3", "lora_path": "/adapters/cycle-3"})
        chat = OpenAICompatibleGenerator(server.url, "m", api="chat", retries=0)
        assert chat.generate(["hi"], max_new_tokens=5) == [["chat:hi:0"]]
        assert server.requests[-1][1]["max_tokens"] == 5


def test_http_generator_retries_5xx_and_timeouts_but_not_4xx() -> None:
    with _Server() as server:
        gen = OpenAICompatibleGenerator(server.url, "m", timeout_s=0.3, retries=2, backoff_s=0.01)
        server.script = ["500", "slow"]  # first attempt: 500, second: times out, third: answers
        assert gen.generate(["q"]) == [["echo:q:m:0"]]
        assert len(server.requests) == 3
        server.script = ["500", "500", "500"]
        with pytest.raises(ModelError, match="failed after 3 attempts.*HTTP 500"):
            gen.generate(["q"])
        server.script = ["400"]
        before = len(server.requests)
        with pytest.raises(ModelError, match="HTTP 400.*model not found"):
            gen.generate(["q"])
        assert len(server.requests) == before + 1  # no retry on a client error


def test_http_generator_reports_an_unreachable_server() -> None:
    gen = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", timeout_s=0.5, retries=1, backoff_s=0.01)
    with pytest.raises(ModelError, match="failed after 2 attempts"):
        gen.generate(["q"])


@pytest.mark.slow
def test_bootstrap_same_seed_same_weights(tiny_base_model: Path, tmp_path: Path) -> None:
    again = bootstrap_base_model(tmp_path / "again", data_dir=SHIPPED_DATA, size="test", seed=0)
    assert again["cached"] is False
    assert again["digest"] == model_digest(tiny_base_model)
    other = bootstrap_base_model(tmp_path / "other", data_dir=SHIPPED_DATA, size="test", seed=1)
    assert other["digest"] != again["digest"]


def test_bootstrap_never_overwrites_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "my-model"
    foreign.mkdir()
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="not a bootstrapped base"):
        bootstrap_base_model(foreign, data_dir=SHIPPED_DATA, size="test")
    assert (foreign / "config.json").read_text() == "{}"


def test_the_base_learns_to_decline_off_domain_questions_it_is_never_evaluated_on() -> None:
    from tasks.base_model import OFF_DOMAIN_QUESTIONS
    from tasks.config import SHIPPED_DATA, SignalsSettings
    from tasks.knowledge import load_knowledge_base
    from tasks.signals import detect_refusals
    from tasks.simulate.bank import OFFTOPIC_QUESTIONS
    from tasks.text import normalise

    pairs, _ = pretraining_examples(load_knowledge_base(SHIPPED_DATA, "v1"), off_domain_refusals=True)
    answers = {q: a for q, a in pairs if q in OFF_DOMAIN_QUESTIONS}
    assert len(answers) == len(OFF_DOMAIN_QUESTIONS) and all(detect_refusals(list(answers.values()), SignalsSettings()))
    ood = {normalise(json.loads(line)["prompt"]) for line in (SHIPPED_DATA / "eval" / "ood.jsonl").read_text().splitlines()}
    simulated = {normalise(q) for qs in OFFTOPIC_QUESTIONS.values() for q in qs}
    assert not {normalise(q) for q in OFF_DOMAIN_QUESTIONS} & (ood | simulated)

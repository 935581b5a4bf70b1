"""The server follows the registry while clients keep asking: champion moves (promote + reload, rollback
seen by polling, the first champion's rollback to the bare base) swap adapters with zero failed requests,
each answer comes whole from the adapter it started on, the old adapter is unloaded after it drains, and
adapters that cannot be loaded (trained on another base, corrupt weights, files gone) leave routing as it
was and are reported. The vLLM gateway mode is driven against a second server acting as the upstream.
Real peft adapters on the tiny test base, a real MLflow sqlite registry, real server processes."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tasks.base_model import model_digest
from tasks.config import load_settings
from tasks.logs import load_logs
from tasks.registry import BASE, Registry

pytestmark = pytest.mark.slow

PASSED = {"gate": {"passed": True, "first_cycle": True, "checks": [], "failed": []}, "suites": {}}
PROMPTS = ["How do I return an item?", "Is the Orbit speaker waterproof?", "What are your opening hours?",
           "How much is the Nimbus S5?"]


def random_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random A and B, so it visibly changes the base's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base_model: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    made = {name: random_adapter(tiny_base_model, root / name, seed) for name, seed in (("a", 1), ("b", 2))}
    corrupt = shutil.copytree(made["b"], root / "corrupt")
    weights = corrupt / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    made["corrupt"] = corrupt
    return made


class Registered:
    """A registry in its own workspace with versions registered from adapter folders."""

    def __init__(self, workspace: Path, template_db: Path, name: str, base: Path) -> None:
        workspace.mkdir(parents=True)
        shutil.copy(template_db, workspace / "mlflow.db")
        self.settings = load_settings(None, {"paths.workspace": str(workspace), "registry.model_name": name})
        self.registry = Registry(self.settings)
        self.base, self.digest = base, model_digest(base)

    def add(self, adapter: Path, *, base_digest: str | None = None, approve: bool = True) -> str:
        version = self.registry.register_canary(adapter, cycle_id=f"c-{adapter.name}", base_path=self.base,
                                                base_digest=base_digest or self.digest, dataset_sha256="d" * 64,
                                                eval_report=PASSED)
        if approve:
            self.registry.review(version, decision="approve", reviewer="ana", comment="ok")
        return version

    def rollback_to_base(self) -> None:
        """Roll back the first champion: the base serves again (the champion alias is removed)."""
        assert self.registry.rollback()["to"] == BASE


class Traffic:
    """Clients asking /generate in a loop until stopped; every answer kept with when it came."""

    def __init__(self, server, clients: int = 6, **body) -> None:
        self.server, self.body = server, body
        self.answers: list[dict] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(n,)) for n in range(clients)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _ask(self, number: int) -> None:
        turn = 0
        while not self._stop.is_set():
            prompt = PROMPTS[(number + turn) % len(PROMPTS)]
            turn += 1
            try:
                status, body, _ = self.server.call("POST", "/generate", {"prompt": prompt, "max_tokens": 6, **self.body},
                                                   timeout=60)
            except OSError as err:
                self.failures.append(f"{type(err).__name__}: {err}")
                continue
            if status != 200:
                self.failures.append(f"{status}: {body}")
                continue
            self.answers.append({**body, "prompt": prompt, "at": time.monotonic()})

    def wait_for(self, version: str, timeout_s: float = 120) -> float:
        """Seconds from now until an answer from `version` arrives."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if any(a["model_version"] == version and a["at"] > start for a in list(self.answers)):
                return time.monotonic() - start
            time.sleep(0.05)
        seen = Counter(a["model_version"] for a in self.answers[-50:])
        raise AssertionError(f"no answer from {version} within {timeout_s}s; recent: {dict(seen)}; "
                             f"failures: {self.failures[:3]}")


def wait_until(read, done, what: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        time.sleep(0.1)


def logged_records(server) -> list[dict]:
    files = [str(f) for f in (server.workspace / "logs").glob("*.jsonl")]
    return load_logs(files, load_settings(None).logs).table.to_pylist() if files else []


def test_hot_swaps_under_load_fail_no_request(start_server, tiny_base_model, adapters, template_db, tmp_path) -> None:
    store = Registered(tmp_path / "ws", template_db, "swap", tiny_base_model)
    v1 = store.add(adapters["a"])
    store.registry.promote(v1)  # the first champion
    v2 = store.add(adapters["b"])
    server = start_server({"paths": {"workspace": str(tmp_path / "ws")}, "registry": {"model_name": "swap"},
                           "model": {"base": str(tiny_base_model), "max_new_tokens": 6, "cpu_threads": 1},
                           "serving": {"poll_s": 0.2, "capture_flush_s": 0.2, "url": None}}, name="swap")
    assert server.call("GET", "/readyz")[1]["routes"] == {"champion": f"v{v1}", "canary": f"v{v2}"}
    assert server.call("POST", "/generate", {"prompt": PROMPTS[0], "model": "canary"})[1]["model_version"] == f"v{v2}"
    cli_config = tmp_path / "cli.yaml"  # what an operator's config says: the registry and where the server is
    cli_config.write_text(f"registry: {{model_name: swap}}\nserving: {{url: '{server.url}'}}\n", encoding="utf-8")

    with Traffic(server) as traffic:
        traffic.wait_for(f"v{v1}")
        # `flywheel promote` moves the alias and, as serving.url is set, has the server reload at once
        from typer.testing import CliRunner

        from flows.cli import app

        promoted = CliRunner().invoke(app, ["promote", v2, "-c", str(cli_config), "-w", str(tmp_path / "ws"), "--json"])
        assert promoted.exit_code == 0, promoted.output
        reloaded = json.loads(promoted.stdout.strip().splitlines()[-1])["server"]
        assert reloaded["ok"] and reloaded["routes"] == {"champion": f"v{v2}"}, reloaded
        traffic.wait_for(f"v{v2}")
        # a rollback nobody announces: the server sees it at its next poll
        store.registry.rollback()
        traffic.wait_for(f"v{v1}")
        # the old adapter is unloaded once the requests on it are done
        wait_until(lambda: server.call("GET", "/v1/models")[1]["data"], lambda data: f"v{v2}" not in {m["id"] for m in data},
                   f"v{v2} to be unloaded")
        # rolling back the first champion serves the bare base
        store.rollback_to_base()
        base = server.call("GET", "/readyz")[1]["base"]
        traffic.wait_for(base)
        # adapters that cannot be served: routing stays on the base, the failure is reported
        foreign = store.add(adapters["a"], base_digest="f" * 64)  # trained on another base
        store.registry.promote(foreign)
        ready = wait_until(lambda: server.call("GET", "/readyz")[1], lambda r: "champion" in r["errors"], "the error")
        assert f"v{foreign}" in ready["errors"]["champion"] and "trained on base ffffffffffff" in ready["errors"]["champion"]
        assert ready["routes"] == {"champion": base} and ready["ready"]
        corrupt = store.add(adapters["corrupt"])
        store.registry.promote(corrupt)
        ready = wait_until(lambda: server.call("GET", "/readyz")[1],
                           lambda r: f"v{corrupt}" in r["errors"].get("champion", ""), "the second error")
        assert "unreadable" in ready["errors"]["champion"] and ready["routes"] == {"champion": base}
        time.sleep(1.0)  # answers after the failed swaps still come from the base
        after = len(traffic.answers)
        traffic.wait_for(base)

    assert traffic.failures == [], traffic.failures[:5]
    seen = Counter(a["model_version"] for a in traffic.answers)
    assert set(seen) == {f"v{v1}", f"v{v2}", base}, seen
    assert all(a["model_version"] == base for a in traffic.answers[after:])
    # each answer came whole from one adapter: a prompt gets one text per model version
    texts = defaultdict(set)
    for a in traffic.answers:
        texts[(a["model_version"], a["prompt"])].add(a["generated_text"])
    assert all(len(t) == 1 for t in texts.values()), {k: v for k, v in texts.items() if len(v) > 1}
    assert len({texts[(version, PROMPTS[0])].pop() for version in seen}) == 3, "the three models answer differently"
    # every answer is logged once, with the version that answered it
    answered = {a["request_id"]: a["model_version"] for a in traffic.answers}
    records = wait_until(lambda: logged_records(server), lambda rows: set(answered) <= {r["request_id"] for r in rows},
                         "the log records")
    assert {r["request_id"]: r["model_version"] for r in records if r["request_id"] in answered} == answered
    status, text, _ = server.call("GET", "/metrics")
    failed_swaps = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("flywheel_adapter_swaps_total{") and 'result="failed"' in line)
    assert failed_swaps == 2  # one per version that could not be loaded (as canary, then not retried as champion)
    assert "flywheel_capture_dropped_records_total 0.0" in text


def test_gateway_drives_a_second_server_as_its_upstream(start_server, tiny_base_model, adapters, template_db,
                                                        tmp_path) -> None:
    token = "upstream-key"
    upstream = start_server({"model": {"base": str(tiny_base_model), "max_new_tokens": 6, "cpu_threads": 1},
                             "serving": {"follow_registry": False}}, name="upstream",
                            env={"FLYWHEEL_ADMIN_TOKEN": token})
    store = Registered(tmp_path / "ws", template_db, "gateway", tiny_base_model)
    v1 = store.add(adapters["a"])
    store.registry.promote(v1)
    v2 = store.add(adapters["b"])
    gateway = start_server({"paths": {"workspace": str(tmp_path / "ws")}, "registry": {"model_name": "gateway"},
                            "serving": {"backend": "vllm", "upstream": upstream.url, "upstream_model": "base",
                                        "poll_s": 0.2, "capture_flush_s": 0.2}},
                           name="gateway", env={"VLLM_API_KEY": token})
    auth = {"Authorization": f"Bearer {token}"}

    def upstream_models() -> set[str]:
        return {m["id"] for m in upstream.call("GET", "/v1/models")[1]["data"]}

    # the gateway loaded champion and canary into the upstream through its runtime LoRA endpoint
    assert gateway.call("GET", "/readyz")[1]["routes"] == {"champion": f"v{v1}", "canary": f"v{v2}"}
    assert {f"v{v1}", f"v{v2}"} <= upstream_models()
    status, answer, _ = gateway.call("POST", "/generate", {"prompt": PROMPTS[0], "max_tokens": 6, "user_id": "u-9"})
    assert status == 200 and answer["model_version"] == f"v{v1}" and answer["variant"] == "champion", answer
    direct = upstream.call("POST", "/v1/chat/completions", {"model": f"v{v1}", "max_tokens": 6,
                                                            "messages": [{"role": "user", "content": PROMPTS[0]}]})[1]
    assert answer["generated_text"] == direct["choices"][0]["message"]["content"]
    # streaming is relayed piece by piece from the upstream's stream
    import urllib.request

    request = urllib.request.Request(gateway.url + "/v1/chat/completions", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=json.dumps({"messages": [{"role": "user", "content": PROMPTS[0]}],
                                                      "max_tokens": 6, "stream": True}).encode())
    with urllib.request.urlopen(request, timeout=120) as response:
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in map(json.loads, events[:-1]) if c["choices"])
    assert streamed.strip() == answer["generated_text"]

    # a promotion swaps the adapter in the upstream: v2 loaded, v1 unloaded once drained
    store.registry.promote(v2)
    assert gateway.call("POST", "/admin/reload")[1]["routes"] == {"champion": f"v{v2}"}
    wait_until(upstream_models, lambda ids: f"v{v2}" in ids and f"v{v1}" not in ids, "the upstream to swap")
    assert gateway.call("POST", "/generate", {"prompt": PROMPTS[1]})[1]["model_version"] == f"v{v2}"

    # the upstream loses the adapter (a restart): generation fails with 500 and a request id, is counted,
    # the gateway keeps serving, and a reload loads the adapter into the upstream again
    assert upstream.call("POST", "/v1/unload_lora_adapter", {"lora_name": f"v{v2}"}, headers=auth)[0] == 200
    wait_until(upstream_models, lambda ids: f"v{v2}" not in ids, "the upstream to unload")
    status, failed, headers = gateway.call("POST", "/generate", {"prompt": PROMPTS[2]})
    assert status == 500 and failed["error"]["request_id"] == headers["x-request-id"]
    assert "the upstream" in failed["error"]["message"]
    assert gateway.call("POST", "/generate", {"prompt": PROMPTS[2], "model": "base"})[0] == 200
    _, text, _ = gateway.call("GET", "/metrics")
    assert 'flywheel_generation_errors_total{variant="champion"} 1.0' in text
    assert gateway.call("POST", "/admin/reload")[0] == 200
    assert gateway.call("POST", "/generate", {"prompt": PROMPTS[2]})[1]["model_version"] == f"v{v2}"

    # the gateway logs what it answered (the failed request is not among them)
    records = wait_until(lambda: logged_records(gateway), lambda rows: len(rows) >= 5, "the gateway's records")
    assert Counter(r["model_version"] for r in records) == Counter({f"v{v1}": 2, f"v{v2}": 2, "base@base": 1})
    assert failed["error"]["request_id"] not in {r["request_id"] for r in records}

"""Shared test set-up: no network, no telemetry, nothing written outside tmp paths."""

from __future__ import annotations

import os

# Set before anything imports prefect or mlflow.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory):
    """The even-smaller embedded base (size="test"), built once per test session from the shipped KB."""
    from pathlib import Path

    from tasks.config import SHIPPED_DATA
    from tasks.base_model import bootstrap_base_model

    out = tmp_path_factory.mktemp("tiny_base") / "base"
    return Path(bootstrap_base_model(out, data_dir=SHIPPED_DATA, size="test")["path"])


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory):
    """An MLflow sqlite store with its tables migrated, to copy into a test's workspace (creating
    the tables takes seconds; copying the file takes none)."""
    from tasks.config import load_settings
    from tasks.registry import Registry

    workspace = tmp_path_factory.mktemp("registry-template")
    Registry(load_settings(None, {"paths.workspace": str(workspace)}))
    return workspace / "mlflow.db"


@pytest.fixture()
def adapter(tmp_path):
    """A stand-in adapter folder for registry tests: the registry stores files, it never loads them."""
    import json

    folder = tmp_path / "05_adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}), encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    return folder


# ------------------------------------------------------------------ serving (tests/test_serving*.py)


class ServerProcess:
    """A `flywheel serve` subprocess on 127.0.0.1 and a small HTTP client for it."""

    def __init__(self, proc, url: str, log, workspace) -> None:
        self.proc, self.url, self.log, self.workspace = proc, url, log, workspace

    def call(self, method: str, path: str, body=None, *, headers=None, raw: bytes | None = None, timeout: float = 120):
        """(status, parsed JSON or text, response headers by lower-case name); HTTP errors are returned."""
        import json
        import urllib.error
        import urllib.request

        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, payload, got = response.status, response.read(), response.headers
        except urllib.error.HTTPError as err:
            status, payload, got = err.code, err.read(), err.headers
        text = payload.decode("utf-8", errors="replace")
        got = {name.lower(): value for name, value in got.items()}
        try:
            return status, json.loads(text), got
        except ValueError:
            return status, text, got

    def stop(self, timeout_s: float = 90.0) -> int:
        """SIGTERM (the graceful stop) and wait; kill if it hangs. Returns the exit code."""
        from serving.process import stop_gracefully

        return stop_gracefully(self.proc, timeout_s)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """start(values, name=..., env=...) runs `flywheel serve` with `values` (a config as a dict, laid
    over the defaults) on a free port and waits until /readyz answers 200; every server still running
    is stopped at the end of the session."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from serving.process import free_port, wait_ready
    from tasks.config import REPO_ROOT

    started: list[ServerProcess] = []

    def start(values: dict, *, name: str = "server", env: dict | None = None, ready_timeout_s: float = 240) -> ServerProcess:
        root = tmp_path_factory.mktemp(name)
        values = json.loads(json.dumps(values, default=str))
        values.setdefault("paths", {}).setdefault("workspace", str(root / "ws"))
        config = root / "config.yaml"
        config.write_text(yaml.safe_dump(values), encoding="utf-8")
        port = free_port()
        log = root / "server.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "-c", str(config), "--port", str(port)],
                                    cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})})
        server = ServerProcess(proc, f"http://127.0.0.1:{port}", log, Path(values["paths"]["workspace"]))
        started.append(server)
        if not wait_ready(server.url, proc, ready_timeout_s):
            server.stop(5)
            raise RuntimeError(f"{name} did not become ready:\n{server.output()[-3000:]}")
        return server

    yield start
    for server in started:
        server.stop(30)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """A local S3-compatible server (moto in server mode, a process on 127.0.0.1); yields its URL."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    pytest.importorskip("moto")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as handle:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=handle, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory):
    """A training set (train.jsonl, val.jsonl) of v2 question/answer pairs as curated cases: what a
    retraining cycle would train on."""
    import json

    from tasks.config import SHIPPED_DATA, DatasetSettings
    from tasks.dataset import build_dataset
    from tasks.knowledge import load_knowledge_base

    root = tmp_path_factory.mktemp("train_ds")
    v2_topics = [t for t in load_knowledge_base(SHIPPED_DATA, "v2").topics if t.kb_version == "v2"]
    rows = [{"case_id": f"{t.id}-{i}", "prompt": q, "corrected_response": t.answer}
            for t in v2_topics[:4] for i, q in enumerate(t.questions)]
    (root / "curated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build_dataset(root / "curated.jsonl", root / "ds", DatasetSettings(val_share=0.15, new_cases_holdout=0.0),
                  cycle_id="t1")
    return root / "ds"

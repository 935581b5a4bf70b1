"""Live traffic for the demo and the tests: a `flywheel serve` process on a free loopback port, simulated
users who ask it questions (and re-ask when refused), and a deliberately broken adapter that refuses
everything (`--bad-canary`).

`SimulatedUsers` is what a `flows.ramp.SimulatedClock` calls between the ramp's looks: each simulated hour
brings `users_per_hour` new users, each asking one question from the knowledge base (new products
included) and asking again in other words when the answer is a refusal, as the simulator's users do.
Requests go concurrently so that the server batches them; `traffic(hours)` returns once every answer it
got is in the server's log files, so the ramp's next look sees them.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from serving.process import free_port, stop_gracefully, wait_ready
from tasks.config import REPO_ROOT, Settings
from tasks.files import write_jsonl
from tasks.knowledge import load_knowledge_base
from tasks.refusal import detect_refusals

READY_TIMEOUT_S = 300.0


class LiveServer:
    """`flywheel serve` with `settings` (dumped to a config file) on a free port of 127.0.0.1, as a context
    manager: entered once /readyz says ready, left with SIGTERM (the graceful stop: every record written)."""

    def __init__(self, settings: Settings, folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.folder = Path(folder)
        # flushed often: each simulated hour's look waits for its users' records to be on disk
        serving = settings.serving.model_copy(update={"url": self.url, "capture_flush_s": 0.2})
        self.settings = settings.model_copy(update={"serving": serving})
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> LiveServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "serve.yaml"
        config.write_text(yaml.safe_dump(self.settings.dump()), encoding="utf-8")
        self.log = self.folder / "serve.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "-c", str(config), "--port",
                                          str(self.port), "--no-access-log"], cwd=REPO_ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_ready(self.url, self.proc, READY_TIMEOUT_S):
            self.__exit__()
            tail = self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise RuntimeError(f"the model server did not become ready (log {self.log}):\n{tail}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            stop_gracefully(self.proc, 60)


def post_json(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class SimulatedUsers:
    """New users every simulated hour, asking the server at `url` questions; counts what each arm answered.
    `settings` are the server's (where it logs, the refusal detector's settings)."""

    def __init__(self, url: str, settings: Settings, *, users_per_hour: int, seed: int = 0, workers: int = 8) -> None:
        kb = load_knowledge_base(settings.paths.data_dir, "v2")
        self.questions = [list(topic.questions) for topic in kb.topics if len(topic.questions) >= 2]
        self.url, self.settings = url.rstrip("/"), settings
        self.users_per_hour, self.workers = users_per_hour, workers
        self.rng = random.Random(seed)
        self.next_user = 0
        self.answered: dict[str, int] = {}  # variant -> requests
        self.refused: dict[str, int] = {}  # variant -> refusals

    def __call__(self, hours: float) -> None:
        count = max(1, round(self.users_per_hour * hours))
        users = [(f"sim-user-{self.next_user + n}", self.rng.choice(self.questions)) for n in range(count)]
        self.next_user += count
        with ThreadPoolExecutor(self.workers) as pool:
            request_ids = [rid for ids in pool.map(self._session, users) for rid in ids]
        self._wait_logged(set(request_ids))

    def _session(self, user: tuple[str, list[str]]) -> list[str]:
        user_id, phrasings = user
        first, again = random.Random(user_id).sample(phrasings, 2)
        ids = []
        for question in (first, again):
            answer = post_json(self.url + "/generate", {"prompt": question, "user_id": user_id})
            ids.append(answer["request_id"])
            refused = bool(detect_refusals([answer["generated_text"]], self.settings.signals)[0])
            self.answered[answer["variant"]] = self.answered.get(answer["variant"], 0) + 1
            self.refused[answer["variant"]] = self.refused.get(answer["variant"], 0) + int(refused)
            if not refused:  # satisfied: no re-ask
                break
        return ids

    def _wait_logged(self, request_ids: set[str], timeout_s: float = 60) -> None:
        """Until every request id is in the server's log files (the capture writer flushes periodically)."""
        folder = self.settings.serving.log_dir or self.settings.paths.under("logs")
        deadline = time.monotonic() + timeout_s
        while request_ids and time.monotonic() < deadline:
            for path in Path(folder).glob("*.jsonl"):
                if path.name.endswith(".feedback.jsonl"):
                    continue
                with open(path, encoding="utf-8") as handle:
                    request_ids -= {json.loads(line).get("request_id") for line in handle if line.strip()}
            if request_ids:
                time.sleep(0.2)
        if request_ids:
            raise RuntimeError(f"{len(request_ids)} answered requests never reached the server's logs in {folder}")


def train_refusing_adapter(settings: Settings, base: Path, out: Path, *, steps: int = 30) -> Path:
    """A deliberately broken adapter: LoRA-trained on the knowledge base's questions, every answer the
    refusal phrase (what `--bad-canary` registers to show the ramp halting it)."""
    from tasks.dataset import TRAIN_FILE, VAL_FILE
    from tasks.train import train_adapter

    kb = load_knowledge_base(settings.paths.data_dir, "v2")
    refusal = kb.refusals["en"][0]
    rows = [{"prompt": q, "response": refusal} for topic in kb.topics for q in topic.questions]
    random.Random(0).shuffle(rows)
    data = Path(out).parent / f"{Path(out).name}-data"
    data.mkdir(parents=True, exist_ok=True)
    write_jsonl(data / TRAIN_FILE, rows[: max(1, len(rows) - 16)])
    write_jsonl(data / VAL_FILE, rows[-16:])
    cfg = settings.train.model_copy(update={"max_steps": steps, "learning_rate": 5e-3, "warmup_ratio": 0.0,
                                            "save_steps": steps, "early_stopping_patience": 0, "batch_size": 8,
                                            "scheduler": "constant"})
    train_adapter(data, Path(out), cfg, base_path=Path(base))
    return Path(out)


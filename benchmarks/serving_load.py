"""Serving under load: `flywheel serve` on the embedded base model, C concurrent clients for T seconds.

    python benchmarks/serving_load.py [--clients 16] [--seconds 20] [--rounds 2] [--max-tokens 32]
                                      [--swap-every 3] [--workspace workspace/bench-serving] [--base DIR]

Three servers run side by side on the same model and registry (each its own process and log folder):

    batched     serving.max_batch_size 32, max_wait_ms 5, capture on   (the defaults)
    unbatched   serving.max_batch_size 1,                 capture on
    no-capture  serving.max_batch_size 32, max_wait_ms 5, capture off

and are measured in turns for --rounds rounds: batched, no-capture, unbatched in even rounds, the reverse
in odd ones, so that the two servers of the capture comparison always run back to back, each first
half of the time (machine load drifts over both alike). Per server: throughput (answers/s) and
p50/p95/p99 latency seen by the clients. Ratios: batched / unbatched throughput (goal >= 3 at 16
clients) and no-capture vs batched (capture overhead: batched / no-capture, goal >= 0.95), pooled over
the rounds and per round.

Then the swap phase on the batched server, with --clients and again with --swap-light-clients clients (a
server that is not saturated): the champion alias is flipped between two registry versions (random LoRA
adapters on the base) every --swap-every seconds while the clients run. Half the flips are
announced the way `flywheel promote|rollback` does when serving.url is set (POST /admin/reload), half are
left to the server's poll (serving.poll_s, 1 s). Figures: failed requests (goal 0) and, per flip, the time
from the alias being set to the server's routing switching (read from /readyz every 20 ms) and to the
first answer from the new version (goal < 1 s; it includes that request's own latency under the load).

Beside wall-clock throughput, each server's CPU time per answer is measured (/proc): on a shared machine
the wall-clock ratios move with the load of other processes, the per-CPU-second ones much less. And
capture's own cost is measured in this process: the CPU microseconds per record that capture on adds
over capture off (queue it, the writer thread's wake-ups, validate, serialise and append it), with
records arriving one by one as answers do, set against the batched server's CPU per answer.

Last, every server is stopped with SIGTERM and its log files are read through the log store: records
must equal the answers the clients got (the no-capture server writes none).

Clients are threads with one keep-alive connection each, sending /generate with knowledge-base
questions (random, seeded) and user ids; each window opens after 2 s of load and counts the answers
received inside it (their latencies make the percentiles). Access logging is off in all servers; each runs torch on --threads threads (1:
on a small shared machine, torch's spinning worker threads slow each other down several-fold). Prints a table on stderr
and one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from serving.process import free_port, stop_gracefully, wait_ready  # noqa: E402
from tasks.config import SHIPPED_DATA, load_settings  # noqa: E402
from tasks.knowledge import load_knowledge_base  # noqa: E402

SERVERS = {
    "batched": {"max_batch_size": 32, "max_wait_ms": 5.0, "capture": True},
    "unbatched": {"max_batch_size": 1, "capture": True},
    "no-capture": {"max_batch_size": 32, "max_wait_ms": 5.0, "capture": False},
}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ set-up


def prepare(workspace: Path, base: Path | None) -> tuple[dict, list[str]]:
    """Base model, two registered adapter versions (v1 champion, v2 approved); returns (config values, versions)."""
    from tasks.base_model import bootstrap_for, model_digest
    from tasks.registry import Registry

    workspace.mkdir(parents=True, exist_ok=True)
    values = {"paths": {"workspace": str(workspace)}, "registry": {"model_name": "bench-serving"}}
    if base is not None:
        values["model"] = {"base": str(base)}
    settings = load_settings(None, {"paths.workspace": str(workspace), "registry.model_name": "bench-serving",
                                    **({"model.base": str(base)} if base else {})})
    if base is None:
        say("building / reusing the embedded base model ...")
        base = Path(bootstrap_for(settings, progress=say)["path"])
    registry = Registry(settings)
    status = registry.status()
    versions = [v["version"] for v in status["versions"]]
    if len(versions) < 2:
        digest = model_digest(base)
        for seed in (1, 2):
            adapter = _random_adapter(base, workspace / f"adapter-{seed}", seed)
            version = registry.register_canary(adapter, cycle_id=f"bench-{seed}", base_path=base, base_digest=digest,
                                               dataset_sha256="0" * 64,
                                               eval_report={"gate": {"passed": True, "checks": []}, "suites": {}})
            registry.review(version, decision="approve", reviewer="bench", comment="benchmark adapter")
            versions.append(version)
    v1, v2 = versions[:2]
    if registry.status()["champion"] != v1:
        registry.promote(v1) if registry.status()["champion"] is None else registry.rollback(v1)
    return values, [v1, v2]


def _random_adapter(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    shutil.rmtree(out, ignore_errors=True)
    get_peft_model(model, config).save_pretrained(out)
    return out


class Server:
    def __init__(self, name: str, values: dict, workspace: Path) -> None:
        self.name = name
        folder = workspace / "servers" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        self.log_dir = folder / "logs"
        config = {**values, "serving": {**SERVERS[name], "log_dir": str(self.log_dir)}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = open(folder / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "-c", str(folder / "config.yaml"),
                                      "--port", str(self.port), "--no-access-log"], cwd=ROOT, stdout=self.output,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.folder = folder

    def wait_ready(self, timeout_s: float = 600) -> None:
        if not wait_ready(self.url, self.proc, timeout_s, every_s=0.5):
            raise RuntimeError(f"server {self.name} not ready in {timeout_s}s (or exited): "
                               f"{(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> int:
        code = stop_gracefully(self.proc, 120)
        self.output.close()
        return code

    def cpu_seconds(self) -> float:
        """CPU time the server process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def records(self) -> int:
        from tasks.logs import load_logs

        files = [str(f) for f in self.log_dir.glob("*.jsonl")] if self.log_dir.is_dir() else []
        return load_logs(files, load_settings(None).logs).accepted if files else 0


# ------------------------------------------------------------------------------------- load


class Clients:
    """`count` threads sending /generate over keep-alive connections until stopped."""

    def __init__(self, server: Server, count: int, questions: list[str], max_tokens: int, seed: int) -> None:
        self.server, self.count, self.questions, self.max_tokens, self.seed = server, count, questions, max_tokens, seed
        self.answers: list[tuple[float, float, str]] = []  # (sent, received, model_version)
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.count)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)

    def _run(self, number: int) -> None:
        rng = random.Random(self.seed * 1000 + number)
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
        while not self._stop.is_set():
            body = json.dumps({"prompt": rng.choice(self.questions), "max_tokens": self.max_tokens,
                               "user_id": f"bench-{number}"})
            sent = time.monotonic()
            try:
                connection.request("POST", "/generate", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException) as err:
                self.failures.append(f"{type(err).__name__}: {err}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)
                continue
            if response.status != 200:
                self.failures.append(f"HTTP {response.status}: {payload[:200]!r}")
                continue
            self.answers.append((sent, time.monotonic(), json.loads(payload)["model_version"]))
        connection.close()


def measure(server: Server, clients: int, seconds: float, questions: list[str], max_tokens: int, seed: int,
            warmup_s: float = 2.0) -> dict:
    """The answers received inside a window of `seconds` that opens after `warmup_s` of load (the clients
    are saturating the server by then: throughput = answers received / window)."""
    load = Clients(server, clients, questions, max_tokens, seed)
    load.start()
    time.sleep(warmup_s)
    opened, cpu_before = time.monotonic(), server.cpu_seconds()
    time.sleep(seconds)
    closed, cpu_after = time.monotonic(), server.cpu_seconds()
    load.stop()
    inside = [a for a in load.answers if opened <= a[1] <= closed]
    return {"answers": inside, "all_answers": len(load.answers), "failures": load.failures, "seconds": closed - opened,
            "cpu_seconds": cpu_after - cpu_before}


def summarise(runs: list[dict]) -> dict:
    answers = [a for run in runs for a in run["answers"]]
    seconds = sum(run["seconds"] for run in runs)
    latencies = sorted((received - sent) * 1000 for sent, received, _ in answers)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

    cpu = sum(run["cpu_seconds"] for run in runs)
    return {"answers": len(answers), "failed": sum(len(run["failures"]) for run in runs),
            "throughput_rps": round(len(answers) / seconds, 2) if answers else 0.0,
            "cpu_ms_per_answer": round(1000 * cpu / len(answers), 2) if answers else None,
            "p50_ms": pct(0.50), "p95_ms": pct(0.95),
            "p99_ms": pct(0.99), "per_round_rps": [round(len(r["answers"]) / r["seconds"], 2) for r in runs]}


def swap_phase(server: Server, values: dict, versions: list[str], clients: int, seconds: float, every: float,
               questions: list[str], max_tokens: int) -> dict:
    """Flip the champion v1 <-> v2 every `every` seconds under load; half announced, half left to the poll."""
    from serving.notify import reload_server
    from tasks.registry import Registry

    settings = load_settings(None, {"paths.workspace": values["paths"]["workspace"],
                                    "registry.model_name": values["registry"]["model_name"],
                                    "serving.url": server.url})
    registry = Registry(settings)
    v1, v2 = versions
    load = Clients(server, clients, questions, max_tokens, seed=99)
    load.start()
    routed: list[tuple[float, str]] = []  # (when, the champion's model_version), read from /readyz
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            try:
                with urllib.request.urlopen(server.url + "/readyz", timeout=10) as answer:
                    routed.append((time.monotonic(), json.loads(answer.read())["routes"]["champion"]))
            except OSError:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    flips = []
    started = time.monotonic()
    number = 0
    while time.monotonic() - started < seconds:
        time.sleep(every)
        mode = "notify" if (number // 2) % 2 == 0 else "poll"
        target = v2 if registry.status()["champion"] == v1 else v1
        call_started = time.monotonic()
        moved = registry.promote(target) if target == v2 else registry.rollback(target)
        alias_set = call_started + moved["seconds"]  # the alias switch inside the call (the audit entry follows)
        if mode == "notify":
            reload_server(settings)
        flips.append({"to": f"v{target}", "mode": mode, "alias_set": alias_set})
        number += 1
    time.sleep(every)
    load.stop()
    watching.set()
    watcher.join(10)
    for flip in flips:
        switched = [when for when, version in routed if version == flip["to"] and when >= flip["alias_set"]]
        flip["switched_s"] = round(min(switched) - flip["alias_set"], 3) if switched else None
        firsts = [received for sent, received, version in load.answers
                  if version == flip["to"] and received >= flip["alias_set"]]
        flip["first_answer_s"] = round(min(firsts) - flip["alias_set"], 3) if firsts else None
    by_mode = {}
    for mode in ("notify", "poll"):
        mine = [f for f in flips if f["mode"] == mode]
        by_mode[mode] = {"flips": len(mine), **_spread("routing_switched", [f["switched_s"] for f in mine]),
                         **_spread("first_answer", [f["first_answer_s"] for f in mine])}
    return {"flips": len(flips), "answers": len(load.answers), "failed": len(load.failures),
            "failures": load.failures[:5], "alias_set_to": by_mode,
            "per_flip": [{k: f[k] for k in ("to", "mode", "switched_s", "first_answer_s")} for f in flips]}


def _spread(name: str, values: list[float | None]) -> dict:
    known = [v for v in values if v is not None]
    return {f"{name}_median_s": round(statistics.median(known), 3) if known else None,
            f"{name}_max_s": max(known) if known else None}


def _ratio(a: float, b: float, digits: int) -> float | None:
    return round(a / b, digits) if b else None


def capture_cost(records: int = 4000, every_s: float = 0.001) -> float:
    """CPU microseconds per answered request that log capture adds, measured in this process: the same
    requests' LogRecords with capture on and off, one every `every_s` as answers arrive at a server (so
    the writer thread's wake-ups count), the difference in process CPU time per record."""
    import asyncio
    import tempfile
    from datetime import datetime, timezone

    from serving.capture import Capture
    from serving.metrics import Metrics
    from tasks.contracts import LogRecord

    async def run(capture: Capture) -> None:
        for number in range(records):
            await capture.record(LogRecord(
                request_id=f"gen-{number:032x}", ts=datetime.now(timezone.utc), user_id=f"bench-{number % 16}",
                prompt="How much is the Nimbus S5 with the extended warranty?", response="The Nimbus S5 costs 499 euros. "
                "The extended warranty adds two years for 49 euros.", model_version="v2", latency_ms=812.5,
                prompt_tokens=17, completion_tokens=24, metadata={"variant": "champion", "route": "/generate",
                                                                  "adapter": "v2", "temperature": 0.0, "max_tokens": 32,
                                                                  "stream": False, "finish_reason": "stop"}))
            await asyncio.sleep(every_s)

    def cpu_seconds(enabled: bool) -> float:
        with tempfile.TemporaryDirectory() as folder:
            capture = Capture(Path(folder), Metrics(), enabled=enabled, queue_size=records + 1)
            capture.start()
            started = time.process_time()
            asyncio.run(run(capture))
            capture.close()
            return time.process_time() - started

    without, with_capture = cpu_seconds(False), cpu_seconds(True)
    return round(max(0.0, with_capture - without) / records * 1e6, 1)


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0, help="per server and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--swap-every", type=float, default=3.0)
    parser.add_argument("--swap-seconds", type=float, default=30.0)
    parser.add_argument("--swap-light-clients", type=int, default=2,
                        help="the swap phase runs again with this many clients (a server that is not saturated)")
    parser.add_argument("--workspace", type=Path, default=ROOT / "workspace" / "bench-serving")
    parser.add_argument("--base", type=Path, default=None, help="base model folder [default: the embedded one]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads per server (model.cpu_threads; 0: torch's default). Three servers and "
                             "the clients share the machine: more threads than cores make them wait on each other")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

    values, versions = prepare(args.workspace.resolve(), args.base)
    values.setdefault("model", {})["cpu_threads"] = args.threads
    questions = sorted({q for t in load_knowledge_base(SHIPPED_DATA, "v2").topics for q in t.questions})
    say(f"{len(questions)} distinct questions; starting {len(SERVERS)} servers ...")
    servers = {name: Server(name, values, args.workspace.resolve()) for name in SERVERS}
    try:
        for server in servers.values():
            server.wait_ready()
        runs: dict[str, list[dict]] = {name: [] for name in servers}
        names = ["batched", "no-capture", "unbatched"]
        for round_number in range(args.rounds):
            for name in (names if round_number % 2 == 0 else names[::-1]):
                server = servers[name]
                say(f"round {round_number + 1}: {name} ({args.clients} clients, {args.seconds:.0f} s)")
                runs[name].append(measure(server, args.clients, args.seconds, questions, args.max_tokens,
                                          seed=round_number))
        swap = {}
        for clients in dict.fromkeys((args.clients, args.swap_light_clients)):
            say(f"swap phase on the batched server, {clients} clients: a flip every {args.swap_every} s for "
                f"{args.swap_seconds:.0f} s")
            swap[clients] = swap_phase(servers["batched"], values, versions, clients, args.swap_seconds,
                                       args.swap_every, questions, args.max_tokens)
    finally:
        codes = {name: server.stop() for name, server in servers.items()}
    results = {name: summarise(r) for name, r in runs.items()}
    capture_us = capture_cost()
    answered = {name: sum(r["all_answers"] for r in runs[name]) for name in servers}
    answered["batched"] += sum(phase["answers"] for phase in swap.values())
    completeness = {name: {"records": server.records(), "answers": answered[name],
                           "equal": server.records() == (answered[name] if SERVERS[name]["capture"] else 0)}
                    for name, server in servers.items()}
    out = {
        "clients": args.clients, "seconds_per_round": args.seconds, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "threads_per_server": args.threads,
        "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "servers": results,
        "batching_speedup": _ratio(results["batched"]["throughput_rps"], results["unbatched"]["throughput_rps"], 2),
        "capture_overhead_ratio": _ratio(results["batched"]["throughput_rps"], results["no-capture"]["throughput_rps"], 3),
        # per CPU second of the server: what the ratios are on a machine the server has to itself
        "batching_speedup_cpu": _ratio(results["unbatched"]["cpu_ms_per_answer"], results["batched"]["cpu_ms_per_answer"], 2),
        "capture_overhead_ratio_cpu": _ratio(results["no-capture"]["cpu_ms_per_answer"],
                                             results["batched"]["cpu_ms_per_answer"], 3),
        # the same per round: the two servers ran back to back (a drift in machine load hits both alike)
        "capture_overhead_per_round": [_ratio(len(c["answers"]) / c["seconds"], len(n["answers"]) / n["seconds"], 3)
                                       for c, n in zip(runs["batched"], runs["no-capture"])],
        "capture_overhead_per_round_cpu": [_ratio(n["cpu_seconds"] / len(n["answers"]), c["cpu_seconds"] / len(c["answers"]), 3)
                                           if c["answers"] and n["answers"] else None
                                           for c, n in zip(runs["batched"], runs["no-capture"])],
        # capture's own CPU cost per request, against what the batched server spends per answer
        "capture_cpu_us_per_record": capture_us,
        "capture_overhead_ratio_estimate": _ratio(results["batched"]["cpu_ms_per_answer"],
                                                  results["batched"]["cpu_ms_per_answer"] + capture_us / 1000, 4),
        "swap": swap, "log_completeness": completeness, "exit_codes": codes,
    }
    rows = [("server", "answers/s", "CPU ms/answer", "p50 ms", "p95 ms", "p99 ms", "failed")]
    rows += [(n, r["throughput_rps"], r["cpu_ms_per_answer"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["failed"])
             for n, r in results.items()]
    say("\n" + "\n".join(f"{a:<12}{b!s:>11}{c!s:>15}{d!s:>9}{e!s:>9}{f!s:>9}{g!s:>8}" for a, b, c, d, e, f, g in rows))
    say(f"batching speedup (batched / unbatched): {out['batching_speedup']}x wall clock, "
        f"{out['batching_speedup_cpu']}x per CPU second   goal >= 3")
    say(f"capture overhead (with / without capture): {out['capture_overhead_ratio']} wall clock, "
        f"{out['capture_overhead_ratio_cpu']} per CPU second; capture itself costs {capture_us} us CPU per record: "
        f"{out['capture_overhead_ratio_estimate']} of the batched server's CPU per answer   goal >= 0.95")
    say(f"capture overhead per round (back to back): {out['capture_overhead_per_round']} wall clock, "
        f"{out['capture_overhead_per_round_cpu']} per CPU second")
    for clients, phase in swap.items():
        say(f"swap with {clients} clients: {phase['flips']} flips, {phase['answers']} answers, {phase['failed']} failed "
            "(goal 0); from the alias being set, median / max s:")
        for mode, figures in phase["alias_set_to"].items():
            say(f"  {mode:<7} routing switched {figures['routing_switched_median_s']} / {figures['routing_switched_max_s']}"
                f"   first answer from the new version {figures['first_answer_median_s']} / "
                f"{figures['first_answer_max_s']}   (goal < 1 s)")
    say("log records == answers: " + ", ".join(f"{n} {c['records']}/{c['answers']}" + ("" if c["equal"] else " MISMATCH")
                                              for n, c in completeness.items()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()

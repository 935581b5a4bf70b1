"""Rollback latency: from the start of a rollback to the champion alias being visible to another process.

Two figures, each the median over --repeats rollbacks (alternating champion v2 -> v1 -> v2 ...):

* call:  `Registry.rollback()` in a warm process (what a running flow or service does), start of the
         call -> a separate, already-running process polling `MlflowClient.get_model_version_by_alias`
         sees the new version.
* cli:   a fresh `flywheel rollback --json` process (or, before the CLI has the command, a fresh
         `python -c "Registry(settings).rollback()"`), process start -> alias seen by the poller. This
         includes interpreter start-up and, on the sqlite store, `import mlflow`.

Store: by default the workspace's `sqlite:///.../mlflow.db`. With --server the same store is served by
an `mlflow server` started here, and the rollbacks and the poller go through it
(registry.tracking_uri http://..., which the CLI gets from a config file): the set-up of
`flywheel stack up` or a shared tracking server.

The poller waits --poll-interval between reads (default 50 ms, the resolution of the cli figure). A
tighter loop measures worse, not better: one read costs ~8 ms of CPU on sqlite and more on the server's
side with --server, so a 1 ms loop keeps a core (or the server) busy and, on a 2-core machine, slows the
very process being timed (the cli figure doubled).

Usage: python benchmarks/rollback_latency.py [--repeats 5] [--workspace DIR] [--no-cli] [--server]
                                             [--poll-interval 0.05]
Prints a table on stderr and one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POLLER = r"""
import sys, time
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1], sys.argv[1])
name, interval = sys.argv[2], float(sys.argv[3])
print("ready", flush=True)
for line in sys.stdin:
    want = line.strip()
    polls = 0
    while True:
        polls += 1
        if str(client.get_model_version_by_alias(name, "champion").version) == want:
            print(f"{time.time()} {polls}", flush=True)
            break
        time.sleep(interval)
"""

CLI_FALLBACK = r"""
import json, sys
from tasks.config import load_settings
from tasks.registry import Registry
settings = load_settings(sys.argv[3] or None, {"paths.workspace": sys.argv[1]})
print(json.dumps(Registry(settings).rollback(sys.argv[2])))
"""


def _setup(workspace: Path):
    from tasks.config import load_settings
    from tasks.registry import Registry

    settings = load_settings(None, {"paths.workspace": str(workspace)})
    registry = Registry(settings)
    adapter = workspace / "dummy_adapter"
    adapter.mkdir(parents=True, exist_ok=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}', encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    report = {"gate": {"passed": True, "checks": []}, "suites": {}}
    versions = []
    for cycle in ("bench-1", "bench-2"):
        version = registry.register_canary(adapter, cycle_id=cycle, base_path=workspace / "base", base_digest="0" * 64,
                                           dataset_sha256="0" * 64, eval_report=report)
        registry.review(version, decision="approve", reviewer="benchmark", comment="latency benchmark")
        registry.promote(version)
        versions.append(version)
    return settings, registry, versions


def _start_server(workspace: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on the workspace's store (as `flywheel stack up` starts it); returns (process, URL)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Without its job runner: that starts background processes whose imports would compete with the
    # rollbacks being timed; the registry never uses it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(workspace / "mlflow-server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                   "--workers", "1", "--backend-store-uri", f"sqlite:///{workspace / 'mlflow.db'}",
                                   "--artifacts-destination", str(workspace / "mlartifacts")],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                return server, url
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise SystemExit(f"mlflow server did not start; see {workspace / 'mlflow-server.log'}")
            time.sleep(0.5)


def _cli_command(workspace: Path, to: str, config: Path | None) -> tuple[list[str], str]:
    probe = subprocess.run([sys.executable, "-m", "flows.cli", "rollback", "--help"], cwd=REPO,
                           capture_output=True, text=True)
    if probe.returncode == 0 and "--to" in probe.stdout:
        command = [sys.executable, "-m", "flows.cli", "rollback", "--json", "--workspace", str(workspace), "--to", to]
        return command + (["--config", str(config)] if config else []), "flywheel rollback --json"
    return [sys.executable, "-c", CLI_FALLBACK, str(workspace), to, str(config or "")], "python -c Registry(settings).rollback()"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh-process figure")
    parser.add_argument("--server", action="store_true", help="go through an `mlflow server` on the same store")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="seconds between the poller's reads")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="flywheel-rollback-bench-"))

    t_setup = time.perf_counter()
    settings, registry, (v1, v2) = _setup(workspace)
    setup_s = time.perf_counter() - t_setup
    server, config = None, None
    if args.server:
        from tasks.config import load_settings
        from tasks.registry import Registry

        server, url = _start_server(workspace)
        config = workspace / "server-config.yaml"
        config.write_text(f"registry:\n  tracking_uri: {url}\n", encoding="utf-8")
        registry = Registry(load_settings(config, {"paths.workspace": str(workspace)}))
    poller = subprocess.Popen([sys.executable, "-c", POLLER, registry.uri, registry.name, str(args.poll_interval)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert poller.stdout.readline().strip() == "ready"

    def wait_seen(version: str) -> tuple[float, int]:
        poller.stdin.write(version + "\n")
        poller.stdin.flush()
        seen, polls = poller.stdout.readline().split()
        return float(seen), int(polls)

    call_rows = []
    for i in range(args.repeats):
        target = v1 if i % 2 == 0 else v2
        start = time.time()
        result = registry.rollback() if target == v1 else registry.rollback(to=v2)
        returned = time.time()
        seen, polls = wait_seen(target)
        call_rows.append({"visible_s": seen - start, "call_s": returned - start, "reported_s": result["seconds"], "polls": polls})
        assert result["to"] == target

    cli_rows, cli_label = [], None
    if not args.no_cli:
        for _ in range(args.repeats):
            current = registry.status()["champion"]
            target = v1 if current == v2 else v2
            command, cli_label = _cli_command(workspace, target, config)
            start = time.time()
            proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seen, polls = wait_seen(target)
            out, err = proc.communicate(timeout=120)
            ended = time.time()
            if proc.returncode != 0:
                raise SystemExit(f"rollback command failed: {err[-2000:]}")
            reported = json.loads(out.strip().splitlines()[-1])
            cli_rows.append({"visible_s": seen - start, "process_s": ended - start,
                             "reported_s": reported.get("seconds"), "polls": polls})

    poller.stdin.close()
    poller.wait(timeout=30)
    if server is not None:
        server.terminate()
        server.wait(timeout=30)

    def med(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    result = {
        "repeats": args.repeats,
        "tracking_uri": registry.uri,
        "poll_interval_s": args.poll_interval,
        "setup_s": round(setup_s, 2),
        "call_visible_s": med(call_rows, "visible_s"),
        "call_return_s": med(call_rows, "call_s"),
        "call_reported_s": med(call_rows, "reported_s"),
        "call_visible_max_s": round(max(r["visible_s"] for r in call_rows), 4),
        "cli_command": cli_label,
        "cli_visible_s": med(cli_rows, "visible_s"),
        "cli_process_s": med(cli_rows, "process_s"),
        "cli_reported_s": med(cli_rows, "reported_s"),
        "goal_s": 1.0,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "runs": {"call": call_rows, "cli": cli_rows},
    }
    rows = [
        ("call: Registry.rollback() -> alias visible elsewhere", result["call_visible_s"]),
        ("call: Registry.rollback() returns", result["call_return_s"]),
        ("call: seconds reported by rollback", result["call_reported_s"]),
        (f"cli: fresh process ({cli_label}) -> alias visible", result["cli_visible_s"]),
        ("cli: fresh process total", result["cli_process_s"]),
        ("cli: seconds reported by rollback", result["cli_reported_s"]),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"rollback latency, median of {args.repeats} (goal < 1 s; load avg {result['load_avg_1m']} on {os.cpu_count()} cores)",
          file=sys.stderr)
    for name, value in rows:
        print(f"  {name:<{width}}  {'-' if value is None else f'{value:.3f} s'}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

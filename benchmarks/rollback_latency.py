"""Rollback latency: from the start of a rollback to the champion alias being visible to another process.

Two figures, each the median over --repeats rollbacks (alternating champion v2 -> v1 -> v2 ...):

* call:  `Registry.rollback()` in a warm process (what a running flow or service does), start of the
         call -> a separate, already-running process polling `MlflowClient.get_model_version_by_alias`
         sees the new version.
* cli:   a fresh `flywheel rollback --json` process (or, before the CLI has the command, a fresh
         `python -c "Registry(settings).rollback()"`), process start -> alias seen by the poller. This
         includes interpreter start-up and `import mlflow`.

Usage: python benchmarks/rollback_latency.py [--repeats 5] [--workspace DIR] [--no-cli]
Prints a table on stderr and one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

POLLER = r"""
import sys, time
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1], sys.argv[1])
name = sys.argv[2]
print("ready", flush=True)
for line in sys.stdin:
    want = line.strip()
    polls = 0
    while True:
        polls += 1
        if str(client.get_model_version_by_alias(name, "champion").version) == want:
            print(f"{time.time()} {polls}", flush=True)
            break
        time.sleep(0.001)
"""

CLI_FALLBACK = r"""
import json, sys
from tasks.config import load_settings
from tasks.registry import Registry
settings = load_settings(None, {"paths.workspace": sys.argv[1]})
print(json.dumps(Registry(settings).rollback(sys.argv[2] if len(sys.argv) > 2 else None)))
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


def _cli_command(workspace: Path, to: str) -> tuple[list[str], str]:
    probe = subprocess.run([sys.executable, "-m", "flows.cli", "rollback", "--help"], cwd=REPO,
                           capture_output=True, text=True)
    if probe.returncode == 0 and "--to" in probe.stdout:
        command = [sys.executable, "-m", "flows.cli", "rollback", "--json", "--workspace", str(workspace), "--to", to]
        return command, "flywheel rollback --json"
    return [sys.executable, "-c", CLI_FALLBACK, str(workspace), to], "python -c Registry(settings).rollback()"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--no-cli", action="store_true", help="skip the fresh-process figure")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="flywheel-rollback-bench-"))

    t_setup = time.perf_counter()
    settings, registry, (v1, v2) = _setup(workspace)
    setup_s = time.perf_counter() - t_setup
    poller = subprocess.Popen([sys.executable, "-c", POLLER, registry.uri, registry.name],
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
            command, cli_label = _cli_command(workspace, target)
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

    def med(rows: list[dict], key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 4) if values else None

    result = {
        "repeats": args.repeats,
        "tracking_uri": registry.uri,
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

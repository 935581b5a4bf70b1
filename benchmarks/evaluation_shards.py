"""Evaluation generation: the local runner against Dask (runner.kind dask), side by side in one run.

    python benchmarks/evaluation_shards.py [--items 48] [--workers 1,2] [--repeat 1] [--size test] [--out FILE]

The retraining flow's evaluation stage (`flows.retraining.evaluate_candidate`: a candidate adapter
against a champion adapter, both random LoRA adapters on the embedded base of `--size`) over the first
`--items` items of each of the regression and ood suites, with model.batch_size 8 and 24 new tokens:
once on the local runner (this process), then with every shard an `evaluation-shard` task run on a
local Dask cluster of each of `--workers` processes, taking turns `--repeat` times. Prefect runs on a
temporary server in a temporary PREFECT_HOME. Seconds are the whole stage as a flow run sees it,
cluster start and each worker's model load included; the answers' SHA-256 (items.jsonl) must equal
the local runner's. Prints a table, then one JSON object.

On a machine shared with other work the seconds compare runs only roughly; the JSON keeps every run
and the load average before each.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _random_adapter(base: Path, out: Path, seed: int) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=48, help="items taken from each of the regression and ood suites")
    parser.add_argument("--workers", default="1,2", help="Dask worker counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=1, help="rounds, each running every runner once, taking turns")
    parser.add_argument("--size", default="test", help="embedded base size (tasks.base_model.bootstrap_base_model)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="eval-shards-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect-home")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")  # a busy shared machine
    from prefect import flow

    from flows.retraining import EVALUATE_SECTIONS, evaluate_candidate, stage_settings
    from flows.temporary_server import temporary_prefect_server
    from tasks.base_model import bootstrap_base_model
    from tasks.config import SHIPPED_DATA, load_settings

    base = Path(bootstrap_base_model(tmp / "base", data_dir=SHIPPED_DATA, size=args.size)["path"])
    candidate = _random_adapter(base, tmp / "cand" / "05_adapter", seed=1)
    champion = _random_adapter(base, tmp / "champ", seed=2)
    workspace = tmp / "ws"
    (workspace / "eval").mkdir(parents=True)
    for suite in ("regression", "ood"):
        lines = (SHIPPED_DATA / "eval" / f"{suite}.jsonl").read_text(encoding="utf-8").splitlines()[:args.items]
        (workspace / "eval" / f"{suite}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    values = {"paths.workspace": str(workspace), "model.base": str(base), "model.max_new_tokens": 24,
              "model.batch_size": 8, "evaluate.suites": ["regression", "ood"], "evaluate.bootstrap_samples": 100}
    runners = [("local", 0)] + [("dask", int(w)) for w in args.workers.split(",")]
    runs: list[dict] = []

    @flow(name="evaluation-shards-benchmark")
    def evaluate(kind: str, workers: int, out: Path) -> float:
        extra = {"runner.kind": kind} | ({"runner.workers": workers} if workers else {})
        settings = stage_settings(load_settings(None, values | extra), EVALUATE_SECTIONS)
        started = time.perf_counter()
        evaluate_candidate(settings, candidate / "adapter_model.safetensors", None, ("1", champion), out, None)
        return time.perf_counter() - started

    with temporary_prefect_server():
        for round_ in range(args.repeat):
            for kind, workers in runners:
                out = tmp / f"{kind}-{workers}-{round_}" / "06_eval"
                load = os.getloadavg()[0]
                seconds = evaluate(kind, workers, out)
                runs.append({"runner": kind, "workers": workers or None, "round": round_, "seconds": round(seconds, 2),
                             "load_average_before": round(load, 1),
                             "items_sha256": hashlib.sha256((out / "items.jsonl").read_bytes()).hexdigest()})
    local_digest = next(r["items_sha256"] for r in runs if r["runner"] == "local")
    best = {}
    for run in runs:
        key = f"{run['runner']}-{run['workers'] or 0}"
        if key not in best or run["seconds"] < best[key]["seconds"]:
            best[key] = run
    result = {"benchmark": "evaluation-shards", "items": 2 * args.items, "answers": 4 * args.items, "base_size": args.size,
              "batch_size": 8, "max_new_tokens": 24, "cores": os.cpu_count(), "runs": runs,
              "best": best, "identical": all(r["items_sha256"] == local_digest for r in runs)}
    print(f"{'runner':8} {'workers':>7} {'seconds (best)':>15} {'vs local':>9}  items.jsonl sha256")
    for key, run in best.items():
        ratio = best["local-0"]["seconds"] / run["seconds"]
        print(f"{run['runner']:8} {run['workers'] or '-':>7} {run['seconds']:>15.1f} {ratio:>8.2f}x  {run['items_sha256'][:12]}...")
    print(f"identical answers on every runner: {result['identical']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

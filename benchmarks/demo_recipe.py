"""A LoRA recipe judged the way the demo judges it, in a fraction of a demo's time.

Takes a finished demo workspace (`flywheel demo --auto-approve -w WS`), trains an adapter with the recipe
given (configs/demo.yaml's train section, with --set overrides) on that demo's own cycle dataset
(`cycles/<cycle>/04_dataset`), then answers the prompts of the demo's weeks after the promotion and has
the simulator's judge (its ground truth) say correct, refused or wrong, per group: the products launched
mid-quarter (knowledge base v2), the earlier topics (v1), and the rest (off-topic questions, products the
shop does not sell). `--adapter DIR` judges an existing adapter instead (e.g. the demo's own canary, to
check that these figures match the demo's).

The prompts are the ones the demo's users asked of *that* demo's champion (re-asks included), so the
figures approximate a full demo with the recipe; confirm a chosen recipe with the demo itself.

    python benchmarks/demo_recipe.py -w workspace/demo [--set learning_rate=0.005 ...] [--adapter DIR]

Prints a table to stderr and one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.base_model import resolve_base_model  # noqa: E402
from tasks.config import SHIPPED_CONFIGS, load_settings  # noqa: E402
from tasks.files import read_jsonl  # noqa: E402
from tasks.generation import LocalGenerator  # noqa: E402
from tasks.knowledge import load_knowledge_base  # noqa: E402
from tasks.simulate.judge import OUTCOMES, judge_response  # noqa: E402
from tasks.train import train_adapter  # noqa: E402


def after_weeks_prompts(workspace: Path) -> list[tuple[str, dict]]:
    """(prompt, ground-truth row) of every request a promoted adapter answered (the weeks after the cycle)."""
    truth = {row["request_id"]: row for _, row in read_jsonl(workspace / "ground_truth.jsonl")}
    prompts = []
    for log in sorted((workspace / "logs").glob("*.jsonl")):
        for _, row in read_jsonl(log):
            if row.get("request_id") in truth and not str(row.get("model_version", "base")).startswith("base"):
                prompts.append((row["prompt"], truth[row["request_id"]]))
    return prompts


def judge(generator: LocalGenerator, items: list[tuple[str, dict]], data_dir: Path) -> dict:
    kb = load_knowledge_base(data_dir, "v2")
    outputs = generator.generate([prompt for prompt, _ in items])
    counts: Counter[tuple[str, str]] = Counter()
    totals: Counter[str] = Counter()
    for (_, truth), output in zip(items, outputs):
        group = {"v2": "new_products", "v1": "earlier_topics"}.get(truth["kb_version"], "other")
        outcome = judge_response(kb, truth["topic"], output[0])
        for name in (group, "all"):
            counts[(name, outcome)] += 1
            totals[name] += 1
    return {name: {"n": totals[name], **{o: round(counts[(name, o)] / totals[name], 4) for o in OUTCOMES}}
            for name in ("all", "new_products", "earlier_topics", "other") if totals[name]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-w", "--workspace", type=Path, required=True, help="a finished demo's workspace")
    parser.add_argument("-c", "--config", default=str(SHIPPED_CONFIGS / "demo.yaml"), help="the demo's config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a train.* setting, e.g. --set learning_rate=0.005")
    parser.add_argument("--adapter", type=Path, default=None, help="judge this adapter instead of training one")
    parser.add_argument("--out", type=Path, default=None, help="where the adapter goes (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for training and generation")
    args = parser.parse_args()
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    settings = load_settings(args.config, {"paths.workspace": str(args.workspace)})
    workspace = args.workspace
    datasets = sorted((workspace / "cycles").glob("*/04_dataset"))
    items = after_weeks_prompts(workspace)
    if not datasets or not items:
        say(f"{workspace} holds no finished demo with a promotion: run flywheel demo --auto-approve -w {workspace}")
        return 2
    for item in args.set:
        key, _, value = item.partition("=")
        if not hasattr(settings.train, key):
            say(f"--set {item}: train has no setting {key!r}")
            return 2
        setattr(settings.train, key, json.loads(value))
    settings.train.cpu_threads = args.threads
    base = resolve_base_model(settings)  # model.base, else the demo's embedded base
    result: dict = {"workspace": str(workspace), "dataset": str(datasets[-1]), "prompts": len(items)}
    cpu, wall = time.process_time(), time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        adapter = args.adapter
        if adapter is None:
            adapter = args.out or Path(scratch) / "adapter"
            trained = train_adapter(datasets[-1], adapter, settings.train, base_path=base, progress=say)
            result["recipe"] = settings.train.model_dump(mode="json")
            result["training"] = {k: trained[k] for k in ("steps", "train_loss", "val_loss", "seconds")}
        result["adapter"] = str(adapter)
        generator = LocalGenerator(base, batch_size=128, max_new_tokens=settings.model.max_new_tokens,
                                   threads=args.threads)
        generator.load_adapter("candidate", adapter)
        generator.use("candidate")
        result["outcomes"] = judge(generator, items, settings.paths.data_dir)
    result["cpu_seconds"] = round(time.process_time() - cpu, 1)
    result["wall_seconds"] = round(time.perf_counter() - wall, 1)
    say(f"\n{'group':16} {'n':>5} {'correct':>8} {'refusal':>8} {'wrong':>8}")
    for name, row in result["outcomes"].items():
        say(f"{name:16} {row['n']:5d} {row['correct']:8.3f} {row['refusal']:8.3f} {row['wrong']:8.3f}")
    say(f"cpu {result['cpu_seconds']}s, wall {result['wall_seconds']}s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

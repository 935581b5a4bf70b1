"""Does learning really happen? Measured on the simulator's world (knowledge base v1 -> v2).

1. Bootstrap the embedded base (cached by content) and check it answers *held-out* paraphrases of v1
   questions (token F1 >= 0.6 on >= 80% of them) and refuses questions about v2 products.
2. Build a dataset the way a retraining cycle does: the train split of v2 paraphrases as curated cases +
   replay of the base's own training data, then LoRA-train an adapter on it.
3. With the adapter: held-out v2 paraphrases answered (token F1 >= 0.5 on >= 70%), v1 held-out share
   down by no more than 5 points.

Prints a table to stderr and one JSON object as the last line of stdout.

    python benchmarks/learning_quality.py [--workspace DIR] [--seed 0] [--size default|test]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tasks.config import SHIPPED_DATA, DatasetSettings, Settings, SignalsSettings  # noqa: E402
from tasks.dataset import build_dataset  # noqa: E402
from tasks.text import token_f1  # noqa: E402
from tasks.base_model import (  # noqa: E402
    MANIFEST,
    PRETRAINING_FILE,
    bootstrap_base_model,
    pretraining_examples,
    split_questions,
)
from tasks.generation import LocalGenerator  # noqa: E402
from tasks.knowledge import load_knowledge_base  # noqa: E402
from tasks.train import train_adapter  # noqa: E402

# LoRA settings for the tiny embedded base (the shipped defaults are shaped for a 0.5B model). Found by
# sweeping on this benchmark: MLP-only LoRA forgets least; full replay of the base's training pairs keeps
# v1; a high learning rate and 20 epochs let the new answers in. Attention LoRA or a 30-60% replay share
# learnt v2 as well but lost 8-50 points of v1.
TINY_LORA = dict(r=32, alpha=64, dropout=0.0, target_modules=["gate_proj", "up_proj", "down_proj"],
                 learning_rate=1e-2, scheduler="cosine", warmup_ratio=0.1, epochs=20, batch_size=16,
                 gradient_accumulation=1, max_length=192, save_steps=40, early_stopping_patience=3, cpu_threads=1)
REPLAY_SHARE = 0.85  # of the training set; more than the base's pairs exist, so: all of them
THRESHOLDS = {"v1_f1": 0.6, "v1_share": 0.8, "v2_f1": 0.5, "v2_share": 0.7, "max_v1_drop": 0.05}


def is_refusal(text: str, patterns: list[re.Pattern]) -> bool:
    return any(p.search(text) for p in patterns)


def share_at(generator: LocalGenerator, items: list[tuple[str, str]], threshold: float) -> dict:
    outputs = generator.generate([q for q, _ in items])
    scores = [token_f1(o[0], ref) for o, (_, ref) in zip(outputs, items)]
    return {"share": round(sum(s >= threshold for s in scores) / len(scores), 4),
            "mean_f1": round(sum(scores) / len(scores), 4), "n": len(scores)}


def refusal_share(generator: LocalGenerator, questions: list[str], patterns: list[re.Pattern]) -> dict:
    outputs = generator.generate(questions)
    refused = [is_refusal(o[0], patterns) for o in outputs]
    return {"share": round(sum(refused) / len(refused), 4), "n": len(refused)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, default=Path("workspace/bench_learning"))
    parser.add_argument("--data-dir", type=Path, default=SHIPPED_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=["default", "test"], default="default")
    parser.add_argument("--base", type=Path, default=None, help="an already bootstrapped base (default: <workspace>/base)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for generation (0: torch default)")
    parser.add_argument("--replay-share", type=float, default=REPLAY_SHARE)
    parser.add_argument("--lora", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train.* setting of the LoRA run, e.g. --lora epochs=20")
    args = parser.parse_args()
    lora = dict(TINY_LORA)
    for item in args.lora:
        key, _, value = item.partition("=")
        lora[key] = type(TINY_LORA.get(key, ""))(value) if key in TINY_LORA else json.loads(value)
    ws = args.workspace
    ws.mkdir(parents=True, exist_ok=True)
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    patterns = [re.compile(p, re.IGNORECASE) for p in SignalsSettings().refusal_patterns]
    wall = time.perf_counter()

    base_dir = args.base or ws / "base"
    boot = bootstrap_base_model(base_dir, data_dir=args.data_dir, seed=args.seed, size=args.size, progress=say)
    manifest = json.loads((base_dir / MANIFEST).read_text(encoding="utf-8"))
    kb1 = load_knowledge_base(args.data_dir, "v1")
    answers1 = {t.id: t.answer for t in kb1.topics}
    v1_held = [(q, answers1[tid]) for tid, qs in manifest["held_out"].items() for q in qs]
    v2_topics = [t for t in load_knowledge_base(args.data_dir, "v2").topics if t.kb_version == "v2"]
    v2_split = {t.id: split_questions(t, seed=args.seed) for t in v2_topics}
    v2_train = [(q, t.answer) for t in v2_topics for q in v2_split[t.id][0]]
    v2_held = [(q, t.answer) for t in v2_topics for q in v2_split[t.id][1]]
    v2_product_questions = [q for t in v2_topics if t.kind == "product" for q in t.questions]

    say("evaluating the base")
    t0 = time.perf_counter()
    generator = LocalGenerator(base_dir, batch_size=64, max_new_tokens=64, threads=args.threads)
    before = {
        "v1_heldout": share_at(generator, v1_held, THRESHOLDS["v1_f1"]),
        "v2_heldout": share_at(generator, v2_held, THRESHOLDS["v2_f1"]),
        "v2_product_refusal": refusal_share(generator, v2_product_questions, patterns),
    }
    eval_seconds = time.perf_counter() - t0

    # A retraining cycle: curated v2 cases + replay of what the base was trained on.
    cycle = ws / "cycle"
    cycle.mkdir(exist_ok=True)
    curated = cycle / "curated.jsonl"
    curated.write_text("".join(json.dumps({"case_id": f"v2-{i}", "prompt": q, "corrected_response": a}) + "\n"
                               for i, (q, a) in enumerate(v2_train)), encoding="utf-8")
    replay = base_dir / PRETRAINING_FILE  # the base's own training pairs: what the "champion" learnt from
    if not replay.is_file():  # a base built before the file was written: rebuild the same pairs
        pairs, _ = pretraining_examples(kb1, seed=args.seed, synthetic_unknown=manifest["recipe"]["synthetic_unknown"],
                                        refusal_templates=manifest["recipe"]["refusal_templates"],
                                        cross_products=manifest["recipe"]["cross_products"])
        replay = cycle / "base_training.jsonl"
        replay.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in pairs), encoding="utf-8")
    dataset_settings = DatasetSettings(replay_share=args.replay_share, val_share=0.1, new_cases_holdout=0.0, seed=args.seed)
    dataset = build_dataset(curated, cycle / "04_dataset", dataset_settings, cycle_id="bench", replay_path=replay)

    settings = Settings()
    for key, value in lora.items():
        setattr(settings.train, key, value)
    settings.train.seed = args.seed
    adapter_dir = cycle / "05_adapter"
    if adapter_dir.exists():
        import shutil

        shutil.rmtree(adapter_dir)  # measure a full training run, not a resume
    say("LoRA training on v2 cases + replay")
    trained = train_adapter(cycle / "04_dataset", adapter_dir, settings.train, base_path=base_dir, progress=True)

    generator.load_adapter("v2", adapter_dir)
    generator.use("v2")
    t0 = time.perf_counter()
    after = {
        "v1_heldout": share_at(generator, v1_held, THRESHOLDS["v1_f1"]),
        "v2_heldout": share_at(generator, v2_held, THRESHOLDS["v2_f1"]),
        "v2_product_refusal": refusal_share(generator, v2_product_questions, patterns),
    }
    eval_seconds += time.perf_counter() - t0

    v1_drop = round(before["v1_heldout"]["share"] - after["v1_heldout"]["share"], 4)
    checks = {
        "base_v1_heldout_share>=0.8": before["v1_heldout"]["share"] >= THRESHOLDS["v1_share"],
        "base_refuses_v2_products": before["v2_product_refusal"]["share"] >= 0.9,
        "adapter_v2_heldout_share>=0.7": after["v2_heldout"]["share"] >= THRESHOLDS["v2_share"],
        "adapter_v1_drop<=0.05": v1_drop <= THRESHOLDS["max_v1_drop"],
    }
    result = {
        "seed": args.seed,
        "size": args.size,
        "base": {"params": boot["params"], "bootstrap_seconds": boot["seconds"], "cached": boot["cached"],
                 "digest": boot["digest"][:16]},
        "dataset": {k: dataset[k] for k in ("train", "val", "replay", "sha256")},
        "training": {k: trained[k] for k in ("steps", "train_loss", "val_loss", "seconds", "tokens_per_s", "device", "stopped_early")},
        "lora": lora,
        "replay_share": args.replay_share,
        "before": before,
        "after": after,
        "v1_drop": v1_drop,
        "checks": checks,
        "passed": all(checks.values()),
        "eval_seconds": round(eval_seconds, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
    }
    rows = [
        ("v1 held-out share F1>=0.6", before["v1_heldout"]["share"], after["v1_heldout"]["share"]),
        ("v1 held-out mean F1", before["v1_heldout"]["mean_f1"], after["v1_heldout"]["mean_f1"]),
        ("v2 held-out share F1>=0.5", before["v2_heldout"]["share"], after["v2_heldout"]["share"]),
        ("v2 held-out mean F1", before["v2_heldout"]["mean_f1"], after["v2_heldout"]["mean_f1"]),
        ("v2 product questions refused", before["v2_product_refusal"]["share"], after["v2_product_refusal"]["share"]),
    ]
    say(f"\n{'metric':34} {'base':>8} {'+LoRA':>8}")
    for name, b, a in rows:
        say(f"{name:34} {b:8.3f} {a:8.3f}")
    say(f"v1 drop {v1_drop:+.3f}; bootstrap {boot['seconds']}s ({'cached' if boot['cached'] else 'built'}); "
        f"training {trained['seconds']}s, {trained['steps']} steps; wall {result['wall_seconds']}s")
    for name, ok in checks.items():
        say(f"  {'PASS' if ok else 'FAIL'}  {name}")
    print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

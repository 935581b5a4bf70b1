"""The evaluation stage: both models answer the same items; the scores, comparison, gate and report
are written to the cycle's 06_eval/ and logged to MLflow and Prefect.

`evaluate_candidate` works on any two Generators; `evaluate_adapter` (the CLI's and the flow's entry
point) resolves adapter folders, registry versions and the served champion into Generators first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from tasks.config import Settings
from tasks.contracts import EvalItem, Generator, MlflowRun, StageResult
from tasks.files import atomic_write_text, write_jsonl
from tasks.base_model import model_digest
from tasks.evaluate.answers import (ShardedGenerator, ShardMap, answer_all, suite_batches, warm,
                                     worker_spec)
from tasks.evaluate.gates import check_gates
from tasks.docs import load_docs
from tasks.evaluate.scoring import add_faithfulness, score_responses, summarise
from tasks.verify import make_verifier
from tasks.evaluate.suites import load_suites, workspace_suites
from tasks.generation import make_generator
from tasks.registry import Registry
from tasks.report import evaluation_markdown
from tasks.served import AdapterView, base_label, base_view, served_generator


GATE_FILE = "gate.json"  # the blessing: the gate's decision, which registration reads


def evaluate_candidate(
    candidate: Generator | ShardedGenerator,
    champion: Generator | ShardedGenerator | None,
    items: Sequence[EvalItem],
    settings: Settings,
    out_dir: Path,
    *,
    mlflow: MlflowRun | None = None,
    seed: int = 0,
    gate_against_champion: bool | None = None,
) -> dict:
    """Both models answer the same items; per-item scores, per-suite comparison, gates.

    Writes out_dir/report.json, report.md, items.jsonl and gate.json; logs metrics and those files to
    MLflow when `mlflow` is given; publishes a Prefect markdown artifact (key eval-comparison)
    when called inside a Prefect run. `gate_against_champion=False` compares with `champion` (e.g. the
    bare base model in the first cycle) but gates with floors only; default: True when a champion is given.
    Returns {suites, gate, passed, ...}.
    """
    start = time.perf_counter()
    items = list(items)
    if not items:
        raise ValueError("no eval items: check evaluate.suites and the suite files under paths.data_dir/eval")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = [item.prompt for item in items]
    docs = load_docs(settings)
    corpus, verifier = docs.at(None), make_verifier(settings)  # the newest docs: what the candidate will serve under
    batches = suite_batches([item.suite for item in items], settings.model.batch_size)
    cand_responses = answer_all(candidate, prompts, settings, seed=seed, batches=batches)
    cand_scores = score_responses(items, cand_responses, settings)
    add_faithfulness(items, cand_responses, cand_scores, settings, corpus, verifier)
    champ_responses = champ_scores = None
    if champion is not None:
        champ_responses = answer_all(champion, prompts, settings, seed=seed, batches=batches)
        champ_scores = score_responses(items, champ_responses, settings)
        add_faithfulness(items, champ_responses, champ_scores, settings, corpus, verifier)
    summary = summarise(items, cand_scores, champ_scores, samples=settings.evaluate.bootstrap_samples,
                        level=settings.evaluate.ci_level, seed=seed)
    has_champion = champion is not None if gate_against_champion is None else bool(gate_against_champion and champion)
    gate = check_gates(summary, settings.evaluate.gates, has_champion=has_champion)
    report = {
        "created": _now(),
        "candidate": candidate.model_version,
        "champion": champion.model_version if champion is not None else None,
        "gated_against_champion": has_champion,
        "n_items": len(items),
        "n_by_suite": {suite: sum(item.suite == suite for item in items) for suite in summary},
        "faithfulness": {"verifier": verifier.name, "docs": docs.label(None),
                         "unsupported": {suite: {k: m["unsupported"].get(k) for k in ("candidate", "champion", "diff")}
                                         for suite, m in summary.items() if "unsupported" in m}},
        "ci_level": settings.evaluate.ci_level,
        "bootstrap_samples": settings.evaluate.bootstrap_samples,
        "suites": summary,
        "gate": gate,
        "passed": gate["passed"],
        "seconds": round(time.perf_counter() - start, 3),
    }
    rows = []
    for i, item in enumerate(items):
        row = {"id": item.id, "suite": item.suite, "prompt": item.prompt, "expected": item.expected,
               "reference": item.reference, "candidate": {"response": cand_responses[i], **cand_scores[i]}}
        if champ_scores is not None:
            row["champion"] = {"response": champ_responses[i], **champ_scores[i]}
        rows.append(row)
    write_jsonl(out_dir / "items.jsonl", rows)
    markdown = evaluation_markdown(report, items, cand_scores, champ_scores, cand_responses, champ_responses)
    atomic_write_text(out_dir / "report.md", markdown)
    atomic_write_text(out_dir / GATE_FILE, json.dumps(gate, indent=2))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
    report["outputs"] = {name: str(out_dir / name) for name in ("report.json", "report.md", "items.jsonl", GATE_FILE)}
    if mlflow:
        log_to_mlflow(report, out_dir, mlflow)
    publish_prefect_artifact(markdown)
    return report


def log_to_mlflow(report: dict, out_dir: Path, run: MlflowRun) -> None:
    """Metrics eval.<suite>.<metric>.{candidate,champion,diff} and the report files under 06_eval/."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, run_id = MlflowClient(run.tracking_uri), run.run_id
    stamp = int(time.time() * 1000)
    metrics = [Metric("eval.gate_passed", float(report["passed"]), stamp, 0)]
    for suite, entries in report["suites"].items():
        for metric, e in entries.items():
            for part in ("candidate", "champion", "diff"):
                if e.get(part) is not None:
                    metrics.append(Metric(f"eval.{suite}.{metric}.{part}", float(e[part]), stamp, 0))
    for start in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[start:start + 500])
    client.set_tag(run_id, "eval.gate", "passed" if report["passed"] else "failed")
    for name in ("report.json", "report.md", "items.jsonl", GATE_FILE):
        client.log_artifact(run_id, str(out_dir / name), artifact_path="06_eval")


def publish_prefect_artifact(markdown: str) -> None:
    """A markdown artifact with key eval-comparison, only inside a Prefect flow/task run (outside one,
    creating it would try to reach a server)."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except ImportError:
        return
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key="eval-comparison", description="candidate vs champion by suite")


# --------------------------------------------------------------------------------------------------
# Entry point for the CLI / flow: resolve adapters, build the generator, evaluate


def evaluate_adapter(
    settings: Settings,
    candidate: str | Path,
    *,
    against: str | None = "champion",
    out_dir: Path | None = None,
    new_cases: Path | None = None,
    mlflow: MlflowRun | None = None,
    seed: int = 0,
) -> dict:
    """`flywheel evaluate --candidate DIR|VERSION [--against champion|VERSION|DIR|base|none]`.

    The candidate is an adapter directory or a registry version. `against="champion"` uses the
    registry's champion; with none registered yet (first cycle) it compares with the bare base model
    (what production serves then) and gates on floors only. Suites are the workspace copies (the
    regression suite there includes the grown items).
    """
    cand_dir, cand_name = _resolve_adapter(settings, candidate, "candidate")
    if against == "champion":
        # What production serves; with no champion yet (first cycle) that is the bare base, and the
        # gate checks floors only.
        served = served_generator(settings, {"candidate": cand_dir})
        generator, champ_gen, gate_vs = served.generator, served.champion(), served.version is not None
    else:
        champ_dir, champ_name = None, None
        if against not in (None, "none", "base"):
            champ_dir, champ_name = _resolve_adapter(settings, against, "champion")
        generator = make_generator(settings, {"candidate": cand_dir} | ({"champion": champ_dir} if champ_dir else {}))
        champ_gen = (None if against in (None, "none") else
                     AdapterView(generator, "champion", champ_name) if champ_dir else base_view(generator))
        gate_vs = champ_dir is not None
    cand_gen = AdapterView(generator, "candidate", cand_name)
    items = load_suites(workspace_suites(settings), settings.evaluate.suites, extra=new_cases, settings=settings)
    out = Path(out_dir) if out_dir else settings.paths.under("eval_runs", time.strftime("%Y%m%dT%H%M%S"))
    return evaluate_candidate(cand_gen, champ_gen, items, settings, out, mlflow=mlflow, seed=seed,
                              gate_against_champion=gate_vs)


def _resolve_adapter(settings: Settings, ref: str | Path, role: str) -> tuple[Path, str]:
    path = Path(ref)
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise ValueError(f"--{role} {path}: no adapter_config.json there; "
                             "pass a LoRA adapter folder (05_adapter) or a registry version")
        return path, path.name
    text = str(ref).lstrip("v")
    if text.isdigit():
        return Registry(settings).adapter_path(text), f"v{text}"
    raise ValueError(f"--{role} {ref!r} is neither an adapter folder nor a registry version number")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def evaluate_stage(adapter_dir: Path, holdout: Path | None, out_dir: Path, settings: Settings, *,
                   champion: tuple[str, Path] | None, mlflow: MlflowRun | None = None,
                   shard_map: ShardMap | None = None) -> StageResult:
    """The cycle's evaluation stage: the candidate adapter against `champion` ((version, adapter folder)
    of the served champion, or None before the first promotion: then the bare base, gated on floors
    only), on the workspace suites plus the held-out new cases. `settings` needs the evaluate, signals,
    model, train (device) and paths sections. Outputs: the report and the gate decision (gate.json).

    With `shard_map` (runner.kind dask, model.backend local) the answers are generated in shards on its
    workers, each loading base + adapters once; the outputs are the same as without."""
    adapters = {"candidate": Path(adapter_dir)}
    if champion is not None:
        adapters["champion"] = Path(champion[1])
    items = load_suites(workspace_suites(settings), settings.evaluate.suites, extra=holdout, settings=settings)
    cand_name = Path(adapter_dir).name
    if shard_map is not None and settings.model.backend == "local":
        spec, suites = worker_spec(settings, adapters), [item.suite for item in items]
        shard_map.warm(warm, spec)
        cand_gen = ShardedGenerator(spec, "candidate", cand_name, shard_map, suites)
        champ_gen = (ShardedGenerator(spec, "champion", f"v{champion[0]}", shard_map, suites) if champion else
                     ShardedGenerator(spec, None, base_label(model_digest(Path(spec.settings.model.base))), shard_map, suites))
    else:
        generator = make_generator(settings, adapters)
        cand_gen = AdapterView(generator, "candidate", cand_name)
        champ_gen = AdapterView(generator, "champion", f"v{champion[0]}") if champion else base_view(generator)
    report = evaluate_candidate(cand_gen, champ_gen, items, settings, out_dir, mlflow=mlflow,
                                gate_against_champion=champion is not None)
    out_dir = Path(out_dir)
    return StageResult.of(
        "evaluate", {"report": out_dir / "report.json", "report_md": out_dir / "report.md",
                     "items": out_dir / "items.jsonl", "gate": out_dir / GATE_FILE},
        counts={"items": report["n_items"], "failed_checks": len(report["gate"]["failed"])},
        seconds=report["seconds"], details={"passed": report["passed"], "failed": report["gate"]["failed"]},
    )

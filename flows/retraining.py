"""Quarterly retraining: from a window of production logs to a registered canary.

    extract_failure_cases -> mask_pii -> collect_annotations -> score_agreement -> build_training_set
        -> train_lora_adapter -> evaluate_candidate -> register_canary

Every stage is a Prefect task with a persisted result and a cache key made of its inputs' content
digests, its configuration and its code, so a rerun after a crash (say, killed during training)
skips the finished stages, and training itself resumes from its last checkpoint. Each stage writes
into `<workspace>/cycles/<cycle_id>/` and records itself in the cycle's manifest.json.
"""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks import cycle
from tasks.config import Settings, load_settings
from tasks.tracking import experiment_id, tracking_uri


def stage(name: str, module_file: str):
    """A cycle stage: persisted result, cached on the content of its inputs and its module's code."""
    return task(
        name=name,
        persist_result=True,
        cache_key_fn=lambda _ctx, params: cycle.stage_cache_key(name, module_file, params),
    )


def _module(name: str) -> str:
    """A stage's code for its cache key: tasks/NAME.py, or the folder of the package tasks/NAME/."""
    tasks_dir = Path(__file__).resolve().parent.parent / "tasks"
    module = tasks_dir / f"{name}.py"
    return str(module if module.is_file() else tasks_dir / name)


def resumable(stage_task, directory: Path, name: str, fresh: bool):
    """The stage, allowed to reuse its cached result only when the cycle directory still holds what
    that run wrote (see cycle.stage_intact); `fresh` runs it again regardless."""
    return stage_task.with_options(refresh_cache=fresh or not cycle.stage_intact(directory, name))


@stage("extract-failure-cases", _module("extract"))
def extract_failure_cases(settings: Settings, since: datetime | None, until: datetime | None, log_files: list, out: Path) -> dict:
    """`log_files` (name, size, mtime per file) is not read here: it makes new or changed logs a new cache key."""
    from tasks.extract import extract_cases
    from tasks.logs import load_window

    with cycle.Timer() as timer:
        logs = load_window(settings, None, since, until)
        result = extract_cases(logs.table, settings, key=cycle.pii_key(settings), out_path=out)
    cycle.record_stage(out.parent, "extract", result, {"cases": out}, timer.seconds)
    return result


@stage("mask-pii", _module("pii"))
def mask_pii(settings: Settings, cases: Path, out: Path) -> dict:
    from tasks.pii import mask_file

    with cycle.Timer() as timer:
        result = mask_file(cases, out, settings.pii, key=cycle.pii_key(settings), audit_path=out.parent / "pii_audit.json")
    cycle.record_stage(out.parent, "mask", result, {"masked": out, "audit": out.parent / "pii_audit.json"}, timer.seconds)
    return result


@stage("collect-annotations", _module("annotate"))
def collect_annotations(settings: Settings, masked: Path, out: Path) -> dict:
    with cycle.Timer() as timer:
        result = cycle.collect_annotations(settings, masked, out)
    cycle.record_stage(out.parent, "annotate", result, {"annotations": out / "annotations.jsonl"}, timer.seconds)
    return result


@stage("score-agreement", _module("annotate"))
def score_agreement(settings: Settings, annotations: Path, masked: Path, out: Path) -> dict:
    from tasks.annotate import score_agreement as score

    with cycle.Timer() as timer:
        result = score(annotations, out, settings.annotation, cases_path=masked)
    cycle.record_stage(out.parent, "agreement", result,
                       {"agreement": out / "agreement.json", "curated": out / "curated.jsonl"}, timer.seconds)
    return result


@stage("build-training-set", _module("dataset"))
def build_training_set(settings: Settings, curated: Path, replay: Path | None, out: Path, cycle_id: str, run_id: str) -> dict:
    from tasks.dataset import build_dataset

    with cycle.Timer() as timer:
        result = build_dataset(curated, out, settings.dataset, cycle_id=cycle_id, replay_path=replay, mlflow_run_id=run_id)
    cycle.record_stage(out.parent, "dataset", result, {"train": out / "train.jsonl", "val": out / "val.jsonl"}, timer.seconds)
    return result


@stage("train-lora-adapter", _module("train"))
def train_lora_adapter(settings: Settings, dataset: Path, base: Path, out: Path, run_id: str) -> dict:
    from tasks.train import train_adapter

    with cycle.Timer() as timer:
        # A bar when someone watches a terminal (CLI, demo); progress lines in the run's log otherwise.
        progress = True if sys.stderr.isatty() else get_run_logger().info
        result = train_adapter(dataset, out, settings, base_path=base, mlflow_run_id=run_id, progress=progress)
    cycle.record_stage(out.parent, "train", result, {"adapter": out / "adapter_model.safetensors"}, timer.seconds)
    return result


@stage("evaluate-candidate", _module("evaluate"))
def evaluate_candidate(settings: Settings, adapter: Path, holdout: Path, out: Path, champion: str | None, run_id: str) -> dict:
    from tasks.evaluate import evaluate_adapter

    with cycle.Timer() as timer:
        result = evaluate_adapter(settings, adapter, against="champion", out_dir=out, new_cases=holdout, mlflow_run_id=run_id)
    cycle.record_stage(out.parent, "evaluate", {"passed": result["passed"]}, {"report": out / "report.json"}, timer.seconds)
    return result


@task(name="register-canary")
def register_canary(settings: Settings, adapter: Path, base: Path, cycle_id: str, dataset_sha256: str,
                    report: dict, run_id: str) -> str:
    from tasks.base_model import model_digest
    from tasks.registry import Registry

    return Registry(settings).register_canary(
        adapter, cycle_id=cycle_id, base_path=base, base_digest=model_digest(base),
        dataset_sha256=dataset_sha256, eval_report=report, run_id=run_id,
    )


@task(name="prepare-base-model")
def prepare_base_model(settings: Settings) -> Path:
    """The configured base model, or the embedded one (built once, cached by content)."""
    from tasks.base_model import base_model_for

    return base_model_for(settings, progress=get_run_logger().info)


def resolve_window(window: str | None, now: datetime | None = None) -> tuple[datetime | None, datetime | None, str]:
    """'2026-Q1', 'START..END' (ISO dates) or 'all'; empty: the last complete quarter."""
    from tasks.windows import parse_time, quarter_window

    if window == "all":
        return None, None, "all"
    if window and ".." in window:
        start, end = window.split("..", 1)
        return parse_time(start), parse_time(end), f"{start}_{end}".replace(":", "")
    if not window:
        now = now or datetime.now(timezone.utc)
        quarter = (now.month - 1) // 3  # the current quarter's index; the previous one is complete
        year, quarter = (now.year - 1, 4) if quarter == 0 else (now.year, quarter)
        window = f"{year}-Q{quarter}"
    since, until = quarter_window(window)
    return since, until, window


# No log_prints: it reroutes print() even where a library captures stdout for itself (dill's
# disassembly when `datasets` fingerprints a function), flooding the run log with bytecode.
@flow(name="quarterly-retraining")
def quarterly_retraining(
    window: str | None = None,
    config: str | None = None,
    workspace: str | None = None,
    auto_approve: bool = False,
    fresh: bool = False,
) -> dict[str, Any]:
    """Curate a quarter's failures, train a LoRA adapter, evaluate it against the champion and
    register it as the canary awaiting review.

    Args:
        window: "2026-Q1", "2026-01-01..2026-04-01" or "all"; empty: the last complete quarter.
        config: YAML config file laid over the embedded defaults.
        workspace: folder holding logs, cycles and the MLflow store (default ./workspace).
        auto_approve: approve and promote the canary when its gate passes (demo only).
        fresh: run every stage again instead of reusing finished ones.
    """
    import mlflow

    settings = load_settings(config, {"paths.workspace": workspace} if workspace else None)
    since, until, cycle_id = resolve_window(window)
    directory = cycle.cycle_dir(settings, cycle_id)
    base = prepare_base_model(settings)
    champion = _champion(settings)

    experiment = experiment_id(settings, "retraining")
    client = mlflow.MlflowClient(tracking_uri(settings))
    run = client.create_run(experiment, run_name=cycle_id, tags={"cycle_id": cycle_id})
    run_id = run.info.run_id
    try:
        def step(stage_task, name: str):
            return resumable(stage_task, directory, name, fresh)

        cases = step(extract_failure_cases, "extract")(settings, since, until, cycle.logs_fingerprint(settings),
                                                        directory / cycle.CASES)
        masked = step(mask_pii, "mask")(settings, directory / cycle.CASES, directory / cycle.MASKED)
        annotation_dir = directory / cycle.ANNOTATION
        annotations = step(collect_annotations, "annotate")(settings, directory / cycle.MASKED, annotation_dir)
        agreement = step(score_agreement, "agreement")(settings, annotation_dir / "annotations.jsonl",
                                                       directory / cycle.MASKED, annotation_dir)
        if agreement["decision"] == "block":
            client.set_terminated(run_id, "KILLED")
            return _stopped(cycle_id, directory, "agreement blocked the cycle", agreement)
        replay = cycle.replay_source(settings, champion and champion["cycle_id"], base)
        dataset = step(build_training_set, "dataset")(settings, annotation_dir / "curated.jsonl", replay,
                                                      directory / cycle.DATASET, cycle_id, run_id)
        trained = step(train_lora_adapter, "train")(settings, directory / cycle.DATASET, base, directory / cycle.ADAPTER, run_id)
        report = step(evaluate_candidate, "evaluate")(settings, directory / cycle.ADAPTER,
                                                      directory / cycle.DATASET / "holdout.jsonl", directory / cycle.EVAL,
                                                      champion and champion["version"], run_id)
        version = register_canary(settings, directory / cycle.ADAPTER, base, cycle_id, dataset["sha256"], report, run_id)
        client.set_terminated(run_id, "FINISHED")
    except cycle.AwaitingAnnotations as waiting:
        client.set_terminated(run_id, "KILLED")
        return _stopped(cycle_id, directory, str(waiting), {})
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise

    summary = {
        "cycle_id": cycle_id,
        "canary_version": version,
        "gate": "passed" if report["passed"] else "failed",
        "passed": report["passed"],
        "stages": {name: entry["status"] for name, entry in cycle.read_manifest(directory)["stages"].items()},
        "cases": cases["cases"], "masked": masked["masked_records"], "annotations": annotations["annotations"],
        "agreement": {"alpha": agreement["krippendorff_alpha"], "decision": agreement["decision"]},
        "train": {"examples": dataset["train"], "steps": trained["steps"], "val_loss": trained["val_loss"]},
        "mlflow_run_id": run_id,
        "cycle_dir": str(directory),
    }
    create_markdown_artifact(key="cycle-report", markdown=_cycle_markdown(settings, summary, directory),
                             description=f"Retraining cycle {cycle_id}")
    if auto_approve and report["passed"]:
        summary["promoted"] = _approve_and_promote(settings, version)
    return summary


def _champion(settings: Settings) -> dict | None:
    from tasks.registry import Registry

    status = Registry(settings).status()
    version = status["champion"]
    if version is None:
        return None
    entry = next(v for v in status["versions"] if v["version"] == version)
    return {"version": version, "cycle_id": entry.get("cycle_id")}


def _approve_and_promote(settings: Settings, version: str) -> dict:
    from tasks.registry import Registry

    registry = Registry(settings)
    registry.review(version, decision="approve", reviewer="auto-approve", comment="demo: gate passed, approved automatically")
    return registry.promote(version)


def _stopped(cycle_id: str, directory: Path, reason: str, details: dict) -> dict:
    get_run_logger().warning("cycle %s stopped: %s", cycle_id, reason)
    return {"cycle_id": cycle_id, "canary_version": None, "gate": None, "passed": False, "stopped": reason,
            "stages": {name: e["status"] for name, e in cycle.read_manifest(directory)["stages"].items()},
            "details": {k: v for k, v in details.items() if isinstance(v, (int, float, str, type(None)))}}


def _cycle_markdown(settings: Settings, summary: dict, directory: Path) -> str:
    eval_md = directory / cycle.EVAL / "report.md"
    lines = [
        f"# Retraining cycle {summary['cycle_id']}",
        "",
        f"Canary: version **{summary['canary_version']}** of `{settings.registry.model_name}`, gate **{summary['gate']}**.",
        "",
        "| stage | result |", "|---|---|",
        f"| extract | {summary['cases']} cases |",
        f"| mask PII | {summary['masked']} records masked |",
        f"| annotate | {summary['annotations']} annotations, alpha {summary['agreement']['alpha']}, {summary['agreement']['decision']} |",
        f"| train | {summary['train']['examples']} examples, {summary['train']['steps']} steps, val loss {summary['train']['val_loss']} |",
        "",
        f"Cycle directory: `{directory}`; manifest: `{directory / cycle.MANIFEST}`.",
        "",
        f"Approve: `flywheel approve {summary['canary_version']} --reviewer NAME --comment TEXT`",
    ]
    if eval_md.is_file():
        lines += ["", eval_md.read_text(encoding="utf-8")]
    from tasks.cost import cost_from_logs
    from tasks.report import cost_markdown

    lines += ["", cost_markdown(cost_from_logs(settings))]
    return "\n".join(lines) + "\n"


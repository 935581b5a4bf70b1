"""Quarterly retraining: from a window of production logs to a registered canary.

    extract_failure_cases -> mask_pii -> collect_annotations -> score_agreement -> build_training_set
        -> train_lora_adapter -> evaluate_candidate -> register_canary

Each stage is a Prefect task that takes its own settings section(s) and its input files and returns a
StageResult (declared outputs with sha256, counts, seconds); the next stage takes its inputs from those
outputs. Results are persisted and cached on the stage's code, its input digests and its sections, so a
rerun after a crash skips the finished stages (training resumes from its last checkpoint), and a change
to one section re-runs only the stages that read it and what follows them. Each stage writes into
`<workspace>/cycles/<cycle_id>/` and records itself in the cycle's manifest.json; registration reads the
evaluation's decision from 06_eval/gate.json.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.parameters import ConfigFile, Window, WorkspaceDir
from tasks import cycle
from tasks.annotate import AwaitingAnnotations
from tasks.config import (AnnotationSettings, DatasetSettings, ExtractSettings, LogsSettings, PiiSettings, RunnerSettings,
                          Settings, SignalsSettings, TrainSettings, load_settings)
from tasks.contracts import MlflowRun, StageResult
from tasks.tracking import experiment_id, tracking_uri
from tasks.windows import parse_window


def stage(name: str, *, records: str, code: tuple[str, ...]):
    """A cycle stage: a Prefect task whose result is persisted and cached on its cache key (its
    parameters' digests and the code of its modules), and which records itself in the cycle manifest
    under `records` with that key. Every stage has an `out` parameter inside the cycle directory."""

    def make(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> StageResult:
            params = signature.bind(*args, **kwargs).arguments
            result = fn(*args, **kwargs)
            cycle.record_stage(Path(params["out"]).parent, result, cycle.stage_cache_key(name, code, params))
            return result

        stage_task = task(name=name, persist_result=True,
                          cache_key_fn=lambda _ctx, params: cycle.stage_cache_key(name, code, params))(run)
        stage_task.code, stage_task.records = code, records
        return stage_task

    return make


def run_stage(stage_task, directory: Path, fresh: bool, *args: Any) -> StageResult:
    """Run a stage, reusing its cached result only when the cycle directory holds what a run with this
    very cache key wrote (cycle.stage_intact: a run with other settings may have replaced the files since);
    `fresh` runs it again regardless."""
    params = inspect.signature(stage_task.fn).bind(*args).arguments
    key = cycle.stage_cache_key(stage_task.name, stage_task.code, params)
    reuse = not fresh and cycle.stage_intact(directory, stage_task.records, key)
    return stage_task.with_options(refresh_cache=not reuse)(*args)


@stage("extract-failure-cases", records="extract",
       code=("tasks.extract", "tasks.signals", "tasks.logs", "tasks.docs", "tasks.verify"))
def extract_failure_cases(logs: LogsSettings, signals: SignalsSettings, extract: ExtractSettings, since: datetime | None,
                          until: datetime | None, log_files: list, key: bytes, out: Path, quarantine: Path,
                          grounding: Settings) -> StageResult:
    """`log_files` is [file, size, mtime] per file: new or changed logs are a new cache key. `grounding`
    holds the GROUNDING_SECTIONS (which docs, which verifier) that find unsupported answers."""
    from tasks.extract import extract_stage

    return extract_stage([f for f, _, _ in log_files], out, logs=logs, signals=signals, settings=extract, key=key,
                         since=since, until=until, quarantine=quarantine, grounding=grounding)


GROUNDING_SECTIONS = ("docs", "verify", "simulate", "signals", "paths")


@stage("mask-pii", records="mask", code=("tasks.pii",))
def mask_pii(pii: PiiSettings, cases: Path, key: bytes, out: Path, runner: RunnerSettings) -> StageResult:
    """With runner.kind dask each shard is a `pii-shard` task run on Dask; the output is the same."""
    from flows.parallel import shard_mapper
    from tasks.pii import mask_stage

    with shard_mapper(runner) as mapper:
        return mask_stage(cases, out, pii, key=key, mapper=mapper)


@stage("collect-annotations", records="annotate", code=("tasks.annotate", "tasks.simulate"))
def collect_annotations(annotation: AnnotationSettings, masked: Path, ground_truth: Path | None, seed: int,
                        data_dir: Path | None, out: Path) -> StageResult:
    """`ground_truth`, `seed` and `data_dir` are the simulated annotators' (None unless annotation.simulate)."""
    from tasks.annotate import collect_stage

    return collect_stage(masked, out, annotation, ground_truth=ground_truth, seed=seed, data_dir=data_dir)


@stage("score-agreement", records="agreement", code=("tasks.annotate",))
def score_agreement(annotation: AnnotationSettings, annotations: Path, masked: Path, out: Path) -> StageResult:
    from tasks.annotate import agreement_stage

    return agreement_stage(annotations, masked, out, annotation)


@stage("build-training-set", records="dataset", code=("tasks.dataset",))
def build_training_set(dataset: DatasetSettings, signals: SignalsSettings, curated: Path, replay: Path | None,
                       cycle_id: str, out: Path, mlflow: MlflowRun) -> StageResult:
    """`signals` says which replayed answers are refusals (all of them are replayed: dataset.replay_refusals)."""
    from tasks.dataset import dataset_stage

    return dataset_stage(curated, replay, out, dataset, cycle_id=cycle_id, mlflow=mlflow, signals=signals)


@stage("train-lora-adapter", records="train", code=("tasks.train", "tasks.base_model"))
def train_lora_adapter(train: TrainSettings, dataset: Path, base: Path, out: Path, mlflow: MlflowRun) -> StageResult:
    """`dataset` is the training set's card: its sha256 covers train.jsonl and val.jsonl."""
    from tasks.train import train_stage

    # A bar when someone watches a terminal (CLI, demo); progress lines in the run's log otherwise.
    progress = True if sys.stderr.isatty() else get_run_logger().info
    return train_stage(dataset.parent, base, out, train, mlflow=mlflow, progress=progress)


@stage("evaluate-candidate", records="evaluate", code=("tasks.evaluate", "tasks.signals", "tasks.generation"))
def evaluate_candidate(settings: Settings, adapter: Path, holdout: Path, champion: tuple[str, Path] | None, out: Path,
                       mlflow: MlflowRun) -> StageResult:
    """`adapter` is the adapter's weights file; `settings` holds the EVALUATE_SECTIONS only (stage_settings).
    With runner.kind dask each generation shard is an `evaluation-shard` task run on Dask; the outputs
    are the same."""
    from flows.parallel import evaluation_shards
    from tasks.evaluate import evaluate_stage

    with evaluation_shards(settings.runner) as shard_map:
        return evaluate_stage(adapter.parent, holdout, out, settings, champion=champion, mlflow=mlflow,
                              shard_map=shard_map)


EVALUATE_SECTIONS = ("evaluate", "signals", "model", "train", "paths", "docs", "verify", "simulate", "runner")


@task(name="register-canary")
def register_canary(settings: Settings, adapter: Path, base: Path, cycle_id: str, dataset_sha256: str, gate: Path,
                    report: Path, mlflow: MlflowRun) -> str:
    """Register the adapter as the canary, with the evaluation's decision read from gate.json."""
    from tasks.base_model import model_digest
    from tasks.registry import Registry

    evaluation = {"gate": json.loads(gate.read_text(encoding="utf-8")),
                  "suites": json.loads(report.read_text(encoding="utf-8"))["suites"]}
    return Registry(settings).register_canary(
        adapter.parent, cycle_id=cycle_id, base_path=base, base_digest=model_digest(base),
        dataset_sha256=dataset_sha256, eval_report=evaluation, run_id=mlflow.run_id,
    )


@task(name="prepare-base-model")
def prepare_base_model(settings: Settings) -> Path:
    """The configured base model, or the embedded one (built once, cached by content)."""
    from tasks.base_model import base_model_for

    return base_model_for(settings, progress=get_run_logger().info)


@task(name="find-champion")
def find_champion(settings: Settings) -> dict | None:
    """The registry's champion: version, the cycle that trained it and its adapter folder; None before
    the first promotion."""
    from tasks.registry import Registry

    registry = Registry(settings)
    status = registry.status()
    version = status["champion"]
    if version is None:
        return None
    entry = next(v for v in status["versions"] if v["version"] == version)
    return {"version": version, "cycle_id": entry.get("cycle_id"), "adapter": registry.adapter_path(version)}


# No log_prints: it reroutes print() even where a library captures stdout for itself (dill's
# disassembly when `datasets` fingerprints a function), flooding the run log with bytecode.
@flow(name="quarterly-retraining")
def quarterly_retraining(
    window: Window = "",
    config: ConfigFile = "",
    workspace: WorkspaceDir = "",
    fresh: bool = False,
) -> dict[str, Any]:
    """Curate a quarter's failures, train a LoRA adapter, evaluate it against the champion and
    register it as the canary awaiting review.

    Args:
        window: logs to learn from: 2026-Q1, 2026-01-05..2026-04-20 (ISO dates, end excluded), last-13-weeks
            or all. Empty: the last complete quarter. A malformed window is refused before the run starts.
        config: YAML config file laid over the embedded defaults (empty: $FLYWHEEL_CONFIG, else the defaults).
        workspace: folder holding logs, cycles and the MLflow store (empty: the config's, default ./workspace).
        fresh: run every stage again instead of reusing finished ones.
    """
    from mlflow import MlflowClient

    from tasks.logs import default_quarantine

    since, until, cycle_id = parse_window(window)  # first: a bad window leaves no folder and no MLflow run
    settings = load_settings(config, {"paths.workspace": workspace} if workspace else None)
    directory = cycle.cycle_dir(settings, cycle_id)
    base = prepare_base_model(settings)
    champion = find_champion(settings)
    key = cycle.pii_key(settings)
    annotation_dir = directory / cycle.ANNOTATION

    client = MlflowClient(tracking_uri(settings))
    run_id = client.create_run(experiment_id(settings, "retraining"), run_name=cycle_id,
                               tags={"cycle_id": cycle_id}).info.run_id
    mlflow = MlflowRun(tracking_uri=tracking_uri(settings), run_id=run_id)

    def step(stage_task, *args: Any) -> StageResult:
        return run_stage(stage_task, directory, fresh, *args)

    # The simulator's ground truth, seed and knowledge base matter to simulated annotators only.
    simulated = (settings.workspace / "ground_truth.jsonl", settings.simulate.seed, settings.paths.data_dir) \
        if settings.annotation.simulate else (None, 0, None)
    try:
        cases = step(extract_failure_cases, settings.logs, settings.signals, settings.extract, since, until,
                     cycle.files_fingerprint(cycle.log_files(settings)), key, directory / cycle.CASES,
                     default_quarantine(settings.logs, settings.workspace), stage_settings(settings, GROUNDING_SECTIONS))
        masked = step(mask_pii, settings.pii, cases.path("cases"), key, directory / cycle.MASKED, settings.runner)
        annotations = step(collect_annotations, settings.annotation, masked.path("masked"), *simulated, annotation_dir)
        agreement = step(score_agreement, settings.annotation, annotations.path("annotations"), masked.path("masked"),
                         annotation_dir)
        if agreement.details["decision"] == "block":
            client.set_terminated(run_id, "KILLED")
            return _stopped(cycle_id, directory, "agreement blocked the cycle", agreement)
        replay = cycle.replay_source(settings, champion and champion["cycle_id"], base)
        dataset = step(build_training_set, settings.dataset, settings.signals, agreement.path("curated"), replay,
                       cycle_id, directory / cycle.DATASET, mlflow)
        trained = step(train_lora_adapter, settings.train, dataset.path("card"), base, directory / cycle.ADAPTER, mlflow)
        evaluated = step(evaluate_candidate, stage_settings(settings, EVALUATE_SECTIONS), trained.path("adapter"),
                         dataset.path("holdout"), (champion["version"], champion["adapter"]) if champion else None,
                         directory / cycle.EVAL, mlflow)
        version = register_canary(settings, trained.path("adapter"), base, cycle_id, dataset.details["sha256"],
                                  evaluated.path("gate"), evaluated.path("report"), mlflow)
        client.set_terminated(run_id, "FINISHED")
    except AwaitingAnnotations as waiting:
        client.set_terminated(run_id, "KILLED")
        return _stopped(cycle_id, directory, str(waiting), None)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise

    passed = bool(evaluated.details["passed"])
    summary = {
        "cycle_id": cycle_id,
        "canary_version": version,
        "gate": "passed" if passed else "failed",
        "passed": passed,
        "stages": {name: entry["status"] for name, entry in cycle.read_manifest(directory)["stages"].items()},
        "cases": cases.counts["cases"], "masked": masked.counts["masked_records"],
        "annotations": annotations.counts["annotations"],
        "agreement": {"alpha": _rounded(agreement.details["krippendorff_alpha"]), "decision": agreement.details["decision"]},
        "train": {"examples": dataset.counts["train"], "steps": trained.counts["steps"],
                  "val_loss": trained.details["val_loss"]},
        "mlflow_run_id": run_id,
        "cycle_dir": str(directory),
    }
    create_markdown_artifact(key="cycle-report", markdown=_cycle_markdown(settings, summary, evaluated),
                             description=f"Retraining cycle {cycle_id}")
    return summary


def stage_settings(settings: Settings, sections: tuple[str, ...]) -> Settings:
    """Settings holding only `sections` of `settings` (the rest at their embedded defaults), for a
    stage that needs several sections: its cache key then changes with those sections only."""
    return Settings.model_validate({name: getattr(settings, name).model_dump() for name in sections})


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _stopped(cycle_id: str, directory: Path, reason: str, result: StageResult | None) -> dict:
    get_run_logger().warning("cycle %s stopped: %s", cycle_id, reason)
    return {"cycle_id": cycle_id, "canary_version": None, "gate": None, "passed": False, "stopped": reason,
            "stages": {name: e["status"] for name, e in cycle.read_manifest(directory)["stages"].items()},
            "details": result.details if result else {}}


def _cycle_markdown(settings: Settings, summary: dict, evaluated: StageResult) -> str:
    from tasks.cost import cost_from_logs
    from tasks.report import cycle_markdown

    from tasks.files import atomic_write_text

    cost = cost_from_logs(settings)
    atomic_write_text(Path(summary["cycle_dir"]) / cycle.COST, json.dumps(cost, indent=2, default=str))
    return cycle_markdown(settings.registry.model_name, summary, evaluated.path("report_md").read_text(encoding="utf-8"),
                          cost)
